"""Real shapes and config keys of the published ``minicpm`` checkpoints (for random checkpoints and benchmarks)."""

from __future__ import annotations

from typing import Any

_MUP = {"scale_emb": 12, "scale_depth": 1.4, "dim_model_base": 256}
_COMMON = {
    "model_type": "minicpm",
    "architectures": ["MiniCPMForCausalLM"],
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
    "initializer_range": 0.1,
    **_MUP,
}
_2B = {"hidden_size": 2304, "intermediate_size": 5760, "num_hidden_layers": 40, "num_attention_heads": 36,
       "num_key_value_heads": 36}

PRESETS: dict[str, dict[str, Any]] = {
    "minicpm-2b": {**_COMMON, **_2B, "vocab_size": 122753, "max_position_embeddings": 4096, "rope_theta": 10000.0,
                   "tie_word_embeddings": True},
    "minicpm-1b": {**_COMMON, "hidden_size": 1536, "intermediate_size": 3840, "num_hidden_layers": 52,
                   "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 73440,
                   "max_position_embeddings": 4096, "rope_theta": 10000.0, "tie_word_embeddings": True},
    "minicpm-2b-128k": {**_COMMON, **_2B, "vocab_size": 122760, "max_position_embeddings": 65536,
                        "rope_theta": 1000000.0, "rope_scaling": {"type": "dynamic", "factor": 4.0},
                        "tie_word_embeddings": False},
    "minicpm-moe-8x2b": {**_COMMON, **_2B, "vocab_size": 122753, "max_position_embeddings": 4096,
                         "rope_theta": 10000.0, "tie_word_embeddings": True, "num_experts": 8,
                         "num_experts_per_tok": 2},
}
