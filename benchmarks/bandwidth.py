"""STREAM-like memory-read bandwidth probe: N threads sum a large buffer (each thread its own slice).

A small C program (gcc -O3 -march=native -fopenmp) is compiled once into the cache
(``$MCPM_CACHE_DIR`` or ~/.cache/mcpm, folder ``bench-peer``); each thread first-touches its own slice, then
the whole buffer is summed ``passes`` times and the best pass counts: GB/s = buffer bytes / best seconds
(GB = 1e9 bytes). Without a C compiler a NumPy fallback (one thread) is used and says so.

    python -m benchmarks.bandwidth --threads 2 --mib 1024
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

C_SOURCE = r"""
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* usage: bw THREADS MIB PASSES  -> one JSON line */
int main(int argc, char** argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
    int passes = argc > 3 ? atoi(argv[3]) : 5;
    size_t n = mib * 1024 * 1024 / sizeof(uint64_t);
    uint64_t* buf = aligned_alloc(4096, n * sizeof(uint64_t));
    if (!buf) { fprintf(stderr, "out of memory\n"); return 1; }
    omp_set_num_threads(threads);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = i * 2654435761u;
    double best = 1e30, total = 0.0;
    uint64_t check = 0;
    for (int p = 0; p < passes; p++) {
        uint64_t sum = 0;
        double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static) reduction(+ : sum)
        for (size_t i = 0; i < n; i++) sum += buf[i];
        double dt = omp_get_wtime() - t0;
        check ^= sum;
        total += dt;
        if (dt < best) best = dt;
    }
    double bytes = (double)n * sizeof(uint64_t);
    printf("{\"threads\": %d, \"bytes\": %.0f, \"passes\": %d, \"best_gb_s\": %.3f, \"mean_gb_s\": %.3f, "
           "\"check\": %llu}\n", threads, bytes, passes, bytes / best / 1e9, bytes * passes / total / 1e9,
           (unsigned long long)(check & 0xffff));
    free(buf);
    return 0;
}
"""
CFLAGS = ["-O3", "-march=native", "-fopenmp"]


def _cache_dir() -> Path:
    try:
        from mcpm.runtime.build import default_cache_dir

        return Path(default_cache_dir()) / "bench-peer"
    except ImportError:  # run without mcpm installed
        return Path(os.environ.get("MCPM_CACHE_DIR") or Path.home() / ".cache" / "mcpm") / "bench-peer"


def build_probe(cache_dir: Path | None = None) -> Path | None:
    """Path of the compiled probe (built on first use), or None when there is no C compiler."""
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        return None
    digest = hashlib.sha256((C_SOURCE + " ".join([cc, *CFLAGS])).encode()).hexdigest()[:16]
    folder = cache_dir or _cache_dir()
    exe = folder / f"bandwidth-{digest}"
    if exe.is_file():
        return exe
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "bw.c"
        src.write_text(C_SOURCE)
        out = Path(tmp) / "bw"
        res = subprocess.run([cc, *CFLAGS, "-o", str(out), str(src)], capture_output=True, text=True)
        if res.returncode != 0:
            return None
        shutil.move(str(out), exe)
    return exe


def numpy_probe(mib: int, passes: int) -> dict[str, Any]:
    import numpy as np

    buf = np.arange(mib * 2**20 // 8, dtype=np.uint64)
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t0)
    return {"threads": 1, "bytes": buf.nbytes, "passes": passes, "best_gb_s": buf.nbytes / min(times) / 1e9,
            "mean_gb_s": buf.nbytes * passes / sum(times) / 1e9, "probe": "numpy (one thread)"}


def measure(threads: int, mib: int = 1024, passes: int = 5) -> dict[str, Any]:
    """Read bandwidth with ``threads`` threads over a buffer of ``mib`` MiB (best of ``passes``)."""
    exe = build_probe()
    if exe is None:
        return numpy_probe(mib, passes)
    res = subprocess.run([str(exe), str(threads), str(mib), str(passes)], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_PROC_BIND": "false"})
    data: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    data["probe"] = "C (gcc -O3 -march=native -fopenmp, uint64 sum)"
    return data


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="memory-read bandwidth (GB/s)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--passes", type=int, default=5)
    a = p.parse_args(argv)
    print(json.dumps(measure(a.threads, a.mib, a.passes)))


if __name__ == "__main__":
    main()
