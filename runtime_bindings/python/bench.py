"""`mcpm bench`: prefill / decode speed of a bundle in the C runtime, in the spirit of llama-bench.

A seeded random prompt of n_prompt token ids is fed, then n_gen tokens are generated greedily by mcpm_generate
with no stop ids; this repeats `repetitions` times (the context is reset in between) after one unrecorded warm-up.
Every number comes from the runtime's own clocks (mcpm_stats_json).

device "gpu" runs the bundle's OpenCL kernels (`mcpm-export --device gpu`), "auto" the GPU when that works, else the
CPU (the runtime's reason is the record's "notice"). With kernel times (the default on the GPU) the model is loaded
with OpenCL profiling events and the record gains "kernel_times": per plan kernel, summed over the measured runs,
slowest first. Profiling waits for the GPU after every step, so tok/s with it can be a little lower.

With an image (MiniCPM-V bundles) every repetition (and the warm-up) also runs the vision encoder on it
(mcpm_encode_image: overview + slices) before the text part; its time is reported apart from prefill and decode:
"image_encode_ms" (with "image_slices" and "image_patches") in each run and in the summary, and the record's "image"
says which image, its size, the vision runs and patches, and the runtime's notice when it was downscaled.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from mcpm.errors import McpmError

SUMMARY_KEYS = ("prefill_tok_s", "decode_tok_s", "ttft_ms")
DEVICES = ("cpu", "gpu", "auto")


def machine_info() -> dict[str, Any]:
    u = platform.uname()
    return {"processor": platform.processor() or u.machine, "system": u.system, "release": u.release,
            "machine": u.machine, "node": u.node, "cpu_count": os.cpu_count() or 1, "python": platform.python_version()}


def mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def has_gpu_kernels(bundle_dir: Path) -> bool:
    """Whether plan.json has the "gpu" launch records of `mcpm-export --device gpu` (docs/gpu-plan.md)."""
    try:
        plan = json.loads((Path(bundle_dir) / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # open_bundle reports a missing or broken plan
    return isinstance(plan, dict) and "gpu" in plan


def check_device(bundle_dir: Path, device: str) -> None:
    """One-line McpmError for an unknown device or `gpu` on a bundle exported without GPU kernels."""
    if device not in DEVICES:
        raise McpmError(f"unknown device {device!r}", "use --device cpu, gpu or auto")
    if device == "gpu" and not has_gpu_kernels(bundle_dir):
        raise McpmError(f"{bundle_dir} has no GPU kernels (plan.json has no \"gpu\" section)",
                        "re-export it with mcpm-export --device gpu, or use --device cpu or auto")


def sum_kernel_times(per_run: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The runtime's kernel times of several runs ([{"kernel", "count", "launches", "ms"}] each) summed per plan
    kernel, slowest first, with ms_per_run and share (of all kernel time)."""
    total: dict[str, dict[str, Any]] = {}
    for times in per_run:
        for t in times:
            row = total.setdefault(t["kernel"], {"kernel": t["kernel"], "count": 0, "launches": 0, "ms": 0.0})
            row["count"] += int(t["count"])
            row["launches"] += int(t["launches"])
            row["ms"] += float(t["ms"])
    all_ms = sum(r["ms"] for r in total.values()) or 1.0
    runs = max(len(per_run), 1)
    rows = sorted(total.values(), key=lambda r: (-r["ms"], r["kernel"]))
    return [{**r, "ms": round(r["ms"], 4), "ms_per_run": round(r["ms"] / runs, 4), "share": round(r["ms"] / all_ms, 4)}
            for r in rows]


def run_bench(bundle_dir: Path, n_prompt: int = 128, n_gen: int = 64, threads: int = 0, repetitions: int = 5,
              seed: int = 0, warmup: bool = True, device: str = "cpu",
              kernel_times: bool | None = None, image: Path | None = None,
              verify: bool | None = None) -> dict[str, Any]:
    """Benchmark one bundle; returns the JSON-ready record (machine, target, per-repetition runs, summary, device,
    gpu_device, notice; kernel_times when profiled). kernel_times None = profile unless device is "cpu".
    image: an image file to encode in every run (a MiniCPM-V bundle; see the module docstring). verify: as in
    open_bundle (None: SHA-256 of every file on the bundle's first load only)."""
    from mcpm.export.bundle.reader import open_bundle
    from mcpm.export.bundle.target import check_runs_here
    from mcpm.runtime.binding import Model, Sampling, Session
    from mcpm.runtime.build import build_library, default_cache_dir

    if n_prompt < 1 or n_gen < 1 or repetitions < 1 or threads < 0:
        raise McpmError(f"bench needs -p >= 1, -n >= 1, -r >= 1 and -t >= 0 (got -p {n_prompt} -n {n_gen} "
                        f"-r {repetitions} -t {threads})")
    check_device(Path(bundle_dir), device)
    rgb = None
    if image is not None:
        from mcpm.export.models.minicpmv.preprocess import load_image

        rgb = load_image(image)  # uint8 [h, w, 3]; an unreadable file fails before the model loads
    profile = device != "cpu" if kernel_times is None else kernel_times
    bundle = open_bundle(Path(bundle_dir), verify=verify)
    check_runs_here(bundle.config["target"])
    context = int(bundle.config["context_length"])
    if n_prompt + n_gen > context:
        raise McpmError(f"-p {n_prompt} + -n {n_gen} tokens exceed the bundle's context of {context} tokens",
                        "lower -p or -n")
    library = build_library(bundle.path, bundle.plan.object_file)
    opencl_cache = default_cache_dir() / "opencl"  # the compiled OpenCL program, reused by later runs
    with Model.load(bundle.path, threads=threads, library=library, device=device, profile=profile,
                    cache_dir=opencl_cache if device != "cpu" else None) as model:
        on, notice = model.device, model.notice
        session = None
        if rgb is not None:
            if not model.has_vision:
                raise McpmError(f"{bundle.path} has no vision encoder: --image needs a MiniCPM-V bundle",
                                "export a MiniCPM-V checkpoint with mcpm-export, or drop --image")
            session = Session(model)
        prompt = np.random.default_rng(seed).integers(0, model.vocab_size, n_prompt).astype(np.int32)  # [n_prompt]
        greedy = Sampling()
        runs: list[dict[str, Any]] = []
        times: list[list[dict[str, Any]]] = []
        image_notice = ""
        try:
            for rep in range(repetitions + (1 if warmup else 0)):
                image_run: dict[str, Any] = {}
                if session is not None and rgb is not None:
                    session.clear_images()
                    slices = session.encode_image(rgb)
                    after = model.stats()
                    said = str(after.get("notice", ""))
                    image_notice = said if "image" in said else ""  # not the device notice
                    image_run = {"image_encode_ms": float(after.get("image_encode_ms", 0.0)),
                                 "image_slices": int(after.get("image_slices", slices)),
                                 "image_patches": int(after.get("image_patches", 0))}
                    session.clear_images()  # the text part below measures prefill/decode alone
                model.reset()
                got = model.generate(prompt, n_gen, greedy, stop_ids=())
                if len(got) != n_gen:
                    raise McpmError(f"generated {len(got)} of {n_gen} tokens")
                if warmup and rep == 0:
                    continue
                runs.append({**model.stats(), **image_run})
                if profile:
                    times.append(model.kernel_times())  # of this run's mcpm_generate
        finally:
            if session is not None:
                session.close()
    summary = {key: mean_sd([float(r[key]) for r in runs]) for key in SUMMARY_KEYS}
    summary["load_ms"] = {"mean": float(runs[0]["load_ms"]), "sd": 0.0}
    summary["peak_rss_kb"] = {"mean": float(max(r["peak_rss_kb"] for r in runs)), "sd": 0.0}
    result = {
        "bundle": str(bundle.path), "quantization": bundle.config.get("quantization"),
        "machine": machine_info(), "target": bundle.config["target"], "threads": int(runs[0]["threads"]),
        "n_prompt": n_prompt, "n_gen": n_gen, "repetitions": repetitions, "seed": seed,
        "runs": runs, "summary": summary,
        "device": on, "requested_device": device, "gpu_device": str(runs[0].get("gpu_device", "")),
        "notice": notice, "profiled": profile,
        "kv": {"dtype": str(runs[0].get("kv_dtype", "")), "bytes": int(runs[0].get("kv_bytes", 0)),
               "bytes_per_token": int(runs[0].get("kv_bytes_per_token", 0))},
    }
    if rgb is not None:
        summary["image_encode_ms"] = mean_sd([float(r["image_encode_ms"]) for r in runs])
        result["image"] = {"path": str(image), "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                           "slices": int(runs[0]["image_slices"]), "patches": int(runs[0]["image_patches"]),
                           "notice": image_notice}
    if profile:
        result["kernel_times"] = sum_kernel_times(times)
    return result


def format_table(result: dict[str, Any]) -> str:
    """llama-bench-like text: one row per measurement, mean ± sd over the repetitions."""
    s = result["summary"]
    m = result["machine"]
    where = f"{result['threads']} threads, {m['processor']} ({m['cpu_count']} CPUs)"
    if result.get("device") == "gpu":
        where = f"GPU {result.get('gpu_device') or '?'}" + (" (profiled)" if result.get("profiled") else "")
    lines = [
        f"bundle {result['bundle']} ({result['quantization']}), {where}, {result['repetitions']} repetitions",
        f"{'test':<14}{'value':>24}",
        f"{'pp' + str(result['n_prompt']):<14}{_pm(s['prefill_tok_s'], 'tok/s'):>24}",
        f"{'tg' + str(result['n_gen']):<14}{_pm(s['decode_tok_s'], 'tok/s'):>24}",
        f"{'ttft':<14}{_pm(s['ttft_ms'], 'ms'):>24}",
        f"{'load':<14}{s['load_ms']['mean']:>18.2f} ms   ",
        f"{'peak rss':<14}{s['peak_rss_kb']['mean'] / 1024:>17.1f} MiB   ",
    ]
    kv = result.get("kv") or {}
    if kv.get("bytes"):
        lines.append(f"{'kv cache':<14}{kv['bytes'] / 2**20:>17.1f} MiB   {kv['dtype']}, {kv['bytes_per_token']} bytes "
                     "per token (pages cost memory once written)")
    if "image_encode_ms" in s and "image" in result:
        img = result["image"]
        lines.insert(5, f"{'image':<14}{_pm(s['image_encode_ms'], 'ms'):>24}   {img['width']}x{img['height']}, "
                        f"{img['slices']} vision runs, {img['patches']} patches")
        if img.get("notice"):
            lines.append(f"image notice: {img['notice']}")
    if "kernel_times" in result:
        lines += ["", *format_kernel_times(result["kernel_times"], result["repetitions"])]
    return "\n".join(lines)


def format_kernel_times(times: list[dict[str, Any]], runs: int = 1, top: int = 10) -> list[str]:
    """The slowest kernels as table lines, per run: ms, share of all kernel time, calls and device launches."""
    if not times:
        return ["kernel times: none (the model ran on the CPU)"]
    runs = max(runs, 1)
    width = max(len("kernel"), *(len(t["kernel"]) for t in times[:top]))
    lines = [f"{'kernel':<{width}}{'ms/run':>11}{'share':>8}{'calls/run':>11}{'launches/run':>14}"]
    for t in times[:top]:
        lines.append(f"{t['kernel']:<{width}}{t['ms_per_run']:>11.3f}{100 * t['share']:>7.1f}%"
                     f"{t['count'] / runs:>11.4g}{t['launches'] / runs:>14.4g}")
    if len(times) > top:
        rest = times[top:]
        lines.append(f"{'(' + str(len(rest)) + ' more)':<{width}}{sum(t['ms_per_run'] for t in rest):>11.3f}"
                     f"{100 * sum(t['share'] for t in rest):>7.1f}%")
    return lines


def _pm(v: dict[str, float], unit: str) -> str:
    return f"{v['mean']:.2f} ± {v['sd']:.2f} {unit}"
