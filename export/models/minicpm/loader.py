"""Hugging Face tensor names of the ``minicpm`` family mapped onto the reference model's own names."""

from __future__ import annotations

from mcpm.export.name_map import COMMON_HF_RULES, NameMap

HF_NAMES = NameMap(
    [
        *COMMON_HF_RULES,
        ("layers.{i}.attn.wq.weight", "model.layers.{i}.self_attn.q_proj.weight"),
        ("layers.{i}.attn.wk.weight", "model.layers.{i}.self_attn.k_proj.weight"),
        ("layers.{i}.attn.wv.weight", "model.layers.{i}.self_attn.v_proj.weight"),
        # MoE-8x2B: router "gate", experts w1 (gate) / w3 (up) / w2 (down), as in the published checkpoint
        ("layers.{i}.mlp.router.weight", "model.layers.{i}.mlp.gate.weight"),
        ("layers.{i}.mlp.experts.{e}.w_gate.weight", "model.layers.{i}.mlp.experts.{e}.w1.weight"),
        ("layers.{i}.mlp.experts.{e}.w_up.weight", "model.layers.{i}.mlp.experts.{e}.w3.weight"),
        ("layers.{i}.mlp.experts.{e}.w_down.weight", "model.layers.{i}.mlp.experts.{e}.w2.weight"),
    ]
)
