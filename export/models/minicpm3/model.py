"""MiniCPM3 (MLA) written from the math, as the PyTorch reference.

Attention per token x (one layer):
    q            = Wq_b · norm(Wq_a · x)                    -> H heads of [nope | rope]
    c, k_rope    = Wkv_a · x                                -> latent c (kv_lora_rank) and one shared rope key
    k_nope, v    = Wkv_b · norm(c)                          -> H heads each
    k            = [k_nope | rope(k_rope)]                  (k_rope shared by every head)
The cache keeps only [norm(c) | rope(k_rope)] per token: kv_lora_rank + qk_rope_head_dim numbers.
muP scales as in MiniCPM 1/2 (scale_emb, residual scale, logit divisor).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mcpm.export.models.layers import (
    MLP,
    Block,
    MuPCausalLM,
    RMSNorm,
    apply_rope,
    causal_attention,
    default_inv_freq,
    rope_cos_sin,
)
from mcpm.export.models.minicpm3.config import MiniCPM3Config


class MLAttention(nn.Module):
    def __init__(self, cfg: MiniCPM3Config) -> None:
        super().__init__()
        self.cfg = cfg
        h, heads = cfg.hidden_size, cfg.num_attention_heads
        if cfg.q_lora_rank is None:
            self.wq = nn.Linear(h, heads * cfg.qk_head_dim, bias=False)
        else:
            self.wq_a = nn.Linear(h, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.wq_b = nn.Linear(cfg.q_lora_rank, heads * cfg.qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(h, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=False)
        self.kv_norm = RMSNorm(cfg.kv_lora_rank, cfg.rms_norm_eps)
        self.wkv_b = nn.Linear(cfg.kv_lora_rank, heads * (cfg.qk_nope_head_dim + cfg.head_v_dim), bias=False)
        self.wo = nn.Linear(heads * cfg.head_v_dim, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor:
        c = self.cfg
        b, n, _ = x.shape  # x: [B, n, hidden]
        q = self.wq(x) if c.q_lora_rank is None else self.wq_b(self.q_norm(self.wq_a(x)))
        q = q.view(b, n, c.num_attention_heads, c.qk_head_dim).transpose(1, 2)  # [B, H, n, nope+rope]
        q_nope, q_rope = q.split([c.qk_nope_head_dim, c.qk_rope_head_dim], dim=-1)
        latent, k_rope = self.wkv_a(x).split([c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
        latent = self.kv_norm(latent)[:, None]  # [B, 1, n, kv_lora_rank]
        k_rope = apply_rope(k_rope[:, None], cos, sin)  # [B, 1, n, rope]
        q = torch.cat((q_nope, apply_rope(q_rope, cos, sin)), dim=-1)
        if cache is not None:
            latent, k_rope = cache.append(latent, k_rope)  # [B, 1, T, .]
        t = latent.shape[-2]
        kv = self.wkv_b(latent[:, 0]).view(b, t, c.num_attention_heads, -1).transpose(1, 2)  # [B, H, T, nope+v]
        k_nope, v = kv.split([c.qk_nope_head_dim, c.head_v_dim], dim=-1)
        k = torch.cat((k_nope, k_rope.expand(-1, c.num_attention_heads, -1, -1)), dim=-1)  # [B, H, T, nope+rope]
        out = causal_attention(q, k, v, scale=1.0 / math.sqrt(c.qk_head_dim))  # [B, H, n, v]
        return self.wo(out.transpose(1, 2).reshape(b, n, -1))


class MiniCPM3(MuPCausalLM):
    def __init__(self, cfg: MiniCPM3Config) -> None:
        blocks = [Block(cfg.hidden_size, cfg.rms_norm_eps, cfg.residual_scale, MLAttention(cfg),
                        MLP(cfg.hidden_size, cfg.intermediate_size)) for _ in range(cfg.num_hidden_layers)]
        super().__init__(cfg, blocks)

    def rope_tables(self, start: int, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        inv_freq = default_inv_freq(c.base_theta, c.qk_rope_head_dim)
        scale = 1.0
        if c.longrope is not None:
            long = start + n > c.longrope["original_max_position_embeddings"]
            factors = torch.tensor(c.longrope["long_factor" if long else "short_factor"], dtype=torch.float32)
            inv_freq, scale = inv_freq / factors, c.longrope_attention_factor
        return rope_cos_sin(torch.arange(start, start + n), inv_freq, dtype, scale)
