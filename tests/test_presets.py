"""Presets have the published shapes (parameter counts match the published model sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mcpm.export.families import all_presets
from mcpm.export.hf_config import parse_config


def param_counts(preset: str) -> tuple[int, int]:
    family, data = all_presets()[preset]
    cfg = parse_config(family.config_cls, data)
    with torch.device("meta"):
        model = family.model_cls(cfg)
    total = sum(p.numel() for p in model.parameters())
    return total, total - model.embed.weight.numel()


@pytest.mark.parametrize(
    ("preset", "non_embedding_billions", "total_billions"),
    [
        ("minicpm-2b", 2.44, 2.72),  # published: 2.4B non-embedding, 2.7B total
        ("minicpm-1b", 1.25, 1.36),  # published: 1.2B non-embedding
        ("minicpm-2b-128k", 2.72, 3.01),  # untied: + a 122760 x 2304 lm_head (counted as non-embedding)
        ("minicpm-moe-8x2b", 13.59, 13.87),  # published: 13.6B (non-embedding), 4B activated
        ("minicpm3-4b", 3.89, 4.07),  # published: 4B
    ],
)
def test_preset_sizes(preset: str, non_embedding_billions: float, total_billions: float) -> None:
    total, non_embedding = param_counts(preset)
    assert non_embedding / 1e9 == pytest.approx(non_embedding_billions, abs=0.01)
    assert total / 1e9 == pytest.approx(total_billions, abs=0.01)


def test_minicpm_2b_exact_count() -> None:
    # embed 122753x2304 + 40 x (4 x 2304^2 + 3 x 2304 x 5760 + 2 x 2304) + 2304
    assert param_counts("minicpm-2b")[0] == 2_724_880_896


@pytest.mark.slow
def test_make_checkpoint_cli_writes_loadable_1b(tmp_path: Path) -> None:
    from mcpm.cli import main
    from mcpm.export.loading import load_model

    with pytest.raises(SystemExit) as exit_info:
        main(["make-checkpoint", "--preset", "minicpm-1b", "--random", "--out", str(tmp_path / "m")])
    assert exit_info.value.code in (0, None)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["num_key_value_heads"] == 8
    loaded = load_model(tmp_path / "m", dtype=torch.bfloat16)
    with torch.no_grad():
        logits = loaded.model(torch.tensor([[1, 5, 9]]))
    assert logits.shape == (1, 3, 73440) and torch.isfinite(logits).all()
