"""Recipes applied to a model: dequantized copies, sizes, and the quality metrics' sanity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mcpm.export.loading import load_model
from mcpm.quantize.apply import dequantized_copy, quantize_model, weight_bytes
from mcpm.quantize.packing import dequantize
from mcpm.quantize.quality import evaluate
from mcpm.quantize.recipe import Recipe
from tests.conftest import tiny_minicpm, write_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    d = write_tiny(tmp_path_factory.mktemp("q"), tiny_minicpm(hidden_size=128, intermediate_size=256), seed=21)
    return load_model(d, tokenizer=False).model


def test_dequantized_copy_holds_exactly_the_dequantized_weights(tiny: torch.nn.Module) -> None:
    recipe = Recipe.parse("q4g32", ["layers.1.*=q8"])
    packed = quantize_model(tiny, recipe)
    copy = dequantized_copy(tiny, recipe)
    params = dict(copy.named_parameters())
    assert "lm_head.weight" not in packed  # tied: one copy, the embedding
    assert packed["layers.1.mlp.w_up.weight"].scheme.name == "q8"
    for name, p in packed.items():
        assert np.array_equal(params[name].detach().numpy(), dequantize(p)), name
    assert torch.equal(params["final_norm.weight"], dict(tiny.named_parameters())["final_norm.weight"])


def test_weight_bytes_counts_tied_embedding_once(tiny: torch.nn.Module) -> None:
    nbytes, count = weight_bytes(tiny, Recipe.parse("f32"))
    assert count == sum(p.numel() for p in tiny.parameters()) and nbytes == 4 * count


def test_quality_metrics_order(tiny: torch.nn.Module) -> None:
    tokens = torch.randint(3, 4096, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    rows = {r.recipe: r for r in evaluate(tiny, [Recipe.parse(s) for s in ("f32", "f16", "q8", "q4g32")], tokens, 128)}
    assert rows["f32"].mean_kl == 0 and rows["f32"].top1_agreement == 1.0
    assert rows["f16"].mean_kl < rows["q8"].mean_kl < rows["q4g32"].mean_kl and rows["q8"].mean_kl > 0
    assert rows["q4g32"].bits_per_weight < rows["q8"].bits_per_weight < rows["f16"].bits_per_weight


def test_eval_cli_rejects_unknown_scheme(tmp_path: Path) -> None:
    from mcpm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "default", "--quant", "q3"])
    assert exit_info.value.code == 2
