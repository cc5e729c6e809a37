"""Relax definition of the ``vision`` entry: one slice's SigLIP tower + Resampler2 -> image features [Q, D].

    x   = patches @ patch_w^T + patch_b + pos_interp @ pos_table^T            [n, Dv]  (conv + resized positions)
    for each used block:  x += proj(attn(qkv(ln1(x))));  x += fc2(gelu_tanh(fc1(ln2(x))))
    x   = ln(x)                                                              [n, Dv]
    kv  = ln_kv(x @ kv_proj^T)                                               [n, D]
    k   = (kv + key_pos) @ wk^T + bk;  v = kv @ wv^T + bv                    [n, D]
    o   = MHA(q_const, k, v) @ out_w^T + out_b                               [Q, D]
    out = ln_post(o) @ proj^T                                                [Q, D]

q_const = ((ln_q(query) + sincos(Qg, Qg)) @ wq^T + bq) / sqrt(d) is the query side, which does not depend on the
image: vision_weight_arrays folds it (in float64) into one constant, pre-multiplied by the softmax scale.
Kernels (vision_kernels.py): every linear is linear_bias (fc1 with gelu_tanh fused); the attentions read the keys
transposed ([dim, n], made by relax permute_dims); LayerNorm, the transposes and the key_pos add are relax ops.
Inputs (docs/minicpmv.md; vision_inputs.py builds them): patches [n, 3p²], pos_interp [n, G²], key_pos [n, D].
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from tvm import IRModule, relax, tirx

from mcpm.export.compiler import vision_kernels
from mcpm.export.compiler.layout import Param
from mcpm.export.models.minicpmv.config import MiniCPMVConfig
from mcpm.export.models.minicpmv.resampler import LN_EPS, sincos_2d

# a block's parameters: (name, shape key, large matrix?) in order; shape keys resolve in _block_shapes
_BLOCK = (
    ("norm1_w", "dv", False), ("norm1_b", "dv", False),
    ("qkv_w", "qkv", True), ("qkv_b", "3dv", False),
    ("proj_w", "dvdv", True), ("proj_b", "dv", False),
    ("norm2_w", "dv", False), ("norm2_b", "dv", False),
    ("fc1_w", "fc1", True), ("fc1_b", "inter", False),
    ("fc2_w", "fc2", True), ("fc2_b", "dv", False),
)  # fmt: skip


def _has_kv_proj(cfg: MiniCPMVConfig) -> bool:
    return cfg.vision_hidden != cfg.hidden_size  # else the reference's kv_proj is the identity


def vision_weight_params(cfg: MiniCPMVConfig, dtype: str = "float16") -> list[Param]:
    """The weights of ``vision`` in order: large matrices [N out, K in] in ``dtype``; norms, biases and the folded
    query constant in float32."""
    dv, d, p, g = cfg.vision_hidden, cfg.hidden_size, cfg.patch_size, cfg.vision_pos_grid
    f32 = "float32"
    shapes = {"dv": (dv,), "3dv": (3 * dv,), "inter": (cfg.vision_inter,), "qkv": (3 * dv, dv), "dvdv": (dv, dv),
              "fc1": (cfg.vision_inter, dv), "fc2": (dv, cfg.vision_inter)}
    params = [
        Param("vision.patch_w", (dv, 3 * p * p), dtype),  # conv weight [Dv, 3, p, p] flattened
        Param("vision.patch_b", (dv,), f32),
        Param("vision.pos_table", (dv, g * g), dtype),  # pos_embed [G*G, Dv] transposed: pos = pos_interp @ table^T
    ]
    for i in range(cfg.vision_layers_used):
        for name, key, large in _BLOCK:
            params.append(Param(f"vision.blocks.{i}.{name}", shapes[key], dtype if large else f32))
    params += [Param("vision.norm_w", (dv,), f32), Param("vision.norm_b", (dv,), f32)]
    if _has_kv_proj(cfg):
        params.append(Param("resampler.kv_proj", (d, dv), dtype))  # no bias
    params += [
        Param("resampler.ln_kv_w", (d,), f32), Param("resampler.ln_kv_b", (d,), f32),
        Param("resampler.q_const", (cfg.query_num, d), f32),  # folded query side, times 1/sqrt(head_dim)
        Param("resampler.wk", (d, d), dtype), Param("resampler.bk", (d,), f32),
        Param("resampler.wv", (d, d), dtype), Param("resampler.bv", (d,), f32),
        Param("resampler.out_w", (d, d), dtype), Param("resampler.out_b", (d,), f32),
        Param("resampler.ln_post_w", (d,), f32), Param("resampler.ln_post_b", (d,), f32),
        Param("resampler.proj", (d, d), dtype),  # the reference's proj transposed: out = ln_post(o) @ proj^T
    ]  # fmt: skip
    return params


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def vision_weight_arrays(model, dtype: str = "float16") -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) of vision_weight_params(model.cfg, dtype), from a reference ``MiniCPMV``'s parameters."""
    cfg: MiniCPMVConfig = model.cfg
    vis, res = model.vision, model.resampler
    dv = cfg.vision_hidden
    arrays: dict[str, np.ndarray] = {
        "vision.patch_w": _np(vis.patch_embed.weight).reshape(dv, -1),
        "vision.patch_b": _np(vis.patch_embed.bias),
        "vision.pos_table": _np(vis.pos_embed)[0].T,
        "vision.norm_w": _np(vis.norm.weight), "vision.norm_b": _np(vis.norm.bias),
    }  # fmt: skip
    for i, blk in enumerate(vis.blocks):
        p = f"vision.blocks.{i}."
        mods = {"norm1": blk.norm1, "qkv": blk.attn.qkv, "proj": blk.attn.proj, "norm2": blk.norm2,
                "fc1": blk.mlp.fc1, "fc2": blk.mlp.fc2}
        for key, mod in mods.items():
            arrays[p + key + "_w"], arrays[p + key + "_b"] = _np(mod.weight), _np(mod.bias)
    # the query side: ((ln_q(query) + sincos(Qg, Qg)) @ wq^T + bq) / sqrt(head_dim), in float64
    w_in, b_in = _np(res.attn.in_proj_weight), _np(res.attn.in_proj_bias)  # [3D, D], [3D]
    d = cfg.hidden_size
    query = _np(res.query)  # [Q, D]
    mean, var = query.mean(-1, keepdims=True), query.var(-1, keepdims=True)
    q = (query - mean) / np.sqrt(var + LN_EPS) * _np(res.ln_q.weight) + _np(res.ln_q.bias)
    q = q + sincos_2d(d, cfg.query_grid, cfg.query_grid).double().numpy()
    q_const = (q @ w_in[:d].T + b_in[:d]) / math.sqrt(d // cfg.resampler_heads)
    if _has_kv_proj(cfg):
        arrays["resampler.kv_proj"] = _np(res.kv_proj.weight)
    arrays.update({
        "resampler.ln_kv_w": _np(res.ln_kv.weight), "resampler.ln_kv_b": _np(res.ln_kv.bias),
        "resampler.q_const": q_const,
        "resampler.wk": w_in[d:2 * d], "resampler.bk": b_in[d:2 * d],
        "resampler.wv": w_in[2 * d:], "resampler.bv": b_in[2 * d:],
        "resampler.out_w": _np(res.attn.out_proj.weight), "resampler.out_b": _np(res.attn.out_proj.bias),
        "resampler.ln_post_w": _np(res.ln_post.weight), "resampler.ln_post_b": _np(res.ln_post.bias),
        "resampler.proj": _np(res.proj).T,
    })  # fmt: skip
    for param in vision_weight_params(cfg, dtype):
        arr = np.ascontiguousarray(arrays[param.name].astype(param.dtype))
        assert arr.shape == param.shape, f"{param.name}: {arr.shape} != {param.shape}"
        yield param.name, arr


def _t(shape, dtype: str = "float32") -> relax.TensorType:
    return relax.TensorType(list(shape), dtype)


class _VisionBuilder:
    def __init__(self, bb: relax.BlockBuilder, cfg: MiniCPMVConfig, dtype: str, max_patches: int) -> None:
        self.bb, self.cfg, self.dtype, self.max_n = bb, cfg, dtype, max_patches
        self.gvars: dict[str, relax.GlobalVar] = {}
        self.shapes = {q.name.replace(".", "_"): q.shape for q in vision_weight_params(cfg, dtype)}

    def kernel(self, name: str, make) -> relax.GlobalVar:
        """The kernel's GlobalVar, added once per name (names encode every argument of ``make``)."""
        if name not in self.gvars:
            self.gvars[name] = self.bb.add_func(make(), name)
        return self.gvars[name]

    def emit(self, expr):
        return self.bb.emit(expr)

    def linear(self, x, rows, w, b=None, residual=None, gelu: bool = False):
        """x [rows, K] @ w[N, K]^T (+ b[N]) (+ residual [rows, N]) -> [rows, N], then gelu_tanh with ``gelu``."""
        n_out, k_in = self.shapes[w.name]
        bias, res = b is not None, residual is not None
        wt = "f16" if self.dtype == "float16" else "f32"
        name = f"vlinear_{wt}_{k_in}_{n_out}{'_b' * bias}{'_add' * res}{'_gelu' * gelu}"
        gv = self.kernel(name, lambda: vision_kernels.linear_bias(k_in, n_out, self.dtype, res, bias, gelu))
        args = [x, w] + ([b] if bias else []) + ([residual] if res else [])
        return self.emit(relax.op.call_tir(gv, args, _t([rows, n_out])))

    def layer_norm(self, x, w, b, eps: float):
        return self.emit(relax.op.nn.layer_norm(x, w, b, axes=[-1], epsilon=eps))

    def body(self, n, patches, pos_interp, key_pos, w: dict):
        cfg, op = self.cfg, relax.op
        dv, d, heads = cfg.vision_hidden, cfg.hidden_size, cfg.vision_heads
        eps = cfg.vision_eps
        pos = self.linear(pos_interp, n, w["vision.pos_table"], w["vision.patch_b"])  # [n, Dv]
        x = self.linear(patches, n, w["vision.patch_w"], residual=pos)  # [n, Dv]
        attn = self.kernel(f"vision_attention_{heads}_{dv // heads}_{self.max_n}",
                           lambda: vision_kernels.vision_attention(heads, dv // heads, self.max_n))
        for i in range(cfg.vision_layers_used):
            p = f"vision.blocks.{i}."
            a = self.layer_norm(x, w[p + "norm1_w"], w[p + "norm1_b"], eps)  # [n, Dv]
            qkv = self.linear(a, n, w[p + "qkv_w"], w[p + "qkv_b"])  # [n, 3Dv]
            kt = self.emit(op.permute_dims(op.strided_slice(qkv, axes=[1], begin=[dv], end=[2 * dv])))  # [Dv, n]
            o = self.emit(op.call_tir(attn, [qkv, kt], _t([n, dv])))  # [n, Dv]
            x = self.linear(o, n, w[p + "proj_w"], w[p + "proj_b"], residual=x)  # [n, Dv]
            a = self.layer_norm(x, w[p + "norm2_w"], w[p + "norm2_b"], eps)  # [n, Dv]
            f = self.linear(a, n, w[p + "fc1_w"], w[p + "fc1_b"], gelu=True)  # [n, I] gelu_tanh(fc1)
            x = self.linear(f, n, w[p + "fc2_w"], w[p + "fc2_b"], residual=x)  # [n, Dv]
        x = self.layer_norm(x, w["vision.norm_w"], w["vision.norm_b"], eps)  # [n, Dv]
        if _has_kv_proj(cfg):
            x = self.linear(x, n, w["resampler.kv_proj"])  # [n, D]
        kv = self.layer_norm(x, w["resampler.ln_kv_w"], w["resampler.ln_kv_b"], LN_EPS)  # [n, D]
        kp = self.emit(op.add(kv, key_pos))  # [n, D]
        k = self.linear(kp, n, w["resampler.wk"], w["resampler.bk"])  # [n, D]
        v = self.linear(kv, n, w["resampler.wv"], w["resampler.bv"])  # [n, D]
        q_num, rh = cfg.query_num, cfg.resampler_heads
        cross = self.kernel(f"cross_attention_{q_num}_{rh}_{d // rh}_{self.max_n}",
                            lambda: vision_kernels.cross_attention(q_num, rh, d // rh, self.max_n))
        kt = self.emit(op.permute_dims(k))  # [D, n]
        o = self.emit(op.call_tir(cross, [w["resampler.q_const"], kt, v], _t([q_num, d])))  # [Q, D]
        o = self.linear(o, q_num, w["resampler.out_w"], w["resampler.out_b"])  # [Q, D]
        o = self.layer_norm(o, w["resampler.ln_post_w"], w["resampler.ln_post_b"], LN_EPS)  # [Q, D]
        return self.linear(o, q_num, w["resampler.proj"])  # [Q, D]


def build_vision(bb: relax.BlockBuilder, cfg: MiniCPMVConfig, dtype: str, max_patches: int) -> None:
    """Add the relax function ``vision(patches, pos_interp, key_pos, *weights) -> f32[Q, D]`` to ``bb``
    (symbolic n <= max_patches; call finish_vision on the module to record that bound)."""
    n = tirx.Var("n", "int64")
    p, g, d = cfg.patch_size, cfg.vision_pos_grid, cfg.hidden_size
    patches = relax.Var("patches", _t([n, 3 * p * p]))  # [n, 3p²]
    pos_interp = relax.Var("pos_interp", _t([n, g * g]))  # [n, G²]
    key_pos = relax.Var("key_pos", _t([n, d]))  # [n, D]
    params = vision_weight_params(cfg, dtype)
    wvars = [relax.Var(q.name.replace(".", "_"), _t(q.shape, q.dtype)) for q in params]
    w = {q.name: v for q, v in zip(params, wvars, strict=True)}
    b = _VisionBuilder(bb, cfg, dtype, max_patches)
    with bb.function("vision", [patches, pos_interp, key_pos, *wvars]):
        with bb.dataflow():
            out = bb.emit_output(b.body(n, patches, pos_interp, key_pos, w))
        bb.emit_func_output(out)


def finish_vision(mod: IRModule, max_patches: int) -> IRModule:
    """Record n <= max_patches on ``vision`` (tir_var_upper_bound, for memory planning)."""
    gv = mod.get_global_var("vision")
    mod[gv] = mod[gv].with_attr("tir_var_upper_bound", {"n": max_patches})
    return mod


def vision_module(cfg: MiniCPMVConfig, dtype: str, max_patches: int) -> IRModule:
    """An IRModule holding only ``vision`` and its kernels."""
    bb = relax.BlockBuilder()
    build_vision(bb, cfg, dtype, max_patches)
    return finish_vision(bb.get(), max_patches)
