"""Real shapes and config keys of the published ``minicpm3`` checkpoint (for random checkpoints and benchmarks)."""

from __future__ import annotations

from typing import Any

# MiniCPM3-4B ships 16 LongRoPE factors (short == long); random checkpoints use this smooth stand-in.
_FACTORS = [round(1.0 + 15.94 * (i / 15) ** 2, 4) for i in range(16)]

PRESETS: dict[str, dict[str, Any]] = {
    "minicpm3-4b": {
        "model_type": "minicpm3",
        "architectures": ["MiniCPM3ForCausalLM"],
        "vocab_size": 73448,
        "hidden_size": 2560,
        "intermediate_size": 6400,
        "num_hidden_layers": 62,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "q_lora_rank": 768,
        "kv_lora_rank": 256,
        "qk_nope_head_dim": 64,
        "qk_rope_head_dim": 32,
        "v_head_dim": 64,
        "max_position_embeddings": 32768,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "longrope", "short_factor": _FACTORS, "long_factor": _FACTORS,
                         "original_max_position_embeddings": 32768},
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "scale_emb": 12,
        "scale_depth": 1.4,
        "dim_model_base": 256,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": [2, 73440],
        "torch_dtype": "bfloat16",
    }
}
