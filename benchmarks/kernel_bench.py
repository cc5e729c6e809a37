"""Micro-benchmark of the int4 linear kernel (linear_q4) at MiniCPM-2B shapes: several versions timed alternately
in one process.

    python -m benchmarks.kernel_bench                     # head vs new, 1 and 2 threads, n = 1 and 128, all shapes
    python -m benchmarks.kernel_bench --threads 1 --n 1 --shapes wo,down -r 9 --clock cpu --mhz 2445 --json

Versions (--versions; the first one is the baseline of the speedups and of the numerical check):
  old      the per-row scalar generator of git e6f1432 (kept here only)
  head     linear_q4 of the committed export/compiler/quant_kernels.py (``git show REV:...``, --rev, default HEAD)
  new      linear_q4 of the working tree, constructed under the benchmark's target (quant_kernels.decode_isa: on
           x86 with AVX2 the decode tokens take the int16-activation vpmaddwd tiles)
  generic  linear_q4 of the working tree constructed with no current target (decode_isa "f32": the float tiles)
  a8       linear_q4(act="int8") of the working tree under the benchmark's target (the -a8 schemes: activations
           quantized per 32 inputs to int8; its rel err to a float version is the activation rounding, ~1e-2)
  head-a8  the same from the committed file (--rev)
Each thread count runs in its own process (TVM_NUM_THREADS; TVM's own runtime thread pool runs the T.parallel
launches). Kernels are compiled for this CPU (llvm -mcpu=<host>). Reported per case (median of -r alternating
repetitions): ms per call, GB/s of weights streamed (qweight + scales bytes / time), GFLOP/s (2 K N n / time: all
threads, or per core with --clock cpu), and cycles per 32-weight block per core = MHz * threads * time / blocks
(--clock wall, the default) or MHz * CPU time of all threads / blocks (--clock cpu, which leaves out the time other
processes held the cores); MHz is --mhz or else the mean 'cpu MHz' of /proc/cpuinfo. n = 128 counts every token's
pass over the weights as blocks (so cycles / block / token). The relative error is the largest |difference| to the
baseline over the largest |baseline| output (int16 decode activations against float ones: ~2e-5).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

SHAPES = {  # name: (K, N)
    "wo": (2304, 2304),  # MiniCPM-2B: 36 heads x 64 (wqkv is N = 6912)
    "gate_up": (2304, 11520),  # the fused gate+up weight, 2 x 5760
    "down": (5760, 2304),
    "lm_head": (2304, 122753),
}
GROUP = 32


def old_linear_q4(k_in: int, n_out: int, group: int, residual: bool = False):
    """The generator before the register-tiled rewrite (git e6f1432): one parallel launch per token, one row per
    iteration, scalar nibble loop, group partial sum then * scale."""
    from tvm.script import tirx as T

    kp = -(-k_in // group) * group
    words = group // 8

    @T.macro
    def row_dot(x, qw, sc, i, j, acc):
        word = T.alloc_local((1,), "uint32")
        acc[0] = T.float32(0)
        for g in range(kp // group):
            acc[1] = T.float32(0)
            for w in range(words):
                word[0] = qw[j, g * words + w]
                for b in T.unroll(8):
                    if g * group + w * 8 + b < k_in:
                        nib = T.bitwise_and(T.shift_right(word[0], T.uint32(4 * b)), T.uint32(15))
                        acc[1] = acc[1] + x[i, g * group + w * 8 + b] * (T.Cast("float32", nib) - T.float32(8))
            acc[0] = acc[0] + acc[1] * T.Cast("float32", sc[j, g])

    @T.prim_func(private=True)
    def linear(x_h: T.handle, q_h: T.handle, s_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")
        qw = T.match_buffer(q_h, (n_out, kp // 8), "uint32")
        sc = T.match_buffer(s_h, (n_out, kp // group), "float16")
        y = T.match_buffer(y_h, (n, n_out), "float32")
        for i in range(n):
            for j in T.parallel(n_out):
                acc = T.alloc_local((2,), "float32")
                row_dot(x, qw, sc, i, j, acc)
                y[i, j] = acc[0]

    return linear


def committed_quant_kernels(rev: str) -> types.ModuleType:
    """export/compiler/quant_kernels.py as committed at ``rev``, imported from a temporary copy (TVMScript reads
    the source of the functions it parses)."""
    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(["git", "show", f"{rev}:export/compiler/quant_kernels.py"], cwd=root, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="kernel_bench_")) / "quant_kernels_committed.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_kernel(version: str, k: int, n_out: int, target, rev: str):
    """The PrimFunc of ``version`` (see the module docstring) for K = k, N = n_out."""
    import tvm

    from mcpm.export.compiler import quant_kernels

    if version == "old":
        return old_linear_q4(k, n_out, GROUP)
    if version == "head":
        return committed_quant_kernels(rev).linear_q4(k, n_out, GROUP)
    if version == "head-a8":
        with tvm.target.Target(target):
            return committed_quant_kernels(rev).linear_q4(k, n_out, GROUP, act="int8")
    if version == "new":
        with tvm.target.Target(target):  # linear_q4 picks its decode tiles from the current target
            return quant_kernels.linear_q4(k, n_out, GROUP)
    if version == "generic":
        return quant_kernels.linear_q4(k, n_out, GROUP)
    if version == "a8":
        with tvm.target.Target(target):
            return quant_kernels.linear_q4(k, n_out, GROUP, act="int8")
    raise SystemExit(f"unknown version {version!r} (old, head, new, generic, a8, head-a8)")


def cpu_mhz() -> float:
    try:
        with open("/proc/cpuinfo") as f:
            vals = [float(line.split(":", 1)[1]) for line in f if line.startswith("cpu MHz")]
        return statistics.fmean(vals) if vals else 0.0
    except (OSError, ValueError):
        return 0.0


def build(func, name: str, target: dict):
    import tvm

    mod = tvm.IRModule({name: func.with_attr("global_symbol", name)})
    return tvm.compile(mod, target=tvm.target.Target(target))[name]


def worker(args) -> None:
    import numpy as np
    import tvm
    from tvm.target import codegen

    target = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    out = []
    for shape in args.shapes.split(","):
        k, n_out = SHAPES[shape]
        versions = args.versions.split(",")
        kern = {v: build(make_kernel(v, k, n_out, target, args.rev), v, target) for v in versions}
        qw = rng.integers(0, 2**32, size=(n_out, k // 8), dtype=np.uint32)
        sc = (rng.standard_normal((n_out, k // GROUP)) * 0.01).astype(np.float16)
        qw_t, sc_t = tvm.runtime.tensor(qw, dev), tvm.runtime.tensor(sc, dev)
        wbytes = qw.nbytes + sc.nbytes
        blocks = n_out * k // 32
        for n in [int(v) for v in args.n.split(",")]:
            x = tvm.runtime.tensor(rng.standard_normal((n, k)).astype(np.float32), dev)
            ys = {v: tvm.runtime.tensor(np.zeros((n, n_out), np.float32), dev) for v in kern}
            for v in kern:  # warm-up + check
                kern[v](x, qw_t, sc_t, ys[v])
            base = ys[versions[0]].numpy()
            errs = {v: float(np.max(np.abs(ys[v].numpy() - base)) / max(1e-30, float(np.max(np.abs(base)))))
                    for v in kern}
            times: dict[str, list[float]] = {v: [] for v in kern}
            budget = args.budget_s
            clock = time.process_time if args.clock == "cpu" else time.perf_counter
            for _ in range(args.r):
                for v in kern:
                    reps, t0 = 0, clock()
                    while True:
                        kern[v](x, qw_t, sc_t, ys[v])
                        reps += 1
                        dt = clock() - t0
                        if dt > budget / (2 * args.r) or reps >= 200:
                            break
                    times[v].append(dt / reps)
            mhz = args.mhz or cpu_mhz()
            for v in kern:
                t = statistics.median(times[v])
                out.append({"shape": shape, "K": k, "N": n_out, "n": n, "threads": args.threads, "version": v,
                            "ms": t * 1e3, "gb_s": wbytes / t / 1e9, "gflop_s": 2 * k * n_out * n / t / 1e9,
                            "cycles_per_block": mhz * 1e6 * (1 if args.clock == "cpu" else args.threads) * t
                            / (blocks * n),
                            "rel_err": errs[v], "samples": len(times[v])})
            print(json.dumps(out[-len(kern):]), file=sys.stderr, flush=True)  # progress
    print(json.dumps(out))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--n", default="1,128", help="tokens per call (1 = decode, 128 = prefill)")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("-r", type=int, default=5, help="alternating repetitions")
    p.add_argument("--budget-s", type=float, default=3.0, help="seconds per version per case (all repetitions)")
    p.add_argument("--versions", default="head,new",
                   help="old, head, new, generic, a8, head-a8 (the first is the baseline)")
    p.add_argument("--rev", default="HEAD", help="git revision of the 'head' version")
    p.add_argument("--mhz", type=float, default=0.0, help="CPU clock for cycles/block (default: /proc/cpuinfo)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: time by the process's CPU time (all threads; ms is then CPU ms), which leaves out "
                   "the time other processes took the cores from it")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.threads = int(args.threads)
        worker(args)
        return 0
    rows = []
    for t in args.threads.split(","):
        env = dict(os.environ, TVM_NUM_THREADS=t)
        cmd = [sys.executable, "-m", "benchmarks.kernel_bench", "--worker", "--threads", t, "--n", args.n,
               "--shapes", args.shapes, "-r", str(args.r), "--budget-s", str(args.budget_s),
               "--versions", args.versions, "--rev", args.rev, "--mhz", str(args.mhz), "--clock", args.clock]
        res = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True, text=True)
        rows += json.loads(res.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps({"cpu_mhz": cpu_mhz(), "rows": rows}, indent=1))
        return 0
    mhz = args.mhz or cpu_mhz()
    print(f"cpu MHz {mhz:.0f}; median of {args.r} alternating repetitions; speedup and rel err vs "
          f"{args.versions.split(',')[0]}")
    print(f"{'shape':<8}{'K':>6}{'N':>8}{'n':>5}{'thr':>4}  {'version':<8}{'ms':>9}{'speedup':>8}{'GB/s':>7}"
          f"{'GFLOP/s':>8}{'cyc/blk':>8}{'rel err':>9}")
    nv = len(args.versions.split(","))
    for c in range(0, len(rows), nv):
        base = rows[c]
        for r in rows[c:c + nv]:
            print(f"{r['shape']:<8}{r['K']:>6}{r['N']:>8}{r['n']:>5}{r['threads']:>4}  {r['version']:<8}"
                  f"{r['ms']:>9.3f}{base['ms'] / r['ms']:>8.2f}{r['gb_s']:>7.2f}{r['gflop_s']:>8.1f}"
                  f"{r['cycles_per_block']:>8.1f}"
                  f"{r['rel_err']:>9.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
