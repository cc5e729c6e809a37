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
from torch import nn

from mcpm.export.models.layers import (
    MLP,
    Block,
    MuPCausalLM,
    apply_rope,
    causal_attention,
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
        self.kv_dtype: torch.dtype | None = None  # None: K and V at full precision (see with_kv_dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor:
        b, n, _ = x.shape  # x: [B, n, hidden]
        q = self.wq(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # [B, Hq, n, d]
        k = self.wk(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, n, d]
        v = self.wv(x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, n, d]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_dtype is not None:  # a bundle's KV cache rows are rounded to its dtype (e.g. float16)
            k, v = k.to(self.kv_dtype).to(q.dtype), v.to(self.kv_dtype).to(q.dtype)
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


class MiniCPM(MuPCausalLM):
    def __init__(self, cfg: MiniCPMConfig) -> None:
        def mlp() -> nn.Module:
            return MoE(cfg) if cfg.is_moe else MLP(cfg.hidden_size, cfg.intermediate_size)

        blocks = [Block(cfg.hidden_size, cfg.rms_norm_eps, cfg.residual_scale, Attention(cfg), mlp())
                  for _ in range(cfg.num_hidden_layers)]
        super().__init__(cfg, blocks)

    def rope_tables(self, start: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # dynamic NTK (2B-128k): the base depends on the total length, as in the published implementation;
        # LongRoPE (MiniCPM4): per-frequency factors and a cos/sin scale fixed by the config
        inv_freq = self.cfg.rope_inv_freq(start + n)
        return rope_cos_sin(torch.arange(start, start + n), inv_freq, dtype, self.cfg.rope_scale)


def with_kv_dtype(model: nn.Module, dtype: str) -> nn.Module:
    """``model`` (in place) with K and V rounded to ``dtype`` ("float16" / "float32") after RoPE, as a bundle's KV
    cache of that dtype stores them (mcpm-config / plan.json "cache" dtype). Returns the model."""
    kv = {"float16": torch.float16, "float32": None}[dtype]
    for m in model.modules():
        if isinstance(m, Attention):
            m.kv_dtype = kv
    return model
