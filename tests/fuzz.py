"""`make fuzz`: build the libFuzzer target tests/native/fuzz_bundle.c (clang, ASan + UBSan) over the C runtime and
the default model's host kernels, then fuzz the bundle loader from the checked-in seed corpus (tests/fuzz_corpus/)
plus the freshly exported bundle's own plan.json + mcpm-config.json.

    python -m tests.fuzz [--seconds 300] [--work DIR]

Prints one JSON line (runs, seconds, corpus size, exit status); exits non-zero on a finding (libFuzzer writes the
crashing input as crash-* into the work folder). tests/test_fuzz_target.py runs it briefly in CI.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

from mcpm.runtime.build import C_DIR, SOURCES

HERE = Path(__file__).resolve().parent
TARGET = HERE / "native" / "fuzz_bundle.c"
SEED_CORPUS = HERE / "fuzz_corpus"
CLANG_FLAGS = ("-std=c11", "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined")


def pack(plan: bytes, config: bytes) -> bytes:
    """One fuzzer input: u32 little-endian length of plan.json, plan.json, then mcpm-config.json."""
    return struct.pack("<I", len(plan)) + plan + config


def export_seed_bundle(out: Path) -> Path:
    from mcpm.export.exporter import ExportOptions, run_export
    from mcpm.export.loading import DEFAULT_MODEL_DIR

    if not (out / "mcpm-config.json").is_file():
        run_export(ExportOptions(DEFAULT_MODEL_DIR, out, "host", "q4g32", (), 128, 16, progress=False))
    return out


def build_target(bundle: Path, out: Path) -> Path:
    if shutil.which("clang") is None:
        raise SystemExit("error: clang not found (make setup installs it)")
    cmd = ["clang", *CLANG_FLAGS, "-I", str(C_DIR), "-o", str(out), str(TARGET), *[str(C_DIR / s) for s in SOURCES],
           str(bundle / "kernels.o"), "-lm", "-lpthread", "-ldl"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1:] or ["?"]
        raise SystemExit(f"error: building the fuzz target failed: {last[0]} (libFuzzer needs libclang-rt-14-dev: "
                         "make setup installs it)")
    return out


def run(seconds: float, work: Path, bundle: Path | None = None) -> dict[str, object]:
    work.mkdir(parents=True, exist_ok=True)
    bundle = bundle or export_seed_bundle(work / "seed-bundle")
    binary = build_target(bundle, work / "fuzz_bundle")
    corpus = work / "corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "seed-bundle").write_bytes(pack((bundle / "plan.json").read_bytes(),
                                              (bundle / "mcpm-config.json").read_bytes()))
    env = {"MCPM_FUZZ_BUNDLE": str(bundle), "ASAN_OPTIONS": "detect_leaks=1",
           "UBSAN_OPTIONS": "print_stacktrace=1", "PATH": "/usr/bin:/bin"}
    t0 = time.perf_counter()
    res = subprocess.run([str(binary), f"-max_total_time={max(1, int(seconds))}", "-timeout=20", "-rss_limit_mb=4096",
                          "-max_len=262144", f"-artifact_prefix={work}/", str(corpus), str(SEED_CORPUS)],
                         capture_output=True, text=True, env=env, cwd=work)
    runs = re.findall(r"#(\d+)\s+DONE", res.stderr) or re.findall(r"#(\d+)\s", res.stderr)
    report = {"exit_status": res.returncode, "runs": int(runs[-1]) if runs else 0,
              "seconds": round(time.perf_counter() - t0, 1), "corpus": len(list(corpus.iterdir())),
              "seeds": len(list(SEED_CORPUS.iterdir()))}
    if res.returncode != 0:
        report["log_tail"] = res.stderr[-4000:]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300, help="how long to fuzz (default 300)")
    parser.add_argument("--work", type=Path, default=Path("build/fuzz"), help="work folder (default build/fuzz)")
    args = parser.parse_args(argv)
    report = run(args.seconds, args.work)
    print(json.dumps(report))
    return 0 if report["exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
