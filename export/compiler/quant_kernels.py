"""int4 kernels that read the packed layout of docs/quantization.md directly (no float copy of the weight).

qweight uint32[N, Kp/8]: input k of row j at bits 4*(k % 8) of word k // 8
scales  float16[N, Kp/G]: W[j, k] = (nibble - 8) * scales[j, k // G]
"""

from __future__ import annotations

from tvm.script import tirx as T

# Register tiles of linear_q4 (see its docstring). PREFILL_ROWS * PREFILL_TOKENS + PREFILL_ROWS vector registers
# (8 float lanes each) hold the accumulators and the dequantized words; x comes from memory operands.
LANES = 8  # nibbles per uint32 word = float lanes of one AVX2 / two NEON vectors
DECODE_ROWS = 4  # rows of a one-token tile: 4 independent accumulator chains hide the FMA latency
PREFILL_ROWS, PREFILL_TOKENS = 2, 4  # rows x tokens of a prefill tile: each dequantized word feeds 4 tokens
SUPER_ROWS = 16  # rows per parallel task unit: its weights (16 x K/2 bytes) stay in L1/L2 over all token tiles


def linear_q4(k_in: int, n_out: int, group: int, residual: bool = False):
    """y[n, N] = x[n, K] @ dequant(qweight, scales)[N, K]^T (+ r[n, N] when ``residual``), dequantized in registers.

    Parallel over blocks of SUPER_ROWS rows (the last block's row indices are clamped to N - 1: it recomputes and
    rewrites the last row, no branches); inside a block, tiles of PREFILL_TOKENS tokens x PREFILL_ROWS rows and then
    the remaining tokens one at a time x DECODE_ROWS rows. A tile keeps 8-lane partial sums per (token, row); each
    packed word is broadcast to 8 lanes, shifted by 0, 4, .., 28 (one vector shift), masked and converted.
    Prefill tiles scale it ((nibble - 8) * s, exact) once and fma it into PREFILL_TOKENS tokens' sums; decode tiles
    fma the raw nibbles per group and add (sum(nibble * x) - 8 * sum(x)) * s once per group (sum(x) shared by the
    rows). The horizontal sum of the 8 lanes happens once per output; fp32 accumulation throughout. Inputs of a padded
    last group (K % G != 0) go through a scalar loop that never reads x past K."""
    kp = -(-k_in // group) * group
    words = group // 8
    full = k_in // group  # groups entirely inside K
    rd, rp, tp = DECODE_ROWS, PREFILL_ROWS, PREFILL_TOKENS
    sb = SUPER_ROWS
    blocks = -(-n_out // sb)
    last = n_out - 1

    def nibbles(qw, j, word):  # the 8 nibbles of qw[j, word] as int32 lanes (vector shift by 0, 4, .., 28 + mask)
        return lambda b: T.bitwise_and(T.shift_right(qw[j, word], T.Cast("uint32", b * 4)), T.uint32(15))

    @T.macro
    def finish(acc, r_, y, i, j, a, add):  # y[i, j] (+ r[i, j]) = horizontal sum of acc[a : a+8]
        for b in range(1, LANES):
            acc[a] = acc[a] + acc[a + b]
        if add:
            y[i, j] = r_[i, j] + acc[a]
        else:
            y[i, j] = acc[a]

    @T.macro
    def tail(x, qw, sc, acc, i, j, a):  # padded last group: scalar, x read only below K (no-op when K % G == 0)
        for k in range(full * group, k_in):
            nib = T.bitwise_and(T.shift_right(qw[j, k // 8], T.Cast("uint32", (k % 8) * 4)), T.uint32(15))
            acc[a] = acc[a] + x[i, k] * ((T.Cast("float32", nib) - T.float32(8)) * T.Cast("float32", sc[j, k // group]))

    @T.macro
    def decode_tile(x, qw, sc, r_, y, i, j0, add):  # y[i, j0 .. j0+rd) (rows clamped to N - 1)
        # per group: gacc[r] = sum nibble * x (8 lanes), xs = sum x; acc[r] += (gacc[r] - 8 xs) * scale[r]
        acc = T.alloc_local((rd * LANES,), "float32")
        gacc = T.alloc_local((rd * LANES,), "float32")
        xs = T.alloc_local((LANES,), "float32")
        for r in T.unroll(rd):
            for b in T.vectorized(LANES):
                acc[r * LANES + b] = T.float32(0)
        for g in range(full):
            for b in T.vectorized(LANES):
                xs[b] = T.float32(0)
            for r in T.unroll(rd):
                for b in T.vectorized(LANES):
                    gacc[r * LANES + b] = T.float32(0)
            for w in T.unroll(words):
                for b in T.vectorized(LANES):
                    xs[b] = xs[b] + x[i, g * group + w * 8 + b]
                for r in T.unroll(rd):
                    for b in T.vectorized(LANES):
                        gacc[r * LANES + b] = gacc[r * LANES + b] + T.Cast(
                            "float32", nibbles(qw, T.min(j0 + r, last), g * words + w)(b)
                        ) * x[i, g * group + w * 8 + b]
            for r in T.unroll(rd):
                for b in T.vectorized(LANES):
                    acc[r * LANES + b] = acc[r * LANES + b] + (gacc[r * LANES + b] - xs[b] * T.float32(8)) * T.Cast(
                        "float32", sc[T.min(j0 + r, last), g]
                    )
        for r in T.unroll(rd):
            tail(x, qw, sc, acc, i, T.min(j0 + r, last), r * LANES)
            finish(acc, r_, y, i, T.min(j0 + r, last), r * LANES, add)

    @T.macro
    def prefill_tile(x, qw, sc, r_, y, i0, j0, add):  # y[i0 .. i0+tp, j0 .. j0+rp) (rows clamped to N - 1)
        # each word dequantized once ((nibble - 8) * scale, exact) and fma'd into tp tokens' sums
        acc = T.alloc_local((tp * rp * LANES,), "float32")
        wv = T.alloc_local((rp * LANES,), "float32")
        for t, r in T.grid(tp, rp):
            for b in T.vectorized(LANES):
                acc[(t * rp + r) * LANES + b] = T.float32(0)
        for g in range(full):
            for w in T.unroll(words):
                for r in T.unroll(rp):
                    for b in T.vectorized(LANES):
                        wv[r * LANES + b] = T.Cast(
                            "float32", T.Cast("int32", nibbles(qw, T.min(j0 + r, last), g * words + w)(b)) - 8
                        ) * T.Cast("float32", sc[T.min(j0 + r, last), g])
                for t in T.unroll(tp):
                    for r in T.unroll(rp):
                        for b in T.vectorized(LANES):
                            acc[(t * rp + r) * LANES + b] = (
                                acc[(t * rp + r) * LANES + b] + wv[r * LANES + b] * x[i0 + t, g * group + w * 8 + b]
                            )
        for t in T.unroll(tp):
            for r in T.unroll(rp):
                tail(x, qw, sc, acc, i0 + t, T.min(j0 + r, last), (t * rp + r) * LANES)
                finish(acc, r_, y, i0 + t, T.min(j0 + r, last), (t * rp + r) * LANES, add)

    @T.macro
    def body(x, qw, sc, r_, y, n, add):
        for blk in T.parallel(blocks):
            for it in range(n // tp):
                for jr in range(sb // rp):
                    prefill_tile(x, qw, sc, r_, y, it * tp, blk * sb + jr * rp, add)
            for i in range(n // tp * tp, n):
                for jr in range(sb // rd):
                    decode_tile(x, qw, sc, r_, y, i, blk * sb + jr * rd, add)

    @T.prim_func(private=True)
    def linear(x_h: T.handle, q_h: T.handle, s_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        qw = T.match_buffer(q_h, (n_out, kp // 8), "uint32")  # [N, Kp/8]
        sc = T.match_buffer(s_h, (n_out, kp // group), "float16")  # [N, Kp/G]
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        body(x, qw, sc, y, y, n, False)

    @T.prim_func(private=True)
    def linear_add(x_h: T.handle, q_h: T.handle, s_h: T.handle, r_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        qw = T.match_buffer(q_h, (n_out, kp // 8), "uint32")  # [N, Kp/8]
        sc = T.match_buffer(s_h, (n_out, kp // group), "float16")  # [N, Kp/G]
        r = T.match_buffer(r_h, (n, n_out), "float32")  # [n, N] residual
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        body(x, qw, sc, r, y, n, True)

    return linear_add if residual else linear


def embed_q4(vocab: int, dim: int, group: int):
    """out[i, :] = dequant(qweight, scales)[tokens[i], :]: the int4 embedding (also the tied lm_head)."""
    dp = -(-dim // group) * group

    @T.prim_func(private=True)
    def embed(t_h: T.handle, q_h: T.handle, s_h: T.handle, o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        tokens = T.match_buffer(t_h, (n,), "int32")  # [n]
        qw = T.match_buffer(q_h, (vocab, dp // 8), "uint32")  # [V, Dp/8]
        sc = T.match_buffer(s_h, (vocab, dp // group), "float16")  # [V, Dp/G]
        out = T.match_buffer(o_h, (n, dim), "float32")  # [n, D]
        for i, k in T.grid(n, dim):
            # out-of-range ids are clipped, as take(mode="clip") does for float embeddings
            row = T.max(T.min(T.Cast("int64", tokens[i]), T.int64(vocab - 1)), T.int64(0))
            nib = T.bitwise_and(T.shift_right(qw[row, k // 8], T.Cast("uint32", (k % 8) * 4)), T.uint32(15))
            out[i, k] = (T.Cast("float32", nib) - T.float32(8)) * T.Cast("float32", sc[row, k // group])

    return embed


def linear_q4_asym(k_in: int, n_out: int, group: int, residual: bool = False):
    """Asymmetric int4: W[j, k] = nibble * scales[j, k // G] + mins[j, k // G], dequantized in registers.

    Per group: sum(x * nibble) * scale + sum(x) * min."""
    kp = -(-k_in // group) * group
    words = group // 8

    @T.macro
    def row_dot(x, qw, sc, mn, i, j, acc):  # acc[0] = x[i, :] . W[j, :]
        word = T.alloc_local((1,), "uint32")
        acc[0] = T.float32(0)
        for g in range(kp // group):
            acc[1] = T.float32(0)
            acc[2] = T.float32(0)
            for w in range(words):
                word[0] = qw[j, g * words + w]
                for b in T.unroll(8):
                    if g * group + w * 8 + b < k_in:
                        nib = T.bitwise_and(T.shift_right(word[0], T.uint32(4 * b)), T.uint32(15))
                        acc[1] = acc[1] + x[i, g * group + w * 8 + b] * T.Cast("float32", nib)
                        acc[2] = acc[2] + x[i, g * group + w * 8 + b]
            acc[0] = acc[0] + acc[1] * T.Cast("float32", sc[j, g]) + acc[2] * T.Cast("float32", mn[j, g])

    @T.prim_func(private=True)
    def linear(x_h: T.handle, q_h: T.handle, s_h: T.handle, m_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        qw = T.match_buffer(q_h, (n_out, kp // 8), "uint32")  # [N, Kp/8]
        sc = T.match_buffer(s_h, (n_out, kp // group), "float16")  # [N, Kp/G]
        mn = T.match_buffer(m_h, (n_out, kp // group), "float16")  # [N, Kp/G]
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        for i in range(n):
            for j in T.parallel(n_out):
                acc = T.alloc_local((3,), "float32")  # [row total, group sum(x*nibble), group sum(x)]
                row_dot(x, qw, sc, mn, i, j, acc)
                y[i, j] = acc[0]

    @T.prim_func(private=True)
    def linear_add(x_h: T.handle, q_h: T.handle, s_h: T.handle, m_h: T.handle, r_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        qw = T.match_buffer(q_h, (n_out, kp // 8), "uint32")  # [N, Kp/8]
        sc = T.match_buffer(s_h, (n_out, kp // group), "float16")  # [N, Kp/G]
        mn = T.match_buffer(m_h, (n_out, kp // group), "float16")  # [N, Kp/G]
        r = T.match_buffer(r_h, (n, n_out), "float32")  # [n, N] residual
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        for i in range(n):
            for j in T.parallel(n_out):
                acc = T.alloc_local((3,), "float32")
                row_dot(x, qw, sc, mn, i, j, acc)
                y[i, j] = r[i, j] + acc[0]

    return linear_add if residual else linear


def linear_q8(k_in: int, n_out: int, residual: bool = False):
    """int8 per output channel: W[j, k] = q[j, k] * scales[j]; y = (x . q[j]) * scale[j]."""

    @T.macro
    def row_dot(x, qw, sc, i, j, acc):
        acc[0] = T.float32(0)
        for k in range(k_in):
            acc[0] = acc[0] + x[i, k] * T.Cast("float32", qw[j, k])
        acc[0] = acc[0] * T.Cast("float32", sc[j])

    @T.prim_func(private=True)
    def linear(x_h: T.handle, q_h: T.handle, s_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        qw = T.match_buffer(q_h, (n_out, k_in), "int8")  # [N, K]
        sc = T.match_buffer(s_h, (n_out,), "float16")  # [N]
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        for i in range(n):
            for j in T.parallel(n_out):
                acc = T.alloc_local((1,), "float32")
                row_dot(x, qw, sc, i, j, acc)
                y[i, j] = acc[0]

    @T.prim_func(private=True)
    def linear_add(x_h: T.handle, q_h: T.handle, s_h: T.handle, r_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        qw = T.match_buffer(q_h, (n_out, k_in), "int8")  # [N, K]
        sc = T.match_buffer(s_h, (n_out,), "float16")  # [N]
        r = T.match_buffer(r_h, (n, n_out), "float32")  # [n, N] residual
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        for i in range(n):
            for j in T.parallel(n_out):
                acc = T.alloc_local((1,), "float32")
                row_dot(x, qw, sc, i, j, acc)
                y[i, j] = r[i, j] + acc[0]

    return linear_add if residual else linear


def embed_q4_asym(vocab: int, dim: int, group: int):
    """out[i, :] = nibble * scale + min of row tokens[i] (asymmetric int4 embedding)."""
    dp = -(-dim // group) * group

    @T.prim_func(private=True)
    def embed(t_h: T.handle, q_h: T.handle, s_h: T.handle, m_h: T.handle, o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        tokens = T.match_buffer(t_h, (n,), "int32")  # [n]
        qw = T.match_buffer(q_h, (vocab, dp // 8), "uint32")  # [V, Dp/8]
        sc = T.match_buffer(s_h, (vocab, dp // group), "float16")  # [V, Dp/G]
        mn = T.match_buffer(m_h, (vocab, dp // group), "float16")  # [V, Dp/G]
        out = T.match_buffer(o_h, (n, dim), "float32")  # [n, D]
        for i, k in T.grid(n, dim):
            row = T.max(T.min(T.Cast("int64", tokens[i]), T.int64(vocab - 1)), T.int64(0))
            nib = T.bitwise_and(T.shift_right(qw[row, k // 8], T.Cast("uint32", (k % 8) * 4)), T.uint32(15))
            out[i, k] = T.Cast("float32", nib) * T.Cast("float32", sc[row, k // group]) + T.Cast(
                "float32", mn[row, k // group]
            )

    return embed


def embed_q8(vocab: int, dim: int):
    """out[i, :] = q[tokens[i], :] * scales[tokens[i]] (int8 per-row embedding)."""

    @T.prim_func(private=True)
    def embed(t_h: T.handle, q_h: T.handle, s_h: T.handle, o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        tokens = T.match_buffer(t_h, (n,), "int32")  # [n]
        qw = T.match_buffer(q_h, (vocab, dim), "int8")  # [V, D]
        sc = T.match_buffer(s_h, (vocab,), "float16")  # [V]
        out = T.match_buffer(o_h, (n, dim), "float32")  # [n, D]
        for i, k in T.grid(n, dim):
            row = T.max(T.min(T.Cast("int64", tokens[i]), T.int64(vocab - 1)), T.int64(0))
            out[i, k] = T.Cast("float32", qw[row, k]) * T.Cast("float32", sc[row])

    return embed
