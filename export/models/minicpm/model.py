"""MiniCPM (1B / 2B / 2B-128k / MoE-8x2B) written from the math, as the PyTorch reference.

    h0     = embed(ids) * scale_emb
    h      = h + attn(norm(h)) * residual_scale        residual_scale = scale_depth / sqrt(layers)
    h      = h + mlp(norm(h))  * residual_scale        (mlp = top-k mixture of SiLU-gated experts for MoE)
    logits = lm_head(norm(h) / logit_divisor)          logit_divisor  = hidden / dim_model_base

Parameter names are the model's own; the loader maps Hugging Face names onto them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mcpm.export.models.layers import (
    MLP,
    KVCache,
    RMSNorm,
    apply_rope,
    causal_attention,
    default_inv_freq,
    rope_cos_sin,
)
from mcpm.export.models.minicpm.config import MiniCPMConfig


class Attention(nn.Module):
    def __init__(self, cfg: MiniCPMConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor:
        b, n, _ = x.shape  # x: [B, n, hidden]
        q = self.wq(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # [B, Hq, n, d]
        k = self.wk(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, n, d]
        v = self.wv(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, n, d]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)  # [B, Hkv, T, d]
        out = causal_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim))  # [B, Hq, n, d]
        return self.wo(out.transpose(1, 2).reshape(b, n, -1))


class MoE(nn.Module):
    """Softmax router, top-k experts, the k weights renormalized to sum to one."""

    def __init__(self, cfg: MiniCPMConfig) -> None:
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.router = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg.hidden_size, cfg.intermediate_size) for _ in range(cfg.num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [tokens, hidden]
        probs = self.router(flat).float().softmax(dim=-1)  # [tokens, experts]
        weights, chosen = probs.topk(self.top_k, dim=-1)  # [tokens, k]
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.nonzero(chosen == e, as_tuple=True)
            if token_idx.numel():
                out.index_add_(0, token_idx, expert(flat[token_idx]) * weights[token_idx, slot, None])
        return out.view_as(x)


class Block(nn.Module):
    def __init__(self, cfg: MiniCPMConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp: nn.Module = MoE(cfg) if cfg.is_moe else MLP(cfg.hidden_size, cfg.intermediate_size)
        self.residual_scale = cfg.residual_scale

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor:
        h = h + self.attn(self.attn_norm(h), cos, sin, cache) * self.residual_scale
        return h + self.mlp(self.mlp_norm(h)) * self.residual_scale


class MiniCPM(nn.Module):
    def __init__(self, cfg: MiniCPMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

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
        n = h.shape[1]
        inv_freq = default_inv_freq(self.cfg.rope_base(start + n), self.cfg.head_dim)
        cos, sin = rope_cos_sin(torch.arange(start, start + n), inv_freq, h.dtype)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.advance(n)
        h = self.final_norm(h) / self.cfg.logit_divisor
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.num_hidden_layers)
