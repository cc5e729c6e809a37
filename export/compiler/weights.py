"""Export a reference ``MiniCPM`` module's weights in the compiled functions' parameter order.

Folds (exact): o_proj and down_proj * residual_scale, final norm weight / logit_divisor. scale_emb stays a
multiply after the lookup (the embedding doubles as the tied lm_head). RoPE cos/sin tables cover [0, max_ctx).
"""

from __future__ import annotations

import numpy as np
import torch

from mcpm.errors import McpmError
from mcpm.export.compiler.layout import weight_params
from mcpm.export.compiler.spec import CompileSpec
from mcpm.export.models.layers import default_inv_freq, rope_cos_sin
from mcpm.export.models.minicpm.config import MiniCPMConfig
from mcpm.quantize.packing import quantize
from mcpm.quantize.schemes import QuantScheme


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def check_supported(cfg: MiniCPMConfig, spec: CompileSpec) -> None:
    if cfg.is_moe:
        raise McpmError("the TVM compiler does not support MiniCPM-MoE yet", "compile a dense minicpm model")
    if cfg.rope_base(spec.max_ctx) != cfg.rope_theta:
        raise McpmError(
            f"max_ctx {spec.max_ctx} > max_position_embeddings {cfg.max_position_embeddings} with dynamic NTK RoPE",
            "the compiled RoPE table is static: lower max_ctx",
        )


def rope_tables(cfg: MiniCPMConfig, max_ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [max_ctx, head_dim] exactly as the reference computes them."""
    inv_freq = default_inv_freq(cfg.rope_base(max_ctx), cfg.head_dim)
    cos, sin = rope_cos_sin(torch.arange(max_ctx), inv_freq, torch.float32)
    return _np(cos), _np(sin)


def float_weights(model, cfg: MiniCPMConfig, spec: CompileSpec) -> dict[str, np.ndarray]:
    """Every logical float32 weight by its layout name (before int4 packing)."""
    rs = np.float32(cfg.residual_scale)
    out = {"embed": _np(model.embed.weight)}  # [V, D]
    for i, layer in enumerate(model.layers):
        p, a, m = f"layers.{i}.", layer.attn, layer.mlp
        out[p + "attn_norm"] = _np(layer.attn_norm.weight)  # [D]
        out[p + "wqkv"] = np.concatenate([_np(a.wq.weight), _np(a.wk.weight), _np(a.wv.weight)])  # [(Hq+2Hkv)d, D]
        out[p + "wo"] = _np(a.wo.weight) * rs  # [D, Hq*d]
        out[p + "mlp_norm"] = _np(layer.mlp_norm.weight)  # [D]
        out[p + "w_gate_up"] = np.concatenate([_np(m.w_gate.weight), _np(m.w_up.weight)])  # [2I, D]
        out[p + "w_down"] = _np(m.w_down.weight) * rs  # [D, I]
    out["final_norm"] = _np(model.final_norm.weight) / np.float32(cfg.logit_divisor)  # [D]
    out["lm_head"] = out["embed"] if model.lm_head is None else _np(model.lm_head.weight)  # [V, D]
    out["rope_cos"], out["rope_sin"] = rope_tables(cfg, spec.max_ctx)  # [C, d] each
    return out


def export_weights(model, cfg: MiniCPMConfig, spec: CompileSpec) -> list[np.ndarray]:
    """Arrays in ``weight_params`` order (int4 linears packed as qweight/scales when spec.int4_group)."""
    check_supported(cfg, spec)
    logical = float_weights(model, cfg, spec)
    scheme = QuantScheme(f"q4g{spec.int4_group}", "int4-sym", spec.int4_group) if spec.int4_group else None
    packed: dict[str, dict[str, np.ndarray]] = {}
    arrays = []
    for p in weight_params(cfg, spec):
        base, _, part = p.name.rpartition(".")
        if part in ("qweight", "scales"):
            if base not in packed:
                packed[base] = quantize(logical[base], scheme).tensors
            arr = packed[base][part]
        else:
            arr = logical[p.name]
        arr = np.ascontiguousarray(arr, dtype=p.dtype)
        assert arr.shape == p.shape, (p.name, arr.shape, p.shape)
        arrays.append(arr)
    return arrays
