"""Open and validate a bundle folder (every field of mcpm-config.json, file sizes, checksums on request)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcpm.errors import McpmError
from mcpm.export.bundle.weights_file import BundleError, WeightsFile
from mcpm.export.compiler.plan import Plan

CONFIG_NAME = "mcpm-config.json"
FORMAT_VERSION = 1

# key -> expected JSON type(s)
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "exporter_version": str,
    "family": str,
    "model_config": dict,
    "quantization": str,
    "context_length": int,
    "prefill_chunk": int,
    "chat_template": dict,
    "bos_token_id": int,
    "stop_token_ids": list,
    "tokenizer": dict,
    "target": dict,
    "files": dict,
}


@dataclass
class Bundle:
    path: Path
    config: dict[str, Any]
    plan: Plan
    weights: WeightsFile


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_config(bundle_dir: Path) -> dict[str, Any]:
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle folder {bundle_dir} does not exist", "pass the folder mcpm-export wrote")
    path = bundle_dir / CONFIG_NAME
    if not path.is_file():
        raise BundleError(f"{path} is missing: {bundle_dir} is not an mcpm bundle", "pass the folder mcpm-export wrote")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})", "re-export the bundle") from None
    except RecursionError:
        raise BundleError(f"{path} is nested too deeply to be a bundle config", "re-export the bundle") from None
    if not isinstance(config, dict):
        raise BundleError(f"{path} must hold a JSON object", "re-export the bundle")
    for key, kind in REQUIRED.items():
        if key not in config:
            raise BundleError(f"{path}: required field {key!r} is missing", "re-export the bundle")
        if not isinstance(config[key], kind) or isinstance(config[key], bool) and kind is int:
            raise BundleError(f"{path}: field {key!r} has the wrong type", "re-export the bundle")
    if config["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"bundle format version {config['format_version']} is not supported (this mcpm reads {FORMAT_VERSION})",
            "re-export the bundle with this mcpm",
        )
    if not 0 < config["prefill_chunk"] <= config["context_length"]:
        raise BundleError(f"{path}: prefill_chunk must be in 1..context_length", "re-export the bundle")
    tok_file = config["tokenizer"].get("file")
    if not isinstance(tok_file, str) or not plain_file_name(tok_file) or tok_file not in config["files"]:
        raise BundleError(f"{path}: tokenizer file {tok_file!r} is not a file of the bundle", "re-export the bundle")
    for name in config["files"]:
        if not plain_file_name(name):
            raise BundleError(f"{path}: bundle file name {name!r} leaves the bundle folder", "re-export the bundle")
    _check_fields(path, config)
    return config


TOKENIZER_KINDS = ("sentencepiece", "tokenizers")


def _check_fields(path: Path, config: dict[str, Any]) -> None:
    """The fields whose damage used to be accepted silently: family, tokenizer kind, token ids, file records."""
    from mcpm.export.families import FAMILIES

    def fail(problem: str) -> BundleError:
        return BundleError(f"{path}: {problem}", "re-export the bundle")

    if config["family"] not in FAMILIES:
        raise fail(f"family {config['family']!r} is not one this mcpm runs ({', '.join(FAMILIES)})")
    kind = config["tokenizer"].get("kind")
    if kind not in TOKENIZER_KINDS:
        raise fail(f"tokenizer.kind {kind!r} is not one of {', '.join(TOKENIZER_KINDS)}")
    vocab = config["model_config"].get("vocab_size")
    if not _is_int(vocab) or vocab <= 0:
        raise fail("model_config.vocab_size is not a positive integer")

    def token_id(value: object) -> bool:
        return _is_int(value) and 0 <= value < vocab  # type: ignore[operator]

    if not token_id(config["bos_token_id"]):
        raise fail(f"bos_token_id {config['bos_token_id']!r} is not a token id in 0..{vocab - 1}")
    bad = [v for v in config["stop_token_ids"] if not token_id(v)]
    if bad:
        raise fail(f"stop_token_ids holds {bad[0]!r}, not a token id in 0..{vocab - 1}")
    for name, info in config["files"].items():
        if not (isinstance(info, dict) and _is_int(info.get("bytes")) and info["bytes"] >= 0
                and isinstance(info.get("sha256"), str)):
            raise fail(f"files entry {name!r} is not {{\"bytes\": N, \"sha256\": HEX}}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def plain_file_name(name: str) -> bool:
    """A plain file name inside the bundle folder (the C runtime's mcpm_plain_file_name): not empty, no '/' or
    '\\', not '.' or '..', no control characters."""
    return name not in ("", ".", "..") and not any(c in "/\\" or ord(c) < 0x20 for c in name)


def check_files(bundle_dir: Path, files: dict[str, Any], verify: bool) -> None:
    for name, info in files.items():
        path = bundle_dir / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise BundleError(f"bundle file name {name!r} leaves the bundle folder", "re-export the bundle")
        if not path.is_file():
            raise BundleError(f"bundle file {name} is missing", "re-copy the whole bundle folder")
        size = path.stat().st_size
        if size != info.get("bytes"):
            raise BundleError(f"bundle file {name} has {size} bytes, expected {info.get('bytes')} (truncated?)",
                              "re-copy the whole bundle folder")
        if verify and sha256_of(path) != info.get("sha256"):
            raise BundleError(f"bundle file {name} fails its SHA-256 check", "re-copy the whole bundle folder")


def read_plan(bundle_dir: Path) -> Plan:
    """The validated plan (magic, version, every storage, offset, dtype and kernel name)."""
    path = bundle_dir / "plan.json"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is unreadable ({exc})", "re-export the bundle") from None
    try:
        return Plan.from_json(text)
    except McpmError as exc:
        raise BundleError(f"{path}: {exc.problem}", "re-export the bundle") from None


def open_bundle(bundle_dir: Path, verify: bool | None = False) -> Bundle:
    """Validated bundle; ``verify`` checks SHA-256 of every file and CRC-32 of every tensor; None does that once
    per bundle (folder, file sizes and times), remembered in the cache folder: damage is found on first use at the
    cost of one read of the files, and later loads stay fast."""
    bundle_dir = Path(bundle_dir)
    config = read_config(bundle_dir)
    stamp = _verified_stamp(bundle_dir, config["files"]) if verify is None else None
    if stamp is not None:
        verify = not stamp.is_file()
    check_files(bundle_dir, config["files"], bool(verify))
    plan = read_plan(bundle_dir)
    for key, got in (("context_length", plan.max_ctx), ("prefill_chunk", plan.chunk)):
        if config[key] != got:
            raise BundleError(f"{bundle_dir / CONFIG_NAME}: {key} {config[key]} differs from plan.json's {got}",
                              "re-export the bundle (its files come from two exports)")
    weights = WeightsFile(bundle_dir / "weights.bin", verify=bool(verify))
    if stamp is not None and verify:
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(str(bundle_dir.resolve()) + "\n")
        except OSError:  # a read-only cache: verify again next time
            pass
    return Bundle(bundle_dir, config, plan, weights)


def _verified_stamp(bundle_dir: Path, files: dict[str, Any]) -> Path | None:
    """The cache file that says this bundle (these files, these sizes and modification times) passed --verify."""
    from mcpm.runtime.build import default_cache_dir

    h = hashlib.sha256(str(bundle_dir.resolve()).encode())
    for name in sorted([*files, CONFIG_NAME]):
        try:
            st = (bundle_dir / name).stat()
        except OSError:
            return None  # check_files names the missing file
        h.update(f"\0{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode())
    return default_cache_dir() / "verified" / h.hexdigest()[:32]
