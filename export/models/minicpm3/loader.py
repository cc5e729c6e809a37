"""Hugging Face tensor names of the ``minicpm3`` family mapped onto the reference model's own names."""

from __future__ import annotations

from mcpm.export.name_map import COMMON_HF_RULES, NameMap

HF_NAMES = NameMap(
    [
        *COMMON_HF_RULES,
        # multi-head latent attention (q_proj when q_lora_rank is None)
        ("layers.{i}.attn.wq.weight", "model.layers.{i}.self_attn.q_proj.weight"),
        ("layers.{i}.attn.wq_a.weight", "model.layers.{i}.self_attn.q_a_proj.weight"),
        ("layers.{i}.attn.q_norm.weight", "model.layers.{i}.self_attn.q_a_layernorm.weight"),
        ("layers.{i}.attn.wq_b.weight", "model.layers.{i}.self_attn.q_b_proj.weight"),
        ("layers.{i}.attn.wkv_a.weight", "model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight"),
        ("layers.{i}.attn.kv_norm.weight", "model.layers.{i}.self_attn.kv_a_layernorm.weight"),
        ("layers.{i}.attn.wkv_b.weight", "model.layers.{i}.self_attn.kv_b_proj.weight"),
    ]
)
