"""Building blocks shared by the PyTorch reference models: RMSNorm, rotary embedding, KV cache, attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [n, rot_dim] for rotate-half RoPE (frequencies repeated for both halves)."""
    freqs = positions.float()[:, None] * inv_freq.float()[None, :]  # [n, rot_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [n, rot_dim]
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)


def default_inv_freq(base: float, rot_dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim)).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, n, rot_dim]; cos/sin: [n, rot_dim]. HF convention: rotate the two halves of each head."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class MLP(nn.Module):
    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(hidden, inter, bias=False)
        self.w_up = nn.Linear(hidden, inter, bias=False)
        self.w_down = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class LayerCache:
    """Growing per-layer cache: a tuple of tensors [B, H, T, D] extended along T."""

    def __init__(self) -> None:
        self.tensors: tuple[torch.Tensor, ...] | None = None

    def append(self, *new: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.tensors is None:
            self.tensors = tuple(new)
        else:
            self.tensors = tuple(torch.cat((old, t), dim=-2) for old, t in zip(self.tensors, new, strict=True))
        return self.tensors


class KVCache:
    """KV cache of a whole model (reference only: the exported runtime uses a static contiguous cache)."""

    def __init__(self, num_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(num_layers)]
        self.length = 0  # tokens already cached

    def advance(self, n: int) -> None:
        self.length += n


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q: [B, Hq, n, d]; k: [B, Hkv, T, d]; v: [B, Hkv, T, dv] with the n queries at the last n of T positions.

    GQA: each group of Hq/Hkv query heads shares one kv head. Returns [B, Hq, n, dv].
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    n, total = q.shape[-2], k.shape[-2]
    if n == total:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    q_pos = torch.arange(total - n, total)[:, None]
    k_pos = torch.arange(total)[None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=k_pos <= q_pos, scale=scale)
