"""Decode speed with another process busy on one core (`make bench-contention`): the thread pool's target is
`-t 2` decode >= 0.8 x `-t 1` decode while one core is taken (a phone always runs other processes).

    python -m benchmarks.contention [--bundle DIR] [-r 3] [--json]

For each round: `mcpm bench -t 1` and `-t 2` (fresh processes, alternating) on an idle machine, then the same
with a busy loop (a Python process spinning, free to run on any core) running. Default bundle: the shipped
default model exported for the host (context 128, chunk 16; cached under $MCPM_CACHE_DIR/bench-contention).
Prints a table (or one JSON object) of decode tok/s and the ratios t2/t1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BUSY = "while True: pass"


def default_bundle() -> Path:
    from mcpm.export.exporter import ExportOptions, run_export
    from mcpm.export.loading import DEFAULT_MODEL_DIR
    from mcpm.runtime.build import default_cache_dir

    out = default_cache_dir() / "bench-contention" / "default-q4g32"
    if not (out / "mcpm-config.json").is_file():
        run_export(ExportOptions(DEFAULT_MODEL_DIR, out, "host", "q4g32", (), 128, 16, progress=False))
    return out


def decode_tok_s(bundle: Path, threads: int) -> float:
    cmd = [sys.executable, "-m", "mcpm.cli", "bench", str(bundle), "-p", "16", "-n", "96", "-r", "5",
           "-t", str(threads), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(res.stdout)["summary"]["decode_tok_s"]["mean"])


def measure(bundle: Path, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"idle_t1": [], "idle_t2": [], "busy_t1": [], "busy_t2": []}
    for _ in range(rounds):
        for t in (1, 2):
            runs[f"idle_t{t}"].append(decode_tok_s(bundle, t))
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
        try:
            for t in (1, 2):
                runs[f"busy_t{t}"].append(decode_tok_s(bundle, t))
        finally:
            busy.kill()
            busy.wait()
    mean = {k: statistics.mean(v) for k, v in runs.items()}
    return {"bundle": str(bundle), "rounds": rounds, "decode_tok_s": runs,
            "idle_t2_over_t1": round(mean["idle_t2"] / mean["idle_t1"], 3),
            "busy_t2_over_t1": round(mean["busy_t2"] / mean["busy_t1"], 3), "target_busy_t2_over_t1": 0.8}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="a host bundle (default: the default model, exported once)")
    parser.add_argument("-r", "--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = measure(args.bundle or default_bundle(), args.rounds)
    if args.json:
        print(json.dumps(result))
        return 0
    for key, values in result["decode_tok_s"].items():
        print(f"{key:<8} decode tok/s " + "  ".join(f"{v:8.1f}" for v in values))
    print(f"t2/t1 idle {result['idle_t2_over_t1']:.3f}   busy {result['busy_t2_over_t1']:.3f} (target >= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
