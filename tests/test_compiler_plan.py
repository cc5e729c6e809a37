"""Static execution plan (export/compiler/lower.py + plan.py) run by the Python plan interpreter, without the VM.

The plan runner links the exported kernels.o into a shared library and calls its ``__tvm_ffi_<name>`` kernels
in plan order over fixed storages; its logits must equal the relax-VM runner's and match the PyTorch reference.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from mcpm.errors import McpmError
from mcpm.export.compiler.lower import export_plan
from mcpm.export.compiler.plan import ALIGN, CacheArg, InputArg, Plan, ScalarArg, TensorRef, WeightArg
from mcpm.export.compiler.plan_runner import load_plan_model
from mcpm.export.compiler.runner import compile_model
from mcpm.export.compiler.spec import CompileSpec
from mcpm.export.compiler.weights import export_weights
from mcpm.export.loading import load_model
from tests.conftest import tiny_minicpm, write_tiny

MAX_CTX, CHUNK = 48, 4


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def ids_of(n: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 4096, n).astype(np.int32)


@pytest.fixture(scope="module", params=["tied", "untied"])
def loaded(request, tmp_path_factory):
    cfg = tiny_minicpm(tie_word_embeddings=request.param == "tied", rope_theta=777.0, rms_norm_eps=1e-4)
    return load_model(write_tiny(tmp_path_factory.mktemp(request.param), cfg, seed=3), tokenizer=False)


@pytest.fixture(scope="module", params=[0, 32], ids=["f32", "q4g32"])
def pair(request, loaded, tmp_path_factory):
    """(plan model loaded from plan.json + kernels.o, relax-VM model, exported plan, spec) for one config."""
    spec = CompileSpec(max_ctx=MAX_CTX, chunk=CHUNK, int4_group=request.param)
    out = tmp_path_factory.mktemp(f"plan{request.param}")
    exported = export_plan(loaded.config, spec, out, debug_dump=out / "dump")
    pm = load_plan_model(out, export_weights(loaded.model, loaded.config, spec))
    return pm, compile_model(loaded, spec), exported, spec


def reference(loaded, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return loaded.model(torch.tensor(ids[None], dtype=torch.long))[0].numpy()  # [n, V]


@pytest.mark.parametrize("n_prompt", [5, 7])  # chunks 4 + 1 and 4 + 3
def test_plan_matches_vm_and_reference(loaded, pair, n_prompt):
    pm, vm, _, spec = pair
    pm.reset()
    vm.reset()
    ids = ids_of(n_prompt + 3, seed=n_prompt)
    ref = reference(loaded, ids)
    got, want = pm.prefill(ids[:n_prompt]), vm.prefill(ids[:n_prompt])  # [1, V]
    np.testing.assert_array_equal(got, want)
    if not spec.int4_group:
        assert rel_err(got[0], ref[n_prompt - 1]) < 1e-4
    for t in range(n_prompt, len(ids)):
        got, want = pm.decode(int(ids[t])), vm.decode(int(ids[t]))
        np.testing.assert_array_equal(got, want)
        if not spec.int4_group:
            assert rel_err(got[0], ref[t]) < 1e-4
    assert pm.pos == vm.pos == len(ids)
    k, v = pm.cache_numpy(1)
    k_vm, v_vm = vm.cache_numpy(1)
    np.testing.assert_array_equal(k[: len(ids)], k_vm[: len(ids)])
    np.testing.assert_array_equal(v[: len(ids)], v_vm[: len(ids)])


def test_plan_runner_checks_inputs(pair):
    pm = pair[0]
    pm.reset()
    with pytest.raises(McpmError, match="out of range"):
        pm.decode(4096)
    with pytest.raises(McpmError, match="takes 1..4 tokens"):
        pm.run("prefill", np.zeros(CHUNK + 1, np.int32))
    pm.pos = MAX_CTX
    with pytest.raises(McpmError, match="context full"):
        pm.decode(1)
    pm.reset()


def test_storages_are_fixed(pair):
    """No allocation per call: every planned tensor lives in the entry's storages, which the runner allocates once."""
    pm, _, exported, _ = pair
    plan = exported.plan
    for e in plan.entries.values():
        assert e.storages and all(s.size % ALIGN == 0 and s.align == ALIGN for s in e.storages)
        for call in e.calls:
            for a in call.args:
                assert isinstance(a, (InputArg, ScalarArg, WeightArg, CacheArg, TensorRef))
                if isinstance(a, TensorRef):
                    assert 0 <= a.storage < len(e.storages)
        assert isinstance(e.output, TensorRef)
    assert "alloc" not in exported.plan_path.read_text()
    before = {k: [s.ctypes.data for s in v] for k, v in pm.storages.items()}
    pm.reset()
    pm.prefill(ids_of(6))
    pm.decode(3)
    assert {k: [s.ctypes.data for s in v] for k, v in pm.storages.items()} == before
    assert all(s.ctypes.data % ALIGN == 0 for v in pm.storages.values() for s in v)
    assert plan.entries["decode"].n_max == 1 and plan.entries["prefill"].n_max == CHUNK


def test_plan_resolves_caches_and_scalars(pair):
    """kv_append writes the cache params (tuple aliases resolved), attention reads them; pos goes as a scalar."""
    plan = pair[2].plan
    decode = plan.entries["decode"]
    appends = [c for c in decode.calls if c.kernel.startswith("kv_append")]
    assert len(appends) == plan.num_layers
    for layer, c in enumerate(appends):
        caches = [a for a in c.args if isinstance(a, CacheArg)]
        assert [(a.layer, a.which) for a in caches] == [(layer, "k"), (layer, "v")]
        assert any(isinstance(a, ScalarArg) and a.name == "pos" for a in c.args)
    attn = [c for c in decode.calls if c.kernel.startswith("attention")]
    assert [[(a.layer, a.which) for a in c.args if isinstance(a, CacheArg)] for c in attn] == [
        [(i, "k"), (i, "v")] for i in range(plan.num_layers)
    ]


def test_json_round_trip(pair):
    exported = pair[2]
    text = exported.plan_path.read_text()
    again = Plan.from_json(text)
    assert again.to_dict() == exported.plan.to_dict()
    assert again.to_json() == text


def _corrupt(plan: Plan, edit) -> str:
    d = json.loads(plan.to_json())
    edit(d)
    return json.dumps(d)


def _first_tensor(d: dict) -> dict:
    return next(a for c in d["entries"]["prefill"]["calls"] for a in c["args"] if a["kind"] == "tensor")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: _first_tensor(d).update(storage=99), "storage id 99 out of range"),
        (lambda d: _first_tensor(d).update(offset=1 << 20), "outside storage"),
        (lambda d: d["entries"]["decode"]["calls"][0].update(kernel="no_such_kernel"), "unknown kernel"),
        (lambda d: _first_tensor(d).update(dtype="float128"), "unknown dtype"),
        (lambda d: d["entries"]["decode"]["storages"][0].update(id=5), "storage #0 has id 5"),
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d.pop("kernels"), "missing or malformed"),
    ],
)
def test_corrupted_plan_rejected(pair, edit, message):
    with pytest.raises(McpmError, match=message) as info:
        Plan.from_json(_corrupt(pair[2].plan, edit))
    assert "\n" not in str(info.value)


def test_object_file_defines_every_kernel_symbol(pair):
    exported = pair[2]
    assert exported.object_path.is_file()
    nm = subprocess.run(["nm", str(exported.object_path)], capture_output=True, text=True, check=True).stdout
    defined = {line.split()[-1] for line in nm.splitlines() if len(line.split()) == 3 and line.split()[1] == "T"}
    assert set(exported.plan.symbols()) <= defined
    assert all(s.startswith("__tvm_ffi_") for s in exported.plan.symbols())


def test_debug_dump_has_every_phase(pair):
    dump = pair[2].plan_path.parent / "dump"
    names = sorted(p.name for p in dump.iterdir())
    assert names == [
        "phase-01-legalize.txt",
        "phase-02-fuse.txt",
        "phase-03-schedule.txt",
        "phase-04-dataflow_lower.txt",
        "phase-05-memory_plan.txt",
        "phase-06-extract.txt",
    ]
    lowered = (dump / "phase-05-memory_plan.txt").read_text()
    assert "R.memory.alloc_storage" in lowered and "vm.builtin" not in lowered


def test_all_logits_output_storage_is_bounded_by_chunk(tmp_path):
    """With all_logits the logits storage is symbolic (n * V * 4 bytes): the plan sizes it for n = chunk."""
    cfg = tiny_minicpm(num_hidden_layers=1)
    lm = load_model(write_tiny(tmp_path / "ck", cfg, seed=1), tokenizer=False)
    spec = CompileSpec(max_ctx=16, chunk=4, all_logits=True)
    exported = export_plan(lm.config, spec, tmp_path / "plan")
    out = exported.plan.entries["prefill"].output
    assert out.shape == [(1, 0), (0, cfg["vocab_size"])]
    assert exported.plan.entries["prefill"].storages[out.storage].size >= 4 * cfg["vocab_size"] * 4
    pm = load_plan_model(tmp_path / "plan", export_weights(lm.model, lm.config, spec))
    ids = ids_of(7, seed=4)
    got = pm.prefill(ids)  # [3, V]: the last chunk
    assert got.shape == (3, cfg["vocab_size"])
    assert rel_err(got, reference(lm, ids)[4:]) < 1e-4


def test_dlight_schedule_phase_keeps_parity(tmp_path):
    """schedule=True applies dlight cpu schedules to the legalized kernels only (hand-written ones are skipped)."""
    cfg = tiny_minicpm(num_hidden_layers=1, tie_word_embeddings=False)
    lm = load_model(write_tiny(tmp_path / "ck", cfg, seed=2), tokenizer=False)
    spec = CompileSpec(max_ctx=16, chunk=4)
    export_plan(lm.config, spec, tmp_path / "plan", debug_dump=tmp_path / "dump", schedule=True)
    assert "is_scheduled" in (tmp_path / "dump" / "phase-03-schedule.txt").read_text()
    pm = load_plan_model(tmp_path / "plan", export_weights(lm.model, lm.config, spec))
    ids = ids_of(6, seed=6)
    ref = reference(lm, ids)
    assert rel_err(pm.prefill(ids[:5])[0], ref[4]) < 1e-4
    assert rel_err(pm.decode(int(ids[5]))[0], ref[5]) < 1e-4
