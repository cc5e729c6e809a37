"""weights.bin and mcpm-config.json: round trip, alignment, and a clear error for every kind of damage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mcpm.errors import McpmError
from mcpm.export.bundle.reader import FORMAT_VERSION, check_files, read_config, sha256_of
from mcpm.export.bundle.target import check_runs_here, cpu_flags, host_target
from mcpm.export.bundle.weights_file import ALIGN, BundleError, WeightsFile, write_weights


def sample_tensors() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        ("embed.qweight", rng.integers(0, 2**32, (7, 3), dtype=np.uint32)),
        ("embed.scales", rng.standard_normal((7, 1)).astype(np.float16)),
        ("final_norm", rng.standard_normal(13).astype(np.float32)),
        ("layers.0.q8", rng.integers(-127, 128, (5, 9), dtype=np.int8)),
        ("scalar_table", np.arange(4, dtype=np.int32)),
    ]


@pytest.fixture
def weights_path(tmp_path: Path) -> Path:
    path = tmp_path / "weights.bin"
    write_weights(path, iter(sample_tensors()), count=5)
    return path


def test_round_trip_and_alignment(weights_path: Path) -> None:
    wf = WeightsFile(weights_path, verify=True)
    for name, array in sample_tensors():
        got = wf.tensor(name)
        assert got.dtype == array.dtype and np.array_equal(got, array)
        assert (wf.data_offset + wf.entries[name].offset) % ALIGN == 0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
        (lambda b: b[:8] + (9).to_bytes(4, "little") + b[12:], "format version 9"),
        (lambda b: b[: len(b) - 10], "truncated"),
        (lambda b: b[:40], "truncated"),
        (lambda b: b[:64] + bytes([b[64] ^ 1]) + b[65:], "table checksum mismatch"),
    ],
)
def test_damaged_header_or_table(weights_path: Path, damage, message: str) -> None:
    weights_path.write_bytes(damage(weights_path.read_bytes()))
    with pytest.raises(BundleError, match=message):
        WeightsFile(weights_path)


def test_flipped_data_bit_found_by_verify(weights_path: Path) -> None:
    raw = bytearray(weights_path.read_bytes())
    wf = WeightsFile(weights_path)
    e = wf.entries["final_norm"]
    raw[wf.data_offset + e.offset + 5] ^= 0x10
    weights_path.write_bytes(bytes(raw))
    WeightsFile(weights_path)  # sizes still fine: checksums only on request
    with pytest.raises(BundleError, match="checksum mismatch in tensor 'final_norm'"):
        WeightsFile(weights_path, verify=True)


def test_missing_tensor_name(weights_path: Path) -> None:
    with pytest.raises(BundleError, match="no tensor 'lm_head'"):
        WeightsFile(weights_path).tensor("lm_head")


def minimal_config(tmp_path: Path, weights_path: Path) -> dict:
    return {
        "format_version": FORMAT_VERSION, "exporter_version": "0", "family": "minicpm",
        "model_config": {"vocab_size": 4096},
        "quantization": "q4g32", "context_length": 64, "prefill_chunk": 16, "chat_template": {},
        "bos_token_id": 1, "stop_token_ids": [2], "tokenizer": {"kind": "sentencepiece", "file": "weights.bin"},
        "target": {},
        "files": {"weights.bin": {"bytes": weights_path.stat().st_size, "sha256": sha256_of(weights_path)}},
    }


def test_config_validation(tmp_path: Path, weights_path: Path) -> None:
    cfg = minimal_config(tmp_path, weights_path)
    (tmp_path / "mcpm-config.json").write_text(json.dumps(cfg))
    assert read_config(tmp_path)["quantization"] == "q4g32"
    check_files(tmp_path, cfg["files"], verify=True)
    for key, value, message in [
        ("format_version", 99, "format version 99 is not supported"),
        ("context_length", "big", "'context_length' has the wrong type"),
        ("prefill_chunk", 0, "prefill_chunk must be in"),
        ("tokenizer", {"kind": "sentencepiece", "file": "../tokenizer.model"}, "is not a file of the bundle"),
        ("tokenizer", {"kind": "sentencepiece"}, "is not a file of the bundle"),
        ("files", {"../weights.bin": {"bytes": 1}, "weights.bin": {}}, "leaves the bundle folder"),
    ]:
        (tmp_path / "mcpm-config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(BundleError, match=message):
            read_config(tmp_path)
    del cfg["family"]
    (tmp_path / "mcpm-config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="required field 'family' is missing"):
        read_config(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not an mcpm bundle"):
        read_config(tmp_path / "empty")
    with pytest.raises(BundleError, match="does not exist"):
        read_config(tmp_path / "nowhere")


def test_file_size_and_hash_checks(tmp_path: Path, weights_path: Path) -> None:
    files = minimal_config(tmp_path, weights_path)["files"]
    raw = bytearray(weights_path.read_bytes())
    raw[-1] ^= 1
    weights_path.write_bytes(bytes(raw))
    check_files(tmp_path, files, verify=False)
    with pytest.raises(BundleError, match="fails its SHA-256 check"):
        check_files(tmp_path, files, verify=True)
    weights_path.write_bytes(bytes(raw[:-3]))
    with pytest.raises(BundleError, match="expected .* \\(truncated\\?\\)"):
        check_files(tmp_path, files, verify=False)
    with pytest.raises(BundleError, match="leaves the bundle folder"):
        check_files(tmp_path, {"../x": {"bytes": 1}}, verify=False)


def test_host_target_records_features_and_refuses_missing_ones() -> None:
    record = host_target().record()
    assert set(record["features"]) <= cpu_flags()
    check_runs_here(record)
    with pytest.raises(McpmError, match="CPU features this machine lacks: made_up_feature"):
        check_runs_here({**record, "features": [*record["features"], "made_up_feature"]})
    with pytest.raises(McpmError, match="built for 'android'"):
        check_runs_here({**record, "name": "android"})
