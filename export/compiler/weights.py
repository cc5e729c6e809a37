"""Export a reference ``MiniCPM`` module's weights in the compiled functions' parameter order.

Folds (exact): o_proj and down_proj * residual_scale, final norm weight / logit_divisor. scale_emb stays a
multiply after the lookup (the embedding doubles as the tied lm_head). RoPE cos/sin tables cover [0, max_ctx).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from mcpm.errors import McpmError
from mcpm.export.compiler.layout import (
    Param,
    is_vision_config,
    to_rows4,
    uses_rows4,
    vision_params,
    weight_params,
)
from mcpm.export.compiler.spec import CompileSpec
from mcpm.export.models.layers import rope_cos_sin
from mcpm.export.models.minicpm.config import MiniCPMConfig
from mcpm.quantize.packing import quantize


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def check_supported(cfg: MiniCPMConfig, spec: CompileSpec) -> None:
    if spec.num_experts != cfg.num_experts:
        raise McpmError(f"the compile spec has num_experts = {spec.num_experts}, the model {cfg.num_experts}",
                        "build the CompileSpec with the config's num_experts")
    if cfg.is_moe:
        for i in range(cfg.num_hidden_layers):
            for name in ("moe_gate_up", "moe_down"):
                scheme = spec.scheme_for(f"layers.{i}.{name}")
                if scheme.kind not in ("float", "int4-sym"):
                    raise McpmError(f"MiniCPM-MoE experts support float and int4-sym schemes, not {scheme.name} "
                                    f"(layers.{i} experts)", "quantize the experts with f32, f16 or q4gN")
                if scheme.activations != "float":  # moe_kernels multiply float activations
                    base = scheme.name.removesuffix("-a8")
                    raise McpmError(f"MiniCPM-MoE experts keep float activations, not {scheme.name} (layers.{i} "
                                    f"experts)", f"use {base} for the experts: --quant-rule 'layers.*.mlp.experts.*="
                                    f"{base}'")
    if cfg.rope_base(spec.max_ctx) != cfg.rope_theta:
        raise McpmError(
            f"max_ctx {spec.max_ctx} > max_position_embeddings {cfg.max_position_embeddings} with dynamic NTK RoPE",
            "the compiled RoPE table is static: lower max_ctx",
        )


def rope_tables(cfg: MiniCPMConfig, max_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [max_ctx, head_dim] exactly as the reference computes them."""
    cos, sin = rope_cos_sin(torch.arange(max_ctx), cfg.rope_inv_freq(max_ctx), torch.float32, cfg.rope_scale)
    return _np(cos), _np(sin)


def residual_folded(name: str) -> bool:
    """Weights that carry the residual scale: the attention output and the MLP down projection."""
    return name.endswith((".wo", ".w_down", ".moe_down"))


def logical_weight(model, cfg: MiniCPMConfig, spec: CompileSpec, name: str, fold: bool = True) -> np.ndarray:
    """One logical float32 weight by its layout name (before packing); muP scales folded (residual scale only
    with ``fold``: quantized weights fold it into their scales instead, see iter_weights)."""
    rs = np.float32(cfg.residual_scale if fold else 1.0)
    if name == "embed" or (name == "lm_head" and model.lm_head is None):
        return _np(model.embed.weight)  # [V, D]
    if name == "lm_head":
        return _np(model.lm_head.weight)  # [V, D]
    if name == "final_norm":
        return _np(model.final_norm.weight) / np.float32(cfg.logit_divisor)  # [D]
    if name in ("rope_cos", "rope_sin"):
        return rope_tables(cfg, spec.max_ctx)[name == "rope_sin"]  # [C, d]
    _, index, part = name.split(".")
    layer = model.layers[int(index)]
    a, m = layer.attn, layer.mlp
    if part == "attn_norm":
        return _np(layer.attn_norm.weight)  # [D]
    if part == "mlp_norm":
        return _np(layer.mlp_norm.weight)  # [D]
    if part == "wqkv":
        return np.concatenate([_np(a.wq.weight), _np(a.wk.weight), _np(a.wv.weight)])  # [(Hq+2Hkv)d, D]
    if part == "wo":
        return _np(a.wo.weight) * rs  # [D, Hq*d]
    if part == "w_gate_up":
        return np.concatenate([_np(m.w_gate.weight), _np(m.w_up.weight)])  # [2I, D]
    if part == "w_down":
        return _np(m.w_down.weight) * rs  # [D, I]
    if part == "router":
        return _np(m.router.weight)  # [E, D]
    if part == "moe_gate_up":  # [E*2I, D]: per expert [gate_e | up_e]
        return np.concatenate([_np(w) for ex in m.experts for w in (ex.w_gate.weight, ex.w_up.weight)])
    if part == "moe_down":
        return np.concatenate([_np(ex.w_down.weight) for ex in m.experts]) * rs  # [E*D, I]
    raise KeyError(name)


def iter_weights(model, cfg: MiniCPMConfig, spec: CompileSpec) -> Iterator[tuple[Param, np.ndarray]]:
    """(param, array) in ``bundle_weight_params`` order, one logical weight in memory at a time (quantized weights
    packed into their parts: qweight, scales, mins). MiniCPM-V (``model`` a MiniCPMV): the LM's weights (of
    ``model.llm``), then the vision tower's and resampler's (vision_def.vision_weight_arrays)."""
    check_supported(cfg, spec)
    if is_vision_config(cfg):
        yield from _lm_weights(model.llm, cfg, spec)
        yield from _vision_weights(model, cfg, spec)
    else:
        yield from _lm_weights(model, cfg, spec)


def _vision_weights(model, cfg: MiniCPMConfig, spec: CompileSpec) -> Iterator[tuple[Param, np.ndarray]]:
    params = vision_params(cfg, spec)
    if not params:
        return
    from mcpm.export.compiler.vision_def import vision_weight_arrays

    arrays = vision_weight_arrays(model, spec.vision_dtype)
    for p, (name, arr) in zip(params, arrays, strict=True):
        if name != p.name:
            raise McpmError(f"vision weight {name} arrives where {p.name} belongs")
        arr = np.ascontiguousarray(arr, dtype=p.dtype)
        if arr.shape != p.shape:
            raise McpmError(f"vision weight {p.name} has shape {arr.shape}, the layout says {p.shape}")
        yield p, arr


def _lm_weights(model, cfg: MiniCPMConfig, spec: CompileSpec) -> Iterator[tuple[Param, np.ndarray]]:
    packed: tuple[str, dict[str, np.ndarray]] = ("", {})
    for p in weight_params(cfg, spec):
        base, _, part = p.name.rpartition(".")
        if part in ("qweight", "scales", "mins"):
            if packed[0] != base:
                # quantize the unscaled weight (the same codes `mcpm eval` measures), then scale its
                # per-group scales and mins by the residual scale: exact up to their fp16 rounding
                tensors = quantize(logical_weight(model, cfg, spec, base, fold=False), spec.scheme_for(base)).tensors
                if residual_folded(base):
                    rs = np.float32(cfg.residual_scale)
                    for key in ("scales", "mins"):
                        if key in tensors:
                            tensors[key] = (tensors[key].astype(np.float32) * rs).astype(np.float16)
                if uses_rows4(base, tensors["qweight"].shape[0], spec):
                    tensors["qweight"] = to_rows4(tensors["qweight"])
                packed = (base, tensors)
            arr = packed[1][part]
        else:
            arr = logical_weight(model, cfg, spec, p.name)  # float weights: cast to the param's dtype below
        arr = np.ascontiguousarray(arr, dtype=p.dtype)
        assert arr.shape == p.shape, (p.name, arr.shape, p.shape)
        yield p, arr


def export_weights(model, cfg: MiniCPMConfig, spec: CompileSpec) -> list[np.ndarray]:
    """Arrays in ``bundle_weight_params`` order (= ``weight_params`` for the LM families)."""
    return [arr for _, arr in iter_weights(model, cfg, spec)]
