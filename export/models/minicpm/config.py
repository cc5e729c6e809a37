"""Typed config of the ``minicpm`` family: MiniCPM-1B/2B, 2B-128k (dynamic NTK RoPE), MoE-8x2B and MiniCPM4
(LongRoPE, GQA; its ``mup_denominator`` is kept but unused: the official forward scales the residual by
scale_depth / sqrt(num_hidden_layers) as MiniCPM-2B does).

LongRoPE as the official ``MiniCPMLongRoPE`` (MiniCPM4's modeling_minicpm.py) computes it: the cos/sin cache is built
once for ``max_position_embeddings`` positions, with the long factors when max_position_embeddings exceeds
``original_max_position_embeddings`` (else the short ones) and cos/sin scaled by
sqrt(1 + ln(max_position_embeddings / original) / ln(original)). The choice depends on the config, not on the
sequence, so the exported table is static.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from mcpm.export.hf_config import require
from mcpm.export.models.layers import default_inv_freq


@dataclass(frozen=True)
class MiniCPMConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    hidden_act: str = "silu"
    # muP scales (read from config, never hard-coded)
    scale_emb: float = 1.0
    scale_depth: float = 1.0
    dim_model_base: int | None = None
    tie_word_embeddings: bool = True
    bos_token_id: int = 1
    eos_token_id: tuple[int, ...] = (2,)
    # MoE-8x2B (0 = dense)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    model_type: str = "minicpm"
    extra: dict[str, Any] = field(default_factory=dict)

    # derived once
    num_kv_heads: int = field(init=False)
    head_dim: int = field(init=False)
    residual_scale: float = field(init=False)
    logit_divisor: float = field(init=False)
    rope_dynamic_factor: float = field(init=False)
    rope_factors: tuple[float, ...] | None = field(init=False)  # LongRoPE: divides inv_freq, [head_dim / 2]
    rope_scale: float = field(init=False)  # LongRoPE: multiplies cos and sin

    def __post_init__(self) -> None:
        require(self.hidden_size > 0 and self.num_hidden_layers > 0, "hidden_size and num_hidden_layers must be > 0")
        require(self.vocab_size > 0 and self.intermediate_size > 0, "vocab_size and intermediate_size must be > 0")
        require(self.num_attention_heads > 0, "num_attention_heads must be > 0")
        require(self.rms_norm_eps > 0 and self.rope_theta > 0, "rms_norm_eps and rope_theta must be > 0")
        require(
            self.hidden_size % self.num_attention_heads == 0,
            f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size ({self.hidden_size})",
        )
        kv = self.num_key_value_heads or self.num_attention_heads
        require(
            kv > 0 and self.num_attention_heads % kv == 0,
            f"num_key_value_heads ({kv}) must divide num_attention_heads ({self.num_attention_heads})",
        )
        require(self.hidden_act == "silu", f"hidden_act {self.hidden_act!r} is not supported (MiniCPM uses silu)")
        head_dim = self.hidden_size // self.num_attention_heads
        require(head_dim % 2 == 0, f"head dimension {head_dim} must be even for rotary embeddings")
        if self.num_experts:
            require(
                0 < self.num_experts_per_tok <= self.num_experts,
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be in 1..num_experts ({self.num_experts})",
            )
        factor, factors, scale = 1.0, None, 1.0
        if self.rope_scaling:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            require(kind in ("dynamic", "longrope"),
                    f"rope_scaling type {kind!r} is not supported for minicpm ('dynamic' or 'longrope')")
            if kind == "dynamic":
                factor = float(self.rope_scaling.get("factor", 1.0))
                require(factor >= 1.0, f"rope_scaling factor ({factor}) must be >= 1")
            else:
                factors, scale = _longrope(self.rope_scaling, self.max_position_embeddings, head_dim // 2)
        base = self.dim_model_base or self.hidden_size
        set_ = object.__setattr__
        set_(self, "num_kv_heads", kv)
        set_(self, "head_dim", head_dim)
        set_(self, "residual_scale", self.scale_depth / math.sqrt(self.num_hidden_layers))
        set_(self, "logit_divisor", self.hidden_size / base)
        set_(self, "rope_dynamic_factor", factor)
        set_(self, "rope_factors", factors)
        set_(self, "rope_scale", scale)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def rope_inv_freq(self, seq_len: int) -> torch.Tensor:
        """RoPE inverse frequencies [head_dim / 2] for a sequence of ``seq_len`` tokens (multiply the tables by
        ``rope_scale``)."""
        inv_freq = default_inv_freq(self.rope_base(seq_len), self.head_dim)
        if self.rope_factors is not None:
            inv_freq = inv_freq / torch.tensor(self.rope_factors, dtype=torch.float32)
        return inv_freq

    def rope_base(self, seq_len: int) -> float:
        """RoPE base for a sequence of ``seq_len`` tokens (dynamic NTK grows it past the trained length)."""
        if self.rope_dynamic_factor == 1.0 or seq_len <= self.max_position_embeddings:
            return self.rope_theta
        f = self.rope_dynamic_factor
        ratio = f * seq_len / self.max_position_embeddings - (f - 1)
        return self.rope_theta * ratio ** (self.head_dim / (self.head_dim - 2))


def _longrope(scaling: dict[str, Any], max_pos: int, half: int) -> tuple[tuple[float, ...], float]:
    """(the factors in use, the cos/sin scale) of a ``longrope`` rope_scaling (see the module docstring)."""
    for key in ("short_factor", "long_factor"):
        values = scaling.get(key)
        require(isinstance(values, list) and len(values) == half
                and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values),
                f"rope_scaling.{key} must be a list of head_dim/2 = {half} positive numbers")
    orig = scaling.get("original_max_position_embeddings", max_pos)
    require(isinstance(orig, int) and not isinstance(orig, bool) and orig > 1,
            f"rope_scaling.original_max_position_embeddings ({orig!r}) must be an integer > 1")
    arg = 1 + math.log(max_pos / orig) / math.log(orig)
    require(arg > 0, f"max_position_embeddings ({max_pos}) is too small for original_max_position_embeddings ({orig})")
    factors = scaling["long_factor" if max_pos > orig else "short_factor"]
    return tuple(float(v) for v in factors), math.sqrt(arg)
