"""Real shapes and config keys of the published MiniCPM-V 2.0 checkpoint (for random checkpoints and benchmarks)."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "minicpm-v-2": {
        "model_type": "minicpmv",
        "architectures": ["MiniCPMV"],
        # the LM: MiniCPM-2.4B, untied
        "vocab_size": 122753,
        "hidden_size": 2304,
        "intermediate_size": 5760,
        "num_hidden_layers": 40,
        "num_attention_heads": 36,
        "num_key_value_heads": 36,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "scale_emb": 12,
        "scale_depth": 1.4,
        "dim_model_base": 256,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        # vision: SigLIP so400m (27 blocks, the last dropped) + Resampler2 with 64 queries
        "vision_encoder": "vit_so400m_patch14_siglip_384",
        "drop_vision_last_layer": True,
        "query_num": 64,
        "max_slice_nums": 9,
        "scale_resolution": 448,
        "patch_size": 14,
        "image_size": 448,
        "slice_mode": True,
        "mm_use_im_start_end": True,
    }
}
