"""The MiniCPM3 (MLA) reference against transformers' native ``minicpm3`` on the same checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import MiniCPM3ForCausalLM

from mcpm.export.loading import load_model
from tests.conftest import tiny_minicpm3, write_tiny

ATOL = 2e-4


def hf_logits(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    model = MiniCPM3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(ids).logits


def ref_logits(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_model(model_dir, tokenizer=False).model(ids)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_word_embeddings": False},
        {"q_lora_rank": None},
        {"rope_scaling": None},
    ],
    ids=["longrope-tied", "untied", "no-q-lora", "plain-rope"],
)
def test_matches_transformers_minicpm3(tmp_path: Path, overrides: dict) -> None:
    cfg = tiny_minicpm3(**overrides)
    write_tiny(tmp_path, cfg, seed=7)
    ids = torch.randint(0, cfg["vocab_size"], (2, 13))
    expected = hf_logits(tmp_path, ids)
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(ref_logits(tmp_path, ids), expected, atol=ATOL, rtol=1e-4)


def test_longrope_long_factors_past_original_length(tmp_path: Path) -> None:
    """Past original_max_position_embeddings the long factors and the attention factor apply."""
    cfg = tiny_minicpm3(max_position_embeddings=64)
    cfg["rope_scaling"] = {**cfg["rope_scaling"], "original_max_position_embeddings": 16}
    write_tiny(tmp_path, cfg, seed=8)
    ids = torch.randint(0, cfg["vocab_size"], (1, 23))
    torch.testing.assert_close(ref_logits(tmp_path, ids), hf_logits(tmp_path, ids), atol=ATOL, rtol=1e-4)
