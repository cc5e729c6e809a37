"""Presets have the published shapes (parameter counts match the published model sizes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
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
        ("minicpm4-8b", 7.88, 8.19),  # published: 8B (untied: + a 73448 x 4096 lm_head)
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

    main(["make-checkpoint", "--preset", "minicpm-1b", "--random", "--out", str(tmp_path / "m")])
    assert json.loads((tmp_path / "m" / "config.json").read_text())["num_key_value_heads"] == 8
    loaded = load_model(tmp_path / "m", dtype=torch.bfloat16)
    with torch.no_grad():
        logits = loaded.model(torch.tensor([[1, 5, 9]]))
    assert logits.shape == (1, 3, 73440) and torch.isfinite(logits).all()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built")
def test_real_width_preset_exported_and_run(tmp_path: Path) -> None:
    """MiniCPM-1B's real widths (hidden 1536, 24 heads of 64 with 8 KV heads, MLP 3840, vocab 73440, tied) with
    one layer, exported q4g32 for the host and run in the C runtime: logits equal the dequantized PyTorch
    reference (the kernel tails and vocabulary sizes the tiny configs never reach; the 2B's took twice as long)."""
    from mcpm.export.exporter import ExportOptions, run_export
    from mcpm.export.families import FAMILIES
    from mcpm.export.loading import load_model
    from mcpm.export.make_checkpoint import write_random_checkpoint
    from mcpm.quantize.apply import dequantized_copy
    from mcpm.quantize.recipe import Recipe
    from mcpm.runtime.binding import Model

    family, data = all_presets()["minicpm-1b"]
    config = {**data, "num_hidden_layers": 1, "max_position_embeddings": 64}
    ckpt, bundle = tmp_path / "ckpt", tmp_path / "bundle"
    write_random_checkpoint(FAMILIES[config["model_type"]], config, ckpt, seed=3, dtype="bf16", init_std=0.02,
                            progress=False)
    run_export(ExportOptions(ckpt, bundle, "host", "q4g32", (), 64, 16, progress=False, kv_dtype="f32"))
    ids = [1, 5, 90, 73439, 7000, 33, 18, 2, 64000, 11, 4, 99, 1000, 12, 13, 14, 15, 16, 17, 31]  # chunk + 4
    reference = dequantized_copy(load_model(ckpt, dtype=torch.float32, progress=False).model, Recipe.parse("q4g32"))
    with torch.no_grad():
        want = reference(torch.tensor([ids]))[0].double().numpy()[[15, 18, 19]]  # [3, 73440]
    with Model.load(bundle, threads=2) as model:
        got = np.stack([model.prefill(ids[:16]), model.prefill(ids[16:19]), model.decode(ids[19])])  # [3, vocab]
    assert got.shape == want.shape == (3, 73440)
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    print(f"real-width q4g32: max |diff| / max |logit| = {rel:.2e}")
    assert rel < 1e-4, rel  # measured 2.4e-6 (f32 KV, f32 accumulation both sides)
