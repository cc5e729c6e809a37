"""``weights.bin``: every tensor 64-byte aligned for mmap, a binary table with a CRC-32 per tensor.

Layout (little-endian), specified in docs/bundle-format.md:
    header  64 bytes   magic b"MCPMWGT1", u32 version, u32 tensor count, u64 table offset, u64 data offset,
                       u64 data bytes, u32 CRC-32 of the table, u32 CRC-32 of the data, 16 bytes zero
    table   count x 128 bytes: name[64] (UTF-8, NUL padded), u32 dtype code, u32 ndim, i64 shape[4],
                       u64 offset (from data offset, multiple of 64), u64 bytes, u32 CRC-32, 4 bytes zero
    data    tensors at their offsets, zero padding between them
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcpm.errors import McpmError

MAGIC = b"MCPMWGT1"
VERSION = 1
ALIGN = 64
HEADER = struct.Struct("<8sIIQQQII16x")  # 64 bytes
ENTRY = struct.Struct("<64sII4qQQI4x")  # 128 bytes
DTYPES = {"float32": 0, "float16": 1, "uint32": 2, "int8": 3, "int32": 4, "uint8": 5}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_NDIM = 4


class BundleError(McpmError):
    """A bundle file is truncated, corrupted or from another format version."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # from the data section's start
    nbytes: int
    crc32: int


def _crc32(data: np.ndarray, block: int = 1 << 24) -> int:
    """CRC-32 of a (memory-mapped) byte array, 16 MiB at a time."""
    crc = 0
    for start in range(0, len(data), block):
        crc = zlib.crc32(data[start : start + block].tobytes(), crc)
    return crc


def _align(x: int) -> int:
    return -(-x // ALIGN) * ALIGN


def write_weights(path: Path, tensors: Iterable[tuple[str, np.ndarray]], count: int) -> list[TensorEntry]:
    """Stream ``count`` named arrays into ``path`` (only one tensor is held at a time)."""
    table_offset = HEADER.size
    data_offset = _align(table_offset + count * ENTRY.size)
    entries: list[TensorEntry] = []
    data_crc = 0
    with path.open("wb") as f:
        f.write(b"\0" * data_offset)  # header and table are written last
        pos = 0
        for name, array in tensors:
            if array.dtype.name not in DTYPES or array.ndim > MAX_NDIM or len(name.encode()) >= 64:
                raise ValueError(f"cannot store tensor {name!r} ({array.dtype}, ndim {array.ndim})")
            raw = np.ascontiguousarray(array).tobytes()
            pad = _align(pos) - pos
            f.write(b"\0" * pad)
            data_crc = zlib.crc32(b"\0" * pad, data_crc)
            pos += pad
            f.write(raw)
            data_crc = zlib.crc32(raw, data_crc)
            entries.append(TensorEntry(name, array.dtype.name, tuple(array.shape), pos, len(raw), zlib.crc32(raw)))
            pos += len(raw)
        if len(entries) != count:
            raise ValueError(f"expected {count} tensors, got {len(entries)}")
        table = b"".join(_pack_entry(e) for e in entries)
        f.seek(0)
        f.write(HEADER.pack(MAGIC, VERSION, count, table_offset, data_offset, pos, zlib.crc32(table), data_crc))
        f.write(table)
    return entries


def _pack_entry(e: TensorEntry) -> bytes:
    shape = list(e.shape) + [0] * (MAX_NDIM - len(e.shape))
    return ENTRY.pack(e.name.encode(), DTYPES[e.dtype], len(e.shape), *shape, e.offset, e.nbytes, e.crc32)


class WeightsFile:
    """Validated, memory-mapped ``weights.bin``; ``verify`` also checks every CRC-32."""

    def __init__(self, path: Path, verify: bool = False) -> None:
        self.path = path
        if not path.is_file():
            raise BundleError(f"{path} is missing", "re-export the bundle")
        size = path.stat().st_size
        if size < HEADER.size:
            raise BundleError(f"{path} is truncated ({size} bytes)", "re-export or re-copy the bundle")
        with path.open("rb") as f:
            magic, version, count, table_offset, data_offset, data_bytes, table_crc, data_crc = HEADER.unpack(
                f.read(HEADER.size)
            )
            if magic != MAGIC:
                raise BundleError(f"{path} is not an mcpm weights file (bad magic)", "re-export the bundle")
            if version != VERSION:
                raise BundleError(
                    f"{path} has weights format version {version}, this mcpm reads {VERSION}",
                    "re-export the bundle with this mcpm",
                )
            if table_offset != HEADER.size or data_offset < table_offset + count * ENTRY.size:
                raise BundleError(f"{path} has a corrupted header", "re-export the bundle")
            if size < data_offset + data_bytes:
                raise BundleError(f"{path} is truncated ({size} of {data_offset + data_bytes} bytes)", "re-copy it")
            table = f.read(count * ENTRY.size)
        if zlib.crc32(table) != table_crc:
            raise BundleError(f"{path}: tensor table checksum mismatch", "the file is corrupted: re-copy it")
        self.data_offset, self.data_bytes, self._data_crc = data_offset, data_bytes, data_crc
        self.entries = {e.name: e for e in (self._unpack(table[i * ENTRY.size : (i + 1) * ENTRY.size])
                                             for i in range(count))}
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        if verify:
            self.verify()

    def _unpack(self, raw: bytes) -> TensorEntry:
        name_b, code, ndim, *rest = ENTRY.unpack(raw)
        shape, offset, nbytes, crc = tuple(rest[:MAX_NDIM]), rest[4], rest[5], rest[6]
        name = name_b.rstrip(b"\0").decode("utf-8", errors="replace")
        if code not in DTYPE_NAMES or not 0 <= ndim <= MAX_NDIM or any(d < 0 for d in shape[:ndim]):
            raise BundleError(f"{self.path}: tensor {name!r} has a corrupted entry", "re-export the bundle")
        dtype = DTYPE_NAMES[code]
        expected = int(np.prod(shape[:ndim], dtype=np.int64)) * np.dtype(dtype).itemsize
        if offset % ALIGN or nbytes != expected or offset + nbytes > self.data_bytes:
            raise BundleError(f"{self.path}: tensor {name!r} lies outside the file or is misaligned", "re-export")
        return TensorEntry(name, dtype, tuple(shape[:ndim]), offset, nbytes, crc)

    def verify(self) -> None:
        data = self._map[self.data_offset : self.data_offset + self.data_bytes]
        if _crc32(data) != self._data_crc:
            bad = next((e.name for e in self.entries.values() if _crc32(self._raw(e)) != e.crc32), "padding")
            raise BundleError(f"{self.path}: checksum mismatch in tensor {bad!r}", "the file is corrupted: re-copy it")

    def _raw(self, e: TensorEntry) -> np.ndarray:
        start = self.data_offset + e.offset
        return self._map[start : start + e.nbytes]

    def tensor(self, name: str) -> np.ndarray:
        if name not in self.entries:
            raise BundleError(f"{self.path} has no tensor {name!r}", "the bundle and its plan do not match")
        e = self.entries[name]
        return self._raw(e).view(np.dtype(e.dtype)).reshape(e.shape)
