"""Relax definition (BlockBuilder) of a ``minicpm`` model (dense or MoE): ``prefill`` and ``decode``
(``minicpmv``: also ``embed``, ``prefill_embeds`` and ``vision``, see docs/minicpmv.md).

Both functions take (tokens int32[n], pos int64, k_cache_0, v_cache_0, ..., weights...) and return logits:
[1, vocab] for the last position (or [n, vocab] with ``spec.all_logits``). The caches [C, Hkv, d] are written
in place at rows pos .. pos+n-1. prefill has a symbolic n <= spec.chunk (``tir_var_upper_bound``); decode has n = 1.
muP: scale_emb is applied after the embedding lookup; residual and logit scales are folded into the weights.
"""

from __future__ import annotations

from tvm import IRModule, relax, tirx

from mcpm.export.compiler import kernels, moe_kernels, quant_kernels
from mcpm.export.compiler.layout import (
    Param,
    is_vision_config,
    linear_params,
    linear_shapes,
    uses_rows4,
    vision_max_patches,
    weight_params,
)
from mcpm.export.compiler.spec import CompileSpec
from mcpm.export.models.minicpm.config import MiniCPMConfig


def _t(shape, dtype: str = "float32") -> relax.TensorType:
    return relax.TensorType(list(shape), dtype)


class _Builder:
    def __init__(self, cfg: MiniCPMConfig, spec: CompileSpec) -> None:
        self.cfg, self.spec = cfg, spec
        self.bb = relax.BlockBuilder()
        self.gvars: dict[tuple, relax.GlobalVar] = {}

    def kernel(self, key: tuple, make) -> relax.GlobalVar:
        if key not in self.gvars:
            self.gvars[key] = self.bb.add_func(make(), "_".join(str(k) for k in key if k != ""))
        return self.gvars[key]

    def emit(self, expr, name: str | None = None):
        return self.bb.emit(expr, name) if name else self.bb.emit(expr)

    def linear(self, x, w: dict, name: str, n, shape: tuple[int, int], residual=None):
        """x [n, K] -> [n, N] (+ residual [n, N]) with weight ``name`` of ``shape`` (N, K) in its scheme's layout."""
        (out, k), res = shape, residual is not None
        scheme = self.spec.scheme_for(name)
        g, add = scheme.group_size, "add" * res
        if scheme.kind == "int4-sym" and scheme.activations == "int8":  # -a8: x quantized to int8 per 32 inputs
            rows4 = uses_rows4(name, out, self.spec)  # the weight's order (layout.to_rows4)
            gv = self.kernel(("linear_q4a8", k, out, g, add, "r4" * rows4),
                             lambda: quant_kernels.linear_q4(k, out, g, res, act="int8", rows4=rows4))
            args = [x, w[name + ".qweight"], w[name + ".scales"]]
        elif scheme.kind == "int4-sym":
            gv = self.kernel(("linear_q4", k, out, g, add), lambda: quant_kernels.linear_q4(k, out, g, res))
            args = [x, w[name + ".qweight"], w[name + ".scales"]]
        elif scheme.kind == "int4-asym":
            gv = self.kernel(("linear_q4a", k, out, g, add), lambda: quant_kernels.linear_q4_asym(k, out, g, res))
            args = [x, w[name + ".qweight"], w[name + ".scales"], w[name + ".mins"]]
        elif scheme.kind == "int8-channel":
            gv = self.kernel(("linear_q8", k, out, add), lambda: quant_kernels.linear_q8(k, out, res))
            args = [x, w[name + ".qweight"], w[name + ".scales"]]
        else:
            dt = scheme.float_dtype
            gv = self.kernel(("linear" if dt == "float32" else "linear_f16", k, out, add),
                             lambda: kernels.linear_nt(k, out, res, dt))
            args = [x, w[name]]
        return self.emit(relax.op.call_tir(gv, args + ([residual] if res else []), _t([n, out])))

    def moe(self, x, w: dict, prefix: str, n, residual):
        """residual [n, D] + the top-k mixture of layer ``prefix``'s SiLU-gated experts on x [n, D] (moe_kernels)."""
        cfg, op = self.cfg, relax.op
        hid, inter, e, k = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.num_experts_per_tok
        logits = self.linear(x, w, prefix + "router", n, (e, hid))  # [n, E]

        def expert_kernel(name: str, make):  # -> (kernel, weight args) for the scheme of the stacked weight
            scheme = self.spec.scheme_for(prefix + name)
            g, dt = scheme.group_size, scheme.float_dtype if scheme.kind == "float" else "float32"
            key = (name, "f" if scheme.kind == "float" else "q4", dt if scheme.kind == "float" else g, hid, inter, e, k)
            gv = self.kernel(key, lambda: make(hid, inter, e, k, scheme.kind, g, dt))
            if scheme.kind == "float":
                return gv, [w[prefix + name]]
            return gv, [w[prefix + name + ".qweight"], w[prefix + name + ".scales"]]

        gv, wargs = expert_kernel("moe_gate_up", moe_kernels.moe_gate_up)
        act = self.emit(op.call_tir(gv, [x, logits, *wargs], _t([n, k * inter])))  # [n, k*I]
        gv, wargs = expert_kernel("moe_down", moe_kernels.moe_down)
        return self.emit(op.call_tir(gv, [act, logits, *wargs, residual], _t([n, hid])))  # [n, D]

    def embedding(self, w: dict, tokens, n):
        """tokens [n] -> rows of the embedding [n, D] (unscaled), read in its scheme's layout."""
        cfg, op = self.cfg, relax.op
        vocab, hid = cfg.vocab_size, cfg.hidden_size
        scheme = self.spec.scheme_for("embed")
        g = scheme.group_size
        if scheme.kind == "float":
            rows = self.emit(op.take(w["embed"], tokens, axis=0, mode="clip"))  # [n, D]
            return rows if scheme.float_dtype == "float32" else self.emit(op.astype(rows, "float32"))
        if scheme.kind == "int4-sym":
            gv = self.kernel(("embed_q4", vocab, hid, g), lambda: quant_kernels.embed_q4(vocab, hid, g))
            args = [tokens, w["embed.qweight"], w["embed.scales"]]
        elif scheme.kind == "int4-asym":
            gv = self.kernel(("embed_q4a", vocab, hid, g), lambda: quant_kernels.embed_q4_asym(vocab, hid, g))
            args = [tokens, w["embed.qweight"], w["embed.scales"], w["embed.mins"]]
        else:
            gv = self.kernel(("embed_q8", vocab, hid), lambda: quant_kernels.embed_q8(vocab, hid))
            args = [tokens, w["embed.qweight"], w["embed.scales"]]
        return self.emit(op.call_tir(gv, args, _t([n, hid])))  # [n, D]

    def scaled_embedding(self, w: dict, tokens, n):
        """tokens [n] -> embedding rows * scale_emb [n, D] (the LM's input)."""
        h = self.embedding(w, tokens, n)  # [n, D]
        return self.emit(relax.op.multiply(h, relax.const(self.cfg.scale_emb, "float32")))  # [n, D]

    def body(self, n, tokens, pos, caches, w: dict):
        return self.layers(n, self.scaled_embedding(w, tokens, n), pos, caches, w)

    def layers(self, n, h, pos, caches, w: dict):
        """h [n, D] (scaled embeddings) -> the decoder layers -> logits [1, V] (or [n, V] with all_logits)."""
        cfg, spec = self.cfg, self.spec
        hid, hq, hkv, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_kv_heads, cfg.head_dim
        shapes = linear_shapes(cfg)
        kv = spec.kv_dtype
        cache_t = _t([spec.max_ctx, hkv, d], kv)
        tag = () if kv == "float32" else ("f16",)  # float32 caches keep the kernel names the GPU export knows
        append = self.kernel(("kv_append", hq, hkv, d, *tag),
                             lambda: kernels.kv_append(hq, hkv, d, spec.max_ctx, kv))
        attn = self.kernel(("attention", hq, hkv, d, *tag),
                           lambda: kernels.attention(hq, hkv, d, spec.max_ctx, kv))
        op = relax.op
        for i in range(cfg.num_hidden_layers):
            p = f"layers.{i}."
            x = self.emit(op.nn.rms_norm(h, w[p + "attn_norm"], axes=[-1], epsilon=cfg.rms_norm_eps))  # [n, D]
            qkv = self.linear(x, w, p + "wqkv", n, shapes["wqkv"])  # [n, (Hq+2Hkv)*d]
            kv = self.emit(
                op.call_tir_inplace(
                    append,
                    [qkv, caches[2 * i], caches[2 * i + 1], w["rope_cos"], w["rope_sin"], pos],
                    [1, 2],
                    [cache_t, cache_t],
                )
            )  # (k_cache', v_cache') aliases of the params; attention MUST read these (else the append is dead code)
            k_new, v_new = self.emit(relax.TupleGetItem(kv, 0)), self.emit(relax.TupleGetItem(kv, 1))
            a = self.emit(
                op.call_tir(attn, [qkv, k_new, v_new, w["rope_cos"], w["rope_sin"], pos], _t([n, hq * d]))
            )  # [n, Hq*d]
            h = self.linear(a, w, p + "wo", n, shapes["wo"], residual=h)  # [n, D] = h + attn @ wo^T
            x = self.emit(op.nn.rms_norm(h, w[p + "mlp_norm"], axes=[-1], epsilon=cfg.rms_norm_eps))  # [n, D]
            if cfg.is_moe:
                h = self.moe(x, w, p, n, residual=h)  # [n, D] = h + moe
                continue
            gu = self.linear(x, w, p + "w_gate_up", n, shapes["w_gate_up"])  # [n, 2I]
            parts = self.emit(op.split(gu, 2, axis=1))  # ([n, I], [n, I])
            gate, up = self.emit(relax.TupleGetItem(parts, 0)), self.emit(relax.TupleGetItem(parts, 1))
            act = self.emit(op.multiply(op.nn.silu(gate), up))  # [n, I]
            h = self.linear(act, w, p + "w_down", n, shapes["w_down"], residual=h)  # [n, D] = h + mlp
        rows = n
        if not spec.all_logits and not (isinstance(n, int) and n == 1):  # (decode: the slice would be a view op)
            # a 1-input call_tir kernel here would be probed as a reshape by RewriteDataflowReshape and crash on
            # blockless TIR ("Check failed: func->body->IsInstance<s_tir::SBlockRealizeNode>()"): use strided_slice
            h = self.emit(op.strided_slice(h, axes=[0], begin=[n - 1], end=[n]))  # [1, D]
            rows = 1
        x = self.emit(op.nn.rms_norm(h, w["final_norm"], axes=[-1], epsilon=cfg.rms_norm_eps))  # [rows, D]
        head = "embed" if cfg.tie_word_embeddings else "lm_head"
        return self.linear(x, w, head, rows, (cfg.vocab_size, hid))  # [rows, V]

    def _weights(self, params: list[Param]) -> tuple[list, dict]:
        wvars = [relax.Var(p.name.replace(".", "_"), _t(p.shape, p.dtype)) for p in params]
        return wvars, {p.name: v for p, v in zip(params, wvars, strict=True)}

    def _caches(self) -> list:
        cfg, spec = self.cfg, self.spec
        return [
            relax.Var(f"{kind}_cache_{i}",  # [C, Hkv, d]
                      _t([spec.max_ctx, cfg.num_kv_heads, cfg.head_dim], spec.kv_dtype))
            for i in range(cfg.num_hidden_layers)
            for kind in ("k", "v")
        ]

    def function(self, name: str, n) -> None:
        """prefill / decode: (tokens [n], pos, caches, LM weights) -> logits."""
        tokens = relax.Var("tokens", _t([n], "int32"))  # [n]
        pos = tirx.Var("pos", "int64")  # first cache row written; pos + n <= max_ctx (driver check + kv_append assert)
        caches = self._caches()
        wvars, w = self._weights(weight_params(self.cfg, self.spec))
        with self.bb.function(name, [tokens, pos, *caches, *wvars]):
            with self.bb.dataflow():
                logits = self.bb.emit_output(self.body(n, tokens, pos, caches, w))
            self.bb.emit_func_output(logits)

    def embed_function(self, n) -> None:
        """embed: (tokens [n], the embedding's weights) -> embedding * scale_emb [n, D]."""
        tokens = relax.Var("tokens", _t([n], "int32"))  # [n]
        wvars, w = self._weights(linear_params("embed", self.cfg.vocab_size, self.cfg.hidden_size, self.spec))
        with self.bb.function("embed", [tokens, *wvars]):
            with self.bb.dataflow():
                h = self.bb.emit_output(self.scaled_embedding(w, tokens, n))
            self.bb.emit_func_output(h)

    def prefill_embeds_function(self, n) -> None:
        """prefill_embeds: (embeds [n, D], pos, caches, LM weights) -> logits; the layers of prefill."""
        embeds = relax.Var("embeds", _t([n, self.cfg.hidden_size]))  # [n, D]
        pos = tirx.Var("pos", "int64")
        caches = self._caches()
        wvars, w = self._weights(weight_params(self.cfg, self.spec))
        with self.bb.function("prefill_embeds", [embeds, pos, *caches, *wvars]):
            with self.bb.dataflow():
                logits = self.bb.emit_output(self.layers(n, embeds, pos, caches, w))
            self.bb.emit_func_output(logits)


def build_module(cfg: MiniCPMConfig, spec: CompileSpec) -> IRModule:
    """IRModule with ``prefill`` (symbolic n <= chunk) and ``decode`` (n = 1); for ``minicpmv`` also ``embed``,
    ``prefill_embeds`` (n <= chunk) and ``vision`` (n patches <= max_patches; docs/minicpmv.md)."""
    b = _Builder(cfg, spec)
    b.function("prefill", tirx.Var("n", "int64"))
    b.function("decode", 1)
    bounds = {"prefill": spec.chunk}
    if is_vision_config(cfg):
        from mcpm.export.compiler.vision_def import build_vision

        b.embed_function(tirx.Var("n", "int64"))
        b.prefill_embeds_function(tirx.Var("n", "int64"))
        bounds.update(embed=spec.chunk, prefill_embeds=spec.chunk)
        build_vision(b.bb, cfg, spec.vision_dtype, vision_max_patches(cfg, spec))
        bounds["vision"] = vision_max_patches(cfg, spec)
    mod = b.bb.get()
    for name, bound in bounds.items():
        gv = mod.get_global_var(name)
        mod[gv] = mod[gv].with_attr("tir_var_upper_bound", {"n": bound})
    return mod
