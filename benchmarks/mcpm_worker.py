"""mcpm side of `make bench-peer`: one load + one measured generate of a bundle in the C runtime, in its own process.

The same steps as `mcpm bench` (mcpm.runtime.bench.run_bench: Model.load, greedy mcpm_generate with no stop ids,
the runtime's own clocks from mcpm_stats_json), but one measured run per process so the driver can alternate
mcpm and llama.cpp, and a short unrecorded warm-up (the first ``--warmup-prompt`` prompt tokens + ``--warmup-gen``
tokens, which already reads every weight once) instead of a full-size one, because the runs can be slow.

    python -m benchmarks.mcpm_worker BUNDLE --threads 2 --prompt 1,2,3 --n-gen 64   -> one JSON line
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run(bundle_dir: Path, threads: int, prompt: list[int], n_gen: int, warmup_prompt: int = 32,
        warmup_gen: int = 2) -> dict[str, Any]:
    from mcpm.errors import McpmError
    from mcpm.export.bundle.reader import open_bundle
    from mcpm.export.bundle.target import check_runs_here
    from mcpm.runtime.binding import Model, Sampling
    from mcpm.runtime.build import build_library

    bundle = open_bundle(bundle_dir)
    check_runs_here(bundle.config["target"])
    library = build_library(bundle.path, bundle.plan.object_file)
    base = rss_kb()
    greedy = Sampling()
    with Model.load(bundle.path, threads=threads, library=library) as model:
        load_rss = rss_kb()
        if warmup_prompt > 0:
            model.generate(prompt[:warmup_prompt], max(warmup_gen, 1), greedy, stop_ids=())
            model.reset()
        got = model.generate(prompt, n_gen, greedy, stop_ids=())
        if len(got) != n_gen:
            raise McpmError(f"generated {len(got)} of {n_gen} tokens")
        stats = model.stats()
    return {"system": "mcpm", "quantization": bundle.config.get("quantization"), **stats, "generated": len(got),
            "first_tokens": got[:8], "base_rss_kb": base, "load_rss_kb": load_rss}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("bundle", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", required=True, help="comma-separated token ids")
    p.add_argument("--n-gen", type=int, default=64)
    p.add_argument("--warmup-prompt", type=int, default=32)
    p.add_argument("--warmup-gen", type=int, default=2)
    a = p.parse_args(argv)
    result = run(a.bundle, a.threads, [int(t) for t in a.prompt.split(",")], a.n_gen, a.warmup_prompt, a.warmup_gen)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
