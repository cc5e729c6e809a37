"""Typed views of Hugging Face ``config.json`` files.

Each family declares a frozen dataclass; :func:`parse_config` fills it from the JSON dict, converting and
checking the type of every known key and keeping unknown keys in ``extra`` (they are written back
unchanged). Derived fields (``field(init=False)``) are computed once by the dataclass' ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from mcpm.errors import CheckpointError, McpmError

T = TypeVar("T")


def read_config_json(model_dir: Path) -> dict[str, Any]:
    """Read ``model_dir/config.json`` as a dict, with one-line errors for every way it can be wrong."""
    if not model_dir.exists():
        raise CheckpointError(f"model folder {model_dir} does not exist", "pass a Hugging Face checkpoint folder")
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir} is not a folder", "pass the checkpoint folder, not a file in it")
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing", "a Hugging Face checkpoint folder needs config.json next to its weights"
        )
    return read_json_object(path, CheckpointError)


def read_json_object(path: Path, error: type[McpmError]) -> dict[str, Any]:
    """A JSON file holding an object; garbled text or another JSON type is a one-line ``error``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path} is not valid JSON ({exc})", "restore it from the original checkpoint") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _convert(name: str, value: Any, annotation: Any) -> Any:
    """Convert one JSON value to the field's annotated type, or raise a CheckpointError naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(name, value, arg)
            except CheckpointError as exc:
                errors.append(str(exc))
        raise CheckpointError(errors[0] if errors else f"config.json: {name} has an invalid value {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise CheckpointError(f"config.json: {name} is {value}, not a finite number", "fix config.json")
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        items = value if isinstance(value, list) else [value]
        return tuple(_convert(name, v, args[0]) for v in items)
    elif origin is dict or annotation is dict:
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - programming error in a config class
        raise TypeError(f"unsupported annotation {annotation!r} for {name}")
    type_name = getattr(annotation, "__name__", str(annotation))
    raise CheckpointError(f"config.json: {name} must be {type_name}, got {value!r}", "fix the value in config.json")


def parse_config(cls: type[T], data: dict[str, Any]) -> T:
    """Build the frozen config dataclass ``cls`` from a config.json dict (unknown keys go to ``extra``)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    known = set()
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.name == "extra":
            continue
        known.add(f.name)
        if f.name in data:
            kwargs[f.name] = _convert(f.name, data[f.name], hints[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CheckpointError(f"config.json: required key {f.name!r} is missing", "add it from the original config")
    kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Inverse of :func:`parse_config`: the init fields plus the kept unknown keys, as JSON-ready values."""
    out: dict[str, Any] = dict(config.extra)
    for f in dataclasses.fields(config):
        if not f.init or f.name == "extra":
            continue
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def require(condition: bool, problem: str, fix: str = "fix config.json") -> None:
    """Raise a one-line CheckpointError unless ``condition`` holds."""
    if not condition:
        raise CheckpointError(f"config.json: {problem}", fix)
