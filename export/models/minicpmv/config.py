"""Typed config of the ``minicpmv`` family, version 2.0 (MiniCPM-V 2.0).

The published config.json is the MiniCPM LM's config plus the vision keys below. The vision tower's shape is not
in it: the reference code builds it from the timm name in ``vision_encoder``. A ``vision_config`` dict (SigLIP key
names, as later MiniCPM-V versions write it) overrides that table; the tiny test configs use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mcpm.export.hf_config import require
from mcpm.export.models.minicpm.config import MiniCPMConfig

# timm vision towers known by name (SigLIP key names); image_size sets the learned position grid (384 // 14 = 27)
KNOWN_VISION_ENCODERS: dict[str, dict[str, Any]] = {
    "vit_so400m_patch14_siglip_384": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 384,
        "patch_size": 14,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu_pytorch_tanh",
    },
}
_VISION_KEYS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size", "layer_norm_eps", "hidden_act", "num_channels", "model_type"}


@dataclass(frozen=True)
class MiniCPMVConfig(MiniCPMConfig):
    # image slicing (preprocess.py)
    query_num: int = 64
    max_slice_nums: int = 9
    scale_resolution: int = 448
    patch_size: int = 14
    slice_mode: bool = True
    image_size: int = 448
    mm_use_im_start_end: bool = True
    # vision tower
    vision_encoder: str = ""
    drop_vision_last_layer: bool = True
    vision_config: dict[str, Any] | None = None
    # mcpm-only: Resampler2 uses hidden // 128 heads; tiny test configs (hidden < 128) name their own
    resampler_num_heads: int | None = None
    model_type: str = "minicpmv"

    # derived once
    vision_hidden: int = field(init=False)
    vision_inter: int = field(init=False)
    vision_heads: int = field(init=False)
    vision_layers_used: int = field(init=False)
    vision_eps: float = field(init=False)
    vision_pos_grid: int = field(init=False)
    resampler_heads: int = field(init=False)
    query_grid: int = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        version = self.extra.get("version", 2.0)
        later = "only MiniCPM-V 2.0 is supported (2.5 / 2.6 / 4.x use another vision tower and LM)"
        fix = "use a MiniCPM-V 2.0 checkpoint"
        require(str(version) in ("2", "2.0"), f"MiniCPM-V version {version!r}: {later}", fix)
        require(bool(self.vision_encoder), f"vision_encoder is missing: {later}", fix)
        if self.vision_config is not None:
            vc = dict(self.vision_config)
        else:
            require(self.vision_encoder in KNOWN_VISION_ENCODERS,
                    f"vision_encoder {self.vision_encoder!r} is not supported "
                    f"(known: {', '.join(sorted(KNOWN_VISION_ENCODERS))})", "or give a vision_config")
            vc = dict(KNOWN_VISION_ENCODERS[self.vision_encoder])
        unknown = set(vc) - _VISION_KEYS
        require(not unknown, f"vision_config has unknown keys {sorted(unknown)}")
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                    "patch_size"):
            require(isinstance(vc.get(key), int) and not isinstance(vc.get(key), bool) and vc[key] > 0,
                    f"vision_config.{key} must be a positive integer, got {vc.get(key)!r}")
        act = vc.get("hidden_act", "gelu_pytorch_tanh")
        require(act in ("gelu_pytorch_tanh", "gelu_tanh"), f"vision hidden_act {act!r} is not supported")
        require(vc["hidden_size"] % vc["num_attention_heads"] == 0,
                "vision num_attention_heads must divide the vision hidden_size")
        require(vc["patch_size"] == self.patch_size,
                f"vision patch size {vc['patch_size']} differs from patch_size {self.patch_size}")
        used = vc["num_hidden_layers"] - (1 if self.drop_vision_last_layer else 0)
        require(used > 0, "the vision tower needs at least one block after drop_vision_last_layer")
        grid = int(math.isqrt(self.query_num))
        require(grid * grid == self.query_num, f"query_num ({self.query_num}) must be a square (8x8 = 64)")
        heads = self.resampler_num_heads or self.hidden_size // 128
        require(heads > 0 and self.hidden_size % heads == 0,
                f"resampler heads ({heads}) must divide hidden_size ({self.hidden_size})")
        require(self.hidden_size % 4 == 0, "hidden_size must be a multiple of 4 (2D sin-cos position embeddings)")
        require(self.max_slice_nums >= 1 and self.scale_resolution >= self.patch_size,
                "max_slice_nums must be >= 1 and scale_resolution >= patch_size")
        set_ = object.__setattr__
        set_(self, "vision_hidden", vc["hidden_size"])
        set_(self, "vision_inter", vc["intermediate_size"])
        set_(self, "vision_heads", vc["num_attention_heads"])
        set_(self, "vision_layers_used", used)
        set_(self, "vision_eps", float(vc.get("layer_norm_eps", 1e-6)))
        set_(self, "vision_pos_grid", vc["image_size"] // vc["patch_size"])
        set_(self, "resampler_heads", heads)
        set_(self, "query_grid", grid)
