"""GPU launch records (docs/gpu-plan.md) run on PoCL by the Python reference dispatcher (gpu_runner) vs the CPU plan.

Tiny f32 and q4g32 models exported with --device gpu: prefill logits and decode steps match the CPU kernels
(plan_runner, kernels.o) within tolerance, greedy text is equal for 32 tokens, prefill(n) == prefill(k) + decodes,
a wrong grid breaks the comparison (negative control), and broken records are rejected with one-line errors.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_minicpm, write_tiny

from mcpm.errors import McpmError
from mcpm.export.compiler.gpu import eval_rpn, validate_gpu_section
from mcpm.export.compiler.plan import Plan

CTX, CHUNK = 48, 4
# observed on PoCL (x86): f32 max abs diff ~1e-6 of logits ~O(10); q4 the same (same dequantized weights)
ATOL = {"f32": 2e-4, "q4g32": 2e-4}


def _opencl_or_skip():
    try:
        from mcpm.export.compiler.gpu_runner import opencl_context

        return opencl_context()
    except McpmError as e:
        pytest.skip(f"no OpenCL for the GPU plan tests: {e.problem}")


@pytest.fixture(scope="module")
def cl_ctx():
    return _opencl_or_skip()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("gpu") / "tiny", tiny_minicpm())


@pytest.fixture(scope="module", params=["f32", "q4g32"])
def models(request, tiny_dir, tmp_path_factory, cl_ctx):
    """(gpu model, cpu plan model, bundle dir, quant) for one export with --device gpu."""
    from mcpm.export.compiler.gpu_runner import GpuPlanModel, bundle_weights
    from mcpm.export.compiler.plan_runner import load_plan_model
    from mcpm.export.exporter import ExportOptions, run_export

    out = tmp_path_factory.mktemp("gpu") / request.param
    run_export(ExportOptions(tiny_dir, out, "host", request.param, (), CTX, CHUNK, progress=False, device="gpu"))
    plan_dict = json.loads((out / "plan.json").read_text())
    source = (out / "kernels.cl").read_text()
    weights = bundle_weights(out, Plan.from_json((out / "plan.json").read_text()))
    gm = GpuPlanModel(plan_dict, source, weights, *cl_ctx)
    cm = load_plan_model(out, weights)
    gm.weights_host = weights  # for the negative control's second model
    return gm, cm, out, request.param


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, n).astype(np.int32)


def test_bundle_lists_gpu_files(models):
    _, _, out, _ = models
    config = json.loads((out / "mcpm-config.json").read_text())
    assert {"kernels.cl", "kernels.metal"} <= set(config["files"])
    plan = json.loads((out / "plan.json").read_text())
    assert set(plan["gpu"]["launches"]) == set(plan["kernels"])
    metal = (out / "kernels.metal").read_text()
    assert metal.count("union __TVMArgUnion") <= 1 and "kernel void" in metal
    assert "cl_khr_fp16" not in (out / "kernels.cl").read_text()  # PoCL has no fp16


def test_prefill_and_decode_match_cpu(models):
    gm, cm, _, quant = models
    gm.reset()
    cm.reset()
    ids = _ids(CHUNK * 2 + 6, seed=1)
    worst = 0.0
    got, want = gm.prefill(ids[: CHUNK * 2 + 1]), cm.prefill(ids[: CHUNK * 2 + 1])  # 3 chunks (4, 4, 1)
    worst = max(worst, float(np.abs(got - want).max()))
    for t in ids[CHUNK * 2 + 1 :]:
        got, want = gm.decode(int(t)), cm.decode(int(t))
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst < ATOL[quant], f"max |gpu - cpu| = {worst}"
    k, v = gm.cache_numpy(2)
    kc, vc = cm.cache_numpy(2)
    assert np.abs(k[: len(ids)] - kc[: len(ids)]).max() < 1e-4
    assert np.abs(v[: len(ids)] - vc[: len(ids)]).max() < 1e-4


def _greedy(model, prompt: np.ndarray, steps: int) -> list[int]:
    model.reset()
    logits = model.prefill(prompt)
    out = []
    for _ in range(steps):
        t = int(np.argmax(logits[-1]))
        out.append(t)
        logits = model.decode(t)
    return out


def test_greedy_32_tokens_equal(models):
    gm, cm, _, _ = models
    prompt = _ids(7, seed=2)
    assert _greedy(gm, prompt, 32) == _greedy(cm, prompt, 32)


def test_prefill_equals_prefill_plus_decodes(models):
    gm, _, _, quant = models
    ids = _ids(CHUNK, seed=3)
    gm.reset()
    whole = gm.prefill(ids)
    gm.reset()
    gm.prefill(ids[:1])
    for t in ids[1:]:
        step = gm.decode(int(t))
    assert np.abs(whole - step).max() < ATOL[quant]


def test_wrong_grid_fails_the_comparison(models, cl_ctx):
    """Negative control: halving the first grid dimension of the qkv projection must change the logits."""
    from mcpm.export.compiler.gpu_runner import GpuPlanModel

    gm, cm, out, quant = models
    plan = json.loads((out / "plan.json").read_text())
    bad = copy.deepcopy(plan)
    kernel = next(k for k in bad["kernels"] if k.startswith("linear") and "_128" in k)  # wqkv [128, 64]
    rec = bad["gpu"]["launches"][kernel][0]
    assert eval_rpn(rec["grid"][0], 1, 0) >= 2
    rec["grid"][0] = [*rec["grid"][0], 2, "//"]
    broken = GpuPlanModel(bad, (out / "kernels.cl").read_text(), list(gm.weights_host), *cl_ctx)
    ids = _ids(CHUNK, seed=4)
    cm.reset()
    want = cm.prefill(ids)
    got = broken.prefill(ids)
    assert not np.allclose(got, want, rtol=0, atol=100 * ATOL[quant])  # wrong values or NaN (rows never written)


def _broken(plan: dict, edit) -> dict:
    bad = copy.deepcopy(plan)
    edit(bad)
    return bad


def _first(plan: dict) -> dict:
    return plan["gpu"]["launches"][plan["kernels"][0]][0]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: _first(p).update(kernel="no_such_kernel"), "not in the OpenCL source"),
        (lambda p: _first(p)["params"].__setitem__(0, {"arg": 99}), "arg 99 out of range"),
        (lambda p: _first(p).update(grid=[[0], [1], [1]]), "grid x is 0"),
        (lambda p: _first(p).update(grid=[["n", 1, "-"], [1], [1]]), "grid x is 0 at n=1"),
        (lambda p: _first(p).update(block=[2048, 1, 1]), "more than 1024 threads"),
        (lambda p: p["gpu"]["launches"].pop(p["kernels"][0]), "has no launches"),
        (lambda p: p["gpu"]["launches"].update(ghost=[]), "unknown kernel ghost"),
        (lambda p: _first(p)["params"].append({"scalar": "int64", "expr": ["n", "/", 2]}), "bad RPN token"),
        (lambda p: _first(p)["params"].append({"scalar": "int16", "expr": [1]}), "unknown scalar type"),
    ],
)
def test_broken_records_rejected(models, edit, message):
    _, _, out, _ = models
    plan = json.loads((out / "plan.json").read_text())
    source = (out / "kernels.cl").read_text()
    validate_gpu_section(plan, source)  # the exported one is valid
    with pytest.raises(McpmError, match=message) as info:
        validate_gpu_section(_broken(plan, edit), source)
    assert "\n" not in str(info.value)


def test_scalar_arg_bound_as_buffer_rejected(models):
    _, _, out, _ = models
    plan = json.loads((out / "plan.json").read_text())
    kernel = next(k for k in plan["kernels"] if k.startswith("kv_append"))
    pos_index = next(i for i, a in enumerate(next(c for c in plan["entries"]["decode"]["calls"]
                                                  if c["kernel"] == kernel)["args"]) if a["kind"] == "scalar")
    plan["gpu"]["launches"][kernel][0]["params"][0] = {"arg": pos_index}
    with pytest.raises(McpmError, match="not a buffer"):
        validate_gpu_section(plan)


def test_rpn():
    assert eval_rpn(["n", 255, "+", 256, "//"], 300, 0) == 2
    assert eval_rpn(["pos", "n", "max", 3, "%"], 4, 7) == 1
    with pytest.raises(McpmError, match="division by zero"):
        eval_rpn([1, 0, "//"], 1, 0)
    with pytest.raises(McpmError, match="leaves 2 values"):
        eval_rpn([1, 2], 1, 0)


def test_restrict_dropped_only_for_aliased_kernels() -> None:
    from mcpm.export.compiler.gpu import unrestrict_aliased

    src = ("__kernel void a_kernel(__global float* restrict x, __global float* restrict y) {}\n"
           "__kernel void b_kernel(__global float* restrict x, long n) {}\n")
    launches = {"a": [{"kernel": "a_kernel"}], "b": [{"kernel": "b_kernel"}]}
    out = unrestrict_aliased(src, launches, {"a"})
    assert out.splitlines()[0] == "__kernel void a_kernel(__global float* x, __global float* y) {}"
    assert out.splitlines()[1] == src.splitlines()[1]
