"""MiniCPM-MoE kernels (blockless TIR): top-k routing and the chosen experts' SiLU-gated MLPs.

Per layer the expert weights are stacked in their scheme's packed layout (rows are packed independently, so
stacking does not change the codes):
    gate_up [E * 2I, D]  rows of expert e: [gate_e (I rows) | up_e (I rows)] at e * 2I
    down    [E * D, I]   rows of expert e at e * D; residual scale folded (into the scales when quantized)
Routing (as the reference ``MoE``): softmax over the router logits [n, E], top-k, the k weights renormalized to sum
one; softmax's denominator cancels, so w_s = exp(l_s - l_max) / sum over the chosen of exp(l - l_max).
Both kernels recompute the routing of their token from the logits (E * k compares: negligible next to a row dot),
so no index tensor (and no multi-output kernel) is needed:
    moe_gate_up(x[n, D], logits[n, E], W...) -> act[n, k * I]    act[i, s*I + j] = silu(gate) * up of choice s
    moe_down(act[n, k * I], logits[n, E], W..., r[n, D]) -> y[n, D] = r + sum_s w_s * down_{e_s}(act[i, s])
Schemes: float (``w_dtype`` float32 / float16) and int4-sym (qweight uint32[N, Kp/8], scales float16[N, Kp/G]).
"""

from __future__ import annotations

from tvm.script import tirx as T


def _route(n_exp: int, top_k: int):
    @T.macro
    def route(logits, i, sel_l, sel_e, mask, wts):  # chosen experts sel_e[k] (int32) and their weights wts[k]
        for e in range(n_exp):
            mask[e] = T.int32(0)
        for s in range(top_k):
            sel_l[s] = T.float32(-3.0e38)
            sel_e[s] = T.int32(0)
            for e in range(n_exp):
                if mask[e] == 0 and logits[i, e] > sel_l[s]:
                    sel_l[s] = logits[i, e]
                    sel_e[s] = T.Cast("int32", e)
            mask[sel_e[s]] = T.int32(1)
        wts[top_k] = T.float32(0)  # wts[k] = the sum
        for s in range(top_k):
            wts[s] = T.exp(sel_l[s] - sel_l[0])
            wts[top_k] = wts[top_k] + wts[s]
        for s in range(top_k):
            wts[s] = wts[s] / wts[top_k]

    return route


def _dot_float(k_in: int):
    @T.macro
    def dot(x, i, off, w, row, acc):  # acc[0] = x[i, off : off + K] . w[row, :]
        acc[0] = T.float32(0)
        for k in range(k_in):
            acc[0] = acc[0] + x[i, off + k] * T.Cast("float32", w[row, k])

    return dot


def _dot_q4(k_in: int, group: int):
    kp = -(-k_in // group) * group
    words = group // 8

    @T.macro
    def dot(x, i, off, qw, sc, row, acc):  # acc[0] = x[i, off : off + K] . dequant(W)[row, :]; uses acc[0..1]
        word = T.alloc_local((1,), "uint32")
        acc[0] = T.float32(0)
        for g in range(kp // group):
            acc[1] = T.float32(0)
            for w in range(words):
                word[0] = qw[row, g * words + w]
                for b in T.unroll(8):
                    if g * group + w * 8 + b < k_in:
                        nib = T.bitwise_and(T.shift_right(word[0], T.uint32(4 * b)), T.uint32(15))
                        acc[1] = acc[1] + x[i, off + g * group + w * 8 + b] * (T.Cast("float32", nib) - T.float32(8))
            acc[0] = acc[0] + acc[1] * T.Cast("float32", sc[row, g])

    return dot


def moe_gate_up(hidden: int, inter: int, n_exp: int, top_k: int, kind: str, group: int = 0,
                w_dtype: str = "float32"):
    """act[n, k * I] = silu(x W_gate[e_s]^T) * (x W_up[e_s]^T) for the k chosen experts e_s of each token."""
    d, i_sz, rows = hidden, inter, n_exp * 2 * inter
    route = _route(n_exp, top_k)

    if kind == "float":
        dot = _dot_float(d)

        @T.prim_func(private=True)
        def gate_up(x_h: T.handle, l_h: T.handle, w_h: T.handle, a_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            n = T.int64()
            x = T.match_buffer(x_h, (n, d), "float32")  # [n, D]
            logits = T.match_buffer(l_h, (n, n_exp), "float32")  # [n, E]
            w = T.match_buffer(w_h, (rows, d), w_dtype)  # [E*2I, D]
            act = T.match_buffer(a_h, (n, top_k * i_sz), "float32")  # [n, k*I]
            for i in range(n):
                for j in T.parallel(i_sz):
                    sel_l = T.alloc_local((top_k,), "float32")
                    sel_e = T.alloc_local((top_k,), "int32")
                    mask = T.alloc_local((n_exp,), "int32")
                    wts = T.alloc_local((top_k + 1,), "float32")
                    acc = T.alloc_local((1,), "float32")
                    gate = T.alloc_local((1,), "float32")
                    route(logits, i, sel_l, sel_e, mask, wts)
                    for s in range(top_k):
                        base = T.Cast("int64", sel_e[s]) * (2 * i_sz)
                        dot(x, i, 0, w, base + j, acc)
                        gate[0] = acc[0]
                        dot(x, i, 0, w, base + i_sz + j, acc)
                        act[i, s * i_sz + j] = gate[0] / (T.float32(1) + T.exp(-gate[0])) * acc[0]

        return gate_up

    if kind != "int4-sym":
        raise ValueError(kind)
    dp = -(-d // group) * group
    dotq = _dot_q4(d, group)

    @T.prim_func(private=True)
    def gate_up_q4(x_h: T.handle, l_h: T.handle, q_h: T.handle, s_h: T.handle, a_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, d), "float32")  # [n, D]
        logits = T.match_buffer(l_h, (n, n_exp), "float32")  # [n, E]
        qw = T.match_buffer(q_h, (rows, dp // 8), "uint32")  # [E*2I, Dp/8]
        sc = T.match_buffer(s_h, (rows, dp // group), "float16")  # [E*2I, Dp/G]
        act = T.match_buffer(a_h, (n, top_k * i_sz), "float32")  # [n, k*I]
        for i in range(n):
            for j in T.parallel(i_sz):
                sel_l = T.alloc_local((top_k,), "float32")
                sel_e = T.alloc_local((top_k,), "int32")
                mask = T.alloc_local((n_exp,), "int32")
                wts = T.alloc_local((top_k + 1,), "float32")
                acc = T.alloc_local((2,), "float32")
                gate = T.alloc_local((1,), "float32")
                route(logits, i, sel_l, sel_e, mask, wts)
                for s in range(top_k):
                    base = T.Cast("int64", sel_e[s]) * (2 * i_sz)
                    dotq(x, i, 0, qw, sc, base + j, acc)
                    gate[0] = acc[0]
                    dotq(x, i, 0, qw, sc, base + i_sz + j, acc)
                    act[i, s * i_sz + j] = gate[0] / (T.float32(1) + T.exp(-gate[0])) * acc[0]

    return gate_up_q4


def moe_down(hidden: int, inter: int, n_exp: int, top_k: int, kind: str, group: int = 0, w_dtype: str = "float32"):
    """y[n, D] = r[n, D] + sum_s w_s * act[i, s*I : (s+1)*I] W_down[e_s]^T (residual scale already folded)."""
    d, i_sz, rows = hidden, inter, n_exp * hidden
    route = _route(n_exp, top_k)

    if kind == "float":
        dot = _dot_float(i_sz)

        @T.prim_func(private=True)
        def down(a_h: T.handle, l_h: T.handle, w_h: T.handle, r_h: T.handle, y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            n = T.int64()
            act = T.match_buffer(a_h, (n, top_k * i_sz), "float32")  # [n, k*I]
            logits = T.match_buffer(l_h, (n, n_exp), "float32")  # [n, E]
            w = T.match_buffer(w_h, (rows, i_sz), w_dtype)  # [E*D, I]
            r = T.match_buffer(r_h, (n, d), "float32")  # [n, D] residual
            y = T.match_buffer(y_h, (n, d), "float32")  # [n, D]
            for i in range(n):
                for j in T.parallel(d):
                    sel_l = T.alloc_local((top_k,), "float32")
                    sel_e = T.alloc_local((top_k,), "int32")
                    mask = T.alloc_local((n_exp,), "int32")
                    wts = T.alloc_local((top_k + 1,), "float32")
                    acc = T.alloc_local((1,), "float32")
                    tot = T.alloc_local((1,), "float32")
                    route(logits, i, sel_l, sel_e, mask, wts)
                    tot[0] = T.float32(0)
                    for s in range(top_k):
                        dot(act, i, s * i_sz, w, T.Cast("int64", sel_e[s]) * d + j, acc)
                        tot[0] = tot[0] + wts[s] * acc[0]
                    y[i, j] = r[i, j] + tot[0]

        return down

    if kind != "int4-sym":
        raise ValueError(kind)
    ip = -(-i_sz // group) * group
    dotq = _dot_q4(i_sz, group)

    @T.prim_func(private=True)
    def down_q4(a_h: T.handle, l_h: T.handle, q_h: T.handle, s_h: T.handle, r_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        act = T.match_buffer(a_h, (n, top_k * i_sz), "float32")  # [n, k*I]
        logits = T.match_buffer(l_h, (n, n_exp), "float32")  # [n, E]
        qw = T.match_buffer(q_h, (rows, ip // 8), "uint32")  # [E*D, Ip/8]
        sc = T.match_buffer(s_h, (rows, ip // group), "float16")  # [E*D, Ip/G]
        r = T.match_buffer(r_h, (n, d), "float32")  # [n, D] residual
        y = T.match_buffer(y_h, (n, d), "float32")  # [n, D]
        for i in range(n):
            for j in T.parallel(d):
                sel_l = T.alloc_local((top_k,), "float32")
                sel_e = T.alloc_local((top_k,), "int32")
                mask = T.alloc_local((n_exp,), "int32")
                wts = T.alloc_local((top_k + 1,), "float32")
                acc = T.alloc_local((2,), "float32")
                tot = T.alloc_local((1,), "float32")
                route(logits, i, sel_l, sel_e, mask, wts)
                tot[0] = T.float32(0)
                for s in range(top_k):
                    dotq(act, i, s * i_sz, qw, sc, T.Cast("int64", sel_e[s]) * d + j, acc)
                    tot[0] = tot[0] + wts[s] * acc[0]
                y[i, j] = r[i, j] + tot[0]

    return down_q4
