"""Where the time of a bundle goes: wall time of every plan kernel for one prefill chunk and a few decode steps.

Runs the bundle's plan with the Python plan driver (the same kernels as the C runtime; TVM's thread pool, so set
TVM_NUM_THREADS) and sums the time of each call by kernel kind. Prints a table (or JSON with --json).

    TVM_NUM_THREADS=2 python -m benchmarks.plan_profile BUNDLE -n 64 --decode 8
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def kind(kernel: str) -> str:
    """Kernel name without its shape suffixes (linear_q4_2304_6912_32_add -> linear_q4)."""
    return re.sub(r"(_\d+)+(_add)?$", "", kernel)


class _Timed:
    def __init__(self, name: str, func: Callable[..., Any], times: dict[str, float]) -> None:
        self.name, self.func, self.times = name, func, times

    def __call__(self, *args: Any) -> None:
        t = time.perf_counter()
        self.func(*args)
        self.times[self.name] += time.perf_counter() - t


def profile(bundle_dir: Path, n_prompt: int, n_decode: int, seed: int = 0) -> dict[str, Any]:
    from mcpm.export.bundle.host_runner import load_bundle

    _, model, _ = load_bundle(bundle_dir)
    times: dict[str, float] = defaultdict(float)
    model.funcs = {k: _Timed(k, f, times) for k, f in model.funcs.items()}
    ids = np.random.default_rng(seed).integers(0, model.plan.vocab_size, max(n_prompt, n_decode), dtype=np.int32)
    prompt = ids[: min(n_prompt, model.plan.chunk)]
    model.run("prefill", prompt)  # warm-up (first touch of weights and storages)
    result: dict[str, Any] = {}
    for phase, steps in (("prefill", [prompt]), ("decode", [ids[i : i + 1] for i in range(n_decode)])):
        model.pos = 0 if phase == "prefill" else len(prompt)
        times.clear()
        t0 = time.perf_counter()
        for step in steps:
            model.run(phase, step)
        total = time.perf_counter() - t0
        by_kind: dict[str, float] = defaultdict(float)
        for k, v in times.items():
            by_kind[kind(k)] += v
        result[phase] = {"tokens": int(sum(len(s) for s in steps)), "ms": total * 1e3,
                         "kernels": {k: v * 1e3 for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])}}
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("-n", "--n-prompt", type=int, default=64, help="prefill tokens (one chunk at most)")
    p.add_argument("--decode", type=int, default=8, help="decode steps after the prompt")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    result = profile(a.bundle, a.n_prompt, a.decode)
    if a.json:
        print(json.dumps(result))
        return
    for phase, r in result.items():
        print(f"{phase}: {r['tokens']} tokens, {r['ms']:.0f} ms")
        for k, ms in r["kernels"].items():
            print(f"  {k:<32}{ms:9.1f} ms {100 * ms / r['ms']:5.1f} %")


if __name__ == "__main__":
    main()
