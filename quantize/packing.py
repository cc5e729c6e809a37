"""NumPy quantize / pack / dequantize of one weight ``W[N, K]``; the layout is specified in docs/quantization.md.

int4 layouts (both schemes), K padded with zeros to a whole number of groups Kp:
    qweight uint32[N, Kp/8]   word w of row n holds k = 8w..8w+7, element k at bits 4*(k % 8) (low nibble first)
    scales  float16[N, Kp/G]  one per group of G consecutive k
    mins    float16[N, Kp/G]  (asymmetric only)
    symmetric:  W[n,k] ~= (nibble - 8) * scales[n, k // G]
    asymmetric: W[n,k] ~= nibble * scales[n, k // G] + mins[n, k // G]
int8 per channel: qweight int8[N, K], scales float16[N]:  W[n,k] ~= q * scales[n]
float: weight float16[N, K] or float32[N, K].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcpm.quantize.schemes import QuantScheme


@dataclass
class PackedWeight:
    scheme: QuantScheme
    shape: tuple[int, int]  # logical (N, K)
    tensors: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _inverse(d16: np.ndarray) -> np.ndarray:
    """float32 reciprocal of the fp16-rounded scales (0 where the scale is 0)."""
    d32 = d16.astype(np.float32)
    safe = np.where(d32 == 0, np.float32(1), d32)
    return np.where(d32 == 0, np.float32(0), np.float32(1) / safe).astype(np.float32)


def _groups(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """W[N, K] -> zero-padded groups [N, Kp/G, G] and a mask of the real (unpadded) elements."""
    n, k = w.shape
    kp = -(-k // group) * group
    padded = np.zeros((n, kp), dtype=np.float32)
    padded[:, :k] = w
    mask = np.zeros((n, kp), dtype=bool)
    mask[:, :k] = True
    return padded.reshape(n, kp // group, group), mask.reshape(n, kp // group, group)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """uint8 nibbles [N, Kp] (Kp % 8 == 0) -> uint32 words [N, Kp/8], element j of a word at bits 4j."""
    n, kp = q.shape
    q32 = q.reshape(n, kp // 8, 8).astype(np.uint32)
    shifts = (np.arange(8, dtype=np.uint32) * 4)[None, None, :]
    return np.bitwise_or.reduce(q32 << shifts, axis=-1).astype(np.uint32)


def unpack_nibbles(words: np.ndarray) -> np.ndarray:
    n, w = words.shape
    shifts = (np.arange(8, dtype=np.uint32) * 4)[None, None, :]
    return ((words[:, :, None] >> shifts) & 0xF).astype(np.uint8).reshape(n, w * 8)


def quantize(w: np.ndarray, scheme: QuantScheme) -> PackedWeight:
    """Quantize float W[N, K] with ``scheme``."""
    if w.ndim != 2:
        raise ValueError(f"quantize expects a 2-D weight, got shape {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    n, k = w.shape
    if scheme.kind == "float":
        return PackedWeight(scheme, (n, k), {"weight": w.astype(scheme.float_dtype)})
    if scheme.kind == "int8-channel":
        amax = np.abs(w).max(axis=1)
        d16 = (amax / np.float32(127)).astype(np.float16)
        q = np.clip(np.rint(w * _inverse(d16)[:, None]), -127, 127).astype(np.int8)
        return PackedWeight(scheme, (n, k), {"qweight": q, "scales": d16})
    g, mask = _groups(w, scheme.group_size)
    if scheme.kind == "int4-sym":
        # the element of largest magnitude maps to -8, so all 16 levels are used (as llama.cpp's Q4_0)
        idx = np.abs(g).argmax(axis=-1)[..., None]
        signed_max = np.take_along_axis(g, idx, axis=-1)[..., 0]
        d16 = (signed_max / np.float32(-8)).astype(np.float16)
        q = np.clip(np.rint(g * _inverse(d16)[..., None]), -8, 7) + 8
        q = np.where(mask, q, 8)  # padding dequantizes to exactly 0
        tensors = {"qweight": pack_nibbles(q.astype(np.uint8).reshape(n, -1)), "scales": d16}
    else:  # int4-asym
        lo = np.where(mask, g, np.inf).min(axis=-1)
        hi = np.where(mask, g, -np.inf).max(axis=-1)
        d16 = ((hi - lo) / np.float32(15)).astype(np.float16)
        m16 = lo.astype(np.float16)
        q = np.clip(np.rint((g - m16.astype(np.float32)[..., None]) * _inverse(d16)[..., None]), 0, 15)
        q = np.where(mask, q, 0)
        tensors = {"qweight": pack_nibbles(q.astype(np.uint8).reshape(n, -1)), "scales": d16, "mins": m16}
    return PackedWeight(scheme, (n, k), tensors)


def dequantize(p: PackedWeight) -> np.ndarray:
    """float32 W[N, K] from the packed tensors (what a kernel computes in registers)."""
    n, k = p.shape
    t = p.tensors
    if p.scheme.kind == "float":
        return t["weight"].astype(np.float32)
    if p.scheme.kind == "int8-channel":
        return t["qweight"].astype(np.float32) * t["scales"].astype(np.float32)[:, None]
    group = p.scheme.group_size
    q = unpack_nibbles(t["qweight"]).astype(np.float32).reshape(n, -1, group)
    d = t["scales"].astype(np.float32)[..., None]
    if p.scheme.kind == "int4-sym":
        w = (q - np.float32(8)) * d
    else:
        w = q * d + t["mins"].astype(np.float32)[..., None]
    return w.reshape(n, -1)[:, :k]
