"""The ordered weight parameters of the compiled functions (shared by the model definition and the exporter)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mcpm.export.compiler.spec import CompileSpec
from mcpm.export.models.minicpm.config import MiniCPMConfig


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[int, ...]
    dtype: str


def linear_shapes(cfg: MiniCPMConfig) -> dict[str, tuple[int, int]]:
    """Per-layer linear weights [N out, K in] (fused where the inputs are shared)."""
    d, hq, hkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_kv_heads
    inter, hid = cfg.intermediate_size, cfg.hidden_size
    shapes = {
        "wqkv": ((hq + 2 * hkv) * d, hid),  # rows: [q heads | k heads | v heads]
        "wo": (hid, hq * d),  # * residual_scale
    }
    if cfg.is_moe:  # experts stacked by rows (each row packed on its own: codes as per expert)
        e = cfg.num_experts
        shapes["router"] = (e, hid)  # [E, D]
        shapes["moe_gate_up"] = (e * 2 * inter, hid)  # rows of expert e at e*2I: [gate_e | up_e]
        shapes["moe_down"] = (e * hid, inter)  # rows of expert e at e*D; * residual_scale
    else:
        shapes["w_gate_up"] = (2 * inter, hid)  # rows: [gate | up]
        shapes["w_down"] = (hid, inter)  # * residual_scale
    return shapes


def linear_params(name: str, n: int, k: int, spec: CompileSpec) -> list[Param]:
    """The stored parts of weight [N, K] in its scheme's layout (docs/quantization.md)."""
    scheme = spec.scheme_for(name)
    if scheme.kind == "float":
        return [Param(name, (n, k), scheme.float_dtype)]
    if scheme.kind == "int8-channel":
        return [Param(name + ".qweight", (n, k), "int8"), Param(name + ".scales", (n,), "float16")]
    g = scheme.group_size
    kp = -(-k // g) * g
    parts = [Param(name + ".qweight", (n, kp // 8), "uint32"), Param(name + ".scales", (n, kp // g), "float16")]
    if scheme.kind == "int4-asym":
        parts.append(Param(name + ".mins", (n, kp // g), "float16"))
    return parts


def uses_rows4(name: str, n: int, spec: CompileSpec) -> bool:
    """True when weight ``name`` [N, K] is stored in the rows4 order (:func:`to_rows4`): exports for ARM CPUs
    (``spec.q4_rows4``) store int4 weights with int8 activations so, when N % 4 == 0, except the embedding (its rows
    are gathered by token; a tied lm_head reads that copy). The decode kernels then read 4 rows per 16-byte load
    (lanes = rows for the indexed SDOT, as llama.cpp's load-time repack of Q4_0)."""
    if not spec.q4_rows4 or n % 4 or name == "embed":
        return False
    scheme = spec.scheme_for(name)
    return scheme.kind == "int4-sym" and scheme.activations == "int8"


def to_rows4(qweight: np.ndarray) -> np.ndarray:
    """qweight uint32 [N, W] (row-major packed words) -> the same shape in the rows4 order: word w of rows
    4g .. 4g+3 side by side, i.e. element (j, w) at flat index ((j // 4) * W + w) * 4 + j % 4 ([N/4, W, 4])."""
    n, w = qweight.shape
    if n % 4:
        raise ValueError(f"rows4 needs N % 4 == 0, not {n}")
    return np.ascontiguousarray(qweight.reshape(n // 4, 4, w).transpose(0, 2, 1)).reshape(n, w)


def weight_params(cfg: MiniCPMConfig, spec: CompileSpec) -> list[Param]:
    hid, d = cfg.hidden_size, cfg.head_dim
    # [V, D] unscaled (scale_emb is applied after the lookup); packed like a linear; a tied lm_head is this copy
    params = linear_params("embed", cfg.vocab_size, hid, spec)
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        shapes = linear_shapes(cfg)
        params.append(Param(p + "attn_norm", (hid,), "float32"))
        params += linear_params(p + "wqkv", *shapes["wqkv"], spec)
        params += linear_params(p + "wo", *shapes["wo"], spec)
        params.append(Param(p + "mlp_norm", (hid,), "float32"))
        mlp = ("router", "moe_gate_up", "moe_down") if cfg.is_moe else ("w_gate_up", "w_down")
        for name in mlp:
            params += linear_params(p + name, *shapes[name], spec)
    params.append(Param("final_norm", (hid,), "float32"))  # / logit_divisor
    if not cfg.tie_word_embeddings:
        params += linear_params("lm_head", cfg.vocab_size, hid, spec)
    params.append(Param("rope_cos", (spec.max_ctx, d), "float32"))  # [C, d] cos(pos * inv_freq), halves repeated
    params.append(Param("rope_sin", (spec.max_ctx, d), "float32"))  # [C, d]
    return params


# ---------------------------------------------------------------- MiniCPM-V (docs/minicpmv.md)


def is_vision_config(cfg: MiniCPMConfig) -> bool:
    """A MiniCPM-V config (the LM config plus a vision tower and resampler)."""
    return getattr(cfg, "model_type", "") == "minicpmv"


def default_max_patches(cfg: MiniCPMConfig) -> int:
    """ceil(1.125 * (scale_resolution // patch)^2): 1152 for V2.0 (slices of images up to 50:1 fit)."""
    side = cfg.scale_resolution // cfg.patch_size  # type: ignore[attr-defined]
    return math.ceil(1.125 * side * side)


def vision_max_patches(cfg: MiniCPMConfig, spec: CompileSpec) -> int:
    return spec.max_patches or default_max_patches(cfg)


def vision_params(cfg: MiniCPMConfig, spec: CompileSpec) -> list[Param]:
    """The vision tower's and resampler's weights (``vision.*``, ``resampler.*``) in the vision entry's order."""
    if not is_vision_config(cfg):
        return []
    from mcpm.export.compiler.vision_def import vision_weight_params

    return list(vision_weight_params(cfg, spec.vision_dtype))


def bundle_weight_params(cfg: MiniCPMConfig, spec: CompileSpec) -> list[Param]:
    """Every weight of the bundle (plan.json "weights", weights.bin): the LM's, then (MiniCPM-V) the vision
    entry's. Entries take their weights by name from this list."""
    return weight_params(cfg, spec) + vision_params(cfg, spec)
