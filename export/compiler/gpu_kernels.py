"""GPU versions of the hand-written kernels (kernels.py, quant_kernels.py): explicit thread bindings.

Each generator returns a PrimFunc with the SAME parameter list as its CPU twin (same order, shapes and dtypes),
except that float16 buffers are declared uint16: the kernels read the 16-bit patterns and widen them to float32
with integer ops (``_half_to_float``), so devices without ``cl_khr_fp16`` (PoCL) run them too and the Metal
source needs no half arithmetic. Activations, caches and every reduction are float32.

Kernels (n = tokens in the call, symbolic):
    linear      x[n, K] @ W[N, K]^T (+ r): one work-group = ROWS output rows x TI tokens, ROWS * LANES threads;
                the LANES threads of a row split K (interleaved, so neighbours read neighbouring words), each
                keeps TI float32 partial sums (the weight is read once per TI tokens), one shared-memory pass
                sums the lanes. n = 1 is a split-K GEMV (grid N/ROWS x 1); prefill tiles TI tokens per group.
    embed_q4    one thread per output element.
    kv_append   one thread per (token, kv head, dim): rope(k) and v written at rows pos .. pos+n-1.
    attention   one work-group per (head, token); the context is processed in tiles of ATT_THREADS rows
                with an online softmax (running max and sum): shared memory is O(head_dim + tile), not O(ctx).
No asserts: device code cannot raise; the dispatcher bound-checks pos + n <= max_ctx (as the C runtime does).
"""

from __future__ import annotations

from tvm.script import tirx as T

from mcpm.errors import McpmError

ROWS, LANES, TI = 4, 32, 4  # linear: output rows per work-group, threads per row (split K), tokens per work-group
FLAT_THREADS = 128  # embed / kv_append: threads per work-group
ATT_THREADS = 64  # attention: threads per work-group = context rows per tile


def _half_to_float(h16):
    """float32 value of an IEEE half given as uint16 bits (normals, zeros, subnormals, inf/nan), integer ops only."""
    h = T.Cast("uint32", h16)
    sign = T.shift_left(T.bitwise_and(h, T.uint32(0x8000)), T.uint32(16))
    e = T.bitwise_and(T.shift_right(h, T.uint32(10)), T.uint32(31))
    m = T.bitwise_and(h, T.uint32(1023))
    normal = T.bitwise_or(sign, T.shift_left(e + T.uint32(112), T.uint32(23)) + T.shift_left(m, T.uint32(13)))
    special = T.bitwise_or(sign, T.bitwise_or(T.uint32(0x7F800000), T.shift_left(m, T.uint32(13))))
    bits = T.if_then_else(e == T.uint32(31), special, normal)
    sub = T.Cast("float32", m) * T.float32(5.9604644775390625e-08)  # m * 2^-24
    return T.if_then_else(
        e == T.uint32(0), T.if_then_else(sign == T.uint32(0), sub, -sub), T.reinterpret("float32", bits)
    )


# ---------------------------------------------------------------- linear


def linear(k_in: int, n_out: int, residual: bool, w_kind: str, group: int = 0):
    """y[n, N] = x[n, K] @ W^T (+ r[n, N]); w_kind: "float32" | "float16" (W [N, K]) | "q4" (qweight uint32
    [N, Kp/8] + scales [N, Kp/G] as uint16, symmetric: (nibble - 8) * scale). Parameters as the CPU kernels."""
    if w_kind == "q4":
        kp = -(-k_in // group) * group
        units, wpg = kp // 8, group // 8  # a lane step reads one uint32 word = 8 inputs
    else:
        units = k_in  # a lane step reads one weight
    steps = -(-units // LANES)
    red_size = ROWS * TI * LANES

    @T.macro
    def body(x, wgt, sc, r, y, n):
        bx = T.launch_thread("blockIdx.x", (n_out + ROWS - 1) // ROWS)
        by = T.launch_thread("blockIdx.y", (n + TI - 1) // TI)
        tx = T.launch_thread("threadIdx.x", ROWS * LANES)
        red = T.alloc_shared((red_size,), "float32")
        acc = T.alloc_local((TI,), "float32")
        part = T.alloc_local((TI,), "float32")
        row = tx // LANES
        lane = tx % LANES
        j = bx * ROWS + row
        i0 = T.Cast("int64", by) * TI
        for t in range(TI):
            acc[t] = T.float32(0)
        if j < n_out:
            for s in range(steps):
                u = s * LANES + lane
                if u < units:
                    if w_kind == "q4":
                        word = wgt[j, u]
                        scale = _half_to_float(sc[j, u // wpg])
                        for t in range(TI):
                            part[t] = T.float32(0)
                        for b in T.unroll(8):
                            nib = T.Cast(
                                "float32", T.bitwise_and(T.shift_right(word, T.uint32(4 * b)), T.uint32(15))
                            ) - T.float32(8)
                            for t in range(TI):
                                if i0 + t < n and u * 8 + b < k_in:
                                    part[t] = part[t] + x[i0 + t, u * 8 + b] * nib
                        for t in range(TI):
                            acc[t] = acc[t] + part[t] * scale
                    else:
                        for t in range(TI):
                            if i0 + t < n:
                                if w_kind == "float32":
                                    acc[t] = acc[t] + x[i0 + t, u] * wgt[j, u]
                                else:
                                    acc[t] = acc[t] + x[i0 + t, u] * _half_to_float(wgt[j, u])
        for t in range(TI):
            red[(row * TI + t) * LANES + lane] = acc[t]
        T.tvm_storage_sync("shared")
        if lane < TI and j < n_out and i0 + lane < n:
            tot = T.alloc_local((1,), "float32")
            tot[0] = T.float32(0)
            for q in range(LANES):
                tot[0] = tot[0] + red[(row * TI + lane) * LANES + q]
            if residual:
                y[i0 + lane, j] = r[i0 + lane, j] + tot[0]
            else:
                y[i0 + lane, j] = tot[0]

    if w_kind == "q4":

        @T.prim_func(private=True)
        def lin_q4(x_h: T.handle, q_h: T.handle, s_h: T.handle, y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            n = T.int64()
            x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
            qw = T.match_buffer(q_h, (n_out, kp // 8), "uint32")  # [N, Kp/8]
            sc = T.match_buffer(s_h, (n_out, kp // group), "uint16")  # [N, Kp/G] float16 bits
            y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
            body(x, qw, sc, y, y, n)

        @T.prim_func(private=True)
        def lin_q4_add(x_h: T.handle, q_h: T.handle, s_h: T.handle, r_h: T.handle, y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            n = T.int64()
            x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
            qw = T.match_buffer(q_h, (n_out, kp // 8), "uint32")  # [N, Kp/8]
            sc = T.match_buffer(s_h, (n_out, kp // group), "uint16")  # [N, Kp/G] float16 bits
            r = T.match_buffer(r_h, (n, n_out), "float32")  # [n, N] residual
            y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
            body(x, qw, sc, r, y, n)

        return lin_q4_add if residual else lin_q4

    w_dtype = "float32" if w_kind == "float32" else "uint16"

    @T.prim_func(private=True)
    def lin(x_h: T.handle, w_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        w = T.match_buffer(w_h, (n_out, k_in), w_dtype)  # [N, K]
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        body(x, w, w, y, y, n)

    @T.prim_func(private=True)
    def lin_add(x_h: T.handle, w_h: T.handle, r_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        w = T.match_buffer(w_h, (n_out, k_in), w_dtype)  # [N, K]
        r = T.match_buffer(r_h, (n, n_out), "float32")  # [n, N] residual
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        body(x, w, w, r, y, n)

    return lin_add if residual else lin


# ---------------------------------------------------------------- embedding


def embed_q4(vocab: int, dim: int, group: int):
    """out[i, :] = dequant(qweight, scales)[clip(tokens[i]), :] (symmetric int4), one thread per element."""
    dp = -(-dim // group) * group

    @T.prim_func(private=True)
    def embed(t_h: T.handle, q_h: T.handle, s_h: T.handle, o_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        tokens = T.match_buffer(t_h, (n,), "int32")  # [n]
        qw = T.match_buffer(q_h, (vocab, dp // 8), "uint32")  # [V, Dp/8]
        sc = T.match_buffer(s_h, (vocab, dp // group), "uint16")  # [V, Dp/G] float16 bits
        out = T.match_buffer(o_h, (n, dim), "float32")  # [n, D]
        bx = T.launch_thread("blockIdx.x", (n * dim + FLAT_THREADS - 1) // FLAT_THREADS)
        tx = T.launch_thread("threadIdx.x", FLAT_THREADS)
        idx = T.Cast("int64", bx) * FLAT_THREADS + T.Cast("int64", tx)
        if idx < n * dim:
            i = idx // dim
            k = idx % dim
            row = T.max(T.min(T.Cast("int64", tokens[i]), T.int64(vocab - 1)), T.int64(0))
            nib = T.bitwise_and(T.shift_right(qw[row, k // 8], T.Cast("uint32", (k % 8) * 4)), T.uint32(15))
            out[i, k] = (T.Cast("float32", nib) - T.float32(8)) * _half_to_float(sc[row, k // group])

    return embed


# ---------------------------------------------------------------- kv cache and attention


def kv_append(n_heads: int, n_kv: int, head_dim: int, max_ctx: int):
    """In place: k_cache[pos + i] = rope(k_i), v_cache[pos + i] = v_i; one thread per (i, kv head, dim)."""
    d, half = head_dim, head_dim // 2
    k_off, v_off = n_heads * head_dim, (n_heads + n_kv) * head_dim
    width = (n_heads + 2 * n_kv) * head_dim
    per_tok = n_kv * d

    @T.prim_func(private=True)
    def append(qkv_h: T.handle, kc_h: T.handle, vc_h: T.handle, cos_h: T.handle, sin_h: T.handle, pos: T.int64):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        qkv = T.match_buffer(qkv_h, (n, width), "float32")  # [n, QKV]
        kc = T.match_buffer(kc_h, (max_ctx, n_kv, d), "float32")  # [C, Hkv, d]
        vc = T.match_buffer(vc_h, (max_ctx, n_kv, d), "float32")  # [C, Hkv, d]
        cos = T.match_buffer(cos_h, (max_ctx, d), "float32")  # [C, d]
        sin = T.match_buffer(sin_h, (max_ctx, d), "float32")  # [C, d]
        bx = T.launch_thread("blockIdx.x", (n * per_tok + FLAT_THREADS - 1) // FLAT_THREADS)
        tx = T.launch_thread("threadIdx.x", FLAT_THREADS)
        idx = T.Cast("int64", bx) * FLAT_THREADS + T.Cast("int64", tx)
        if idx < n * per_tok:
            i = idx // per_tok
            h = idx % per_tok // d
            j = idx % d
            base = k_off + h * d
            rot = T.if_then_else(j < half, -qkv[i, base + j + half], qkv[i, base + j - half])
            kc[pos + i, h, j] = qkv[i, base + j] * cos[pos + i, j] + rot * sin[pos + i, j]
            vc[pos + i, h, j] = qkv[i, v_off + h * d + j]

    return append


def attention(n_heads: int, n_kv: int, head_dim: int, max_ctx: int):
    """out[i, h*d:(h+1)*d] = softmax(rope(q_ih) . K[0 : pos+i+1]^T / sqrt(d)) V  (causal, GQA), online softmax."""
    d, half, group = head_dim, head_dim // 2, n_heads // n_kv
    width = (n_heads + 2 * n_kv) * head_dim
    scale = float(head_dim) ** -0.5
    bs = ATT_THREADS
    dpt = -(-d // bs)  # output dims per thread

    @T.prim_func(private=True)
    def attn(
        qkv_h: T.handle, kc_h: T.handle, vc_h: T.handle, cos_h: T.handle, sin_h: T.handle, pos: T.int64, o_h: T.handle
    ):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        qkv = T.match_buffer(qkv_h, (n, width), "float32")  # [n, QKV]
        kc = T.match_buffer(kc_h, (max_ctx, n_kv, d), "float32")  # [C, Hkv, d]
        vc = T.match_buffer(vc_h, (max_ctx, n_kv, d), "float32")  # [C, Hkv, d]
        cos = T.match_buffer(cos_h, (max_ctx, d), "float32")  # [C, d]
        sin = T.match_buffer(sin_h, (max_ctx, d), "float32")  # [C, d]
        out = T.match_buffer(o_h, (n, n_heads * d), "float32")  # [n, Hq*d]
        h = T.launch_thread("blockIdx.x", n_heads)
        by = T.launch_thread("blockIdx.y", n)
        tx = T.launch_thread("threadIdx.x", bs)
        q_sh = T.alloc_shared((d,), "float32")  # rope(q) * scale
        s_sh = T.alloc_shared((bs,), "float32")  # scores of the tile
        p_sh = T.alloc_shared((bs,), "float32")  # exp weights of the tile
        acc = T.alloc_local((dpt,), "float32")
        st = T.alloc_local((4,), "float32")  # running max, running sum, score / tile max, rescale
        i = T.Cast("int64", by)
        kvh = h // group
        for u in range(dpt):
            if u * bs + tx < d:
                j = u * bs + tx
                rot = T.if_then_else(j < half, -qkv[i, h * d + j + half], qkv[i, h * d + j - half])
                q_sh[j] = (qkv[i, h * d + j] * cos[pos + i, j] + rot * sin[pos + i, j]) * T.float32(scale)
            acc[u] = T.float32(0)
        st[0] = T.float32(-3.0e38)
        st[1] = T.float32(0)
        T.tvm_storage_sync("shared")
        for tile in range((pos + i + bs) // bs):  # ceil((pos + i + 1) / bs) tiles of context rows
            t0 = tile * bs
            st[2] = T.float32(-3.0e38)
            if t0 + tx < pos + i + 1:
                st[2] = T.float32(0)
                for j in range(d):
                    st[2] = st[2] + q_sh[j] * kc[t0 + tx, kvh, j]
            s_sh[tx] = st[2]
            T.tvm_storage_sync("shared")
            st[2] = st[0]
            for u in range(bs):
                st[2] = T.max(st[2], s_sh[u])  # new running max (uniform across the work-group)
            p_sh[tx] = T.if_then_else(t0 + tx < pos + i + 1, T.exp(s_sh[tx] - st[2]), T.float32(0))
            T.tvm_storage_sync("shared")
            st[3] = T.exp(st[0] - st[2])
            st[0] = st[2]
            st[1] = st[1] * st[3]
            for u in range(bs):
                st[1] = st[1] + p_sh[u]
            for v in range(dpt):
                if v * bs + tx < d:
                    acc[v] = acc[v] * st[3]
                    for u in range(T.min(T.int64(bs), pos + i + 1 - t0)):
                        acc[v] = acc[v] + p_sh[u] * vc[t0 + u, kvh, v * bs + tx]
            T.tvm_storage_sync("shared")
        for v in range(dpt):
            if v * bs + tx < d:
                out[i, h * d + v * bs + tx] = acc[v] / st[1]

    return attn


# ---------------------------------------------------------------- lookup by plan kernel name

_PATTERNS = (
    # (regex of the model_def kernel key, maker(match groups, max_ctx))
    (r"linear_q4_(\d+)_(\d+)_(\d+)(_add)?", lambda g, c: linear(int(g[0]), int(g[1]), bool(g[3]), "q4", int(g[2]))),
    (r"linear_f16_(\d+)_(\d+)(_add)?", lambda g, c: linear(int(g[0]), int(g[1]), bool(g[2]), "float16")),
    (r"linear_(\d+)_(\d+)(_add)?", lambda g, c: linear(int(g[0]), int(g[1]), bool(g[2]), "float32")),
    (r"embed_q4_(\d+)_(\d+)_(\d+)", lambda g, c: embed_q4(int(g[0]), int(g[1]), int(g[2]))),
    (r"kv_append_(\d+)_(\d+)_(\d+)", lambda g, c: kv_append(int(g[0]), int(g[1]), int(g[2]), c)),
    (r"attention_(\d+)_(\d+)_(\d+)", lambda g, c: attention(int(g[0]), int(g[1]), int(g[2]), c)),
)


def a8_on_gpu(scheme: str) -> McpmError:
    """The one-line refusal of a scheme that quantizes activations (``-a8``) for --device gpu."""
    base = scheme.removesuffix("-a8")
    return McpmError(f"scheme {scheme} quantizes activations on the CPU only; "
                     f"export with --quant {base} for --device gpu")


def gpu_version(name: str, max_ctx: int):
    """The GPU PrimFunc for the hand-written kernel ``name`` (a model_def kernel key), or McpmError."""
    import re

    for pattern, make in _PATTERNS:
        m = re.fullmatch(pattern, name)
        if m:
            return make(m.groups(), max_ctx)
    m = re.fullmatch(r"linear_q4a8_(\d+)_(\d+)_(\d+)(_add)?", name)
    if m:  # int8 activations (-a8 schemes): the exporter refuses them for --device gpu before compiling
        raise a8_on_gpu(f"q4g{m.group(3)}-a8")
    raise McpmError(
        f"kernel {name} has no GPU version (int4-asym, int8, and MoE kernels run on the CPU only)",
        "export with --device cpu, or with a q4 / f32 / f16 quantization for --device gpu",
    )
