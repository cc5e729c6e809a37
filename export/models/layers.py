"""Building blocks shared by the PyTorch reference models: RMSNorm, rotary embedding, KV cache, attention."""

from __future__ import annotations

from collections.abc import Callable

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


class Block(nn.Module):
    """Pre-norm decoder block with MiniCPM's scaled residuals: h += sublayer(norm(h)) * residual_scale."""

    def __init__(self, hidden: int, eps: float, residual_scale: float, attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(hidden, eps)
        self.attn = attn
        self.mlp_norm = RMSNorm(hidden, eps)
        self.mlp = mlp
        self.residual_scale = residual_scale

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor:
        h = h + self.attn(self.attn_norm(h), cos, sin, cache) * self.residual_scale
        return h + self.mlp(self.mlp_norm(h)) * self.residual_scale


class MuPCausalLM(nn.Module):
    """The muP skeleton shared by every MiniCPM LM; a family supplies its blocks and its RoPE tables.

        h0 = embed(ids) * scale_emb;  h = blocks(h0);  logits = head(final_norm(h) / logit_divisor)
    """

    def __init__(self, cfg, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(blocks)
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # applied to the logits matmul's input (mcpm.quantize.apply.activation_quantized: int8 activations)
        self.logits_input: Callable[[torch.Tensor], torch.Tensor] | None = None

    def rope_tables(self, start: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [n, rot_dim] for positions start .. start+n-1."""
        raise NotImplementedError

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, n] token ids -> [B, n, hidden], scaled by scale_emb (image features are inserted after this)."""
        return self.embed(ids) * self.cfg.scale_emb

    def forward(
        self, ids: torch.Tensor | None = None, cache: KVCache | None = None, embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ids: [B, n] (or embeds [B, n, hidden]) continuing ``cache``; returns logits [B, n, vocab]."""
        if embeds is None:
            assert ids is not None, "pass token ids or embeddings"
            embeds = self.embed_tokens(ids)
        h = embeds
        start = cache.length if cache is not None else 0
        cos, sin = self.rope_tables(start, h.shape[1], h.dtype)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.advance(h.shape[1])
        h = self.final_norm(h) / self.cfg.logit_divisor
        if self.logits_input is not None:
            h = self.logits_input(h)
        return F.linear(h, self.embed.weight if self.lm_head is None else self.lm_head.weight)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.num_hidden_layers)
