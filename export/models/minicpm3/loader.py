"""Hugging Face tensor names of the ``minicpm3`` family mapped onto the reference model's own names."""

from __future__ import annotations

from mcpm.export.name_map import NameMap

HF_NAMES = NameMap(
    [
        ("embed.weight", "model.embed_tokens.weight"),
        ("final_norm.weight", "model.norm.weight"),
        ("lm_head.weight", "lm_head.weight"),
        ("layers.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
        ("layers.{i}.mlp_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
        ("layers.{i}.attn.wq.weight", "model.layers.{i}.self_attn.q_proj.weight"),
        ("layers.{i}.attn.wq_a.weight", "model.layers.{i}.self_attn.q_a_proj.weight"),
        ("layers.{i}.attn.q_norm.weight", "model.layers.{i}.self_attn.q_a_layernorm.weight"),
        ("layers.{i}.attn.wq_b.weight", "model.layers.{i}.self_attn.q_b_proj.weight"),
        ("layers.{i}.attn.wkv_a.weight", "model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight"),
        ("layers.{i}.attn.kv_norm.weight", "model.layers.{i}.self_attn.kv_a_layernorm.weight"),
        ("layers.{i}.attn.wkv_b.weight", "model.layers.{i}.self_attn.kv_b_proj.weight"),
        ("layers.{i}.attn.wo.weight", "model.layers.{i}.self_attn.o_proj.weight"),
        ("layers.{i}.mlp.w_gate.weight", "model.layers.{i}.mlp.gate_proj.weight"),
        ("layers.{i}.mlp.w_up.weight", "model.layers.{i}.mlp.up_proj.weight"),
        ("layers.{i}.mlp.w_down.weight", "model.layers.{i}.mlp.down_proj.weight"),
    ]
)
