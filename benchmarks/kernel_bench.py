"""Micro-benchmark of the int4 linear kernel (linear_q4) at MiniCPM-2B shapes: OLD (the per-row scalar generator,
kept here only) against NEW (mcpm.export.compiler.quant_kernels), timed alternately in one process.

    python -m benchmarks.kernel_bench                     # 1 and 2 threads, n = 1 and 128, all shapes
    python -m benchmarks.kernel_bench --threads 2 --n 1 --shapes qkv,down -r 7 --json

Each thread count runs in its own process (TVM_NUM_THREADS; TVM's own runtime thread pool runs the T.parallel
launches). Kernels are compiled for this CPU (llvm -mcpu=<host>). Reported per case (median of -r alternating
repetitions): ms per call, GB/s of weights streamed (qweight + scales bytes / time), and cycles per 32-weight block
per core = MHz * threads / (blocks per second), MHz being the mean 'cpu MHz' of /proc/cpuinfo. n = 128 counts
every token's pass over the weights as blocks (so cycles / block / token). Also checks NEW against OLD numerically.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

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

    from mcpm.export.compiler import quant_kernels

    target = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    out = []
    for shape in args.shapes.split(","):
        k, n_out = SHAPES[shape]
        kern = {"old": build(old_linear_q4(k, n_out, GROUP), "old", target),
                "new": build(quant_kernels.linear_q4(k, n_out, GROUP), "new", target)}
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
            a, b = ys["old"].numpy(), ys["new"].numpy()
            err = float(np.max(np.abs(a - b)) / max(1e-30, float(np.max(np.abs(a)))))
            times: dict[str, list[float]] = {v: [] for v in kern}
            budget = args.budget_s
            for _ in range(args.r):
                for v in kern:
                    reps, t0 = 0, time.perf_counter()
                    while True:
                        kern[v](x, qw_t, sc_t, ys[v])
                        reps += 1
                        dt = time.perf_counter() - t0
                        if dt > budget / (2 * args.r) or reps >= 200:
                            break
                    times[v].append(dt / reps)
            mhz = cpu_mhz()
            for v in kern:
                t = statistics.median(times[v])
                out.append({"shape": shape, "K": k, "N": n_out, "n": n, "threads": args.threads, "version": v,
                            "ms": t * 1e3, "gb_s": wbytes / t / 1e9,
                            "cycles_per_block": mhz * 1e6 * args.threads * t / (blocks * n),
                            "rel_err_vs_old": err, "samples": len(times[v])})
            print(json.dumps(out[-2:]), file=sys.stderr, flush=True)  # progress
    print(json.dumps(out))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--n", default="1,128", help="tokens per call (1 = decode, 128 = prefill)")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("-r", type=int, default=5, help="alternating repetitions")
    p.add_argument("--budget-s", type=float, default=3.0, help="seconds per version per case (all repetitions)")
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
               "--shapes", args.shapes, "-r", str(args.r), "--budget-s", str(args.budget_s)]
        res = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True, text=True)
        rows += json.loads(res.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps({"cpu_mhz": cpu_mhz(), "rows": rows}, indent=1))
        return 0
    print(f"cpu MHz {cpu_mhz():.0f}; median of {args.r} alternating repetitions")
    print(f"{'shape':<8}{'K':>6}{'N':>8}{'n':>5}{'thr':>4}  {'old ms':>9}{'new ms':>9}{'speedup':>8}"
          f"{'old GB/s':>9}{'new GB/s':>9}{'old cyc/blk':>12}{'new cyc/blk':>12}{'rel err':>9}")
    for o, nw in zip(rows[0::2], rows[1::2], strict=True):
        print(f"{o['shape']:<8}{o['K']:>6}{o['N']:>8}{o['n']:>5}{o['threads']:>4}  {o['ms']:>9.3f}{nw['ms']:>9.3f}"
              f"{o['ms'] / nw['ms']:>8.2f}{o['gb_s']:>9.2f}{nw['gb_s']:>9.2f}{o['cycles_per_block']:>12.1f}"
              f"{nw['cycles_per_block']:>12.1f}{nw['rel_err_vs_old']:>9.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
