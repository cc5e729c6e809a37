"""Typed config of the ``minicpm3`` family (MiniCPM3-4B): multi-head latent attention (MLA), LongRoPE."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mcpm.export.hf_config import require


@dataclass(frozen=True)
class MiniCPM3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    q_lora_rank: int | None = None  # None: a plain q_proj
    v_head_dim: int | None = None  # default hidden / heads
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    rope_theta: float | None = None
    rope_scaling: dict[str, Any] | None = None  # transformers 4 spelling
    rope_parameters: dict[str, Any] | None = None  # transformers 5 spelling
    hidden_act: str = "silu"
    scale_emb: float = 1.0
    scale_depth: float = 1.0
    dim_model_base: int | None = None
    tie_word_embeddings: bool = True
    bos_token_id: int = 1
    eos_token_id: tuple[int, ...] = (2,)
    model_type: str = "minicpm3"
    extra: dict[str, Any] = field(default_factory=dict)

    # derived once
    head_v_dim: int = field(init=False)
    qk_head_dim: int = field(init=False)
    residual_scale: float = field(init=False)
    logit_divisor: float = field(init=False)
    base_theta: float = field(init=False)
    longrope: dict[str, Any] | None = field(init=False)
    longrope_attention_factor: float = field(init=False)

    def __post_init__(self) -> None:
        require(self.hidden_size > 0 and self.num_hidden_layers > 0, "hidden_size and num_hidden_layers must be > 0")
        require(self.num_attention_heads > 0, "num_attention_heads must be > 0")
        require(self.qk_rope_head_dim % 2 == 0, f"qk_rope_head_dim ({self.qk_rope_head_dim}) must be even")
        require(self.hidden_act == "silu", f"hidden_act {self.hidden_act!r} is not supported (MiniCPM3 uses silu)")
        kv = self.num_key_value_heads or self.num_attention_heads
        require(kv == self.num_attention_heads, "MLA expands keys per head: num_key_value_heads must equal heads")
        params = dict(self.rope_parameters or {})
        scaling = dict(self.rope_scaling or {})
        kind = scaling.get("rope_type", scaling.get("type")) or params.get("rope_type", "default")
        theta = self.rope_theta if self.rope_theta is not None else float(params.get("rope_theta", 10000.0))
        longrope = None
        factor_scale = 1.0
        if kind == "longrope":
            longrope = {**params, **scaling}
            half = self.qk_rope_head_dim // 2
            for key in ("short_factor", "long_factor"):
                require(
                    len(longrope.get(key, [])) == half,
                    f"rope_scaling.{key} must have qk_rope_head_dim/2 = {half} entries",
                )
            orig = int(longrope.get("original_max_position_embeddings", self.max_position_embeddings))
            longrope["original_max_position_embeddings"] = orig
            factor = float(longrope.get("factor") or self.max_position_embeddings / orig)
            if longrope.get("attention_factor") is not None:
                factor_scale = float(longrope["attention_factor"])
            elif factor > 1.0:
                factor_scale = math.sqrt(1 + math.log(factor) / math.log(orig))
        else:
            require(kind == "default", f"rope type {kind!r} is not supported for minicpm3 (default or longrope)")
        set_ = object.__setattr__
        set_(self, "head_v_dim", self.v_head_dim or self.hidden_size // self.num_attention_heads)
        set_(self, "qk_head_dim", self.qk_nope_head_dim + self.qk_rope_head_dim)
        set_(self, "residual_scale", self.scale_depth / math.sqrt(self.num_hidden_layers))
        set_(self, "logit_divisor", self.hidden_size / (self.dim_model_base or self.hidden_size))
        set_(self, "base_theta", theta)
        set_(self, "longrope", longrope)
        set_(self, "longrope_attention_factor", factor_scale)
