"""Run-time int8 quantization of activations (the ``-a8`` schemes, docs/quantization.md), as the kernels do it.

Per row x[K] (float32) and per block b of 32 inputs entirely inside K (inputs after the last full block, K % 32 of
them, stay float):

    amax = max |x[32b : 32b+32]|;  dx = amax / 127;  inv = 1 / dx if dx > 0 else 0
    q    = clip(rint(x * inv), -127, 127)            (round half to even)
    x'   = q * dx

all in float32. ``fake_quant_int8`` (torch) and ``fake_quant_int8_np`` (NumPy) return x' bit-exactly alike;
``quantize_int8_np`` returns (q, dx) for kernel tests.
"""

from __future__ import annotations

import numpy as np
import torch

QBLOCK = 32  # inputs per activation block (one float32 scale each, as ggml's Q8_0)
QMAX = 127


def fake_quant_int8(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> x' [..., K] (the dequantized int8 activations), computed in float32, in x's dtype."""
    k = x.shape[-1]
    nb = k // QBLOCK
    if nb == 0:
        return x
    x32 = x.float()
    head = x32[..., : nb * QBLOCK].reshape(*x.shape[:-1], nb, QBLOCK)
    dx = head.abs().amax(dim=-1, keepdim=True) / QMAX  # float32 / float32
    one = torch.ones_like(dx)
    inv = torch.where(dx > 0, torch.div(one, torch.where(dx > 0, dx, one)), torch.zeros_like(dx))
    q = torch.clamp(torch.round(head * inv), -QMAX, QMAX).to(torch.int8).float()  # half to even; -0 -> 0
    out = (q * dx).reshape(*x.shape[:-1], nb * QBLOCK)
    return torch.cat((out, x32[..., nb * QBLOCK :]), dim=-1).to(x.dtype)


def quantize_int8_np(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [..., K] -> (q int8 [..., nb*32], dx float32 [..., nb]) with nb = K // 32 (the float tail is dropped)."""
    x32 = np.asarray(x, dtype=np.float32)
    nb = x32.shape[-1] // QBLOCK
    head = x32[..., : nb * QBLOCK].reshape(*x32.shape[:-1], nb, QBLOCK)
    dx = (np.abs(head).max(axis=-1, initial=np.float32(0)) / np.float32(QMAX)).astype(np.float32)
    inv = np.divide(np.float32(1), dx, out=np.zeros_like(dx), where=dx > 0).astype(np.float32)
    q = np.clip(np.rint(head * inv[..., None]), -QMAX, QMAX).astype(np.int8)  # np.rint: half to even
    return q.reshape(*x32.shape[:-1], nb * QBLOCK), dx


def fake_quant_int8_np(x: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`fake_quant_int8` (bit-identical), in x's dtype."""
    x = np.asarray(x)
    x32 = x.astype(np.float32)
    nb = x32.shape[-1] // QBLOCK
    if nb == 0:
        return x.copy()
    q, dx = quantize_int8_np(x32)
    out = (q.reshape(*x32.shape[:-1], nb, QBLOCK).astype(np.float32) * dx[..., None]).astype(np.float32)
    return np.concatenate([out.reshape(*x32.shape[:-1], nb * QBLOCK), x32[..., nb * QBLOCK :]], axis=-1).astype(
        x.dtype)
