"""Greedy text from the C runtime equals the PyTorch reference on the default model for 64 tokens.

f32 bundle against the float reference; q4g32 bundle against the reference whose weights are the dequantized
ones (the bundle folds the residual scale into its fp16 scales, the only difference)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built")

PROMPT = "The Congress of the United States"
N = 64


def c_greedy(bundle: Path) -> tuple[list[int], list[int]]:
    from mcpm.runtime.host import load_host_bundle

    _, model, tok = load_host_bundle(bundle, threads=2)
    with model:
        ids = tok.encode(PROMPT, add_bos=True)
        return ids, model.generate(ids, N, None, ())


@pytest.mark.parametrize("quant", ["f32", "q4g32"])
def test_c_runtime_greedy_equals_reference(quant: str, default_q4_bundle: Path, tmp_path: Path) -> None:
    from mcpm.export.exporter import ExportOptions, run_export
    from mcpm.export.loading import DEFAULT_MODEL_DIR, load_model
    from mcpm.export.reference_generate import generate
    from mcpm.quantize.apply import dequantized_copy
    from mcpm.quantize.recipe import Recipe

    bundle = default_q4_bundle
    if quant == "f32":
        bundle = tmp_path / "f32"
        run_export(ExportOptions(DEFAULT_MODEL_DIR, bundle, "host", "f32", (), 128, 16, progress=False))
    ids, ours = c_greedy(bundle)
    reference = load_model(DEFAULT_MODEL_DIR).model
    if quant != "f32":
        reference = dequantized_copy(reference, Recipe.parse(quant))
    expected = generate(reference, ids, N, 128).tokens
    assert len(ours) == N and len(set(ours)) > 10
    assert ours == expected
