"""Hand-written TIR kernels (blockless, unscheduled; llvm compiles them as plain loops).

Shapes use: n = tokens in this call (symbolic), C = max_ctx, Hq / Hkv = query / kv heads, d = head_dim,
QKV = (Hq + 2 * Hkv) * d. The fused qkv row holds [q heads | k heads | v heads], each head d wide.
Scalars (``pos``) come before the DPS output, which is always the last parameter.
"""

from __future__ import annotations

from tvm.script import tirx as T


def linear_nt(k_in: int, n_out: int, residual: bool = False, w_dtype: str = "float32"):
    """y[n, N] = x[n, K] @ W[N, K]^T (+ r[n, N] when ``residual``); weights keep the [out, in] layout and
    ``w_dtype`` (float32, or float16 converted in registers)."""

    @T.macro
    def row_dot(x, w, i, j, acc):  # acc[0] = x[i, :] . w[j, :]
        acc[0] = T.float32(0)
        for k in range(k_in):
            acc[0] = acc[0] + x[i, k] * T.Cast("float32", w[j, k])

    @T.prim_func(private=True)
    def linear(x_h: T.handle, w_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        w = T.match_buffer(w_h, (n_out, k_in), w_dtype)  # [N, K]
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        for i in range(n):
            for j in T.parallel(n_out):
                acc = T.alloc_local((1,), "float32")
                row_dot(x, w, i, j, acc)
                y[i, j] = acc[0]

    @T.prim_func(private=True)
    def linear_add(x_h: T.handle, w_h: T.handle, r_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        w = T.match_buffer(w_h, (n_out, k_in), w_dtype)  # [N, K]
        r = T.match_buffer(r_h, (n, n_out), "float32")  # [n, N] residual
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        for i in range(n):
            for j in T.parallel(n_out):
                acc = T.alloc_local((1,), "float32")
                row_dot(x, w, i, j, acc)
                y[i, j] = r[i, j] + acc[0]

    return linear_add if residual else linear


def kv_append(n_heads: int, n_kv: int, head_dim: int, max_ctx: int, cache_dtype: str = "float32"):
    """In place: k_cache[pos + i] = rope(k_i), v_cache[pos + i] = v_i for the n new tokens (rounded to the cache's
    dtype: float32 or float16)."""
    d, half = head_dim, head_dim // 2
    k_off, v_off = n_heads * head_dim, (n_heads + n_kv) * head_dim
    width = (n_heads + 2 * n_kv) * head_dim

    @T.prim_func(private=True)
    def append(qkv_h: T.handle, kc_h: T.handle, vc_h: T.handle, cos_h: T.handle, sin_h: T.handle, pos: T.int64):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        qkv = T.match_buffer(qkv_h, (n, width), "float32")  # [n, QKV]
        kc = T.match_buffer(kc_h, (max_ctx, n_kv, d), cache_dtype)  # [C, Hkv, d]
        vc = T.match_buffer(vc_h, (max_ctx, n_kv, d), cache_dtype)  # [C, Hkv, d]
        cos = T.match_buffer(cos_h, (max_ctx, d), "float32")  # [C, d]
        sin = T.match_buffer(sin_h, (max_ctx, d), "float32")  # [C, d]
        assert pos >= 0 and pos + n <= max_ctx, "kv_append: pos + n exceeds max_ctx (KV cache full)"
        for i, h, j in T.grid(n, n_kv, d):
            base = k_off + h * d
            rot = T.if_then_else(j < half, -qkv[i, base + j + half], qkv[i, base + j - half])
            kc[pos + i, h, j] = T.Cast(cache_dtype, qkv[i, base + j] * cos[pos + i, j] + rot * sin[pos + i, j])
            vc[pos + i, h, j] = T.Cast(cache_dtype, qkv[i, v_off + h * d + j])

    return append


def attention(n_heads: int, n_kv: int, head_dim: int, max_ctx: int, cache_dtype: str = "float32"):
    """out[i, h*d:(h+1)*d] = softmax(rope(q_ih) . K[0 : pos+i+1]^T / sqrt(d)) V  (causal, GQA; the caches in
    ``cache_dtype``, float32 or float16, read as float32).

    One parallel launch over (head, token) pairs, heads outer (each thread gets whole heads of every token, so the
    causal work is balanced). Dots: LANES-wide partial sums over d when d % LANES == 0 (else scalar), one horizontal
    sum per key; exp is libm's; output: a d-wide accumulator (vector registers) += p_t * v_t, divided once."""
    d, half, group = head_dim, head_dim // 2, n_heads // n_kv
    width = (n_heads + 2 * n_kv) * head_dim
    scale = float(head_dim) ** -0.5
    lanes = 8 if d % 8 == 0 else 1

    @T.prim_func(private=True)
    def attn(
        qkv_h: T.handle, kc_h: T.handle, vc_h: T.handle, cos_h: T.handle, sin_h: T.handle, pos: T.int64, o_h: T.handle
    ):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        qkv = T.match_buffer(qkv_h, (n, width), "float32")  # [n, QKV]
        kc = T.match_buffer(kc_h, (max_ctx, n_kv, d), cache_dtype)  # [C, Hkv, d]
        vc = T.match_buffer(vc_h, (max_ctx, n_kv, d), cache_dtype)  # [C, Hkv, d]
        cos = T.match_buffer(cos_h, (max_ctx, d), "float32")  # [C, d]
        sin = T.match_buffer(sin_h, (max_ctx, d), "float32")  # [C, d]
        out = T.match_buffer(o_h, (n, n_heads * d), "float32")  # [n, Hq*d]
        for e in T.parallel(n_heads * n):
            q = T.alloc_local((d,), "float32")  # rope(q) * scale
            acc = T.alloc_local((d,), "float32")  # sum_t p_t v_t
            part = T.alloc_local((lanes,), "float32")  # partial sums of one dot
            score = T.alloc_local((max_ctx,), "float32")  # scores, then exp weights
            stat = T.alloc_local((2,), "float32")  # running max, sum of exp
            h = e // n
            i = e % n
            for j in range(d):
                rot = T.if_then_else(j < half, -qkv[i, h * d + j + half], qkv[i, h * d + j - half])
                q[j] = (qkv[i, h * d + j] * cos[pos + i, j] + rot * sin[pos + i, j]) * T.float32(scale)
            stat[0] = T.float32(-3.0e38)
            for t in range(pos + i + 1):
                for b in T.vectorized(lanes):
                    part[b] = q[b] * T.Cast("float32", kc[t, h // group, b])
                for v in range(1, d // lanes):
                    for b in T.vectorized(lanes):
                        part[b] = part[b] + q[v * lanes + b] * T.Cast("float32", kc[t, h // group, v * lanes + b])
                for b in range(1, lanes):
                    part[0] = part[0] + part[b]
                score[t] = part[0]
                stat[0] = T.max(stat[0], part[0])
            stat[1] = T.float32(0)
            for t in range(pos + i + 1):
                score[t] = T.exp(score[t] - stat[0])
                stat[1] = stat[1] + score[t]
            for j in T.vectorized(d):
                acc[j] = T.float32(0)
            for t in range(pos + i + 1):
                for j in T.vectorized(d):
                    acc[j] = acc[j] + score[t] * T.Cast("float32", vc[t, h // group, j])
            for j in T.vectorized(d):
                out[i, h * d + j] = acc[j] / stat[1]

    return attn
