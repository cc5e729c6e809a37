"""`make bench-peer`: mcpm vs llama.cpp on a random MiniCPM-2B-shaped checkpoint, alternating, same machine, one run.

Steps (every artefact is cached under $MCPM_CACHE_DIR or ~/.cache/mcpm):

1. the peer: ``llama-cpp-python==0.3.36`` in its own virtualenv ``peer-venv`` (compiled from source with
   ``-DGGML_NATIVE=ON``; AMX off where /proc/cpuinfo has it, llama.cpp issue #20824), built once;
2. the checkpoint: ``mcpm make-checkpoint --preset minicpm-2b --random`` (bf16, seed 0);
3. the mcpm bundles, one per ``--quant`` scheme (default ``q4g32,q4g32-a8``: float activations, and int8
   activations as llama.cpp's Q4_0 x Q8_0): ``mcpm-export --target host --quant S --context-length 512``, cached
   by the checkpoint and a digest of the exporter's sources (so a kernel change re-exports); its wall time is the
   export target;
4. the GGUF: benchmarks/gguf_writer.py, Q4_0 (cached by the writer's source and the gguf version);
5. the memory-read bandwidth probe (benchmarks/bandwidth.py) for each thread count;
6. for each thread count, ``--repetitions`` rounds of: one mcpm run per scheme, one llama.cpp run (each a fresh
   process: load, short warm-up, then prefill of the same ``--n-prompt`` token ids and ``--n-gen`` greedy tokens);
7. a table (or ``--json``) with means ± sd, the ratios mcpm/llama.cpp per scheme, decode as a fraction of the bound
   bandwidth / bytes of weights read per token, cycles per 32-weight block, and the issue's targets met / not met.

    python -m benchmarks.peer                  # 2 threads, 2 repetitions
    python -m benchmarks.peer --threads 1,2 -r 3 --json
    python -m benchmarks.peer --quant q4g32        # one mcpm scheme only
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PEER_PACKAGE = "llama-cpp-python==0.3.36"
PEER_VERSION = "0.3.36"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KV_BUDGET = 1.15  # peak RSS target: weights + KV cache + 15 %


def log(msg: str) -> None:
    print(f"[bench-peer] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    from mcpm.runtime.build import default_cache_dir

    return Path(default_cache_dir())


# ---------------------------------------------------------------------------------------------- the peer venv


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def peer_cmake_args(flags: set[str] | None = None) -> str:
    """CMAKE_ARGS of the peer build: native CPU features, AMX off where the CPU has it (llama.cpp #20824)."""
    args = ["-DGGML_NATIVE=ON"]
    if any(f.startswith("amx") for f in (cpu_flags() if flags is None else flags)):
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        args += ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
                 f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    return " ".join(f"'{a}'" if " " in a else a for a in args)


def peer_venv(root: Path | None = None) -> Path:
    return (root or cache_root()) / "peer-venv"


def peer_python(root: Path | None = None) -> Path:
    return peer_venv(root) / "bin" / "python"


def peer_marker(root: Path | None = None) -> Path:
    return peer_venv(root) / "mcpm-peer.json"


def peer_info(root: Path | None = None) -> dict[str, Any] | None:
    """The build record of a usable peer venv, or None."""
    marker, py = peer_marker(root), peer_python(root)
    if not marker.is_file() or not py.is_file():
        return None
    try:
        info: dict[str, Any] = json.loads(marker.read_text())
    except ValueError:
        return None
    return info if info.get("version") == PEER_VERSION else None


def ensure_peer(root: Path | None = None) -> dict[str, Any]:
    """Build the peer venv once (minutes: llama.cpp is compiled); returns its build record."""
    info = peer_info(root)
    if info is not None:
        return info
    venv, py = peer_venv(root), peer_python(root)
    cmake_args = peer_cmake_args()
    build_log = venv.parent / "peer-venv-build.log"
    log(f"building the peer ({PEER_PACKAGE}, CMAKE_ARGS={cmake_args}) into {venv}; log: {build_log}")
    if not py.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "CMAKE_ARGS": cmake_args, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    t0 = time.perf_counter()
    with build_log.open("w") as f:
        res = subprocess.run([str(py), "-m", "pip", "install", "--no-cache-dir", "-v", PEER_PACKAGE, "numpy"],
                             stdout=f, stderr=subprocess.STDOUT, env=env)
    if res.returncode != 0:
        from mcpm.errors import McpmError

        raise McpmError(f"building {PEER_PACKAGE} failed (exit {res.returncode})", f"see {build_log}")
    info = {"version": PEER_VERSION, "cmake_args": cmake_args, "build_s": round(time.perf_counter() - t0, 1),
            "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    peer_marker(root).write_text(json.dumps(info, indent=2) + "\n")
    log(f"peer built in {info['build_s']:.0f} s")
    return info


# ------------------------------------------------------------------------------------- checkpoint, bundle, GGUF


def tree_digest(*folders: Path) -> str:
    """Digest of the source files (names and contents) under folders: the 'exporter version' of the cache key."""
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".o", ".so"):
                h.update(str(path.relative_to(folder)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def ensure_checkpoint(work: Path, preset: str, seed: int) -> Path:
    ckpt = work / f"ckpt-{preset}-seed{seed}-bf16"
    if (ckpt / ".complete").is_file():
        return ckpt
    shutil.rmtree(ckpt, ignore_errors=True)
    log(f"writing the random {preset} checkpoint to {ckpt}")
    subprocess.run([sys.executable, "-m", "mcpm.cli", "make-checkpoint", "--preset", preset, "--random",
                    "--seed", str(seed), "--out", str(ckpt)], check=True)
    (ckpt / ".complete").write_text("")
    return ckpt


def ensure_bundle(work: Path, ckpt: Path, context: int, quant: str = "q4g32") -> tuple[Path, dict[str, Any]]:
    import mcpm
    import mcpm.export
    import mcpm.quantize

    key = hashlib.sha256("|".join([
        ckpt.name, mcpm.__version__, quant, str(context),
        tree_digest(Path(mcpm.export.__file__).parent, Path(mcpm.quantize.__file__).parent),
    ]).encode()).hexdigest()[:16]
    bundle = work / f"bundle-{ckpt.name}-{quant}-ctx{context}-{key}"
    record = bundle.with_name(bundle.name + ".json")
    if record.is_file() and bundle.is_dir():
        return bundle, json.loads(record.read_text())
    for old in work.glob(f"bundle-{ckpt.name}-{quant}-ctx{context}-*"):  # stale exports (another exporter version)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    tmp = bundle.with_name(bundle.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "mcpm.export_cli", str(ckpt), "--target", "host", "--quant", quant,
           "--context-length", str(context), "-o", str(tmp)]
    log(f"exporting the bundle (cache key {key}): {' '.join(cmd[2:])}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    export_s = time.perf_counter() - t0
    if proc.returncode != 0:
        from mcpm.errors import McpmError

        raise McpmError(f"mcpm-export failed (exit {proc.returncode})", "run the command above by hand")
    tmp.rename(bundle)
    info = {"export_s": round(export_s, 1), "export_peak_rss_kb": usage.ru_maxrss, "key": key,
            "command": " ".join(cmd[2:]), "cpus": os.cpu_count()}
    record.write_text(json.dumps(info, indent=2) + "\n")
    log(f"exported in {export_s:.0f} s (peak RSS {usage.ru_maxrss / 2**20:.1f} GiB)")
    return bundle, info


def ensure_gguf(work: Path, ckpt: Path, qtype: str = "q4_0") -> tuple[Path, dict[str, Any]]:
    import gguf  # noqa: F401 - fail early with a clear message below when missing

    from benchmarks import gguf_writer

    version = getattr(gguf, "__version__", "") or _dist_version("gguf")
    key = hashlib.sha256(Path(gguf_writer.__file__).read_bytes() + version.encode()).hexdigest()[:12]
    out = work / f"{ckpt.name}-{qtype}-{key}.gguf"
    record = out.with_suffix(".json")
    if out.is_file() and record.is_file():
        return out, json.loads(record.read_text())
    for old in work.glob(f"{ckpt.name}-{qtype}-*.gguf"):
        old.unlink(missing_ok=True)
    log(f"writing the GGUF ({qtype}) to {out}")
    t0 = time.perf_counter()
    s = gguf_writer.write_gguf(ckpt, out, qtype)
    info = {"write_s": round(time.perf_counter() - t0, 1), "weight_bytes": s.weight_bytes,
            "decode_read_bytes": s.decode_read_bytes, "decode_read_weights": s.decode_read_weights,
            "qtype": qtype, "gguf_version": version, **s.metadata}
    record.write_text(json.dumps(info, indent=2) + "\n")
    return out, info


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


# -------------------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_mhz() -> float:
    """Mean 'cpu MHz' of /proc/cpuinfo (the nominal clock in most VMs)."""
    try:
        values = [float(line.split(":", 1)[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("cpu MHz")]
        return statistics.fmean(values) if values else 0.0
    except (OSError, ValueError):
        return 0.0


# -------------------------------------------------------------------------------------------------- running


def run_json(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if res.returncode != 0:
        from mcpm.errors import McpmError

        tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
        raise McpmError(f"{Path(cmd[1] if len(cmd) > 1 else cmd[0]).name} failed (exit {res.returncode}): "
                        + " | ".join(tail))
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def mcpm_run(bundle: Path, threads: int, prompt: list[int], n_gen: int, timeout: float) -> dict[str, Any]:
    return run_json([sys.executable, "-m", "benchmarks.mcpm_worker", str(bundle), "--threads", str(threads),
                     "--prompt", ",".join(map(str, prompt)), "--n-gen", str(n_gen)], timeout)


def llama_run(py: Path, gguf: Path, threads: int, prompt: list[int], n_gen: int, n_ctx: int,
              timeout: float) -> dict[str, Any]:
    return run_json([str(py), str(HERE / "llama_worker.py"), "bench", "--gguf", str(gguf), "--threads",
                     str(threads), "--prompt", ",".join(map(str, prompt)), "--n-gen", str(n_gen),
                     "--n-ctx", str(n_ctx)], timeout)


def mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    s: dict[str, Any] = {k: mean_sd([float(r[k]) for r in runs])
                         for k in ("prefill_tok_s", "decode_tok_s", "ttft_ms", "load_ms")}
    s["peak_rss_kb"] = max(int(r["peak_rss_kb"]) for r in runs)
    s["base_rss_kb"] = max(int(r.get("base_rss_kb", 0)) for r in runs)
    return s


def bundle_sizes(bundle: Path) -> dict[str, int]:
    """mcpm: bytes of weights (weights.bin, all read per decode step) and of the KV cache (from plan.json)."""
    plan = json.loads((bundle / "plan.json").read_text())
    itemsize = int(np.dtype(plan["cache"]["dtype"]).itemsize)
    kv = 2 * int(plan["num_layers"]) * math.prod(plan["cache"]["shape"]) * itemsize
    return {"weight_bytes": (bundle / "weights.bin").stat().st_size, "kv_bytes": kv}


def derive(summary: dict[str, Any], bw_gb_s: float, read_bytes: int, read_weights: int, threads: int,
           mhz: float) -> dict[str, float]:
    dec = summary["decode_tok_s"]["mean"]
    bound = bw_gb_s * 1e9 / read_bytes
    blocks = read_weights / 32
    return {"bandwidth_bound_tok_s": bound, "decode_fraction_of_bound": dec / bound,
            "cycles_per_block": mhz * 1e6 * threads / (blocks * dec) if dec > 0 else float("inf")}


def benchmark(threads_list: list[int], repetitions: int, n_prompt: int, n_gen: int, seed: int, preset: str,
              context: int, timeout: float, quants: tuple[str, ...] = ("q4g32", "q4g32-a8")) -> dict[str, Any]:
    root = cache_root()
    work = root / "bench-peer"
    work.mkdir(parents=True, exist_ok=True)
    peer = ensure_peer(root)
    ckpt = ensure_checkpoint(work, preset, seed)
    bundles = {q: ensure_bundle(work, ckpt, context, q) for q in quants}
    gguf_path, gguf_info = ensure_gguf(work, ckpt)
    sizes = {q: bundle_sizes(b) for q, (b, _) in bundles.items()}
    cfg = json.loads((ckpt / "config.json").read_text())
    prompt = np.random.default_rng(seed).integers(0, int(cfg["vocab_size"]), n_prompt).astype(int).tolist()
    mhz = cpu_mhz()
    systems = [f"mcpm {q}" for q in quants] + ["llama.cpp"]

    from benchmarks import bandwidth

    per_threads: list[dict[str, Any]] = []
    for t in threads_list:
        log(f"bandwidth probe, {t} threads")
        bw = bandwidth.measure(t)
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        for rep in range(repetitions):
            for system in systems:
                log(f"{t} threads, repetition {rep + 1}/{repetitions}: {system}")
                t0 = time.perf_counter()
                r = (llama_run(peer_python(root), gguf_path, t, prompt, n_gen, context, timeout)
                     if system == "llama.cpp" else mcpm_run(bundles[system.split()[1]][0], t, prompt, n_gen, timeout))
                r["wall_s"] = round(time.perf_counter() - t0, 1)
                log(f"  prefill {r['prefill_tok_s']:.2f} tok/s, decode {r['decode_tok_s']:.2f} tok/s, "
                    f"peak RSS {r['peak_rss_kb'] / 1024:.0f} MiB ({r['wall_s']:.0f} s)")
                runs[system].append(r)
        sl = summarize(runs["llama.cpp"])
        dl = derive(sl, bw["best_gb_s"], gguf_info["decode_read_bytes"], gguf_info["decode_read_weights"], t, mhz)
        summary: dict[str, Any] = {"llama.cpp": {**sl, **dl}}
        ratios: dict[str, dict[str, float]] = {}
        for q in quants:
            sm = summarize(runs[f"mcpm {q}"])
            dm = derive(sm, bw["best_gb_s"], sizes[q]["weight_bytes"], gguf_info["decode_read_weights"], t, mhz)
            summary[f"mcpm {q}"] = {**sm, **dm}
            ratios[q] = {k: sm[k]["mean"] / sl[k]["mean"] for k in ("prefill_tok_s", "decode_tok_s", "ttft_ms",
                                                                     "load_ms")}
            ratios[q]["peak_rss_kb"] = sm["peak_rss_kb"] / sl["peak_rss_kb"]
        per_threads.append({"threads": t, "bandwidth": bw, "runs": runs, "summary": summary, "ratio": ratios})

    return {
        "machine": {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "cpu_mhz": mhz, "system": platform.platform(),
                    "avx512": "avx512f" in cpu_flags(), "amx": any(f.startswith("amx") for f in cpu_flags())},
        "preset": preset, "checkpoint": str(ckpt), "quants": list(quants),
        "bundles": {q: str(b) for q, (b, _) in bundles.items()}, "gguf": str(gguf_path),
        "n_prompt": n_prompt, "n_gen": n_gen, "context": context, "repetitions": repetitions, "seed": seed,
        "prompt_ids_head": prompt[:8], "peer": {"package": PEER_PACKAGE, **peer},
        "export": {q: e for q, (_, e) in bundles.items()},
        "gguf_info": gguf_info, "mcpm_sizes": sizes, "results": per_threads,
        "targets": {q: targets(per_threads, q, sizes[q], bundles[q][1]) for q in quants},
    }


def targets(per_threads: list[dict[str, Any]], quant: str, sizes: dict[str, int],
            export: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for the bundle of scheme ``quant``, judged on the 2-thread row (the first row when 2 was
    not measured)."""
    row = next((r for r in per_threads if r["threads"] == 2), per_threads[0])
    m, ratio, t = row["summary"][f"mcpm {quant}"], row["ratio"][quant], row["threads"]
    budget = KV_BUDGET * (sizes["weight_bytes"] + sizes["kv_bytes"])

    def item(name: str, value: float, goal: float, unit: str, higher: bool = True) -> dict[str, Any]:
        return {"target": name, "value": value, "goal": goal, "unit": unit, "threads": t,
                "met": bool(value >= goal if higher else value <= goal)}

    return [
        item("decode >= 1.1 x llama.cpp", ratio["decode_tok_s"], 1.1, "x"),
        item("decode >= 85 % of the bandwidth bound", m["decode_fraction_of_bound"], 0.85, "of bound"),
        item("prefill >= 1.0 x llama.cpp", ratio["prefill_tok_s"], 1.0, "x"),
        item("peak RSS <= (weights + KV) x 1.15", m["peak_rss_kb"] * 1024 / 2**30, budget / 2**30, "GiB", False),
        item("load < 2 s (mmap)", m["load_ms"]["mean"] / 1000, 2.0, "s", False),
        item("export < 10 min (cached record)", float(export["export_s"]) / 60, 10.0, "min", False),
    ]


# -------------------------------------------------------------------------------------------------- output


def _pm(v: dict[str, float], digits: int = 2) -> str:
    return f"{v['mean']:.{digits}f} ± {v['sd']:.{digits}f}"


def format_table(res: dict[str, Any]) -> str:
    m, quants = res["machine"], res["quants"]
    names = [f"mcpm {q}" for q in quants] + ["llama.cpp"]
    lines = [
        f"mcpm ({', '.join(quants)}) vs llama.cpp {res['peer']['version']} (Q4_0, repacked) on a random "
        f"{res['preset']} checkpoint; prompt {res['n_prompt']} tokens, {res['n_gen']} generated, "
        f"{res['repetitions']} alternating repetitions",
        f"CPU: {m['cpu_model']} ({m['cpus']} CPUs, {m['cpu_mhz']:.0f} MHz, avx512={m['avx512']}, amx={m['amx']}); "
        f"peer build {res['peer'].get('build_s', '?')} s with CMAKE_ARGS={res['peer'].get('cmake_args')}",
        "weights read per token: " + ", ".join(f"mcpm {q} {res['mcpm_sizes'][q]['weight_bytes'] / 1e9:.3f} GB"
                                               for q in quants)
        + f", llama.cpp {res['gguf_info']['decode_read_bytes'] / 1e9:.3f} GB "
        f"({res['gguf_info']['decode_read_weights'] / 32 / 1e6:.1f} M blocks of 32); mcpm KV cache "
        f"{res['mcpm_sizes'][quants[0]]['kv_bytes'] / 2**20:.0f} MiB",
        "",
        f"{'thr':>3}  {'metric':<20}" + "".join(f"{n:>20}" for n in names)
        + "".join(f"{'/llama ' + q:>16}" for q in quants),
    ]

    def line(row: dict[str, Any], label: str, fmt, key: str | None) -> str:
        cells = "".join(f"{fmt(row['summary'][n]):>20}" for n in names)
        rcells = "".join(f"{row['ratio'][q][key]:>16.3f}" if key else f"{'':>16}" for q in quants)
        return f"{row['threads']:>3}  {label:<20}{cells}{rcells}"

    for row in res["results"]:
        t, sm = row["threads"], row["summary"]
        lines += [
            line(row, "prefill tok/s", lambda v: _pm(v["prefill_tok_s"]), "prefill_tok_s"),
            line(row, "decode tok/s", lambda v: _pm(v["decode_tok_s"]), "decode_tok_s"),
            line(row, "TTFT ms", lambda v: _pm(v["ttft_ms"], 0), "ttft_ms"),
            line(row, "load ms", lambda v: _pm(v["load_ms"], 0), "load_ms"),
            line(row, "peak RSS MiB", lambda v: f"{v['peak_rss_kb'] / 1024:.0f}", "peak_rss_kb"),
            line(row, "decode / bw bound", lambda v: f"{v['decode_fraction_of_bound']:.1%}", None),
            line(row, "cycles / 32-w block", lambda v: f"{v['cycles_per_block']:.1f}", None),
            f"{t:>3}  read bandwidth {row['bandwidth']['best_gb_s']:.2f} GB/s (best of {row['bandwidth']['passes']}); "
            "bound " + ", ".join(f"{sm[n]['bandwidth_bound_tok_s']:.2f} tok/s {n}" for n in names),
        ]
    for q in quants:
        lines += ["", f"targets (issue 7), mcpm {q}:"]
        for tg in res["targets"][q]:
            goal = f"{'>=' if tg['unit'] in ('x', 'of bound') else '<='} {tg['goal']:.3g} {tg['unit']}"
            lines.append(f"  [{'met' if tg['met'] else 'NOT met':>7}] {tg['target']:<40} {tg['value']:.3f} "
                         f"{tg['unit']} ({goal}, {tg['threads']} threads)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="mcpm vs llama.cpp, side by side (see benchmarks/README.md)")
    p.add_argument("--threads", default="2", help="comma-separated thread counts (e.g. 1,2)")
    p.add_argument("-r", "--repetitions", type=int, default=2, help="alternating rounds per thread count")
    p.add_argument("-p", "--n-prompt", type=int, default=128)
    p.add_argument("-n", "--n-gen", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="minicpm-2b")
    p.add_argument("--context-length", type=int, default=512)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--quant", default="q4g32,q4g32-a8",
                   help="comma-separated mcpm schemes, one bundle and one run per repetition each")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    p.add_argument("--build-peer-only", action="store_true", help="build (or check) the peer venv and exit")
    a = p.parse_args(argv)
    if a.build_peer_only:
        print(json.dumps(ensure_peer()))
        return
    threads = [int(x) for x in a.threads.split(",") if x.strip()]
    if not threads or min(threads) < 1 or a.repetitions < 1 or a.n_prompt < 1 or a.n_gen < 2:
        p.error("need --threads >= 1, -r >= 1, -p >= 1, -n >= 2")
    if a.n_prompt + a.n_gen > a.context_length:
        p.error("--n-prompt + --n-gen exceed --context-length")
    quants = tuple(q.strip() for q in a.quant.split(",") if q.strip())
    from mcpm.quantize.schemes import SCHEMES

    if not quants or any(q not in SCHEMES for q in quants):
        p.error(f"--quant takes schemes among {', '.join(SCHEMES)}")
    res = benchmark(threads, a.repetitions, a.n_prompt, a.n_gen, a.seed, a.preset, a.context_length, a.timeout,
                    quants)
    res["driver_peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = cache_root() / "bench-peer" / "last-result.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res) if a.json else format_table(res))
    if not a.json:
        print(f"\n(JSON: {out})")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
