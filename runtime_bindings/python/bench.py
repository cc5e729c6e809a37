"""`mcpm bench`: prefill / decode speed of a bundle in the C runtime, in the spirit of llama-bench.

A seeded random prompt of n_prompt token ids is fed, then n_gen tokens are generated greedily by mcpm_generate
with no stop ids; this repeats `repetitions` times (the context is reset in between) after one unrecorded warm-up.
Every number comes from the runtime's own clocks (mcpm_stats_json).
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from mcpm.errors import McpmError

SUMMARY_KEYS = ("prefill_tok_s", "decode_tok_s", "ttft_ms")


def machine_info() -> dict[str, Any]:
    u = platform.uname()
    return {"processor": platform.processor() or u.machine, "system": u.system, "release": u.release,
            "machine": u.machine, "node": u.node, "cpu_count": os.cpu_count() or 1, "python": platform.python_version()}


def mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def run_bench(bundle_dir: Path, n_prompt: int = 128, n_gen: int = 64, threads: int = 0, repetitions: int = 5,
              seed: int = 0, warmup: bool = True) -> dict[str, Any]:
    """Benchmark one bundle; returns the JSON-ready record (machine, target, per-repetition runs, summary)."""
    from mcpm.export.bundle.reader import open_bundle
    from mcpm.export.bundle.target import check_runs_here
    from mcpm.runtime.binding import Model, Sampling
    from mcpm.runtime.build import build_library

    if n_prompt < 1 or n_gen < 1 or repetitions < 1 or threads < 0:
        raise McpmError(f"bench needs -p >= 1, -n >= 1, -r >= 1 and -t >= 0 (got -p {n_prompt} -n {n_gen} "
                        f"-r {repetitions} -t {threads})")
    bundle = open_bundle(Path(bundle_dir))
    check_runs_here(bundle.config["target"])
    context = int(bundle.config["context_length"])
    if n_prompt + n_gen > context:
        raise McpmError(f"-p {n_prompt} + -n {n_gen} tokens exceed the bundle's context of {context} tokens",
                        "lower -p or -n")
    library = build_library(bundle.path, bundle.plan.object_file)
    with Model.load(bundle.path, threads=threads, library=library) as model:
        prompt = np.random.default_rng(seed).integers(0, model.vocab_size, n_prompt).astype(np.int32)  # [n_prompt]
        greedy = Sampling()
        runs: list[dict[str, Any]] = []
        for rep in range(repetitions + (1 if warmup else 0)):
            model.reset()
            got = model.generate(prompt, n_gen, greedy, stop_ids=())
            if len(got) != n_gen:
                raise McpmError(f"generated {len(got)} of {n_gen} tokens")
            if warmup and rep == 0:
                continue
            runs.append(model.stats())
    summary = {key: mean_sd([float(r[key]) for r in runs]) for key in SUMMARY_KEYS}
    summary["load_ms"] = {"mean": float(runs[0]["load_ms"]), "sd": 0.0}
    summary["peak_rss_kb"] = {"mean": float(max(r["peak_rss_kb"] for r in runs)), "sd": 0.0}
    return {
        "bundle": str(bundle.path), "quantization": bundle.config.get("quantization"),
        "machine": machine_info(), "target": bundle.config["target"], "threads": int(runs[0]["threads"]),
        "n_prompt": n_prompt, "n_gen": n_gen, "repetitions": repetitions, "seed": seed,
        "runs": runs, "summary": summary,
    }


def format_table(result: dict[str, Any]) -> str:
    """llama-bench-like text: one row per measurement, mean ± sd over the repetitions."""
    s = result["summary"]
    m = result["machine"]
    lines = [
        f"bundle {result['bundle']} ({result['quantization']}), {result['threads']} threads, "
        f"{m['processor']} ({m['cpu_count']} CPUs), {result['repetitions']} repetitions",
        f"{'test':<14}{'value':>24}",
        f"{'pp' + str(result['n_prompt']):<14}{_pm(s['prefill_tok_s'], 'tok/s'):>24}",
        f"{'tg' + str(result['n_gen']):<14}{_pm(s['decode_tok_s'], 'tok/s'):>24}",
        f"{'ttft':<14}{_pm(s['ttft_ms'], 'ms'):>24}",
        f"{'load':<14}{s['load_ms']['mean']:>18.2f} ms   ",
        f"{'peak rss':<14}{s['peak_rss_kb']['mean'] / 1024:>17.1f} MiB   ",
    ]
    return "\n".join(lines)


def _pm(v: dict[str, float], unit: str) -> str:
    return f"{v['mean']:.2f} ± {v['sd']:.2f} {unit}"
