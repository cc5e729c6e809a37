"""`mcpm selftest`: a host bundle against its golden results (docs/self-test.md), in every kernel set this CPU runs
and on the GPU when the bundle has GPU kernels and OpenCL works here.

The check itself is the C runtime's (mcpm_self_test_json), the one the phone apps run; this module only loads the
bundle once per kernel set / device and collects the verdicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcpm.errors import McpmError


def run_self_test(bundle_dir: Path, threads: int = 0, gpu: bool | None = None,
                  verify: bool | None = None) -> dict[str, Any]:
    """{"bundle", "machine", "pass", "runs": [mcpm_self_test_json's object per kernel set / device]}. gpu: None =
    also on the GPU when the bundle has GPU kernels (a run that cannot start there is recorded with "pass": null and
    the reason, not as a failure); True = the GPU must work; False = the CPU only."""
    from mcpm.export.bundle.reader import open_bundle
    from mcpm.export.bundle.target import check_runs_here
    from mcpm.runtime.bench import has_gpu_kernels, machine_info
    from mcpm.runtime.binding import Model, Session
    from mcpm.runtime.build import build_library, default_cache_dir

    bundle = open_bundle(Path(bundle_dir), verify=verify)
    check_runs_here(bundle.config["target"])
    if "golden" not in bundle.config:
        raise McpmError(f"{bundle_dir} has no golden results (mcpm-config.json \"golden\")",
                        "re-export it with this mcpm (without --no-golden)")
    library = build_library(bundle.path, bundle.plan.object_file)

    def one(device: str, variant: str | None) -> dict[str, Any]:
        with Model.load(bundle.path, threads=threads, library=library, device=device, kernel_variant=variant,
                        cache_dir=default_cache_dir() / "opencl") as model, Session(model) as session:
            return session.self_test()

    with Model.load(bundle.path, threads=threads, library=library) as model:
        variants = [v["name"] for v in model.kernel_variants() if v["supported"]]
        if not variants:  # one kernel set (host bundles): this model is the run
            with Session(model) as session:
                runs = [session.self_test()]
    if variants:
        runs = [one("cpu", v) for v in variants]
    if gpu is None and has_gpu_kernels(bundle.path) or gpu:
        if gpu and not has_gpu_kernels(bundle.path):
            raise McpmError(f"{bundle_dir} has no GPU kernels", "re-export it with --device gpu, or drop --gpu")
        try:
            runs.append(one("gpu", None))
        except McpmError as exc:
            if gpu:
                raise
            runs.append({"pass": None, "device": "gpu", "kernel_variant": "-", "reason": f"not run: {exc}"})
    return {"bundle": str(bundle.path), "machine": machine_info(), "runs": runs,
            "pass": all(r["pass"] is not False for r in runs)}


def _image_verdict(image: dict[str, Any] | None) -> str:
    """The image turn's column: '-' without a golden image (not a MiniCPM-V bundle), else pass / fail."""
    return "-" if image is None else "pass" if image["pass"] else "fail"


def format_report(report: dict[str, Any]) -> str:
    """The runs as a table, then the reason of every run that did not pass."""
    head = f"{'kernel set':<12}{'device':<8}{'result':<8}{'steps':>6}{'ties':>6}{'max diff':>11}{'tolerance':>11}" \
           f"{'tokenizer':>11}{'image':>7}"
    lines = [f"self-test of {report['bundle']}", head]
    for r in report["runs"]:
        verdict = "PASS" if r["pass"] else "FAIL" if r["pass"] is False else "not run"
        if r["pass"] is None:
            lines.append(f"{r['kernel_variant']:<12}{r['device']:<8}{verdict}")
            continue
        lines.append(f"{r['kernel_variant']:<12}{r['device']:<8}{verdict:<8}{r['steps']:>6}{r['near_ties']:>6}"
                     f"{r['max_logit_diff']:>11.2e}{r['tolerance']:>11.0e}{r['tokenizer'].split(':')[0]:>11}"
                     f"{_image_verdict(r.get('image')):>7}")
    lines += [f"{r['kernel_variant']} on the {r['device']}: {r['reason']}" for r in report["runs"] if r["reason"]]
    lines.append("self-test passed" if report["pass"] else "self-test FAILED")
    return "\n".join(lines)
