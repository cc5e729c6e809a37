"""The three inputs of the compiled ``vision`` entry for one image slice (docs/minicpmv.md), NumPy only.

For a slice of rows x cols patches (n = rows * cols, patch i = r * cols + c, p = patch size, G = position grid):

    patches[i, ch*p*p + ky*p + kx] = pixels[ch, r*p + ky, c*p + kx]          [n, 3*p*p]
    pos_interp[i, gy*G + gx]       = wy[r, gy] * wx[c, gx]                    [n, G*G]
    key_pos[i, :]                  = sincos_2d(D, rows, cols)[i]              [n, D]

wy = aa_bicubic_matrix(G, rows), wx = aa_bicubic_matrix(G, cols): the 1-D weights with which
``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` resizes the G x G position table to
rows x cols (it is separable, so the 2-D weight of table entry (gy, gx) for output (r, c) is the product).
This module is also the reference of the C runtime's implementation: the formulas are written out explicitly.
"""

from __future__ import annotations

import math

import numpy as np

from mcpm.export.models.minicpmv.config import MiniCPMVConfig

BICUBIC_A = -0.5  # Keys' cubic convolution parameter of PyTorch's antialiased bicubic filter


def patchify(pixels: np.ndarray, patch: int) -> np.ndarray:
    """pixels [3, H, W] (H, W multiples of ``patch``) -> patches [n, 3*p*p] (the 14x14/14 conv as a linear map).

    patches[r*cols + c, ch*p*p + ky*p + kx] = pixels[ch, r*p + ky, c*p + kx]."""
    ch, h, w = pixels.shape
    assert h % patch == 0 and w % patch == 0, f"slice {h}x{w} is not a multiple of the patch size {patch}"
    rows, cols = h // patch, w // patch
    x = pixels.astype(np.float32).reshape(ch, rows, patch, cols, patch)  # [3, rows, p, cols, p]
    return np.ascontiguousarray(x.transpose(1, 3, 0, 2, 4).reshape(rows * cols, ch * patch * patch))


def _cubic(x: float) -> float:
    """Keys' cubic convolution kernel with a = -0.5 (PyTorch's aa_filter for bicubic)."""
    a, x = BICUBIC_A, abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return 0.0


def aa_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """M [n_out, n_in] float32 with F.interpolate(v, n_out, bicubic, antialias, align_corners=False) = M @ v.

    PyTorch's separable antialiased filter (UpSampleKernel.cpp, _compute_indices_weights_aa), in float64:
        scale   = n_in / n_out                      (> 1 shrinks)
        support = 2 * scale if scale >= 1 else 2    (bicubic: interp_size 4, half of it, stretched when shrinking)
        inv     = 1 / scale if scale >= 1 else 1
        for output o: center = scale * (o + 0.5)
            inputs j in [trunc(center - support + 0.5) clamped >= 0, trunc(center + support + 0.5) clamped <= n_in)
            w_j = cubic((j - center + 0.5) * inv), then divided by their sum (when non-zero).
    n_in == n_out gives the identity (cubic(0) = 1, cubic(+-1) = cubic(+-2) = 0)."""
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    m = np.zeros((n_out, n_in), np.float64)
    for o in range(n_out):
        center = scale * (o + 0.5)
        lo = max(math.trunc(center - support + 0.5), 0)
        hi = min(math.trunc(center + support + 0.5), n_in)
        w = np.array([_cubic((j - center + 0.5) * inv) for j in range(lo, hi)])
        total = w.sum()
        m[o, lo:hi] = w / total if total != 0.0 else w
    return m.astype(np.float32)


def pos_interp(rows: int, cols: int, grid: int) -> np.ndarray:
    """[rows*cols, grid*grid] float32: row r*cols + c holds wy[r, gy] * wx[c, gx] at column gy*grid + gx, so that
    pos_interp @ table[G*G, Dv] is the G x G position table resized to rows x cols (timm's resample_abs_pos_embed).
    rows == cols == grid gives the identity."""
    wy = aa_bicubic_matrix(grid, rows).astype(np.float64)  # [rows, G]
    wx = aa_bicubic_matrix(grid, cols).astype(np.float64)  # [cols, G]
    out = wy[:, None, :, None] * wx[None, :, None, :]  # [rows, cols, G, G]
    return out.reshape(rows * cols, grid * grid).astype(np.float32)


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """pos [M] -> [M, dim] float64: [sin(pos * w_k), cos(pos * w_k)], w_k = 10000^(-k / (dim/2)), k < dim/2."""
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    out = pos.astype(np.float64)[:, None] * omega[None, :]  # [M, dim/2]
    return np.concatenate((np.sin(out), np.cos(out)), axis=1)


def key_pos(dim: int, rows: int, cols: int) -> np.ndarray:
    """[rows*cols, dim] float32 (resampler.sincos_2d): row-major grid; the first dim/2 columns encode the column
    index x = i % cols, the last dim/2 the row index y = i // cols; computed in float64."""
    ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")  # [rows, cols] each
    table = np.concatenate((_sincos_1d(dim // 2, xs.reshape(-1)), _sincos_1d(dim // 2, ys.reshape(-1))), axis=1)
    return table.astype(np.float32)


def vision_inputs(pixels: np.ndarray, cfg: MiniCPMVConfig) -> dict[str, np.ndarray]:
    """pixels [3, H, W] (normalized) -> {patches [n, 3p²], pos_interp [n, G²], key_pos [n, D]}.

    Sides that are not multiples of the patch size are zero-padded on the right / bottom (as the reference tower
    does; the slicer never produces them)."""
    p = cfg.patch_size
    _, h, w = pixels.shape
    rows, cols = -(-h // p), -(-w // p)
    if (rows * p, cols * p) != (h, w):
        pixels = np.pad(pixels, ((0, 0), (0, rows * p - h), (0, cols * p - w)))
    return {
        "patches": patchify(pixels, p),
        "pos_interp": pos_interp(rows, cols, cfg.vision_pos_grid),
        "key_pos": key_pos(cfg.hidden_size, rows, cols),
    }
