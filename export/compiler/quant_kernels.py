"""int4 kernels that read the packed layout of docs/quantization.md directly (no float copy of the weight).

qweight uint32[N, Kp/8]: input k of row j at bits 4*(k % 8) of word k // 8
scales  float16[N, Kp/G]: W[j, k] = (nibble - 8) * scales[j, k // G]
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T
from tvm.target import codegen

# Register tiles of linear_q4 (see its docstring). PREFILL_ROWS * PREFILL_TOKENS + PREFILL_ROWS vector registers
# (8 float lanes each) hold the accumulators and the dequantized words; x comes from memory operands.
LANES = 8  # nibbles per uint32 word = float lanes of one AVX2 / two NEON vectors
DECODE_ROWS = 4  # rows of a one-token float tile: 4 independent accumulator chains
# integer decode tiles: 1 row (one weight stream: the hardware prefetcher keeps up; 4 rows at a time streamed
# ~40% slower from DRAM) x 2 accumulator chains (alternate blocks) to hide the fma latency
INT_DECODE_ROWS, INT_DECODE_ACCS = 1, 2
PREFILL_ROWS, PREFILL_TOKENS = 2, 4  # rows x tokens of a prefill tile (float weights from the dequantized chunk)
SUPER_ROWS = 16  # rows per parallel task unit: its weights (16 x K/2 bytes) stay in L1/L2 over all token tiles
PREFILL_KCHUNK = 256  # inputs per dequantized chunk: SUPER_ROWS x 256 floats = 16 KB of scratch (stays in L1)
PREFILL_TILES = 16  # token tiles per accumulator chunk: 16 x PREFILL_TOKENS x SUPER_ROWS x LANES floats = 32 KB
QBLOCK = 32  # inputs per activation block of the decode tiles (one scale each, as ggml's Q8_0)
QMAX = 32767  # int16 activations: q = rint(x / dx) in -QMAX..QMAX, dx = max|x| / QMAX per block
CHUNK = 8  # blocks whose scale * dx a decode tile computes at once (one fp16 -> fp32 vector conversion per row)


def decode_isa(group: int) -> str:
    """How linear_q4's decode tiles compute, chosen from the current TVM target (``with tvm.target.Target(...)``
    around the kernel's construction; the kernel must then be compiled for that target or one with more features):

    "x86-avx2": int16 activations, two AVX2 vpmaddwd per 32 weights (an LLVM target with AVX2);
    "arm64": int16 activations, ``llvm.vector.partial.reduce.add`` of int16 products (target-independent LLVM IR
        that AArch64 turns into smull/smlal; an AArch64 triple);
    "f32": float activations, the float tile (no current target, any other target, or a group that is not a
        multiple of QBLOCK)."""
    tgt = tvm.target.Target.current(allow_none=True)
    if group % QBLOCK or tgt is None or tgt.kind.name != "llvm":
        return "f32"
    if codegen.target_has_features("avx2", tgt):
        return "x86-avx2"
    triple = str(tgt.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    if triple.startswith(("aarch64", "arm64")):
        return "arm64"
    return "f32"


def linear_q4(k_in: int, n_out: int, group: int, residual: bool = False):
    """y[n, N] = x[n, K] @ dequant(qweight, scales)[N, K]^T (+ r[n, N] when ``residual``), dequantized on the fly
    (decode: in registers; prefill: a K chunk of a block's rows at a time into an L1 scratch).

    Parallel over blocks of SUPER_ROWS rows (the last block's row indices are clamped to N - 1: it recomputes and
    rewrites the last row, no branches); inside a block, the n // PREFILL_TOKENS * PREFILL_TOKENS first tokens go
    through the prefill path and the remaining ones (decode: n < PREFILL_TOKENS, or the n % PREFILL_TOKENS last
    ones) one at a time x DECODE_ROWS rows (integer tiles: INT_DECODE_ROWS). The horizontal sum of an output's
    lanes happens once per output; fp32 accumulation throughout.

    Prefill amortizes the dequantization over all tokens of the call: per chunk of PREFILL_TILES token tiles and per
    K chunk of PREFILL_KCHUNK inputs (whole groups; the last chunk may hold fewer), the block's rows are dequantized
    once ((nibble - 8) * s, exact: a word broadcast to 8 lanes, one vector shift by 0, 4, .., 28, mask, convert,
    scale) into a float scratch [SUPER_ROWS, PREFILL_KCHUNK] (16 KB, stays in L1), then every token tile runs float
    tiles of PREFILL_TOKENS tokens x PREFILL_ROWS rows over it (as vision_kernels.linear_bias: 8-lane sums, x from
    memory operands), keeping the 8-lane sums of the token chunk in a second scratch [PREFILL_TILES *
    PREFILL_TOKENS, SUPER_ROWS, LANES] (32 KB, L1/L2) between K chunks. Both scratches are fixed-size locals of
    the parallel body (48 KB of stack per thread). Inputs after the last full group (K % G != 0) go through the
    scalar tail loop.

    Decode tiles (decode_isa: "x86-avx2" and "arm64") multiply integers, as ggml's Q4_0 x Q8_0 dot but with int16
    activations (int8 ones change the logits by ~1e-2 relative, enough to flip near-tied greedy tokens): before the
    parallel loop, each decode token's x is quantized per block of QBLOCK inputs (dx = max|x| / QMAX, q = rint(x / dx))
    into a workspace, in the order of the nibbles of the block's 16 bytes (even inputs = low nibbles, then odd
    inputs = high nibbles), with 8 * sum(q) and dx per block. A block of a row is an exact int32 dot of its nibbles
    (widened to int16) with q: on AVX2 two vpmaddwd, elsewhere a partial reduction of (nibble - 8) * q. Once per
    block it is converted to float and fma'd with scale * dx into the row's 8-lane sum; x86 subtracts the
    8 * sum(q) * scale * dx terms of CHUNK blocks with one vector fma. Inputs after the last full block
    (K % 32 != 0) go through a scalar float loop that never reads x past K. "f32" decode tiles fma raw nibbles
    with x per group and add (sum(nibble * x) - 8 * sum(x)) * s once per group."""
    kp = -(-k_in // group) * group
    words = group // 8
    full = k_in // group  # groups entirely inside K
    rp, tp = PREFILL_ROWS, PREFILL_TOKENS
    sb = SUPER_ROWS
    blocks = -(-n_out // sb)
    last = n_out - 1
    isa = decode_isa(group)
    rd, na = (INT_DECODE_ROWS, INT_DECODE_ACCS) if isa != "f32" else (DECODE_ROWS, 1)
    nb = k_in // QBLOCK  # activation blocks entirely inside K
    nbw = max(nb, 1)  # blocks of the workspace (never empty)
    bpg = max(1, group // QBLOCK)  # activation blocks per weight group
    wpb = QBLOCK // 8  # packed words per activation block
    tt = PREFILL_TILES
    gpc = max(1, PREFILL_KCHUNK // group)  # groups per dequantized K chunk
    kc = gpc * group  # inputs per K chunk
    nkc, rem_g = full // gpc, full % gpc  # full K chunks, groups of the last partial one

    def nibbles(qw, j, word):  # the 8 nibbles of qw[j, word] as int32 lanes (vector shift by 0, 4, .., 28 + mask)
        return lambda b: T.bitwise_and(T.shift_right(qw[j, word], T.Cast("uint32", b * 4)), T.uint32(15))

    @T.macro
    def finish(acc, r_, y, i, j, a, add, lanes=LANES):  # y[i, j] (+ r[i, j]) = horizontal sum of acc[a : a+lanes]
        for b in range(1, lanes):
            acc[a] = acc[a] + acc[a + b]
        if add:
            y[i, j] = r_[i, j] + acc[a]
        else:
            y[i, j] = acc[a]

    @T.macro
    def tail(x, qw, sc, acc, i, j, a, k0):  # inputs k0 .. K-1: scalar, x read only below K (no-op when k0 == K)
        for k in range(k0, k_in):
            nib = T.bitwise_and(T.shift_right(qw[j, k // 8], T.Cast("uint32", (k % 8) * 4)), T.uint32(15))
            acc[a] = acc[a] + x[i, k] * ((T.Cast("float32", nib) - T.float32(8)) * T.Cast("float32", sc[j, k // group]))

    @T.macro
    def quantize_x(x, xq, xs, xd, i, t):  # decode token i's x -> workspace slot t: q (nibble order), 8 sum(q), dx
        m = T.alloc_local((LANES,), "float32")
        qs = T.alloc_local((1,), "int32")
        for kb in range(nb):
            for b in T.vectorized(LANES):
                m[b] = T.max(T.max(T.abs(x[i, kb * QBLOCK + b]), T.abs(x[i, kb * QBLOCK + 8 + b])),
                             T.max(T.abs(x[i, kb * QBLOCK + 16 + b]), T.abs(x[i, kb * QBLOCK + 24 + b])))
            for b in range(1, LANES):
                m[0] = T.max(m[0], m[b])
            m[1] = m[0] / T.float32(QMAX)  # dx
            m[2] = T.Select(m[1] > T.float32(0), T.float32(1) / m[1], T.float32(0))  # 1 / dx
            xd[t, kb] = m[1]
            qs[0] = 0
            for h, b in T.grid(2, QBLOCK // 2):  # position h * 16 + b holds input 2 b + h (the nibble order)
                xq[t, kb * QBLOCK + h * 16 + b] = T.Cast("int16", T.nearbyint(x[i, kb * QBLOCK + 2 * b + h] * m[2]))
                qs[0] = qs[0] + T.Cast("int32", xq[t, kb * QBLOCK + h * 16 + b])
            xs[t, kb] = T.Cast("float32", qs[0] * 8)

    def block_dot(qw, xq, j, t, kb):  # int32x8 whose lanes sum to the integer dot of block kb of row j with q
        # 16 bytes: byte m = inputs 2m (low nibble) and 2m + 1 (high nibble), widened to 16 int16 lanes
        w16 = T.Cast("int16x16", T.reinterpret("uint8x16", qw[j, T.Ramp(kb * wpb, 1, wpb)]))
        lo, hi = T.bitwise_and(w16, T.Broadcast(T.int16(15), 16)), T.shift_right(w16, T.Broadcast(T.int16(4), 16))
        xlo, xhi = xq[t, T.Ramp(kb * QBLOCK, 1, 16)], xq[t, T.Ramp(kb * QBLOCK + 16, 1, 16)]
        if isa == "x86-avx2":  # sum(nibble * q): two vpmaddwd (|sum| <= 32 * 15 * 32767 < 2^24: exact in float)
            # high nibbles as vpmulhuw(w, 4096) = w >> 4: otherwise LLVM moves the shift and mask before the
            # widening (byte vectors have no shift), which costs two more instructions per block
            hi = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmulhu.w", w16, T.Broadcast(T.int16(4096), 16))
            return T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", lo, xlo) + T.call_llvm_pure_intrin(
                "int32x8", "llvm.x86.avx2.pmadd.wd", hi, xhi)
        # arm64: sum((nibble - 8) * q) as a partial reduction of int16 products (widening multiply-adds)
        prod = T.Cast("int32x32", T.Shuffle([lo, hi], list(range(32))) - T.Broadcast(T.int16(8), 32)) * T.Cast(
            "int32x32", T.Shuffle([xlo, xhi], list(range(32))))
        return T.call_llvm_pure_intrin("int32x8", "llvm.vector.partial.reduce.add", T.Broadcast(T.int32(0), 8), prod)

    @T.macro
    def decode_chunk(qw, sc, xq, xs, xd, acc, sdx, t, j0, k0, width):  # blocks k0 .. k0+width of rows j0 .. j0+rd
        for r in T.unroll(rd):  # sdx = scale * dx per block; x86: the -8 sum(q) terms go into the lanes now
            for c in T.vectorized(width):
                sdx[r * CHUNK + c] = T.Cast("float32", sc[T.min(j0 + r, last), (k0 + c) // bpg]) * xd[t, k0 + c]
            if isa == "x86-avx2":
                for c in T.vectorized(width):
                    acc[r * na * LANES + c] = acc[r * na * LANES + c] - sdx[r * CHUNK + c] * xs[t, k0 + c]
        for c in T.unroll(width):
            for r in T.unroll(rd):
                a = (r * na + c % na) * LANES  # block c goes into chain c % na of row r
                acc[T.Ramp(a, 1, LANES)] = acc[T.Ramp(a, 1, LANES)] + T.Cast(
                    "float32x8", block_dot(qw, xq, T.min(j0 + r, last), t, k0 + c)
                ) * T.Broadcast(sdx[r * CHUNK + c], LANES)

    @T.macro
    def decode_tile(x, qw, sc, xq, xs, xd, r_, y, i, t, j0, add):  # y[i, j0 .. j0+rd) (rows clamped to N - 1)
        # per block: acc[r] += float(dot(nibbles, q)) * (scale[r] * dx) (- 8 sum(q) * scale[r] * dx on x86)
        acc = T.alloc_local((rd * na * LANES,), "float32")
        sdx = T.alloc_local((rd * CHUNK,), "float32")
        for r in T.unroll(rd * na):
            for b in T.vectorized(LANES):
                acc[r * LANES + b] = T.float32(0)
        for kc in range(nb // CHUNK):
            decode_chunk(qw, sc, xq, xs, xd, acc, sdx, t, j0, kc * CHUNK, CHUNK)
        if nb % CHUNK != 0:
            decode_chunk(qw, sc, xq, xs, xd, acc, sdx, t, j0, nb // CHUNK * CHUNK, nb % CHUNK)
        for r in T.unroll(rd):
            tail(x, qw, sc, acc, i, T.min(j0 + r, last), r * na * LANES, nb * QBLOCK)
            finish(acc, r_, y, i, T.min(j0 + r, last), r * na * LANES, add, na * LANES)

    @T.macro
    def decode_tile_f32(x, qw, sc, r_, y, i, j0, add):  # y[i, j0 .. j0+rd) (rows clamped to N - 1)
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
            tail(x, qw, sc, acc, i, T.min(j0 + r, last), r * LANES, full * group)
            finish(acc, r_, y, i, T.min(j0 + r, last), r * LANES, add)

    @T.macro
    def dequant(qw, sc, wf, j0, g0, ng):  # wf[r, :ng*G] = W[j0 + r, g0*G : (g0+ng)*G] for SUPER_ROWS rows (clamped)
        for r in range(sb):
            for g in range(ng):
                for w in T.unroll(words):
                    for b in T.vectorized(LANES):
                        wf[r * kc + g * group + w * 8 + b] = T.Cast(
                            "float32", T.Cast("int32", nibbles(qw, T.min(j0 + r, last), (g0 + g) * words + w)(b)) - 8
                        ) * T.Cast("float32", sc[T.min(j0 + r, last), g0 + g])

    @T.macro
    def prefill_chunk(x, wf, accs, i0, tl, k0, width):  # token tile tl (tokens i0 .. i0+tp) x all SUPER_ROWS rows,
        # inputs k0 .. k0+width of the dequantized chunk wf: tp x rp tiles of 8-lane sums, loaded from / stored to accs
        acc = T.alloc_local((tp * rp * LANES,), "float32")
        for jr in range(sb // rp):
            for t in T.unroll(tp):
                for r in T.unroll(rp):
                    for b in T.vectorized(LANES):
                        acc[(t * rp + r) * LANES + b] = accs[((tl * tp + t) * sb + jr * rp + r) * LANES + b]
            for v in range(width // LANES):
                for t in T.unroll(tp):
                    for r in T.unroll(rp):
                        for b in T.vectorized(LANES):
                            acc[(t * rp + r) * LANES + b] = (
                                acc[(t * rp + r) * LANES + b]
                                + wf[(jr * rp + r) * kc + v * LANES + b] * x[i0 + t, k0 + v * LANES + b]
                            )
            for t in T.unroll(tp):
                for r in T.unroll(rp):
                    for b in T.vectorized(LANES):
                        accs[((tl * tp + t) * sb + jr * rp + r) * LANES + b] = acc[(t * rp + r) * LANES + b]

    @T.macro
    def prefill(x, qw, sc, r_, y, n, j0, add):  # y[0 .. n//tp*tp, j0 .. j0+sb) (rows clamped to N - 1)
        # per chunk of tt token tiles: per K chunk, the block's rows dequantized once into wf, then all token tiles
        wf = T.alloc_local((sb * kc,), "float32")  # [sb, kc] dequantized weights of one K chunk
        accs = T.alloc_local((tt * tp * sb * LANES,), "float32")  # [tt * tp tokens, sb rows, LANES] partial sums
        fin = T.alloc_local((LANES,), "float32")
        for tc in range((n // tp + tt - 1) // tt):
            for e in range(T.min(tt, n // tp - tc * tt) * tp * sb):
                for b in T.vectorized(LANES):
                    accs[e * LANES + b] = T.float32(0)
            for c in range(nkc):
                dequant(qw, sc, wf, j0, c * gpc, gpc)
                for tl in range(T.min(tt, n // tp - tc * tt)):
                    prefill_chunk(x, wf, accs, (tc * tt + tl) * tp, tl, c * kc, kc)
            if rem_g > 0:
                dequant(qw, sc, wf, j0, nkc * gpc, rem_g)
                for tl in range(T.min(tt, n // tp - tc * tt)):
                    prefill_chunk(x, wf, accs, (tc * tt + tl) * tp, tl, nkc * kc, rem_g * group)
            for e in range(T.min(tt, n // tp - tc * tt) * tp):
                for r in range(sb):
                    for b in T.vectorized(LANES):
                        fin[b] = accs[(e * sb + r) * LANES + b]
                    tail(x, qw, sc, fin, tc * tt * tp + e, T.min(j0 + r, last), 0, full * group)
                    finish(fin, r_, y, tc * tt * tp + e, T.min(j0 + r, last), 0, add)

    @T.macro
    def body_f32(x, qw, sc, r_, y, n, add):
        for blk in T.parallel(blocks):
            prefill(x, qw, sc, r_, y, n, blk * sb, add)
            for i in range(n // tp * tp, n):
                for jr in range(sb // rd):
                    decode_tile_f32(x, qw, sc, r_, y, i, blk * sb + jr * rd, add)

    @T.macro
    def body(x, qw, sc, r_, y, n, add):
        # workspace of the (at most tp - 1) decode tokens, quantized once per call: q in nibble order, and per
        # block 8 * sum(q) and dx
        xq = T.alloc_buffer((tp - 1, nbw * QBLOCK), "int16")
        xs = T.alloc_buffer((tp - 1, nbw), "float32")
        xd = T.alloc_buffer((tp - 1, nbw), "float32")
        for t in range(n - n // tp * tp):
            quantize_x(x, xq, xs, xd, n // tp * tp + t, t)
        for blk in T.parallel(blocks):
            prefill(x, qw, sc, r_, y, n, blk * sb, add)
            for t in range(n - n // tp * tp):
                for jr in range(sb // rd):
                    decode_tile(x, qw, sc, xq, xs, xd, r_, y, n // tp * tp + t, t, blk * sb + jr * rd, add)

    @T.prim_func(private=True)
    def linear(x_h: T.handle, q_h: T.handle, s_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        qw = T.match_buffer(q_h, (n_out, kp // 8), "uint32")  # [N, Kp/8]
        sc = T.match_buffer(s_h, (n_out, kp // group), "float16")  # [N, Kp/G]
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        if isa == "f32":
            body_f32(x, qw, sc, y, y, n, False)
        else:
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
        if isa == "f32":
            body_f32(x, qw, sc, r, y, n, True)
        else:
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
