"""Hand-written TIR kernels of the ``vision`` entry (SigLIP tower + Resampler2), blockless like kernels.py.

Shapes use: n = patches of the slice (symbolic, n <= max_n), K / N = in / out features of a linear, Dv = vision
hidden, D = LM hidden, Q = resampler queries, H = heads, d = head dim. fp32 accumulation everywhere; reductions
keep LANES explicit partial sums (LLVM does not reassociate a scalar fp reduction, so it would not vectorize it)
and sum the lanes once per output. The DPS output is always the last parameter.
"""

from __future__ import annotations

from tvm.script import tirx as T

LANES = 8  # float lanes of one AVX2 vector (two NEON vectors)
TILE_TOKENS, TILE_ROWS = 4, 2  # a linear_bias tile: 4 tokens x 2 weight rows = 8 vector accumulators
ONE_ROWS = 4  # rows of a one-token tile (the n % TILE_TOKENS remaining tokens)
SUPER_ROWS = 64  # weight rows per parallel task: each token tile (in L1) is read by 64 rows (in L2)
ATTN_QUERIES = 4  # query rows per attention task: each key / value vector loaded once feeds 4 queries
ATTN_KEY_VECS = 2  # key vectors (of LANES keys) per score tile: 4 x 2 vector accumulators


def linear_bias(
    k_in: int, n_out: int, w_dtype: str = "float16", residual: bool = False, bias: bool = True, gelu: bool = False
):
    """y[n, N] = x[n, K] @ W[N, K]^T (+ b[N]) (+ r[n, N] when ``residual``), or gelu_tanh of that with ``gelu``;
    W in ``w_dtype`` (float16 is converted to float32 once per tile, in registers).

    Parallel over blocks of SUPER_ROWS weight rows (row indices clamped to N - 1: the last block recomputes and
    rewrites row N - 1, no branches). Inside a block: tiles of TILE_TOKENS tokens x TILE_ROWS rows, then the
    remaining tokens one at a time x ONE_ROWS rows. A tile keeps LANES-wide partial sums per (token, row) over the
    K // LANES full vectors of K, adds the K % LANES tail inputs in a scalar loop and sums the lanes once; with
    ``gelu`` the tile's outputs go through gelu_tanh as one vector."""
    kv = k_in // LANES  # full vectors of K
    tt, tr, ro, sb = TILE_TOKENS, TILE_ROWS, ONE_ROWS, SUPER_ROWS
    blocks = -(-n_out // sb)
    last = n_out - 1

    @T.macro
    def finish(acc, b_, r_, i, j, a, has_b, has_r):  # acc[a] = sum of acc[a : a+LANES] (+ b[j]) (+ r[i, j])
        for c in range(1, LANES):
            acc[a] = acc[a] + acc[a + c]
        if has_b:
            acc[a] = acc[a] + b_[j]
        if has_r:
            acc[a] = acc[a] + r_[i, j]

    @T.macro
    def tile(x, w, b_, r_, y, i0, j0, tokens, rows, has_b, has_r):  # y[i0 .. i0+tokens, j0 .. j0+rows), rows <= N-1
        acc = T.alloc_local((tokens * rows * LANES,), "float32")  # [tokens, rows, LANES] partial sums
        wv = T.alloc_local((rows * LANES,), "float32")  # [rows, LANES] one converted vector per row
        out = T.alloc_local((tokens * rows,), "float32")  # [tokens, rows] the tile's outputs (gelu: as one vector)
        for t, r in T.grid(tokens, rows):
            for c in T.vectorized(LANES):
                acc[(t * rows + r) * LANES + c] = T.float32(0)
        for kc in range(kv):
            for r in T.unroll(rows):
                for c in T.vectorized(LANES):
                    wv[r * LANES + c] = T.Cast("float32", w[T.min(j0 + r, last), kc * LANES + c])
            for t in T.unroll(tokens):
                for r in T.unroll(rows):
                    for c in T.vectorized(LANES):
                        acc[(t * rows + r) * LANES + c] = (
                            acc[(t * rows + r) * LANES + c] + wv[r * LANES + c] * x[i0 + t, kc * LANES + c]
                        )
        for t in T.unroll(tokens):
            for r in T.unroll(rows):
                for k in range(kv * LANES, k_in):  # K % LANES tail (empty when LANES divides K)
                    acc[(t * rows + r) * LANES] = acc[(t * rows + r) * LANES] + x[i0 + t, k] * T.Cast(
                        "float32", w[T.min(j0 + r, last), k]
                    )
                finish(acc, b_, r_, i0 + t, T.min(j0 + r, last), (t * rows + r) * LANES, has_b, has_r)
                out[t * rows + r] = acc[(t * rows + r) * LANES]
        if gelu:
            for e in T.vectorized(tokens * rows):
                out[e] = gelu_tanh(out[e])
        for t in T.unroll(tokens):
            for r in T.unroll(rows):
                y[i0 + t, T.min(j0 + r, last)] = out[t * rows + r]

    @T.macro
    def body(x, w, b_, r_, y, n, has_b, has_r):
        for blk in T.parallel(blocks):
            for it in range(n // tt):
                for jr in range(sb // tr):
                    tile(x, w, b_, r_, y, it * tt, blk * sb + jr * tr, tt, tr, has_b, has_r)
            for i in range(n // tt * tt, n):
                for jr in range(sb // ro):
                    tile(x, w, b_, r_, y, i, blk * sb + jr * ro, 1, ro, has_b, has_r)

    # only the variant asked for is parsed (TVMScript parsing dominates the build time)
    if not bias and not residual:

        @T.prim_func(private=True)
        def linear(x_h: T.handle, w_h: T.handle, y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            n = T.int64()
            x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
            w = T.match_buffer(w_h, (n_out, k_in), w_dtype)  # [N, K]
            y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
            body(x, w, y, y, y, n, False, False)

        return linear
    if bias and not residual:

        @T.prim_func(private=True)
        def linear_b(x_h: T.handle, w_h: T.handle, b_h: T.handle, y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            n = T.int64()
            x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
            w = T.match_buffer(w_h, (n_out, k_in), w_dtype)  # [N, K]
            b = T.match_buffer(b_h, (n_out,), "float32")  # [N]
            y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
            body(x, w, b, y, y, n, True, False)

        return linear_b
    if residual and not bias:

        @T.prim_func(private=True)
        def linear_add(x_h: T.handle, w_h: T.handle, r_h: T.handle, y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            n = T.int64()
            x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
            w = T.match_buffer(w_h, (n_out, k_in), w_dtype)  # [N, K]
            r = T.match_buffer(r_h, (n, n_out), "float32")  # [n, N] residual
            y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
            body(x, w, y, r, y, n, False, True)

        return linear_add

    @T.prim_func(private=True)
    def linear_b_add(x_h: T.handle, w_h: T.handle, b_h: T.handle, r_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        w = T.match_buffer(w_h, (n_out, k_in), w_dtype)  # [N, K]
        b = T.match_buffer(b_h, (n_out,), "float32")  # [N]
        r = T.match_buffer(r_h, (n, n_out), "float32")  # [n, N] residual
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        body(x, w, b, r, y, n, True, True)

    return linear_b_add


def exp_le0(x):
    """exp(x) for x <= 0 as one vectorizable expression (Cephes expf: x = k ln2 + r, |r| <= ln2 / 2, exp(r) by a
    degree-6 polynomial, 2^k built in the exponent bits; relative error ~ 2e-7). x is clamped at -87 (exp ~ 1.6e-38,
    still a normal float). libm's expf would be one scalar call per element."""
    xc = T.max(x, T.float32(-87.0))
    k = T.floor(xc * T.float32(1.44269504088896341) + T.float32(0.5))
    r = xc - k * T.float32(0.693359375) + k * T.float32(2.12194440e-4)
    p = T.float32(1.9875691500e-4)
    for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + T.float32(coef)
    two_k = T.reinterpret("float32", T.shift_left(T.Cast("int32", k) + 127, 23))
    return (p * r * r + r + T.float32(1)) * two_k


def gelu_tanh(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), tanh(u) = sign(u) (1 - e) / (1 + e) with e = exp(-2|u|)."""
    u = T.float32(0.7978845608028654) * (x + T.float32(0.044715) * x * x * x)
    e = exp_le0(T.float32(-2) * T.fabs(u))
    th = (T.float32(1) - e) / (T.float32(1) + e)
    return T.float32(0.5) * x * (T.float32(1) + T.if_then_else(u < T.float32(0), -th, th))


def _attend(head_dim: int, max_n: int, scale: float):
    """T.macro: out[i0+qi, o_off : o_off+d] = softmax_t(scale * q_qi . k_t) v_t over the n keys, for the
    ATTN_QUERIES query rows i0 + qi (clamped to q_last) of one head; q_qi = q[i0+qi, q_off : q_off+d],
    k_t = kt[k_row : k_row+d, t] (keys transposed: a row holds one dimension of all n keys), v_t = v[t, v_off : +d].

    Scores: tiles of ATTN_QUERIES queries x ATTN_KEY_VECS * LANES keys, one vector accumulator per (query, key
    vector), q_qi[j] broadcast against LANES consecutive keys of kt row j (no horizontal sums); the n % keys-per-tile
    last keys go through a scalar loop. They live in a [ATTN_QUERIES, max_n rounded up to LANES] local array;
    max, exp (a vectorized polynomial, exp_le0) and sum run over whole vectors (padding keys = -3e38). Output: tiles of
    ATTN_QUERIES queries x jg vectors of d, the exp weight broadcast against value vectors; the d % LANES last
    columns go through a scalar loop."""
    d, tq, kvs = head_dim, ATTN_QUERIES, ATTN_KEY_VECS
    kb = kvs * LANES  # keys per score tile
    dv = d // LANES  # full vectors of d
    jg = next(g for g in (3, 2, 1) if dv % g == 0 and tq * g <= 12) if dv else 1  # value vectors per output tile
    acc_len = max(tq * kvs, tq * jg) * LANES
    max_np = -(-max_n // LANES) * LANES  # score row length: n rounded up to whole vectors fits

    @T.macro
    def attend(q, q_off, q_last, kt, k_row, v, v_off, out, o_off, i0, n):
        ql = T.alloc_local((tq * d,), "float32")  # [tq, d] the queries, times scale
        score = T.alloc_local((tq * max_np,), "float32")  # [tq, max_np] scores, then exp(score - max)
        acc = T.alloc_local((acc_len,), "float32")  # [tq, kvs or jg, LANES] vector accumulators of a tile
        vec = T.alloc_local((LANES,), "float32")  # [LANES] partial max, then partial sum of exp
        stat = T.alloc_local((1,), "float32")  # max score of a query
        inv = T.alloc_local((tq,), "float32")  # [tq] 1 / sum of the exp weights
        n_pad = (n + LANES - 1) // LANES * LANES
        for qi, j in T.grid(tq, d):
            ql[qi * d + j] = q[T.min(i0 + qi, q_last), q_off + j] * T.float32(scale)
        for tb in range(n // kb):  # score tiles: keys tb*kb .. tb*kb + kb
            for a in T.vectorized(tq * kvs * LANES):
                acc[a] = T.float32(0)
            for j in range(d):
                for qi in T.unroll(tq):
                    for u in T.unroll(kvs):
                        for c in T.vectorized(LANES):
                            acc[(qi * kvs + u) * LANES + c] = acc[(qi * kvs + u) * LANES + c] + ql[qi * d + j] * kt[
                                k_row + j, tb * kb + u * LANES + c
                            ]
            for qi in T.unroll(tq):
                for a in T.vectorized(kb):
                    score[qi * max_np + tb * kb + a] = acc[qi * kb + a]
        for t in range(n // kb * kb, n):  # the last n % kb keys
            for qi in T.unroll(tq):
                acc[qi] = T.float32(0)
                for j in range(d):
                    acc[qi] = acc[qi] + ql[qi * d + j] * kt[k_row + j, t]
                score[qi * max_np + t] = acc[qi]
        for qi in range(tq):  # softmax weights (unnormalized) and 1 / their sum, LANES keys at a time
            for t in range(n, n_pad):  # padding keys: exp(-inf) ~ 0 (never read by the output loop)
                score[qi * max_np + t] = T.float32(-3.0e38)
            for c in T.vectorized(LANES):
                vec[c] = T.float32(-3.0e38)
            for tb in range(n_pad // LANES):
                for c in T.vectorized(LANES):
                    vec[c] = T.max(vec[c], score[qi * max_np + tb * LANES + c])
            stat[0] = vec[0]
            for c in range(1, LANES):
                stat[0] = T.max(stat[0], vec[c])
            for c in T.vectorized(LANES):
                vec[c] = T.float32(0)
            for tb in range(n_pad // LANES):
                for c in T.vectorized(LANES):
                    score[qi * max_np + tb * LANES + c] = exp_le0(score[qi * max_np + tb * LANES + c] - stat[0])
                    vec[c] = vec[c] + score[qi * max_np + tb * LANES + c]
            for c in range(1, LANES):
                vec[0] = vec[0] + vec[c]
            inv[qi] = T.float32(1) / vec[0]
        for g in range(dv // jg):  # output tiles: vectors g*jg .. g*jg + jg of d
            for a in T.vectorized(tq * jg * LANES):
                acc[a] = T.float32(0)
            for t in range(n):
                for qi in T.unroll(tq):
                    for u in T.unroll(jg):
                        for c in T.vectorized(LANES):
                            acc[(qi * jg + u) * LANES + c] = (
                                acc[(qi * jg + u) * LANES + c]
                                + score[qi * max_np + t] * v[t, v_off + (g * jg + u) * LANES + c]
                            )
            for qi in T.unroll(tq):
                for u in T.unroll(jg):
                    for c in T.vectorized(LANES):
                        out[T.min(i0 + qi, q_last), o_off + (g * jg + u) * LANES + c] = (
                            acc[(qi * jg + u) * LANES + c] * inv[qi]
                        )
        for qi, j in T.grid(tq, d - dv * LANES):  # the last d % LANES columns
            acc[0] = T.float32(0)
            for t in range(n):
                acc[0] = acc[0] + score[qi * max_np + t] * v[t, v_off + dv * LANES + j]
            out[T.min(i0 + qi, q_last), o_off + dv * LANES + j] = acc[0] * inv[qi]

    return attend


def vision_attention(heads: int, head_dim: int, max_n: int):
    """out[i, h*d:(h+1)*d] = softmax_t(q_ih . k_th / sqrt(d)) v_th over all n patches (non-causal), from the fused
    qkv[n, 3*Dv] whose row holds [q heads | k heads | v heads] (the reference VisionAttention's packed layout) and
    kt[Dv, n] = the k part transposed. Parallel over (head, block of ATTN_QUERIES queries); n <= max_n."""
    d, dim, tq = head_dim, heads * head_dim, ATTN_QUERIES
    attend = _attend(head_dim, max_n, float(head_dim) ** -0.5)

    @T.prim_func(private=True)
    def attn(qkv_h: T.handle, kt_h: T.handle, o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        qkv = T.match_buffer(qkv_h, (n, 3 * dim), "float32")  # [n, 3*Dv] (q and v parts read)
        kt = T.match_buffer(kt_h, (dim, n), "float32")  # [Dv, n] keys transposed
        out = T.match_buffer(o_h, (n, dim), "float32")  # [n, Dv]
        assert n <= max_n, "vision_attention: more patches than max_patches"
        for task in T.parallel(heads * ((n + tq - 1) // tq)):  # head-major: a thread's tasks share K and V
            h = task // ((n + tq - 1) // tq)
            i0 = task % ((n + tq - 1) // tq) * tq
            attend(qkv, h * d, n - 1, kt, h * d, qkv, 2 * dim + h * d, out, h * d, i0, n)

    return attn


def cross_attention(q_num: int, heads: int, head_dim: int, max_n: int):
    """out[qi, h*d:(h+1)*d] = softmax_t(q[qi, h] . k[t, h]) v[t, h] over the n patches: the resampler's Q constant
    queries q[Q, D] (already scaled by 1/sqrt(d)) against kt[D, n] (the keys transposed) and v[n, D].
    Parallel over (head, block of ATTN_QUERIES queries)."""
    d, dim, tq = head_dim, heads * head_dim, ATTN_QUERIES
    attend = _attend(head_dim, max_n, 1.0)
    qblocks = -(-q_num // tq)

    @T.prim_func(private=True)
    def cross(q_h: T.handle, kt_h: T.handle, v_h: T.handle, o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        q = T.match_buffer(q_h, (q_num, dim), "float32")  # [Q, D] pre-scaled queries
        kt = T.match_buffer(kt_h, (dim, n), "float32")  # [D, n] keys transposed
        v = T.match_buffer(v_h, (n, dim), "float32")  # [n, D]
        out = T.match_buffer(o_h, (q_num, dim), "float32")  # [Q, D]
        assert n <= max_n, "cross_attention: more patches than max_patches"
        for task in T.parallel(heads * qblocks):  # head-major: a thread's tasks share K and V
            h = task // qblocks
            attend(q, h * d, q_num - 1, kt, h * d, v, h * d, out, h * d, task % qblocks * tq, n)

    return cross
