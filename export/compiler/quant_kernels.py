"""int4 kernels that read the packed layout of docs/quantization.md directly (no float copy of the weight).

qweight uint32[N, Kp/8]: input k of row j at bits 4*(k % 8) of word k // 8 (rows4, ARM exports of int4-a8
                         weights: the same words in layout.to_rows4's order, read through qword / qwords)
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
R4_ROWS = 8  # rows of a plain-NEON decode tile on rows4 weights (two groups of 4 share the token's quads)
PREFILL_ROWS, PREFILL_TOKENS = 2, 4  # rows x tokens of a prefill tile (float weights from the dequantized chunk)
SUPER_ROWS = 16  # rows per parallel task unit: its weights (16 x K/2 bytes) stay in L1/L2 over all token tiles
PREFILL_KCHUNK = 256  # inputs per dequantized chunk: SUPER_ROWS x 256 floats = 16 KB of scratch (stays in L1)
PREFILL_TILES = 16  # token tiles per accumulator chunk: 16 x PREFILL_TOKENS x SUPER_ROWS x LANES floats = 32 KB
QBLOCK = 32  # inputs per activation block of the decode tiles (one scale each, as ggml's Q8_0)
QMAX = 32767  # int16 activations: q = rint(x / dx) in -QMAX..QMAX, dx = max|x| / QMAX per block
CHUNK = 8  # blocks whose scale * dx a decode tile computes at once (one fp16 -> fp32 vector conversion per row)
# act="int8" (the -a8 schemes): activations quantized per QBLOCK inputs to int8, q in -A8_MAX..A8_MAX
A8_MAX = 127
A8_TOKENS = 64  # prefill tokens quantized per pass (workspace: A8_TOKENS x K bytes); one parallel launch per pass
A8_TILE = 2  # tokens of an int8 prefill tile (x 2 row vectors of 8 rows; 4 tokens spill: 1.4x slower)
I16_TILE = 2  # tokens of an int16 prefill tile (act="float" on AVX2; x 2 row vectors)
A8_KBLOCKS = 8  # activation blocks per prepared weight chunk (256 inputs: 4 KB of int8 weights per 16 rows)


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


def arm_dot_isa() -> str | None:
    """The ARM dot-product instructions the current TVM target has: "i8mm" (SMMLA and SDOT), "dotprod" (SDOT) or
    None (plain NEON, another architecture, no target). Kernels built under a target with them may use them, so they
    must be compiled for that target (export_plan builds every kernel set under its own target)."""
    tgt = tvm.target.Target.current(allow_none=True)
    if tgt is None or tgt.kind.name != "llvm":
        return None
    triple = str(tgt.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    if not triple.startswith(("aarch64", "arm64")):
        return None
    if codegen.target_has_features("i8mm", tgt) and codegen.target_has_features("dotprod", tgt):
        return "i8mm"
    return "dotprod" if codegen.target_has_features("dotprod", tgt) else None


def linear_q4(k_in: int, n_out: int, group: int, residual: bool = False, act: str = "float", rows4: bool = False):
    """y[n, N] = x[n, K] @ dequant(qweight, scales)[N, K]^T (+ r[n, N] when ``residual``), dequantized on the fly
    (decode: in registers; prefill: a K chunk of a block's rows at a time into an L1 scratch).

    Parallel over blocks of SUPER_ROWS rows (the last block's row indices are clamped to N - 1: it recomputes and
    rewrites the last row, no branches); inside a block, the n // PREFILL_TOKENS * PREFILL_TOKENS first tokens go
    through the prefill path and the remaining ones (decode: n < PREFILL_TOKENS, or the n % PREFILL_TOKENS last
    ones) one at a time x DECODE_ROWS rows (integer tiles: INT_DECODE_ROWS). The horizontal sum of an output's
    lanes happens once per output; fp32 accumulation throughout.

    On AVX2 (decode_isa "x86-avx2") prefill tokens take the integer tiles of body_int, described below for act="int8";
    with act="float" their activations are int16 (dx = max|x| / 32767 per block, the decode tiles' quantization),
    paired per two consecutive inputs, and a block of a tile is 16 vpmaddwd of a broadcast pair against int16 weight
    pairs of 8 rows (I16_TILE tokens x 2 row vectors; exact int32 sums): 1.5x the float tiles per thread on Zen3,
    results within ~2e-5 of them. Elsewhere (ARM, no target) the float prefill path:

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
    with x per group and add (sum(nibble * x) - 8 * sum(x)) * s once per group.

    ``act="int8"`` (the -a8 schemes, docs/quantization.md): every token's x is quantized per block of QBLOCK inputs
    to int8 (dx = max|x| / 127, q = clip(rint(x / dx), -127, 127); inputs after the last full block stay float) and
    y = sum over blocks of scale * dx * (integer dot of (nibble - 8) with q), as llama.cpp's Q4_0 x Q8_0. On AVX2
    the prefill tokens go A8_TOKENS at a time: one parallel launch quantizes them into a workspace as bytes q + 128
    grouped in int32 quads in the nibble order of a packed word ([8w, 8w+2, 8w+4, 8w+6], [8w+1, .., 8w+7]); a second
    one runs the row blocks: per chunk of A8_KBLOCKS blocks the block's 16 rows are transposed into int8 vectors of
    8 rows x 4 inputs (nibble - 8), with 128 * sum(nibble - 8) and the scale per row and block, and each tile of
    A8_TILE tokens x 2 row vectors sums 8 vpmaddubsw (the token's quad broadcast as unsigned bytes, the weights as
    signed) per block in int16 lanes (|sum| <= 32640), widens them with vpmaddwd(., 1), subtracts the 128 * sum term
    and fma's the float result with scale * dx: lanes are rows, so no horizontal sums. Decode tokens take the int16
    tiles with q in -127..127 (the same integers), two blocks per step (pair_dot: one 32-byte load, the activations
    quantized in a pair layout). On ARM64 targets with dot-product instructions (the dotprod and i8mm kernel sets)
    the SDOT / SMMLA kernels of arm_q4.py run instead. Elsewhere (plain NEON, no target) x is replaced by q * dx in
    a workspace and the float / int16 paths run on it (the int16 tiles recover q exactly).

    ``rows4``: qweight in layout.to_rows4's order (Android / Linux ARM64 exports of int4-a8 weights, N % 4 == 0);
    the plain NEON decode then runs decode_tile_rows4 (rows in lanes, like arm_q4's SDOT decode)."""
    from mcpm.export.compiler import arm_q4  # (arm_q4 builds on q4_linear_func below)

    a8 = act == "int8"
    if a8 and group % QBLOCK == 0 and (dot := arm_dot_isa()) is not None:  # SDOT / SMMLA tiles (arm_q4.py)
        return arm_q4.linear_q4_a8(k_in, n_out, group, residual, dot, rows4=rows4)
    if rows4 and n_out % 4:
        raise ValueError(f"linear_q4: the rows4 layout needs N % 4 == 0, not {n_out}")
    assert PREFILL_TOKENS % A8_TILE == 0 == PREFILL_TOKENS % I16_TILE and A8_TOKENS % PREFILL_TOKENS == 0
    words = group // 8
    full = k_in // group  # groups entirely inside K
    rp, tp = PREFILL_ROWS, PREFILL_TOKENS
    sb = SUPER_ROWS
    blocks = -(-n_out // sb)
    last = n_out - 1
    isa = decode_isa(group)
    if act not in ("float", "int8"):
        raise ValueError(f"linear_q4: act must be 'float' or 'int8', not {act!r}")
    if a8 and group % QBLOCK:
        raise ValueError(f"linear_q4: act='int8' needs a group that is a multiple of {QBLOCK}, not {group}")
    qmax = A8_MAX if a8 else QMAX  # decode-tile activation range (int8 values in int16 lanes for a8)
    arm8 = a8 and isa == "arm64"  # plain NEON decode tiles on int8 q: int16 products (smull .8h) of unsigned nibbles
    qdt = "int8" if a8 and isa in ("x86-avx2", "arm64") else "int16"  # decode-tile activation storage
    pairs = a8 and isa == "x86-avx2"  # decode blocks two at a time (pair_dot) in the pair layout of xq
    i16 = not a8  # body_int's prefill tiles: int16 activations (vpmaddwd) for act="float" on AVX2
    pmax = QMAX if i16 else A8_MAX  # range of the prefill tiles' q
    xa_words = QBLOCK // 2 if i16 else 2 * (QBLOCK // 8)  # uint32 per block of a quantized prefill token
    rd, na = (INT_DECODE_ROWS, INT_DECODE_ACCS) if isa != "f32" else (DECODE_ROWS, 1)
    if rows4 and arm8:  # plain NEON on rows4 weights: decode_tile_rows4, R4_ROWS rows per tile, lanes = rows
        rd, na = R4_ROWS, 1
    nb = k_in // QBLOCK  # activation blocks entirely inside K
    nbw = max(nb, 1)  # blocks of the workspace (never empty)
    # blocks of a decode chunk taken one at a time: (first, count) for a full chunk and for the last partial one
    full_s0, full_ns = (CHUNK, 0) if pairs else (0, CHUNK)
    rem_s0, rem_ns = (nb % CHUNK - nb % 2, nb % 2) if pairs else (0, nb % CHUNK)
    bpg = max(1, group // QBLOCK)  # activation blocks per weight group
    wpb = QBLOCK // 8  # packed words per activation block
    tt = PREFILL_TILES
    gpc = max(1, PREFILL_KCHUNK // group)  # groups per dequantized K chunk
    kc = gpc * group  # inputs per K chunk
    nkc, rem_g = full // gpc, full % gpc  # full K chunks, groups of the last partial one

    wpr = -(-k_in // group) * group // 8  # packed words per row

    def qword(qw, j, w):  # word w of row j: row-major, or rows4 (layout.to_rows4: 4 rows' words side by side)
        return qw[(j // 4 * wpr + w) * 4 + j % 4] if rows4 else qw[j, w]

    def qwords(qw, j, w0, lanes):  # uint32 x lanes: words w0 .. w0+lanes of row j (rows4: a stride-4 load; the
        # decode tiles of rows4 weights read 4 rows at a time instead, decode_tile_rows4 / arm_q4)
        return qw[T.Ramp((j // 4 * wpr + w0) * 4 + j % 4, 4, lanes)] if rows4 else qw[j, T.Ramp(w0, 1, lanes)]

    def drow(j0, r):  # row r of the decode tile at j0, clamped (rows4: to the last group, lane for lane)
        return T.min((j0 + r) // 4, last // 4) * 4 + r % 4 if rows4 and arm8 else T.min(j0 + r, last)

    def nibbles(qw, j, word):  # the 8 nibbles of qw[j, word] as int32 lanes (vector shift by 0, 4, .., 28 + mask)
        return lambda b: T.bitwise_and(T.shift_right(qword(qw, j, word), T.Cast("uint32", b * 4)), T.uint32(15))

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
            nib = T.bitwise_and(T.shift_right(qword(qw, j, k // 8), T.Cast("uint32", (k % 8) * 4)), T.uint32(15))
            acc[a] = acc[a] + x[i, k] * ((T.Cast("float32", nib) - T.float32(8)) * T.Cast("float32", sc[j, k // group]))

    def xpos(kb, h, b):  # workspace position of input 2 b + h of block kb (quantize_x)
        if pairs:
            return T.if_then_else(kb - kb % 2 + 1 < nb, (kb - kb % 2) * QBLOCK + h * 32 + (kb % 2) * 16 + b,
                                  kb * QBLOCK + h * 16 + b)
        return kb * QBLOCK + h * 16 + b

    @T.macro
    def block_scale(x, m, i, kb, qm):  # block kb of token i: m[1] = dx = max|x| / qm, m[2] = 1 / dx (0 when dx = 0)
        for b in T.vectorized(LANES):
            m[b] = T.max(T.max(T.abs(x[i, kb * QBLOCK + b]), T.abs(x[i, kb * QBLOCK + 8 + b])),
                         T.max(T.abs(x[i, kb * QBLOCK + 16 + b]), T.abs(x[i, kb * QBLOCK + 24 + b])))
        for b in range(1, LANES):
            m[0] = T.max(m[0], m[b])
        m[1] = m[0] / T.float32(qm)
        m[2] = T.Select(m[1] > T.float32(0), T.float32(1) / m[1], T.float32(0))

    @T.macro
    def quantize_x(x, xq, xs, xd, i, t):  # decode token i's x -> workspace slot t: q (nibble order), 8 sum(q), dx
        m = T.alloc_local((LANES,), "float32")
        qs = T.alloc_local((1,), "int32")
        for kb in range(nb):
            block_scale(x, m, i, kb, qmax)
            xd[t, kb] = m[1]
            qs[0] = 0
            for h, b in T.grid(2, QBLOCK // 2):  # position h * 16 + b holds input 2 b + h (the nibble order);
                # pairs (a8 on AVX2): blocks 2p, 2p+1 at 64 p + [2p even | 2p+1 even | 2p odd | 2p+1 odd] (16 each)
                xq[t, xpos(kb, h, b)] = T.Cast(qdt, T.nearbyint(x[i, kb * QBLOCK + 2 * b + h] * m[2]))
                qs[0] = qs[0] + T.Cast("int32", xq[t, xpos(kb, h, b)])
            xs[t, kb] = T.Cast("float32", qs[0] * 8)

    def pair_dot(qw, xq, j, t, kb):  # a8 on AVX2: int32x8, lanes 0-3 sum to block kb's dot, 4-7 to block kb + 1's
        # 32 bytes = the two blocks' 16 bytes; low nibbles [kb even inputs | kb+1 even], high [kb odd | kb+1 odd],
        # matching the pair layout of xq (quantize_x); an int16 lane sums 4 products (|.| <= 7620)
        wb = T.reinterpret("uint8x32", qwords(qw, j, kb * wpb, 2 * wpb))
        p16 = T.call_llvm_pure_intrin(
            "int16x16", "llvm.x86.avx2.pmadd.ub.sw", T.bitwise_and(wb, T.Broadcast(T.uint8(15), 32)),
            xq[t, T.Ramp(kb * QBLOCK, 1, QBLOCK)]) + T.call_llvm_pure_intrin(
            "int16x16", "llvm.x86.avx2.pmadd.ub.sw", T.shift_right(wb, T.Broadcast(T.uint8(4), 32)),
            xq[t, T.Ramp(kb * QBLOCK + QBLOCK, 1, QBLOCK)])
        return T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", p16, T.Broadcast(T.int16(1), 16))

    def block_dot(qw, xq, j, t, kb):  # int32x8 whose lanes sum to the integer dot of block kb of row j with q
        if a8 and isa == "x86-avx2":  # int8 q: vpmaddubsw(nibbles as unsigned bytes, q), widened by vpmaddwd(., 1)
            wb = T.reinterpret("uint8x16", qwords(qw, j, kb * wpb, wpb))
            w8 = T.Shuffle([T.bitwise_and(wb, T.Broadcast(T.uint8(15), 16)),
                            T.shift_right(wb, T.Broadcast(T.uint8(4), 16))], list(range(32)))
            p16 = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", w8,
                                          xq[t, T.Ramp(kb * QBLOCK, 1, QBLOCK)])
            return T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", p16, T.Broadcast(T.int16(1), 16))
        # 16 bytes: byte m = inputs 2m (low nibble) and 2m + 1 (high nibble), widened to 16 int16 lanes
        w16 = T.Cast("int16x16", T.reinterpret("uint8x16", qwords(qw, j, kb * wpb, wpb)))
        lo, hi = T.bitwise_and(w16, T.Broadcast(T.int16(15), 16)), T.shift_right(w16, T.Broadcast(T.int16(4), 16))
        xlo, xhi = xq[t, T.Ramp(kb * QBLOCK, 1, 16)], xq[t, T.Ramp(kb * QBLOCK + 16, 1, 16)]
        if isa == "x86-avx2":  # sum(nibble * q): two vpmaddwd (|sum| <= 32 * 15 * 32767 < 2^24: exact in float)
            # high nibbles as vpmulhuw(w, 4096) = w >> 4: otherwise LLVM moves the shift and mask before the
            # widening (byte vectors have no shift), which costs two more instructions per block
            hi = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmulhu.w", w16, T.Broadcast(T.int16(4096), 16))
            return T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", lo, xlo) + T.call_llvm_pure_intrin(
                "int32x8", "llvm.x86.avx2.pmadd.wd", hi, xhi)
        if arm8:  # sum(nibble * q): int16 products of bytes (smull .8h), the four 8-lane quarters added in int16
            # (|sum| <= 4 * 15 * 127 = 7620), widened once
            wb = T.reinterpret("uint8x16", qwords(qw, j, kb * wpb, wpb))
            w8 = T.Shuffle([T.bitwise_and(wb, T.Broadcast(T.uint8(15), 16)),
                            T.shift_right(wb, T.Broadcast(T.uint8(4), 16))], list(range(32)))
            p16 = T.Cast("int16x32", w8) * T.Cast("int16x32", T.Shuffle([xlo, xhi], list(range(32))))

            def quarter(c):
                return T.Shuffle([p16], list(range(8 * c, 8 * c + 8)))

            return T.Cast("int32x8", quarter(0) + quarter(1) + quarter(2) + quarter(3))
        # arm64: sum((nibble - 8) * q) as a partial reduction of int16 products (widening multiply-adds)
        prod = T.Cast("int32x32", T.Shuffle([lo, hi], list(range(32))) - T.Broadcast(T.int16(8), 32)) * T.Cast(
            "int32x32", T.Shuffle([xlo, xhi], list(range(32))))
        return T.call_llvm_pure_intrin("int32x8", "llvm.vector.partial.reduce.add", T.Broadcast(T.int32(0), 8), prod)

    @T.macro
    def decode_chunk(qw, sc, xq, xs, xd, acc, sdx, t, j0, k0, width, s0, ns):  # blocks k0 .. k0+width of rows
        # j0 .. j0+rd; blocks s0 .. s0+ns of the chunk one at a time (block_dot), the others in pairs (pair_dot)
        for r in T.unroll(rd):  # sdx = scale * dx per block; x86, arm8: the -8 sum(q) terms go into the lanes now
            for c in T.vectorized(width):
                sdx[r * CHUNK + c] = T.Cast("float32", sc[drow(j0, r), (k0 + c) // bpg]) * xd[t, k0 + c]
            if isa == "x86-avx2" or arm8:
                for c in T.vectorized(width):
                    acc[r * na * LANES + c] = acc[r * na * LANES + c] - sdx[r * CHUNK + c] * xs[t, k0 + c]
        if pairs:  # a8 on AVX2: two blocks per step (one 32-byte load; lanes 0-3 block c, 4-7 block c + 1)
            for pc in T.unroll(width // 2):
                for r in T.unroll(rd):
                    a = (r * na + pc % na) * LANES
                    acc[T.Ramp(a, 1, LANES)] = acc[T.Ramp(a, 1, LANES)] + T.Cast(
                        "float32x8", pair_dot(qw, xq, drow(j0, r), t, k0 + 2 * pc)
                    ) * T.Shuffle([T.Broadcast(sdx[r * CHUNK + 2 * pc], 4),
                                   T.Broadcast(sdx[r * CHUNK + 2 * pc + 1], 4)], list(range(LANES)))
        for c in T.unroll(ns):
            for r in T.unroll(rd):
                a = (r * na + c % na) * LANES  # block s0 + c goes into chain c % na of row r
                acc[T.Ramp(a, 1, LANES)] = acc[T.Ramp(a, 1, LANES)] + T.Cast(
                    "float32x8", block_dot(qw, xq, drow(j0, r), t, k0 + s0 + c)
                ) * T.Broadcast(sdx[r * CHUNK + s0 + c], LANES)

    @T.macro
    def decode_tile(x, qw, sc, xq, xs, xd, r_, y, i, t, j0, add):  # y[i, j0 .. j0+rd) (rows clamped to N - 1)
        # per block: acc[r] += float(dot(nibbles, q)) * (scale[r] * dx) (- 8 sum(q) * scale[r] * dx on x86)
        acc = T.alloc_local((rd * na * LANES,), "float32")
        sdx = T.alloc_local((rd * CHUNK,), "float32")
        for r in T.unroll(rd * na):
            for b in T.vectorized(LANES):
                acc[r * LANES + b] = T.float32(0)
        for kc in range(nb // CHUNK):
            decode_chunk(qw, sc, xq, xs, xd, acc, sdx, t, j0, kc * CHUNK, CHUNK, full_s0, full_ns)
        if nb % CHUNK != 0:
            decode_chunk(qw, sc, xq, xs, xd, acc, sdx, t, j0, nb // CHUNK * CHUNK, nb % CHUNK, rem_s0, rem_ns)
        for r in T.unroll(rd):
            tail(x, qw, sc, acc, i, drow(j0, r), r * na * LANES, nb * QBLOCK)
            finish(acc, r_, y, i, drow(j0, r), r * na * LANES, add, na * LANES)

    @T.macro
    def decode_tile_rows4(x, qw, sc, xq, xs, xd, r_, y, i, t, j0, add):  # plain NEON, rows4 weights: y[i, j0 ..
        # j0+rd), lanes = rows: per block and group of 4 rows one int32x4 of dots (arm_q4.rows4_dot without SDOT),
        # one convert and one FMA
        acc = T.alloc_local((rd,), "float32")  # [rows]
        sdx = T.alloc_local((rd,), "float32")  # [rows] scale * dx of the block
        for e in T.vectorized(rd):
            acc[e] = T.float32(0)
        for kb in range(nb):
            for r in T.vectorized(rd):
                sdx[r] = T.Cast("float32", sc[drow(j0, r), kb // bpg]) * xd[t, kb]
            for v in T.unroll(rd // 4):  # (sum(nibble * q) - 8 sum(q)) * scale * dx, 4 rows at a time
                acc[T.Ramp(v * 4, 1, 4)] = acc[T.Ramp(v * 4, 1, 4)] + (T.Cast(
                    "float32x4", arm_q4.rows4_dot(qw, wpr, xq, t, drow(j0, 4 * v) // 4, kb)) - T.Broadcast(
                    xs[t, kb], 4)) * sdx[T.Ramp(v * 4, 1, 4)]
        for r in T.unroll(rd):
            tail(x, qw, sc, acc, i, drow(j0, r), r, nb * QBLOCK)
            finish(acc, r_, y, i, drow(j0, r), r, add, 1)

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

    # ---- integer prefill on AVX2 (a8: vpmaddubsw; i16: vpmaddwd): lanes are rows, so no horizontal sums
    tc8, tp8, kb8 = A8_TOKENS, (I16_TILE if i16 else A8_TILE), A8_KBLOCKS
    nv8 = sb // LANES  # row vectors of a block
    kw8 = kb8 * wpb  # packed words of a weight chunk
    nkc8, rem8 = nb // kb8, nb % kb8  # full weight chunks, blocks of the last partial one
    idt, ilanes, steps = ("int32", LANES, QBLOCK // 2) if i16 else ("int16", 16, 2 * wpb)  # tile_int's integer sums

    @T.macro
    def quantize_int(x, xa, xda, i0, cnt):  # tokens i0 .. i0+cnt -> workspace rows 0 .. cnt (one parallel launch)
        # a8, per block: dx = max|x| / 127, q = clip(rint(x / dx)) + 128 as bytes; per packed word w of the block
        # two int32 quads: [even inputs 8w, 8w+2, 8w+4, 8w+6] and [odd inputs 8w+1, .., 8w+7] (the nibble order).
        # i16: dx = max|x| / 32767, q = rint(x / dx) as int16, one uint32 per pair of inputs
        for e in T.parallel(cnt):
            m = T.alloc_local((LANES,), "float32")
            qv = T.alloc_local((LANES,), "uint32")
            for kb in range(nb):
                block_scale(x, m, i0 + e, kb, pmax)
                xda[e, kb] = m[1]
                if i16:  # int16 q, pairs of consecutive inputs in one uint32 (low half first)
                    for w in range(QBLOCK // 2):
                        xa[e, kb * (QBLOCK // 2) + w] = T.bitwise_or(
                            T.bitwise_and(T.Cast("uint32", T.Cast("int32", T.nearbyint(
                                x[i0 + e, kb * QBLOCK + 2 * w] * m[2]))), T.uint32(0xFFFF)),
                            T.shift_left(T.Cast("uint32", T.Cast("int32", T.nearbyint(
                                x[i0 + e, kb * QBLOCK + 2 * w + 1] * m[2]))), T.uint32(16)))
                else:
                    for w in range(wpb):
                        for b in T.vectorized(LANES):  # lane b: input 8w + 2 (b % 4) + b // 4
                            qv[b] = T.Cast("uint32", T.Cast("int32", T.max(T.min(T.nearbyint(
                                x[i0 + e, kb * QBLOCK + w * 8 + (b % 4) * 2 + b // 4] * m[2]), T.float32(A8_MAX)),
                                T.float32(-A8_MAX))) + 128)
                        for h in range(2):
                            xa[e, (kb * wpb + w) * 2 + h] = T.bitwise_or(
                                T.bitwise_or(qv[h * 4], T.shift_left(qv[h * 4 + 1], 8)),
                                T.bitwise_or(T.shift_left(qv[h * 4 + 2], 16), T.shift_left(qv[h * 4 + 3], 24)))

    @T.macro
    def prep_int(qw, sc, wt, ws, wcorr, swf, j0, b0, nbk):  # blocks b0 .. b0+nbk of rows j0 .. j0+sb (clamped)
        # a8: ws[v, quad, r*4 .. r*4+4] = nibble - 8 of row j0 + 8v + r (int8), quad = 2 word + (0: low, 1: high
        # nibbles), wcorr[v, bb, r] = 128 * sum(nibble - 8) over the block; i16: ws[v, pair, r*2 .. r*2+2] = int16
        # (nibble - 8) of inputs 2 pair, 2 pair + 1; both: swf[v, bb, r] = the block's scale
        for r in range(sb):
            for w in range(nbk * wpb):
                wt[((r // LANES) * kw8 + w) * LANES + r % LANES] = qword(qw, T.min(j0 + r, last), b0 * wpb + w)
        for v in range(nv8):
            for w in range(nbk * wpb):
                if i16:
                    for j in range(4):
                        ws[T.Ramp(((v * kw8 + w) * 4 + j) * 32, 1, 32)] = T.reinterpret("int8x32", T.reinterpret(
                            "int16x16", T.bitwise_or(
                                T.bitwise_and(T.shift_right(wt[T.Ramp((v * kw8 + w) * LANES, 1, LANES)],
                                                            T.Broadcast(T.uint32(8 * j), LANES)),
                                              T.Broadcast(T.uint32(15), LANES)),
                                T.shift_left(T.bitwise_and(T.shift_right(wt[T.Ramp((v * kw8 + w) * LANES, 1, LANES)],
                                                                         T.Broadcast(T.uint32(8 * j + 4), LANES)),
                                                           T.Broadcast(T.uint32(15), LANES)),
                                             T.Broadcast(T.uint32(16), LANES)))) - T.Broadcast(T.int16(8), 16))
                else:
                    for h in range(2):
                        ws[T.Ramp(((v * kw8 + w) * 2 + h) * 32, 1, 32)] = T.reinterpret("int8x32", T.bitwise_and(
                            T.shift_right(wt[T.Ramp((v * kw8 + w) * LANES, 1, LANES)],
                                          T.Broadcast(T.uint32(4 * h), LANES)),
                            T.Broadcast(T.uint32(0x0F0F0F0F), LANES))) - T.Broadcast(T.int8(8), 32)
            for bb in range(nbk):
                for r in T.vectorized(LANES):
                    swf[(v * kb8 + bb) * LANES + r] = T.Cast(
                        "float32", sc[T.min(j0 + v * LANES + r, last), (b0 + bb) // bpg])
                if not i16:
                    for r in T.vectorized(LANES):
                        wcorr[(v * kb8 + bb) * LANES + r] = T.int32(0)
                    for w in range(wpb):
                        for r in T.vectorized(LANES):  # byte sums of the 8 nibbles (<= 120) via the multiply trick
                            wcorr[(v * kb8 + bb) * LANES + r] = wcorr[(v * kb8 + bb) * LANES + r] + T.Cast(
                                "int32", T.shift_right((T.bitwise_and(wt[(v * kw8 + bb * wpb + w) * LANES + r],
                                                                      T.uint32(0x0F0F0F0F)) + T.bitwise_and(
                                    T.shift_right(wt[(v * kw8 + bb * wpb + w) * LANES + r], T.uint32(4)),
                                    T.uint32(0x0F0F0F0F))) * T.uint32(0x01010101), T.uint32(24)))
                    for r in T.vectorized(LANES):
                        wcorr[(v * kb8 + bb) * LANES + r] = (wcorr[(v * kb8 + bb) * LANES + r] - 8 * QBLOCK) * 128

    def tile_step(xa, ws, e0, b0, t, v, bb, st):  # one multiply step of token t x row vector v in block bb
        if i16:  # vpmaddwd(x pair st broadcast, int16 weight pairs of 8 rows) -> int32x8
            return T.call_llvm_pure_intrin(
                "int32x8", "llvm.x86.avx2.pmadd.wd",
                T.reinterpret("int16x16", T.Broadcast(xa[e0 + t, (b0 + bb) * (QBLOCK // 2) + st], LANES)),
                T.reinterpret("int16x16", ws[T.Ramp(((v * kw8 + bb * wpb) * 4 + st) * 32, 1, 32)]))
        # a8: vpmaddubsw(x quad st broadcast as unsigned bytes, int8 weights of 8 rows x 4 inputs) -> int16x16
        return T.call_llvm_pure_intrin(
            "int16x16", "llvm.x86.avx2.pmadd.ub.sw",
            T.reinterpret("uint8x32", T.Broadcast(xa[e0 + t, (b0 + bb) * 2 * wpb + st], LANES)),
            ws[T.Ramp(((v * kw8 + bb * wpb) * 2 + st) * 32, 1, 32)])

    def tile_block(ai, wcorr, v, bb):  # the int32x8 block dots of the 8 rows from a tile's integer sum ai
        if i16:
            return ai
        # a8: widen the int16 pair sums, remove the +128 offset of the activations (128 * sum(nibble - 8))
        return T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", ai, T.Broadcast(T.int16(1), 16)) - \
            wcorr[T.Ramp((v * kb8 + bb) * LANES, 1, LANES)]

    @T.macro
    def tile_int(xa, xda, ws, wcorr, swf, accs, e0, b0, nbk):  # workspace tokens e0 .. e0+tp8 x all sb rows
        # per block, per (token t, row vector v): an integer sum over the block's steps (a8: 8 vpmaddubsw summed in
        # int16 lanes, |sum| <= 8 * 2 * 255 * 8 = 32640; i16: 16 vpmaddwd in int32 lanes, exact), then
        # tile_block -> float, * scale * dx into the row vector's float sums (lanes are rows: no horizontal sums)
        acc = T.alloc_local((tp8 * nv8 * LANES,), "float32")
        ai = T.alloc_local((tp8 * nv8 * ilanes,), idt)
        for t in T.unroll(tp8):
            for v in T.unroll(nv8):
                for b in T.vectorized(LANES):
                    acc[(t * nv8 + v) * LANES + b] = accs[(e0 + t) * sb + v * LANES + b]
        for bb in range(nbk):
            for e in T.unroll(tp8 * nv8):
                for b in T.vectorized(ilanes):
                    ai[e * ilanes + b] = T.Cast(idt, 0)
            for st in T.unroll(steps):
                for t in T.unroll(tp8):
                    for v in T.unroll(nv8):
                        ai[T.Ramp((t * nv8 + v) * ilanes, 1, ilanes)] = ai[T.Ramp((t * nv8 + v) * ilanes, 1, ilanes)] \
                            + tile_step(xa, ws, e0, b0, t, v, bb, st)
            for t in T.unroll(tp8):
                for v in T.unroll(nv8):
                    acc[T.Ramp((t * nv8 + v) * LANES, 1, LANES)] = acc[T.Ramp((t * nv8 + v) * LANES, 1, LANES)] + \
                        T.Cast("float32x8", tile_block(ai[T.Ramp((t * nv8 + v) * ilanes, 1, ilanes)], wcorr, v, bb)) * (
                            swf[T.Ramp((v * kb8 + bb) * LANES, 1, LANES)] * T.Broadcast(xda[e0 + t, b0 + bb], LANES))
        for t in T.unroll(tp8):
            for v in T.unroll(nv8):
                for b in T.vectorized(LANES):
                    accs[(e0 + t) * sb + v * LANES + b] = acc[(t * nv8 + v) * LANES + b]

    @T.macro
    def prefill_int(x, qw, sc, xa, xda, r_, y, i0, cnt, j0, add):  # y[i0 .. i0+cnt, j0 .. j0+sb) (rows clamped)
        wt = T.alloc_local((nv8 * kw8 * LANES,), "uint32")  # [v, word, 8 rows] packed words, transposed
        ws = T.alloc_local((nv8 * kw8 * 2 * 32 * (1 + int(i16)),), "int8")  # [v, quad, 8 rows x 4] int8 weights
        # (i16: [v, pair, 8 rows x 2] int16)
        wcorr = T.alloc_local((nv8 * kb8 * LANES,), "int32")  # [v, block, 8 rows]
        swf = T.alloc_local((nv8 * kb8 * LANES,), "float32")  # [v, block, 8 rows]
        accs = T.alloc_local((tc8 * sb,), "float32")  # [tokens, sb rows]
        fin = T.alloc_local((LANES,), "float32")
        for e in range(cnt * sb):
            accs[e] = T.float32(0)
        for c in range(nkc8):
            prep_int(qw, sc, wt, ws, wcorr, swf, j0, c * kb8, kb8)
            for tl in range(cnt // tp8):
                tile_int(xa, xda, ws, wcorr, swf, accs, tl * tp8, c * kb8, kb8)
        if rem8 > 0:
            prep_int(qw, sc, wt, ws, wcorr, swf, j0, nkc8 * kb8, rem8)
            for tl in range(cnt // tp8):
                tile_int(xa, xda, ws, wcorr, swf, accs, tl * tp8, nkc8 * kb8, rem8)
        for e in range(cnt):
            for r in range(sb):
                fin[0] = accs[e * sb + r]
                tail(x, qw, sc, fin, i0 + e, T.min(j0 + r, last), 0, nb * QBLOCK)
                finish(fin, r_, y, i0 + e, T.min(j0 + r, last), 0, add, 1)

    @T.macro
    def body_int(x, qw, sc, r_, y, n, add):  # AVX2: integer prefill tiles (int8 or int16), integer decode tiles
        xa = T.alloc_buffer((tc8, nbw * xa_words), "uint32")  # [tokens, quads] u8 activations (q + 128);
        # i16: [tokens, pairs] int16 q
        xda = T.alloc_buffer((tc8, nbw), "float32")  # [tokens, blocks] dx
        xq = T.alloc_buffer((tp - 1, nbw * QBLOCK), qdt)
        xs = T.alloc_buffer((tp - 1, nbw), "float32")
        xd = T.alloc_buffer((tp - 1, nbw), "float32")
        for tc in range((n // tp * tp + tc8 - 1) // tc8):
            quantize_int(x, xa, xda, tc * tc8, T.min(tc8, n // tp * tp - tc * tc8))
            for blk in T.parallel(blocks):
                prefill_int(x, qw, sc, xa, xda, r_, y, tc * tc8, T.min(tc8, n // tp * tp - tc * tc8), blk * sb, add)
        for t in range(n - n // tp * tp):
            quantize_x(x, xq, xs, xd, n // tp * tp + t, t)
        for blk in T.parallel(blocks):
            for t in range(n - n // tp * tp):
                for jr in range(sb // rd):
                    decode_tile(x, qw, sc, xq, xs, xd, r_, y, n // tp * tp + t, t, blk * sb + jr * rd, add)

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
        xq = T.alloc_buffer((tp - 1, nbw * QBLOCK), qdt)
        xs = T.alloc_buffer((tp - 1, nbw), "float32")
        xd = T.alloc_buffer((tp - 1, nbw), "float32")
        for t in range(n - n // tp * tp):
            quantize_x(x, xq, xs, xd, n // tp * tp + t, t)
        for blk in T.parallel(blocks):
            prefill(x, qw, sc, r_, y, n, blk * sb, add)
            for t in range(n - n // tp * tp):
                for jr in range(sb // rd):
                    if rows4 and arm8:
                        decode_tile_rows4(x, qw, sc, xq, xs, xd, r_, y, n // tp * tp + t, t, blk * sb + jr * rd, add)
                    else:
                        decode_tile(x, qw, sc, xq, xs, xd, r_, y, n // tp * tp + t, t, blk * sb + jr * rd, add)

    @T.macro
    def body_fake_a8(x, qw, sc, r_, y, n, add):  # act="int8" elsewhere: the float paths on q * dx (exact q)
        xf = T.alloc_buffer((n, k_in), "float32")  # [n, K] x with every full block replaced by q * dx
        for i in T.parallel(n):
            m = T.alloc_local((LANES,), "float32")
            for kb in range(nb):
                block_scale(x, m, i, kb, A8_MAX)
                for b in T.vectorized(QBLOCK):
                    xf[i, kb * QBLOCK + b] = T.max(T.min(T.nearbyint(x[i, kb * QBLOCK + b] * m[2]), T.float32(A8_MAX)),
                                                   T.float32(-A8_MAX)) * m[1]
            for k in range(nb * QBLOCK, k_in):
                xf[i, k] = x[i, k]
        if isa == "f32":
            body_f32(xf, qw, sc, r_, y, n, add)
        else:  # int16 decode tiles with qmax = 127 recover q exactly from q * dx
            body(xf, qw, sc, r_, y, n, add)

    @T.macro
    def dispatch(x, qw, sc, r_, y, n, add):  # the body for this target and activation type
        if isa == "x86-avx2":
            body_int(x, qw, sc, r_, y, n, add)
        elif a8:
            body_fake_a8(x, qw, sc, r_, y, n, add)
        elif isa == "f32":
            body_f32(x, qw, sc, r_, y, n, add)
        else:
            body(x, qw, sc, r_, y, n, add)

    return q4_linear_func(k_in, n_out, group, residual, dispatch, rows4)


def q4_linear_func(k_in: int, n_out: int, group: int, residual: bool, body, rows4: bool = False):
    """The PrimFunc of an int4 linear over the packed layout, ``linear(x, qweight, scales, y)`` or with
    ``residual`` ``linear_add(x, qweight, scales, r, y)``; ``body(x, qw, sc, r_, y, n, add)`` (a T.macro) computes
    y[n, N] (+ r when add; r_ is y otherwise). rows4: qweight holds layout.to_rows4 of the packed words (same shape
    [N, Kp/8], another order); body then gets them as a flat buffer [N * Kp/8]."""
    kp = -(-k_in // group) * group

    @T.macro
    def run(x, qw, sc, r_, y, n, add):
        if rows4:
            qf = T.decl_buffer((n_out * (kp // 8),), "uint32", data=qw.data)  # [N/4, Kp/8, 4] flat
            body(x, qf, sc, r_, y, n, add)
        else:
            body(x, qw, sc, r_, y, n, add)

    @T.prim_func(private=True)
    def linear(x_h: T.handle, q_h: T.handle, s_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        qw = T.match_buffer(q_h, (n_out, kp // 8), "uint32")  # [N, Kp/8]
        sc = T.match_buffer(s_h, (n_out, kp // group), "float16")  # [N, Kp/G]
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        run(x, qw, sc, y, y, n, False)

    @T.prim_func(private=True)
    def linear_add(x_h: T.handle, q_h: T.handle, s_h: T.handle, r_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n, k_in), "float32")  # [n, K]
        qw = T.match_buffer(q_h, (n_out, kp // 8), "uint32")  # [N, Kp/8]
        sc = T.match_buffer(s_h, (n_out, kp // group), "float16")  # [N, Kp/G]
        r = T.match_buffer(r_h, (n, n_out), "float32")  # [n, N] residual
        y = T.match_buffer(y_h, (n, n_out), "float32")  # [n, N]
        run(x, qw, sc, r, y, n, True)

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
