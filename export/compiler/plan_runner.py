"""Interpret a plan.Plan from Python (no relax VM): the reference for the plain-C runtime.

Every storage is allocated once (numpy uint8, 64-byte aligned); tensor arguments are zero-copy tvm views
(DLPack) into storages, caches, weights or the token buffer; kernels are looked up by name in a TVM module
(the in-process Executable, or ``kernels.so`` linked from the plan's object file with gcc) and called in plan order.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tvm

from mcpm.errors import McpmError
from mcpm.export.compiler.plan import (
    ALIGN,
    CACHE_ENTRIES,
    ENTRY_INPUTS,
    CacheArg,
    EntryPlan,
    InputArg,
    Plan,
    ScalarArg,
    TensorRef,
    WeightArg,
    nbytes,
    shape_at,
)


def prefill_in_chunks(tokens, chunk: int, run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Feed any number of tokens through ``run`` in chunks of <= chunk; returns the last chunk's logits."""
    tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)  # [n]
    if len(tokens) == 0:
        raise McpmError("prefill needs at least one token")
    chunks = [tokens[s : s + chunk] for s in range(0, len(tokens), chunk)]
    for c in chunks[:-1]:
        run(c)
    return run(chunks[-1])


def aligned_bytes(size: int) -> np.ndarray:
    """uint8[size] whose data pointer is ALIGN-byte aligned."""
    raw = np.zeros(size + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + size]


def aligned_copy(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    buf = aligned_bytes(a.nbytes)
    out = buf.view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def link_shared(object_file: Path, out: Path | None = None, cc: str = "gcc") -> Path:
    """kernels.o -> kernels.so (host only; kernels need libm)."""
    out = out or object_file.with_suffix(".so")
    cmd = [cc, "-shared", "-fPIC", "-o", str(out), str(object_file), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise McpmError(f"linking {object_file.name} failed: {res.stderr.strip().splitlines()[-1:]}")
    return out


def load_kernels(plan: Plan, plan_dir: Path):
    """tvm Module of the plan's object file, linked to a shared library next to it."""
    return tvm.runtime.load_module(str(link_shared(plan_dir / plan.object_file)))


class PlanModel:
    """Same driver API as runner.CompiledModel: prefill(tokens) in chunks, decode(token), pos, reset."""

    def __init__(self, plan: Plan, kernels, weights: list[np.ndarray]) -> None:
        self.plan = plan
        if len(weights) != len(plan.weights):
            raise McpmError(f"plan wants {len(plan.weights)} weights, got {len(weights)}")
        for w, info in zip(weights, plan.weights, strict=True):
            if list(w.shape) != info.shape or str(w.dtype) != info.dtype:
                raise McpmError(f"weight {info.name}: {w.dtype}{list(w.shape)} != plan {info.dtype}{info.shape}")
        self.weights = [aligned_copy(w) for w in weights]
        self.caches = [
            aligned_copy(np.zeros(plan.cache_shape, plan.cache_dtype)) for _ in range(2 * plan.num_layers)
        ]  # [k0, v0, k1, v1, ...] each [C, Hkv, d]
        self.storages = {
            name: [aligned_bytes(s.size) for s in e.storages] for name, e in plan.entries.items()
        }  # allocated once
        self.funcs = {name: kernels[name] for name in plan.kernels}
        self.pos = 0
        self._views: dict = {}

    def reset(self) -> None:
        self.pos = 0

    # ---- argument materialization

    def _view(self, base: np.ndarray, offset: int, dtype: str, shape: list[int]):
        key = (base.ctypes.data, offset, dtype, tuple(shape))
        t = self._views.get(key)
        if t is None:
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            arr = base.reshape(-1).view(np.uint8)[offset : offset + size].view(dtype).reshape(shape)
            t = self._views[key] = tvm.runtime.from_dlpack(arr)
            self._views[key + ("keep",)] = arr  # keep the numpy view alive
        return t

    def _arg(self, entry: EntryPlan, a, n: int, inputs: dict[str, np.ndarray]):
        if isinstance(a, ScalarArg):
            return self.pos if a.name == "pos" else n
        shape = shape_at(a.shape, n)
        if isinstance(a, TensorRef):
            return self._view(self.storages[entry.name][a.storage], a.offset, a.dtype, shape)
        if isinstance(a, WeightArg):
            return self._view(self.weights[a.index], 0, a.dtype, shape)
        if isinstance(a, CacheArg):
            return self._view(self.caches[2 * a.layer + (a.which == "v")], 0, a.dtype, shape)
        if isinstance(a, InputArg):
            return self._view(inputs[a.name], 0, a.dtype, shape)
        raise McpmError(f"unknown plan arg {a!r}")

    # ---- execution

    def run(self, entry_name: str, tokens: np.ndarray) -> np.ndarray:
        """A token entry (prefill, decode, embed) on tokens int32 [n]."""
        return self.run_entry(entry_name, tokens=np.asarray(tokens))

    def run_entry(self, entry_name: str, **inputs: np.ndarray) -> np.ndarray:
        """Any entry with its inputs by name (plan.ENTRY_INPUTS: tokens; embeds; patches, pos_interp, key_pos),
        each with n rows; entries with the KV caches write rows pos .. pos+n-1 and advance pos."""
        if entry_name not in self.plan.entries:
            raise McpmError(f"the plan has no {entry_name!r} entry")
        entry = self.plan.entries[entry_name]
        names = ENTRY_INPUTS[entry_name]
        if sorted(inputs) != sorted(names):
            raise McpmError(f"{entry_name} takes the inputs {', '.join(names)}, got {', '.join(sorted(inputs))}")
        n = len(inputs[names[0]])
        what = "patches" if entry_name == "vision" else "tokens"
        if not 1 <= n <= entry.n_max:
            raise McpmError(f"{entry_name} takes 1..{entry.n_max} {what}, got {n}")
        if any(len(v) != n for v in inputs.values()):
            raise McpmError(f"{entry_name}: the inputs {', '.join(names)} must have {n} rows each")
        cached = entry_name in CACHE_ENTRIES
        if cached and self.pos + n > self.plan.max_ctx:
            raise McpmError(f"context full: {self.pos} + {n} tokens > max_ctx {self.plan.max_ctx}")
        if "tokens" in inputs and (inputs["tokens"].min() < 0 or inputs["tokens"].max() >= self.plan.vocab_size):
            raise McpmError(f"token id out of range 0..{self.plan.vocab_size - 1}")
        bufs = {name: self._input_buffer(entry, name, np.asarray(value), n) for name, value in inputs.items()}
        for call in entry.calls:
            self.funcs[call.kernel](*[self._arg(entry, a, n, bufs) for a in call.args])
        out = entry.output
        size = nbytes(out.shape, out.dtype, n)
        store = self.storages[entry_name][out.storage]
        result = store[out.offset : out.offset + size].view(out.dtype).reshape(shape_at(out.shape, n)).copy()
        if cached:
            self.pos += n
        return result

    def _input_buffer(self, entry: EntryPlan, name: str, value: np.ndarray, n: int) -> np.ndarray:
        """The aligned buffer of one input (sized for n_max, reused), holding ``value`` in its first n rows."""
        key = ("input", entry.name, name)
        arg = next((a for c in entry.calls for a in c.args if isinstance(a, InputArg) and a.name == name), None)
        if key not in self._views:
            if arg is None:  # an input no kernel reads
                self._views[key] = aligned_bytes(ALIGN)
            else:
                size = max(nbytes(arg.shape, arg.dtype, m) for m in (1, entry.n_max))
                self._views[key] = aligned_bytes(size).view(arg.dtype)
        buf = self._views[key]
        flat = np.ascontiguousarray(value, dtype=buf.dtype).reshape(-1)
        want = nbytes(arg.shape, arg.dtype, n) // buf.itemsize if arg is not None else 0
        if arg is not None and flat.size != want:
            shape = shape_at(arg.shape, n)
            raise McpmError(f"{entry.name}: input {name} has shape {list(value.shape)}, the plan wants {shape}")
        buf[: flat.size] = flat
        return buf

    def prefill(self, tokens) -> np.ndarray:
        return prefill_in_chunks(tokens, self.plan.chunk, lambda chunk: self.run("prefill", chunk))

    def decode(self, token: int) -> np.ndarray:
        return self.run("decode", np.array([token], np.int32))

    def cache_numpy(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return self.caches[2 * layer].copy(), self.caches[2 * layer + 1].copy()


def load_plan_model(plan_dir: Path, weights: list[np.ndarray]) -> PlanModel:
    """plan.json + kernels.o (linked here) in plan_dir."""
    plan = Plan.from_json((plan_dir / "plan.json").read_text())
    return PlanModel(plan, load_kernels(plan, plan_dir), weights)
