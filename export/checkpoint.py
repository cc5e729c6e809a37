"""Reading and writing Hugging Face safetensors checkpoints (single file or sharded with an index).

Pickle checkpoints (``*.bin``, ``*.pt``) are refused: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import struct
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mcpm.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _shard_map(model_dir: Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file that holds it."""
    index = model_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(f"{index} is not a valid safetensors index (no weight_map)") from None
        indexed = {name: model_dir / str(fname) for name, fname in weight_map.items()}
        for path in set(indexed.values()):
            if not path.is_file():
                raise CheckpointError(f"shard {path.name} named in {INDEX_NAME} is missing", "download every shard")
        return indexed
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{model_dir} holds only pickle weights ({', '.join(pickles[:3])}); mcpm refuses to unpickle them",
                "convert to safetensors first (e.g. load with transformers and save_pretrained(..., "
                "safe_serialization=True))",
            )
        raise CheckpointError(f"no *.safetensors weights in {model_dir}", "add model.safetensors or its shards")
    files: dict[str, Path] = {}
    for path in shards:
        for name in _header(path):
            files[name] = path
    return files


def _header(path: Path) -> dict[str, Any]:
    """Tensor entries of a safetensors header, with a clear error for a truncated or garbled file."""
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 * 2**20:
                raise ValueError("header too large")
            header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is not a readable safetensors file", "re-download or re-save it") from None
    if path.stat().st_size < 8 + size + end:
        raise CheckpointError(f"{path} is truncated ({path.stat().st_size} bytes)", "re-download it")
    return header


class TensorReader:
    """Lazy access to every tensor of a checkpoint folder; use as a context manager."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._files = _shard_map(model_dir)
        self._stack = ExitStack()
        self._handles: dict[Path, Any] = {}

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def names(self) -> list[str]:
        return list(self._files)

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def _handle(self, path: Path) -> Any:
        if path not in self._handles:
            _header(path)  # truncation check before safetensors maps it
            self._handles[path] = self._stack.enter_context(safe_open(str(path), framework="pt"))
        return self._handles[path]

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Tensor ``name``; with ``shape`` given, a mismatch is a one-line CheckpointError."""
        if name not in self._files:
            raise CheckpointError(f"tensor {name!r} is missing from {self.model_dir}", "the checkpoint is incomplete")
        tensor = self._handle(self._files[name]).get_tensor(name)
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(tensor.shape)}, config.json implies {tuple(shape)}",
                "config.json and the weights do not belong together",
            )
        if tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise CheckpointError(f"tensor {name!r} has dtype {tensor.dtype}; expected float32, float16 or bfloat16")
        return tensor


class CheckpointWriter:
    """Streams tensors into safetensors shards of at most ``shard_bytes`` (an index is written when sharded)."""

    def __init__(self, out_dir: Path, shard_bytes: int = 2 * 2**30) -> None:
        self.out_dir = out_dir
        self.shard_bytes = shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self._total = 0
        out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self.shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += nbytes
        self._total += nbytes

    def _flush(self) -> None:
        index = len(self._shards)
        save_file(self._pending, str(self.out_dir / f"shard-{index:05d}.safetensors"), metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> None:
        if self._pending or not self._shards:
            self._flush()
        count = len(self._shards)
        if count == 1:
            (self.out_dir / "shard-00000.safetensors").rename(self.out_dir / SINGLE_NAME)
            return
        weight_map: dict[str, str] = {}
        for i, names in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            (self.out_dir / f"shard-{i:05d}.safetensors").rename(self.out_dir / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self._total}, "weight_map": weight_map}
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

