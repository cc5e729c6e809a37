"""Real shapes and config keys of the published ``minicpm`` checkpoints (for random checkpoints and benchmarks).

MiniCPM4-8B (openbmb/MiniCPM4-8B config.json, as quoted by third-party ports: InfiniLM's MiniCPM4 test, the sophgo
LLM-TPU and VoxCPM configs): GQA 32 / 2 heads of 128, MLP 16384, vocab 73448, untied, rms eps 1e-6, muP keys
including the unused ``mup_denominator``, ChatML (eos 2 and ``<|im_end|>`` 73440), LongRoPE over 64 frequencies
with original_max_position_embeddings 32768 and max_position_embeddings 65536 (so the long factors are the ones in
use), and InfLLM v2 ``sparse_config`` (dense attention up to ``dense_len``). The factor values here are a smooth
ramp of the published lists' range (0.998 .. 123.4), not the lists themselves: a random checkpoint needs the keys and
the shapes, not the trained values. MiniCPM4-0.5B is left out: its published shapes could not be confirmed here.
"""

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

_MINICPM4_FACTORS = [round(0.998 * (123.4 / 0.998) ** (i / 63), 6) for i in range(64)]  # [head_dim / 2]

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
    "minicpm4-8b": {**_COMMON, "hidden_size": 4096, "intermediate_size": 16384, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 2, "vocab_size": 73448, "rms_norm_eps": 1e-6,
                    "max_position_embeddings": 65536, "rope_theta": 10000.0, "tie_word_embeddings": False,
                    "eos_token_id": [2, 73440], "mup_denominator": 32,
                    "rope_scaling": {"rope_type": "longrope", "long_factor": _MINICPM4_FACTORS,
                                     "short_factor": _MINICPM4_FACTORS, "original_max_position_embeddings": 32768},
                    "sparse_config": {"kernel_size": 32, "kernel_stride": 16, "init_blocks": 1, "block_size": 64,
                                      "window_size": 2048, "topk": 64, "use_nope": False, "dense_len": 8192},
                    "mcpm_chat_template": "chatml"},
}
