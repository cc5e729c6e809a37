"""Tensor names of the published MiniCPM-V 2.0 checkpoint mapped onto the reference model's own names.

``llm.*`` is the MiniCPM LM under an ``llm.`` prefix; ``vpm.*`` is the timm vision tower (fused qkv, with the
last of its 27 blocks already dropped); ``resampler.*`` is Resampler2 (``attn`` is an nn.MultiheadAttention).
``resampler.pos_embed`` (the fixed 8x8 sin-cos table of the queries) is recomputed, not read.
"""

from __future__ import annotations

from mcpm.export.models.minicpm.loader import HF_NAMES as MINICPM_NAMES
from mcpm.export.name_map import NameMap

_VISION = [
    ("vision.patch_embed.weight", "vpm.patch_embed.proj.weight"),
    ("vision.patch_embed.bias", "vpm.patch_embed.proj.bias"),
    ("vision.pos_embed", "vpm.pos_embed"),
    ("vision.norm.weight", "vpm.norm.weight"),
    ("vision.norm.bias", "vpm.norm.bias"),
    *[(f"vision.blocks.{{i}}.{part}.{p}", f"vpm.blocks.{{i}}.{part}.{p}")
      for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")],
]
_RESAMPLER = [
    ("resampler.query", "resampler.query"),
    ("resampler.proj", "resampler.proj"),
    ("resampler.kv_proj.weight", "resampler.kv_proj.weight"),
    ("resampler.attn.in_proj_weight", "resampler.attn.in_proj_weight"),
    ("resampler.attn.in_proj_bias", "resampler.attn.in_proj_bias"),
    ("resampler.attn.out_proj.weight", "resampler.attn.out_proj.weight"),
    ("resampler.attn.out_proj.bias", "resampler.attn.out_proj.bias"),
    *[(f"resampler.{ln}.{p}", f"resampler.{ln}.{p}")
      for ln in ("ln_q", "ln_kv", "ln_post") for p in ("weight", "bias")],
]

HF_NAMES = NameMap(
    [
        *[(f"llm.{own}", f"llm.{hf}") for own, hf, _, _ in MINICPM_NAMES.rules],
        *_VISION,
        *_RESAMPLER,
    ]
)
