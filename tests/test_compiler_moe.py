"""MiniCPM-MoE through the TVM compiler: bundle (run_export -> load_bundle) parity with the PyTorch reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mcpm.errors import McpmError
from mcpm.export.bundle.host_runner import BundleStepper, load_bundle
from mcpm.export.compiler.layout import weight_params
from mcpm.export.compiler.spec import CompileSpec
from mcpm.export.compiler.weights import check_supported
from mcpm.export.exporter import ExportOptions, run_export
from mcpm.export.loading import load_model
from mcpm.export.models.minicpm.config import MiniCPMConfig
from mcpm.export.reference_generate import generate
from mcpm.quantize.apply import dequantized_copy
from mcpm.quantize.recipe import Recipe
from tests.conftest import tiny_minicpm, write_tiny


def _moe_cfg(tied: bool) -> dict:
    return tiny_minicpm(num_experts=4, num_experts_per_tok=2, tie_word_embeddings=tied, max_position_embeddings=64,
                        num_hidden_layers=2)


@pytest.mark.parametrize(
    ("quant", "tied"),
    [("f32", True), ("f32", False), ("q4g32", True), ("q4g32", False), ("f16", False)],
)
def test_moe_bundle_matches_reference(tmp_path: Path, quant: str, tied: bool) -> None:
    model_dir = write_tiny(tmp_path / "m", _moe_cfg(tied), seed=5)
    out = tmp_path / "b"
    run_export(ExportOptions(model_dir, out, "host", quant, (), 64, 4, progress=False))
    bundle, plan_model, _ = load_bundle(out)
    entry = bundle.weights.entries["layers.0.moe_gate_up" + (".qweight" if quant.startswith("q") else "")]
    assert entry.dtype == {"f32": "float32", "f16": "float16", "q4g32": "uint32"}[quant]
    model = load_model(model_dir, tokenizer=False).model
    ref = model if quant == "f32" else dequantized_copy(model, Recipe.parse(quant))
    ids = torch.randint(3, 4096, (1, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref(ids)[0].numpy()  # [7, V]
    got = [plan_model.prefill(ids[0, :5].numpy())[-1]]  # chunks 4 + 1
    got += [plan_model.decode(int(t))[-1] for t in ids[0, 5:]]
    rel = np.abs(np.stack(got) - expected[[4, 5, 6]]).max() / np.abs(expected).max()
    assert rel < (1e-4 if quant == "f32" else 2e-3), rel
    if quant == "f32":
        plan_model.reset()
        prompt = [int(t) for t in ids[0, :5]]
        ours = generate(BundleStepper(plan_model), prompt, 12, 64)
        theirs = generate(model, prompt, 12, 64)
        assert ours.tokens == theirs.tokens and len(ours.tokens) == 12


def test_moe_layout_and_unsupported_schemes() -> None:
    raw = {k: v for k, v in _moe_cfg(tied=True).items() if k != "some_unknown_key"}
    cfg = MiniCPMConfig(**raw)
    spec = CompileSpec(max_ctx=64, chunk=4, recipe=Recipe.parse("q4g32"), num_experts=4)
    shapes = {p.name: p.shape for p in weight_params(cfg, spec)}
    assert shapes["layers.0.router.qweight"] == (4, 64 // 8)
    assert shapes["layers.0.moe_gate_up.qweight"] == (4 * 2 * 96, 64 // 8)
    assert shapes["layers.0.moe_down.scales"] == (4 * 64, 96 // 32)
    with pytest.raises(McpmError, match="num_experts = 0"):
        check_supported(cfg, CompileSpec(max_ctx=64, chunk=4))
    with pytest.raises(McpmError, match="experts support float and int4-sym schemes, not q8"):
        check_supported(cfg, CompileSpec(max_ctx=64, chunk=4, recipe=Recipe.parse("q8"), num_experts=4))
    with pytest.raises(McpmError, match="different schemes"):
        CompileSpec(max_ctx=64, chunk=4, recipe=Recipe.parse("q4g32", ("layers.1.mlp.experts.2.*=f16",)),
                    num_experts=4).scheme_for("layers.1.moe_down")
