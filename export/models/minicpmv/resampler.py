"""Resampler2 of MiniCPM-V 2.0: 64 learned queries read the vision features with one cross-attention.

    kv   = ln_kv(kv_proj(x))                           x [B, h*w, vision_hidden] -> [B, h*w, d]   (d = LM hidden)
    q    = ln_q(query)                                 [Q, d], Q = 64 = 8 x 8
    attn = MHA(query = q + sincos(8, 8),  key = kv + sincos(h, w),  value = kv)     heads = d / 128
    out  = ln_post(attn) @ proj                        [B, Q, d]   (proj is applied as x @ P, not x @ P^T)

MHA is torch's ``nn.MultiheadAttention`` arithmetic: one packed in-projection (rows q, k, v) with bias, softmax
attention per head with scale 1/sqrt(d/heads), out-projection with bias. LayerNorm eps 1e-6.

sincos(h, w) is the MAE-style 2D sin-cos table [h*w, d] of a patch grid in row-major order: the first d/2 columns
encode the column (x) index, the last d/2 the row (y) index; each half is [sin(p * w_k), cos(p * w_k)] with
w_k = 10000^(-k / (d/4)), k = 0 .. d/4 - 1. The query table is the same function of the 8 x 8 query grid (the
published checkpoint stores it as ``resampler.pos_embed``; it is a fixed function, so it is computed here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mcpm.export.models.minicpmv.config import MiniCPMVConfig

LN_EPS = 1e-6


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos [M] -> [M, dim]: sin then cos of pos * 10000^(-k / (dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat((out.sin(), out.cos()), dim=1)


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """[rows*cols, dim] float32 table for a rows x cols grid, row-major; first half x (column), second half y."""
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    table = torch.cat((sincos_1d(dim // 2, xs.reshape(-1)), sincos_1d(dim // 2, ys.reshape(-1))), dim=1)
    return table.float()


class CrossAttention(nn.Module):
    """nn.MultiheadAttention's arithmetic with its parameter names (in_proj_weight/bias, out_proj)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query [B, Q, d], key/value [B, n, d] -> [B, Q, d]."""
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        b, nq, d = query.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # [B, H, len, hd]

        q, k, v = heads(F.linear(query, wq, bq)), heads(F.linear(key, wk, bk)), heads(F.linear(value, wv, bv))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [B, H, Q, n]
        out = scores.softmax(dim=-1) @ v  # [B, H, Q, hd]
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, d))


class Resampler(nn.Module):
    def __init__(self, cfg: MiniCPMVConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.dim, self.grid = d, cfg.query_grid
        self.query = nn.Parameter(torch.zeros(cfg.query_num, d))
        self.kv_proj = nn.Linear(cfg.vision_hidden, d, bias=False) if cfg.vision_hidden != d else nn.Identity()
        self.attn = CrossAttention(d, cfg.resampler_heads)
        self.ln_q = nn.LayerNorm(d, eps=LN_EPS)
        self.ln_kv = nn.LayerNorm(d, eps=LN_EPS)
        self.ln_post = nn.LayerNorm(d, eps=LN_EPS)
        self.proj = nn.Parameter(torch.zeros(d, d))

    def forward(self, x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """x [B, rows*cols, vision_hidden] (patch grid rows x cols, row-major) -> [B, Q, d]."""
        assert x.shape[1] == rows * cols, f"{x.shape[1]} features for a {rows}x{cols} grid"
        kv = self.ln_kv(self.kv_proj(x))  # [B, n, d]
        q = self.ln_q(self.query)  # [Q, d]
        q_pos = sincos_2d(self.dim, self.grid, self.grid).to(q.dtype)
        k_pos = sincos_2d(self.dim, rows, cols).to(kv.dtype)
        q = (q + q_pos).unsqueeze(0).expand(x.shape[0], -1, -1)
        out = self.attn(q, kv + k_pos, kv)  # [B, Q, d]
        return self.ln_post(out) @ self.proj
