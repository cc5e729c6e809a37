"""MiniCPM4 (``model_type`` minicpm): LongRoPE as the official ``MiniCPMLongRoPE`` computes it, ChatML chosen from
the checkpoint's own chat template, dense attention up to ``sparse_config.dense_len``, and an export whose C runtime
passes the self-test against the PyTorch reference and chats in ChatML like the reference."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from mcpm.errors import McpmError
from mcpm.export.exporter import ExportOptions, run_export
from mcpm.export.loading import load_model
from tests.conftest import write_tiny

CTX, CHUNK = 96, 16


def tiny_minicpm4(**overrides: Any) -> dict[str, Any]:
    """MiniCPM4-8B's keys at a tiny size: GQA 8 / 2 heads of 16, LongRoPE with max_position_embeddings past the
    original length (the long factors and a cos/sin scale of sqrt(1 + ln 4 / ln 64) are in use), muP scales != 1,
    untied head, InfLLM v2 sparse_config, ChatML."""
    half = 8
    cfg: dict[str, Any] = {
        "model_type": "minicpm",
        "vocab_size": 4128,  # the default tokenizer's 4096 pieces + room for <|im_end|>, <|im_start|>
        "hidden_size": 128,
        "intermediate_size": 160,
        "num_hidden_layers": 3,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0 + 0.5 * i for i in range(half)],
                         "long_factor": [1.0 + 3.0 * i * i for i in range(half)],
                         "original_max_position_embeddings": 64},
        "scale_emb": 12,
        "scale_depth": 1.4,
        "dim_model_base": 32,  # logit divisor 4
        "mup_denominator": 32,
        "tie_word_embeddings": False,
        "eos_token_id": [2, 4096],
        "sparse_config": {"kernel_size": 32, "kernel_stride": 16, "block_size": 64, "window_size": 2048,
                          "topk": 64, "dense_len": 128},
        "mcpm_chat_template": "chatml",
    }
    cfg.update(overrides)
    return cfg


def official_longrope(dim: int, base: float, max_pos: int, scaling: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """cos, sin [max_pos, dim] as MiniCPM4's modeling_minicpm.py MiniCPMLongRoPE builds them at init (the cache for
    max_position_embeddings positions; forward only slices it), transcribed from the published code."""
    orig = scaling["original_max_position_embeddings"]
    scale = math.sqrt(1 + math.log(max_pos / orig) / math.log(orig))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
    t = torch.arange(max_pos, dtype=torch.float32)
    ext = torch.tensor(scaling["long_factor" if max_pos > orig else "short_factor"], dtype=torch.float32)
    freqs = torch.outer(t, 1.0 / ext) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scale, emb.sin() * scale


@pytest.mark.parametrize("max_pos", [256, 64], ids=["long-factors", "short-factors"])
def test_rope_tables_are_the_official_longrope(tmp_path: Path, max_pos: int) -> None:
    from mcpm.export.compiler.weights import rope_tables

    cfg = tiny_minicpm4(max_position_embeddings=max_pos)
    model = load_model(write_tiny(tmp_path, cfg, seed=1), tokenizer=False).model
    want_cos, want_sin = official_longrope(16, 10000.0, max_pos, cfg["rope_scaling"])
    assert (model.cfg.rope_scale > 1.1) == (max_pos == 256)  # the attention factor only past the original length
    for start, n in ((0, 40), (37, 5), (max_pos - 3, 3)):  # any window of the one static table
        cos, sin = model.rope_tables(start, n, torch.float32)
        torch.testing.assert_close(cos, want_cos[start:start + n], atol=1e-5, rtol=0)
        torch.testing.assert_close(sin, want_sin[start:start + n], atol=1e-5, rtol=0)
    cos, sin = rope_tables(model.cfg, 48)  # what the bundle stores
    torch.testing.assert_close(torch.from_numpy(cos), want_cos[:48], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(sin), want_sin[:48], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(long_factor=s["long_factor"][:-1]), "rope_scaling.long_factor must be a list of head"),
        (lambda s: s.update(short_factor="1.0"), "rope_scaling.short_factor must be a list"),
        (lambda s: s.update(original_max_position_embeddings=1), "original_max_position_embeddings (1) must be"),
        (lambda s: s.update(rope_type="yarn"), "rope_scaling type 'yarn' is not supported for minicpm"),
    ],
)
def test_bad_longrope_configs_are_one_line_errors(tmp_path: Path, change, message: str) -> None:
    from mcpm.export.loading import load_config

    cfg = tiny_minicpm4()
    change(cfg["rope_scaling"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(McpmError) as info:
        load_config(tmp_path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_chat_template_comes_from_the_checkpoint(tmp_path: Path) -> None:
    """A real MiniCPM4 folder carries transformers' Jinja chat_template (no mcpm record): ChatML is read from it."""
    model_dir = write_tiny(tmp_path / "m4", tiny_minicpm4(), seed=2)
    tok_config = model_dir / "tokenizer_config.json"
    data = json.loads(tok_config.read_text())
    assert data.pop("mcpm_chat_template") == "chatml"
    for jinja, want in (("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% endfor %}", "chatml"),
                        ([{"name": "default", "template": "<|im_start|>..."}], "chatml"),
                        ("{{ '<用户>' + m['content'] + '<AI>' }}", "minicpm"),
                        ("{{ messages }}", "minicpm")):  # neither: the family's
        tok_config.write_text(json.dumps({**data, "chat_template": jinja}))
        assert load_model(model_dir).tokenizer.template.name == want, jinja
    tok = load_model(model_dir).tokenizer
    assert tok.token_id("<|im_end|>") == 4096 and tok.token_id("<|im_start|>") == 4097


@pytest.fixture(scope="module")
def m4_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("m4")


@pytest.fixture(scope="module")
def m4_bundle(m4_root: Path) -> Path:
    write_tiny(m4_root / "ckpt", tiny_minicpm4(), seed=4)
    run_export(ExportOptions(m4_root / "ckpt", m4_root / "f32", "host", "f32", (), CTX, CHUNK, progress=False))
    return m4_root / "f32"


def test_export_passes_the_self_test(m4_bundle: Path) -> None:
    """The C runtime against the PyTorch reference (golden results), teacher-forced over a prompt that crosses
    prefill chunks: every greedy id equal. (The q4 kernels are the family's, checked on MiniCPM-2B shapes; only the
    rope table is MiniCPM4's own.)"""
    from mcpm.runtime.binding import Model, Session
    from mcpm.runtime.build import build_library

    bundle = m4_bundle
    config = json.loads((bundle / "mcpm-config.json").read_text())
    assert config["chat_template"]["name"] == "chatml" and len(config["golden"]["prompt_ids"]) > CHUNK
    with Model.load(bundle, threads=2, library=build_library(bundle)) as model, Session(model) as session:
        result = session.self_test()
    assert result["pass"] is True and result["argmax_equal"] == result["steps"], result
    assert result["max_logit_diff"] < 1e-4, result


def test_chat_in_chatml_equals_the_reference(m4_bundle: Path) -> None:
    """A ChatML turn through the C session: the same greedy reply as the PyTorch reference fed the ChatML ids."""
    from mcpm.export.reference_generate import generate
    from mcpm.runtime.binding import Model, Session
    from mcpm.runtime.build import build_library

    loaded = load_model(m4_bundle.parent / "ckpt")  # float32: the f32 bundle's reference
    tok = loaded.tokenizer
    ids = tok.encode_chat([{"role": "user", "content": "Tell me about the weather."}])
    assert ids[:2] == [1, tok.token_id("<|im_start|>")] and ids[-1] != tok.token_id("<|im_end|>")
    want = generate(loaded.model, ids, 12, CTX, stop_ids=tok.stop_ids).tokens
    want = [t for t in want if t not in tok.stop_ids]
    with Model.load(m4_bundle, threads=2, library=build_library(m4_bundle)) as model, Session(model) as session:
        n, text = session.chat("Tell me about the weather.", 12)
    assert len(want) >= 4 and text == tok.decode(want) and n >= len(want)


def test_context_past_dense_len_is_refused(tmp_path: Path) -> None:
    model_dir = write_tiny(tmp_path / "m4", tiny_minicpm4(), seed=5)
    with pytest.raises(McpmError) as info:
        run_export(ExportOptions(model_dir, tmp_path / "out", "host", "f32", (), 200, 16, progress=False))
    text = str(info.value)
    assert "exceeds sparse_config.dense_len (128)" in text and "--context-length 128 or less" in text
    assert "\n" not in text and not (tmp_path / "out").exists()


def test_info_names_chatml_and_the_longrope_values(m4_root: Path, m4_bundle: Path) -> None:
    from click.testing import CliRunner

    from mcpm.cli import cli

    res = CliRunner().invoke(cli, ["info", str(m4_root / "ckpt")])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["family"] == "minicpm" and info["chat_template"] == "chatml" and info["head_dim"] == 16
    assert info["rope_factors"] == tiny_minicpm4()["rope_scaling"]["long_factor"]
    assert info["rope_scale"] == pytest.approx(math.sqrt(1 + math.log(4) / math.log(64)))
