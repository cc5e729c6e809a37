"""Loading checkpoints: dtypes, shards, tied/untied, unknown keys kept; every bad input is a one-line error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mcpm.errors import CheckpointError, McpmError, UnsupportedModelError
from mcpm.export.hf_config import config_to_dict
from mcpm.export.loading import load_config, load_model
from tests.conftest import tiny_minicpm, write_tiny


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("tiny"), tiny_minicpm(), seed=2)


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(model_dir: Path, **changes: object) -> None:
    path = model_dir / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_unknown_keys_kept_and_derived_fields(tiny_dir: Path) -> None:
    _, cfg = load_config(tiny_dir)
    assert cfg.extra["some_unknown_key"] == {"kept": True}
    assert config_to_dict(cfg)["some_unknown_key"] == {"kept": True}
    assert cfg.head_dim == 16 and cfg.num_kv_heads == 2
    assert cfg.residual_scale == pytest.approx(1.7 / 3**0.5)
    assert cfg.logit_divisor == 4.0


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_checkpoints_load(tmp_path: Path, dtype: str) -> None:
    write_tiny(tmp_path / "f32", tiny_minicpm(), seed=9)
    write_tiny(tmp_path / dtype, tiny_minicpm(), seed=9, dtype=dtype)
    ids = torch.randint(0, 4096, (1, 6))
    with torch.no_grad():
        ref = load_model(tmp_path / "f32", tokenizer=False).model(ids)
        half = load_model(tmp_path / dtype, tokenizer=False).model(ids)
    assert 0 < (half - ref).abs().max() < 0.15 * ref.abs().max()  # rounded weights, same model


def test_sharded_equals_single(tmp_path: Path) -> None:
    write_tiny(tmp_path / "one", tiny_minicpm(), seed=10)
    write_tiny(tmp_path / "many", tiny_minicpm(), seed=10, shard_bytes=200_000)
    assert (tmp_path / "many" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "many").glob("model-*-of-*.safetensors"))) > 2
    a = load_model(tmp_path / "one", tokenizer=False).model.state_dict()
    b = load_model(tmp_path / "many", tokenizer=False).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_folder_and_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(tmp_path)


def test_garbled_config(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_dir, tmp_path / "m")
    (d / "config.json").write_text('{"model_type": "minicpm", "hidden_size": ')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(d)
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        load_model(d)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"model_type": "minicpmv"}, "vision_encoder is missing"),
        ({"hidden_size": "big"}, "hidden_size must be int"),
        ({"num_attention_heads": 5}, "must divide hidden_size"),
        ({"num_key_value_heads": 3}, "must divide num_attention_heads"),
        ({"rope_scaling": {"type": "yarn", "factor": 2}}, "rope_scaling type 'yarn' is not supported"),
    ],
)
def test_bad_config_values(tiny_dir: Path, tmp_path: Path, changes: dict, message: str) -> None:
    d = copy_dir(tiny_dir, tmp_path / "m")
    edit_config(d, **changes)
    with pytest.raises(McpmError, match=message):
        load_model(d)


def test_missing_required_key(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_dir, tmp_path / "m")
    data = json.loads((d / "config.json").read_text())
    del data["vocab_size"]
    (d / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="required key 'vocab_size' is missing"):
        load_model(d)


def test_missing_and_misshaped_tensors(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_dir, tmp_path / "m")
    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="'model.layers.1.self_attn.k_proj.weight' is missing"):
        load_model(d)
    tensors = load_file(tiny_dir / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(95, 64)
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"has shape \(95, 64\), config.json implies \(96, 64\)"):
        load_model(d)


def test_config_claims_fewer_layers_than_weights(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_dir, tmp_path / "m")
    edit_config(d, num_hidden_layers=2)
    with pytest.raises(CheckpointError, match="does not account for"):
        load_model(d)


def test_untied_config_without_lm_head(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_dir, tmp_path / "m")
    edit_config(d, tie_word_embeddings=False)
    with pytest.raises(CheckpointError, match="'lm_head.weight' is missing"):
        load_model(d)


def test_pickle_checkpoint_is_refused_without_unpickling(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    # a pickle that would create a file if it were ever unpickled
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR."
    (d / "pytorch_model.bin").write_bytes(payload.encode())
    with pytest.raises(CheckpointError, match="refuses to unpickle.*convert to safetensors"):
        load_model(d)
    assert not marker.exists()


def test_truncated_safetensors(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_dir, tmp_path / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(d)
    (d / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(d)


def test_missing_shard(tmp_path: Path) -> None:
    d = write_tiny(tmp_path / "m", tiny_minicpm(), shard_bytes=200_000)
    next(d.glob("model-00002-of-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="shard model-00002-of-.* is missing"):
        load_model(d)


def test_missing_tokenizer(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_dir, tmp_path / "m")
    (d / "tokenizer.model").unlink()
    with pytest.raises(McpmError, match="no tokenizer.model or tokenizer.json"):
        load_model(d)


def test_cli_prints_one_line_error_not_traceback(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_dir(tiny_dir, tmp_path / "m")
    edit_config(d, model_type="llama4")
    proc = subprocess.run(
        [sys.executable, "-m", "mcpm.cli", "generate", str(d), "-p", "hi", "--reference"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: config.json: model_type 'llama4' is not supported "
        "(supported model_type values: minicpm, minicpm3, minicpmv)"
    ]
    assert "Traceback" not in proc.stderr


def test_unsupported_family_error_type() -> None:
    from mcpm.export.families import family_for

    with pytest.raises(UnsupportedModelError):
        family_for(None)
