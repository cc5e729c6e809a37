"""Compile for the host CPU and drive ``prefill`` / ``decode`` with TVM's relax VirtualMachine."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from mcpm.errors import McpmError
from mcpm.export.compiler.model_def import build_module
from mcpm.export.compiler.plan_runner import prefill_in_chunks
from mcpm.export.compiler.spec import CompileSpec
from mcpm.export.compiler.weights import check_supported, export_weights

HOST_TARGET = {"kind": "llvm"}


def compile_module(mod: tvm.IRModule, target: dict | None = None):
    """tvm.compile with a dict target and the target's default pipeline (for llvm: relax.backend.cpu_generic,
    which fuses split+silu+multiply etc.; the generic "default" pipeline fuses nothing).

    The pipeline is passed as a Pass object: with the string "default", relax.build evaluates
    ``"gpu" in target.keys`` and fails (TypeError: argument of type 'builtin_function_or_method' is not iterable)."""
    tgt = tvm.target.Target(target or HOST_TARGET)
    return tvm.compile(mod, target=tgt, relax_pipeline=relax.get_default_pipeline(tgt))


class CompiledModel:
    """One sequence: a static KV cache [max_ctx, Hkv, d] per layer (k and v) and the position counter."""

    def __init__(self, executable, cfg, spec: CompileSpec, weights: list[np.ndarray]) -> None:
        self.cfg, self.spec = cfg, spec
        self.dev = tvm.cpu()
        self.vm = relax.VirtualMachine(executable, self.dev)
        self.weights = [tvm.runtime.tensor(w, self.dev) for w in weights]
        shape = (spec.max_ctx, cfg.num_kv_heads, cfg.head_dim)
        self.caches = [
            tvm.runtime.tensor(np.zeros(shape, spec.kv_dtype), self.dev) for _ in range(2 * cfg.num_hidden_layers)
        ]
        self.pos = 0  # tokens in the cache

    def reset(self) -> None:
        self.pos = 0  # rows >= pos are never read, so the cache need not be cleared

    def _run(self, fn: str, tokens: np.ndarray) -> np.ndarray:
        n = len(tokens)
        if self.pos + n > self.spec.max_ctx:
            raise McpmError(f"context full: {self.pos} + {n} tokens > max_ctx {self.spec.max_ctx}")
        if n and (tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size):
            raise McpmError(f"token id out of range 0..{self.cfg.vocab_size - 1}")
        toks = tvm.runtime.tensor(np.ascontiguousarray(tokens, dtype=np.int32), self.dev)  # [n]
        logits = self.vm[fn](toks, self.pos, *self.caches, *self.weights)  # [1 or n, V]
        self.pos += n
        return logits.numpy()

    def prefill(self, tokens) -> np.ndarray:
        """Any number of tokens, in chunks of <= spec.chunk; returns the logits of the last chunk
        ([1, V], or [n_last_chunk, V] with all_logits)."""
        return prefill_in_chunks(tokens, self.spec.chunk, lambda chunk: self._run("prefill", chunk))

    def decode(self, token: int) -> np.ndarray:
        """One token -> logits [1, V]."""
        return self._run("decode", np.array([token], np.int32))

    def cache_numpy(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(k, v) [max_ctx, Hkv, d] of one layer."""
        return self.caches[2 * layer].numpy(), self.caches[2 * layer + 1].numpy()


def compile_model(loaded, spec: CompileSpec, target: dict | None = None) -> CompiledModel:
    """``loaded`` = mcpm.export.loading.load_model(dir) of a dense minicpm checkpoint."""
    if loaded.family.model_type != "minicpm":
        raise McpmError(f"the TVM compiler handles the minicpm family, not {loaded.family.model_type}")
    cfg = loaded.config
    check_supported(cfg, spec)
    exe = compile_module(build_module(cfg, spec), target)
    return CompiledModel(exe, cfg, spec, export_weights(loaded.model, cfg, spec))
