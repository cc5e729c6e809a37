"""llama.cpp side of `make bench-peer`, run by the peer virtualenv's python (needs llama_cpp and numpy only).

It talks to llama.cpp through llama-cpp-python's low-level bindings with llama.cpp's own default context
parameters (flash attention "auto", F16 KV cache, mmap, Q4_0 repacked at load), not the high-level ``Llama``
wrapper, which changes some of them. The protocol mirrors mcpm's C runtime (mcpm_generate / mcpm_stats_json):

* prefill_tok_s = prompt tokens / time of the prompt's decode call;
* ttft_ms = that time + picking the first token (greedy argmax of the last logits);
* decode_tok_s = (n_gen - 1) / time of the n_gen - 1 single-token steps (each: decode + argmax);
* peak_rss_kb = getrusage(RUSAGE_SELF).ru_maxrss of this process; base_rss_kb = VmRSS before the model loads.

Commands (one JSON object on the last stdout line):
    bench   --gguf F --threads T --prompt 1,2,3 --n-gen 64 [--n-ctx 512] [--kv f16|f32] [--flash-attn auto|on|off]
    logits  --gguf F --threads T --prompt 1,2,3 --out logits.npy --kv f32   (every position's logits)
    quantize_q4_0 --inp x.npy --out q.npy    (ggml's own Q4_0 packing, ggml_quantize_chunk, for the writer's test)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import sys
import time
from typing import Any

import numpy as np

GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q4_0 = 0, 1, 2
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _quiet(llama_cpp: Any) -> Any:
    @llama_cpp.llama_log_callback
    def _log(level: int, text: bytes, user: Any) -> None:  # llama.cpp's log to stderr only on errors
        if level >= 4 and text:  # GGML_LOG_LEVEL_ERROR
            sys.stderr.write(text.decode(errors="replace"))

    llama_cpp.llama_log_set(_log, None)
    return _log  # keep a reference alive


class Peer:
    def __init__(self, gguf: str, threads: int, n_ctx: int, kv: str, flash_attn: str, n_batch: int) -> None:
        import llama_cpp

        self.ll = ll = llama_cpp
        self._log = _quiet(ll)
        ll.llama_backend_init()
        self.base_rss_kb = rss_kb()
        t0 = time.perf_counter()
        mparams = ll.llama_model_default_params()
        self.model = ll.llama_model_load_from_file(gguf.encode(), mparams)
        if not self.model:
            raise SystemExit(f"llama.cpp could not load {gguf}")
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = max(cparams.n_batch, n_batch)  # llama.cpp's default (2048) unless the prompt is longer
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.flash_attn_type = FLASH_ATTN[flash_attn]
        if kv == "f32":
            cparams.type_k = cparams.type_v = GGML_TYPE_F32
        self.kv = {GGML_TYPE_F32: "f32", GGML_TYPE_F16: "f16"}.get(cparams.type_k, str(cparams.type_k))
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise SystemExit("llama.cpp could not create a context")
        self.load_ms = (time.perf_counter() - t0) * 1000
        self.load_rss_kb = rss_kb()
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.batch = ll.llama_batch_init(max(n_batch, 1), 0, 1)

    def decode(self, tokens: list[int], pos: int, all_logits: bool = False) -> None:
        b = self.batch
        b.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = all_logits or i == len(tokens) - 1
        rc = self.ll.llama_decode(self.ctx, b)
        if rc != 0:
            raise SystemExit(f"llama_decode failed with {rc}")

    def logits(self, i: int = -1) -> np.ndarray:
        return np.ctypeslib.as_array(self.ll.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))

    def reset(self) -> None:
        self.ll.llama_memory_clear(self.ll.llama_get_memory(self.ctx), True)

    def generate(self, prompt: list[int], n_gen: int) -> dict[str, Any]:
        """mcpm_generate's protocol: greedy, no stop ids; returns the timings."""
        t0 = time.perf_counter()
        self.decode(prompt, 0)
        t_prefill = time.perf_counter()
        tok = int(np.argmax(self.logits()))
        ttft = time.perf_counter() - t0
        out, decode_s = [tok], 0.0
        for step in range(1, n_gen):
            t1 = time.perf_counter()
            self.decode([tok], len(prompt) + step - 1)
            tok = int(np.argmax(self.logits()))
            decode_s += time.perf_counter() - t1
            out.append(tok)
        prefill_s = t_prefill - t0
        return {"prefill_tok_s": len(prompt) / prefill_s, "decode_tok_s": (n_gen - 1) / decode_s if n_gen > 1 else 0.0,
                "ttft_ms": ttft * 1000, "prefill_ms": prefill_s * 1000, "decode_ms": decode_s * 1000,
                "tokens": out}


def cmd_bench(a: argparse.Namespace) -> dict[str, Any]:
    prompt = [int(t) for t in a.prompt.split(",")]
    peer = Peer(a.gguf, a.threads, a.n_ctx, a.kv, a.flash_attn, max(len(prompt), 1))
    if a.warmup_prompt > 0:  # touches every weight page and the compute buffers; not recorded
        peer.generate(prompt[:a.warmup_prompt], max(a.warmup_gen, 1))
        peer.reset()
    r = peer.generate(prompt, a.n_gen)
    import llama_cpp

    return {"system": "llama.cpp", "version": getattr(llama_cpp, "__version__", "?"), "load_ms": peer.load_ms,
            **{k: v for k, v in r.items() if k != "tokens"}, "generated": len(r["tokens"]),
            "first_tokens": r["tokens"][:8], "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "base_rss_kb": peer.base_rss_kb, "load_rss_kb": peer.load_rss_kb, "threads": a.threads,
            "kv": peer.kv, "flash_attn": a.flash_attn, "n_ctx": a.n_ctx}


def cmd_logits(a: argparse.Namespace) -> dict[str, Any]:
    prompt = [int(t) for t in a.prompt.split(",")]
    peer = Peer(a.gguf, a.threads, a.n_ctx, a.kv, a.flash_attn, len(prompt))
    peer.decode(prompt, 0, all_logits=True)
    rows = np.stack([peer.logits(i).copy() for i in range(len(prompt))])  # [n, vocab]
    np.save(a.out, rows.astype(np.float32))
    return {"rows": rows.shape[0], "vocab": rows.shape[1], "kv": peer.kv}


def cmd_quantize(a: argparse.Namespace) -> dict[str, Any]:
    """ggml's own Q4_0 bytes of a float32 [rows, cols] matrix (ggml_quantize_chunk, no importance matrix)."""
    import llama_cpp
    from llama_cpp._ctypes_extensions import load_shared_library  # type: ignore[import-not-found]

    x = np.ascontiguousarray(np.load(a.inp), dtype=np.float32)
    lib_dir = __import__("pathlib").Path(llama_cpp.__file__).parent / "lib"
    ggml = load_shared_library("ggml-base", lib_dir)
    ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
    ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    out = np.zeros((x.shape[0], x.shape[1] // 32 * 18), dtype=np.uint8)
    n = ggml.ggml_quantize_chunk(GGML_TYPE_Q4_0, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
    np.save(a.out, out)
    return {"bytes": int(n)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("bench", "logits"):
        s = sub.add_parser(name)
        s.add_argument("--gguf", required=True)
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--prompt", required=True, help="comma-separated token ids")
        s.add_argument("--n-ctx", type=int, default=512)
        s.add_argument("--kv", choices=("default", "f32"), default="default")
        s.add_argument("--flash-attn", choices=tuple(FLASH_ATTN), default="auto")
        if name == "bench":
            s.add_argument("--n-gen", type=int, default=64)
            s.add_argument("--warmup-prompt", type=int, default=32)
            s.add_argument("--warmup-gen", type=int, default=2)
        else:
            s.add_argument("--out", required=True)
    q = sub.add_parser("quantize_q4_0")
    q.add_argument("--inp", required=True)
    q.add_argument("--out", required=True)
    a = p.parse_args(argv)
    result = {"bench": cmd_bench, "logits": cmd_logits, "quantize_q4_0": cmd_quantize}[a.cmd](a)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
