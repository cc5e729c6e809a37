"""int4 kernels that read the packed layout of docs/quantization.md directly (no float copy of the weight).

qweight uint32[N, Kp/8]: input k of row j at bits 4*(k % 8) of word k // 8
scales  float16[N, Kp/G]: W[j, k] = (nibble - 8) * scales[j, k // G]
"""

from __future__ import annotations

from tvm.script import tirx as T


def linear_q4(k_in: int, n_out: int, group: int, residual: bool = False):
    """y[n, N] = x[n, K] @ dequant(qweight, scales)[N, K]^T (+ r[n, N] when ``residual``), dequantized in registers.

    Per group: one fp16 scale load, G/8 word loads, sum((nibble - 8) * x) then * scale."""
    kp = -(-k_in // group) * group
    words = group // 8

    @T.macro
    def row_dot(x, qw, sc, i, j, acc):  # acc[0] = x[i, :] . W[j, :]
        word = T.alloc_local((1,), "uint32")
        acc[0] = T.float32(0)
        for g in range(kp // group):
            acc[1] = T.float32(0)
            for w in range(words):
                word[0] = qw[j, g * words + w]
                for b in T.unroll(8):
                    if g * group + w * 8 + b < k_in:  # padded inputs are never read (no-op when K % G == 0)
                        nib = T.bitwise_and(T.shift_right(word[0], T.uint32(4 * b)), T.uint32(15))
                        acc[1] = acc[1] + x[i, g * group + w * 8 + b] * (T.Cast("float32", nib) - T.float32(8))
            acc[0] = acc[0] + acc[1] * T.Cast("float32", sc[j, g])

    @T.prim_func(private=True)
    def linear(x_h: T.handle, q_h: T.handle, s_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        qw = T.match_buffer(q_h, (n_out, kp // 8), "uint32")  # [N, Kp/8]
        sc = T.match_buffer(s_h, (n_out, kp // group), "float16")  # [N, Kp/G]
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        for i in range(n):
            for j in T.parallel(n_out):
                acc = T.alloc_local((2,), "float32")  # [row total, group partial]
                row_dot(x, qw, sc, i, j, acc)
                y[i, j] = acc[0]

    @T.prim_func(private=True)
    def linear_add(x_h: T.handle, q_h: T.handle, s_h: T.handle, r_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        qw = T.match_buffer(q_h, (n_out, kp // 8), "uint32")  # [N, Kp/8]
        sc = T.match_buffer(s_h, (n_out, kp // group), "float16")  # [N, Kp/G]
        r = T.match_buffer(r_h, (n, n_out), "float32")  # [n, N] residual
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        for i in range(n):
            for j in T.parallel(n_out):
                acc = T.alloc_local((2,), "float32")  # [row total, group partial]
                row_dot(x, qw, sc, i, j, acc)
                y[i, j] = r[i, j] + acc[0]

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
