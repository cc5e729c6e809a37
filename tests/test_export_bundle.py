"""mcpm-export --target host end to end: bundle contents, validation, and parity of the bundle's plan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mcpm.errors import ContextOverflowError, McpmError
from mcpm.export.bundle.host_runner import BundleStepper, load_bundle
from mcpm.export.bundle.weights_file import BundleError
from mcpm.export.exporter import ExportOptions, run_export
from mcpm.export.loading import DEFAULT_MODEL_DIR, load_model
from mcpm.export.reference_generate import generate
from mcpm.quantize.apply import dequantized_copy
from mcpm.quantize.recipe import Recipe
from tests.conftest import tiny_minicpm, tiny_minicpm3, write_tiny


def export(model_dir: Path, out: Path, quant: str = "q4g32", ctx: int = 256, chunk: int = 32,
           rules: tuple[str, ...] = ()) -> Path:
    run_export(ExportOptions(model_dir, out, "host", quant, rules, ctx, chunk, progress=False))
    return out


@pytest.fixture(scope="module")
def default_bundle(default_q4_bundle: Path) -> Path:
    """The session's default bundle (q4g32, context 128, chunk 16; read-only: the damage tests copy it)."""
    return default_q4_bundle


def test_bundle_contents_and_config(default_bundle: Path) -> None:
    names = sorted(p.name for p in default_bundle.iterdir())
    assert names == [".mcpm-output.json", "kernels.o", "mcpm-config.json", "plan.json", "tokenizer.model",
                     "weights.bin"]
    cfg = json.loads((default_bundle / "mcpm-config.json").read_text())
    assert cfg["family"] == "minicpm" and cfg["quantization"] == "q4g32"
    assert cfg["context_length"] == 128 and cfg["prefill_chunk"] == 16
    assert cfg["stop_token_ids"] == [2] and cfg["chat_template"]["name"] == "minicpm"
    assert cfg["model_config"]["scale_emb"] == 12.0
    assert set(cfg["files"]) == {"kernels.o", "plan.json", "tokenizer.model", "weights.bin"}
    bundle, model, _ = load_bundle(default_bundle, verify=True)
    assert "embed.qweight" in bundle.weights.entries and "lm_head.qweight" not in bundle.weights.entries  # tied


def test_q4_bundle_greedy_equals_reference_with_dequantized_weights(default_bundle: Path) -> None:
    """32 greedy tokens of the bundle's plan == the PyTorch reference whose weights are the dequantized ones."""
    _, plan_model, tok = load_bundle(default_bundle)
    loaded = load_model(DEFAULT_MODEL_DIR)
    twin = dequantized_copy(loaded.model, Recipe.parse("q4g32"))
    ids = tok.encode("The Congress of the United States", add_bos=True)
    ours = generate(BundleStepper(plan_model), ids, 32, 128)
    ref = generate(twin, ids, 32, 128)
    assert ours.tokens == ref.tokens
    assert len(set(ours.tokens)) > 5


def test_f32_bundle_logits_match_reference(tmp_path: Path) -> None:
    model_dir = write_tiny(tmp_path / "m", tiny_minicpm(tie_word_embeddings=False, max_position_embeddings=64), seed=4)
    bundle_dir = export(model_dir, tmp_path / "b", quant="f32", ctx=64, chunk=4)
    _, plan_model, _ = load_bundle(bundle_dir)
    ids = torch.randint(3, 4096, (1, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = load_model(model_dir, tokenizer=False).model(ids)[0]  # [11, V]
    got = [plan_model.prefill(ids[0, :7].numpy())[-1]]  # chunks 4 + 3
    got += [plan_model.decode(int(t))[-1] for t in ids[0, 7:]]
    expected = ref[[6, 7, 8, 9, 10]].numpy()
    rel = np.abs(np.stack(got) - expected).max() / np.abs(expected).max()
    assert rel < 1e-4


def test_context_full(default_bundle: Path) -> None:
    _, plan_model, tok = load_bundle(default_bundle)
    with pytest.raises(ContextOverflowError, match="does not fit the context of 128 tokens"):
        generate(BundleStepper(plan_model), [1] + [100] * 150, 4, 128)
    out = generate(BundleStepper(plan_model), [1] + [100] * 122, 50, 128)  # stops at the context's end
    assert len(out.tokens) == 5
    plan_model.reset()
    plan_model.prefill(np.array([1] * 128, np.int32))
    with pytest.raises(McpmError, match="context full"):
        plan_model.decode(5)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "weights.bin").write_bytes((d / "weights.bin").read_bytes()[:1000]), "truncated"),
        (lambda d: (d / "plan.json").write_text((d / "plan.json").read_text().replace("MCPMPLAN", "XXXXXXXX")),
         "plan.json"),
        (lambda d: (d / "kernels.o").unlink(), "kernels.o is missing"),
        (lambda d: (d / "mcpm-config.json").write_text("{"), "not valid JSON"),
    ],
)
def test_damaged_bundle_is_refused(default_bundle: Path, tmp_path: Path, damage, message: str) -> None:
    copy = Path(shutil.copytree(default_bundle, tmp_path / "copy"))
    damage(copy)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_flipped_weight_bit_caught_with_verify(default_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(default_bundle, tmp_path / "copy"))
    raw = bytearray((copy / "weights.bin").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (copy / "weights.bin").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="SHA-256"):
        load_bundle(copy, verify=True)


def test_bundle_for_other_cpu_is_refused(default_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(default_bundle, tmp_path / "copy"))
    cfg = json.loads((copy / "mcpm-config.json").read_text())
    cfg["target"]["features"].append("avx10_9")
    (copy / "mcpm-config.json").write_text(json.dumps(cfg))
    with pytest.raises(McpmError, match="lacks: avx10_9"):
        load_bundle(copy)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "pdp11"}, "unknown target 'pdp11'"),
        ({"quant": "q5"}, "unknown quantization scheme 'q5'"),
        ({"quant_rules": ("layers.*.attn.wq=q8",)}, "fused into one weight but the quantization rules"),
        ({"quant_rules": ("lm_head",)}, "not PATTERN=SCHEME"),
        ({"context_length": 4096}, "exceeds the model's max_position_embeddings"),
    ],
)
def test_export_option_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    opts = ExportOptions(DEFAULT_MODEL_DIR, tmp_path / "o", progress=False, **kwargs)
    with pytest.raises(McpmError, match=message):
        run_export(opts)


def test_unsupported_family_export(tmp_path: Path) -> None:
    model_dir = write_tiny(tmp_path / "m3", tiny_minicpm3(), seed=1)
    with pytest.raises(McpmError, match="exporting minicpm3 is not supported yet"):
        run_export(ExportOptions(model_dir, tmp_path / "o", context_length=64, prefill_chunk=8, progress=False))


def test_cli_export_then_generate(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "bundle"
    proc = subprocess.run([sys.executable, "-m", "mcpm.export_cli", "default", "--target", "host", "-o", str(out),
                           "--context-length", "128", "--prefill-chunk", "16"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "bits/weight" in proc.stdout and "compile" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "mcpm.cli", "generate", str(out), "-p", "We must", "-n", "8",
                           "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["generated_tokens"] == 8 and "bundle" in stats["engine"]


@pytest.mark.parametrize(
    ("quant", "rules"),
    [
        ("q4g32-asym", ()),
        ("q8", ()),
        ("f16", ()),
        ("q4g128", ("embed=q8", "layers.0.*=f16", "layers.1.mlp.*=q4g32-asym")),
    ],
)
def test_every_scheme_and_mixed_recipes_match_the_dequantized_reference(tmp_path: Path, quant: str,
                                                                       rules: tuple[str, ...]) -> None:
    """Each scheme's kernels read its packed layout: bundle logits == reference with dequantized weights."""
    cfg = tiny_minicpm(tie_word_embeddings=False, max_position_embeddings=64, hidden_size=128, intermediate_size=160)
    model_dir = write_tiny(tmp_path / "m", cfg, seed=8)
    bundle_dir = export(model_dir, tmp_path / "b", quant=quant, ctx=64, chunk=4, rules=rules)
    bundle, plan_model, _ = load_bundle(bundle_dir)
    assert bundle.config["quantization"] == ",".join([quant, *rules])
    loaded = load_model(model_dir, tokenizer=False)
    twin = dequantized_copy(loaded.model, Recipe.parse(quant, rules))
    ids = torch.randint(3, 4096, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = twin(ids)[0].numpy()  # [6, V]
    got = np.stack([plan_model.prefill(ids[0, :5].numpy())[-1], plan_model.decode(int(ids[0, 5]))[-1]])
    rel = np.abs(got - expected[[4, 5]]).max() / np.abs(expected).max()
    assert rel < 2e-3  # residual scale folded before quantization: scales round to fp16 differently


def test_arm64_export_has_kernel_variants(default_arm64_bundle: Path) -> None:
    """linux-arm64: three AArch64 kernel objects (i8mm, dotprod, NEON fallback) listed in the plan and the config."""
    from mcpm.export.compiler.plan import Plan, kernel_object_files

    out = default_arm64_bundle
    plan = Plan.from_json((out / "plan.json").read_text())
    assert [(v.name, v.requires) for v in plan.kernel_variants] == [
        ("i8mm", ("dotprod", "i8mm")), ("dotprod", ("dotprod",)), ("neon", ())]
    objs = kernel_object_files(out)
    assert [p.name for p in objs] == ["kernels-i8mm.o", "kernels-dotprod.o", "kernels.o"]
    cfg = json.loads((out / "mcpm-config.json").read_text())
    assert set(cfg["files"]) >= {p.name for p in objs}
    assert cfg["target"]["platform"] == "linux" and cfg["target"]["triple"] == "aarch64-linux-gnu"
    for p, v in zip(objs, plan.kernel_variants, strict=True):
        data = p.read_bytes()
        assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == 183  # EM_AARCH64
        for k in plan.kernels[:3]:
            assert (v.symbol_prefix + k).encode() in data
    with pytest.raises(McpmError, match="built for 'linux-arm64'"):
        load_bundle(out)
