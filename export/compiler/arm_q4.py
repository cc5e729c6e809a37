"""int4 x int8 linear kernels for ARM64 CPUs with dot-product instructions: the -a8 schemes on the ``dotprod``
(SDOT) and ``i8mm`` (SMMLA) kernel sets. The plain ``neon`` set keeps quant_kernels.linear_q4's portable path.

Arithmetic (the q4g32-a8 scheme, docs/quantization.md; the same integers as the AVX2 kernels and the PyTorch
reference): each token's x is quantized per block of 32 inputs, dx = max|x| / 127, q = clip(rint(x / dx), ±127);
y[i, j] = sum over blocks of scale[j, block] * dx[i, block] * (exact int32 dot of (nibble - 8) with q), fp32
accumulation; inputs after the last full block (K % 32) in float.

Weights: the packed words (qweight uint32 [N, Kp/8]: byte m of a block holds inputs 2m (low nibble) and 2m + 1
(high nibble)), row-major or, in Android / Linux ARM64 exports (``rows4``, layout.to_rows4), 4 rows side by side:
word w of rows 4g .. 4g+3 in one 16-byte vector ([N/4, Kp/8, 4]), what llama.cpp's Q4_0 repack does at load,
done once at export. Tile builders, one per instruction:

- ``decode_tile`` (both sets): DEC_ROWS rows x 1 token, int32 lanes = rows, so one convert and one FMA (with
  scale * dx of 4 rows, computed for CHUNK blocks at a time) serve 4 rows. The token's q is stored half-major per
  block (16 even inputs, then 16 odd ones). rows4 (``rows4_dot``): per word, the 4 rows' 16 bytes split into low
  and high nibbles, and two indexed SDOT against the token's even and odd quad of that word add 4 rows x 8 inputs;
  the lanes start at -8 * sum(q) (the -8 offset of the nibbles, folded in for free). Row-major (``row_dot``): a
  row's 16 bytes meet the token's 32 q directly, two SDOT per row and block started from -2 * sum(q) per lane, and
  three ADDP per 4 rows bring the rows into lanes.
- ``dot_tile`` (dotprod prefill): DOT_TOK tokens x DOT_RV groups of 4 rows. Weights are prepared per chunk of KB
  blocks into vectors of 4 rows x 4 inputs (``prep_dot``, minus 8); each token's 4-input quad is broadcast and one
  SDOT adds 4 rows x 4 inputs x 1 token: lanes are rows, no horizontal sums.
- ``mm_tile`` (i8mm prefill): MM_TP token pairs x MM_RP row pairs. Weights prepared as 2 rows x 8 inputs per packed
  word (``prep_mm``), activations quantized as 2 tokens x 8 inputs per word (``quantize_pairs``); one SMMLA adds a
  2 x 2 block of rows x tokens over 8 inputs.

Rows run in parallel blocks of SB (the last block's row indices are clamped to N - 1: it rewrites the last row);
prefill tokens go TOKS at a time (one parallel launch quantizes them, a second runs the row blocks, keeping fp32
partial sums of the pass in a per-block scratch between weight chunks).
"""

from __future__ import annotations

from tvm.script import tirx as T

from mcpm.export.compiler.quant_kernels import q4_linear_func

QBLOCK = 32  # inputs per activation block (one dx each)
A8_MAX = 127
SB = 16  # rows per parallel task
KB = 8  # blocks per prepared weight chunk (256 inputs)
TOKS = 64  # prefill tokens per pass (workspace: TOKS x K bytes)
CHUNK = 2  # blocks whose scale * dx a decode tile computes at once
DEC_ROWS = 8  # rows of a decode tile (shares the token's activation loads); 8 x 2: the fewest llvm-mca cycles on
# A55 / N2 / M5 of the shapes measured (4, 8, 16 rows x 1..8 blocks: more spill registers)
DOT_TOK, DOT_RV = 4, 2  # dotprod prefill tile: tokens x groups of 4 rows
MM_TP, MM_RP = 2, 4  # i8mm prefill tile: token pairs x row pairs
NIB = 0x0F0F0F0F
ISAS = ("dotprod", "i8mm")


def sdot(acc, a, b):  # int32x4 += 4-way dot products of int8x16 a and b
    return T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.sdot", acc, a, b)


def addp(a, b):  # int32x4 [a0+a1, a2+a3, b0+b1, b2+b3]
    return T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.addp", a, b)


def smmla(acc, a, b):  # int32x4 (2 x 2: a's rows x b's rows) += a (2 x 8 int8) . b (2 x 8 int8)^T
    return T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.smmla", acc, a, b)


def quad(xq, e, kb, h, w):  # int8x16: token e's quad h of word w in block kb (q half-major per block) in all 4
    # lanes: lane w of the half's 16-byte load (LLVM folds the splat into an indexed SDOT / a DUP)
    return T.reinterpret("int8x16", T.Shuffle(
        [T.reinterpret("int32x4", xq[e, T.Ramp(kb * QBLOCK + h * 16, 1, 16)])], [w, w, w, w]))


def rows4_dot(qw, wpr: int, xq, t, g, kb, start=None):
    """int32x4 whose lane r is block kb's sum(nibble * q) of row 4g + r (rows4 weights: flat qw, wpr words per
    row), plus ``start``: per word, one 16-byte load is 4 rows x 4 bytes, whose low and high nibbles meet the
    token's even and odd quad of that word. With SDOT (``start`` given, e.g. the -8 * sum(q) lanes): two indexed
    SDOT per word. Without (plain NEON, ``start`` None): int16 products of the bytes (SMULL / SMLAL), summed in int16
    over the block's 8 word-halves (|.| <= 8 * 15 * 127 = 15240), then pairwise to int32 (SADDLP) and across
    (ADDP): rows 0-1 in the low 8 lanes, rows 2-3 in the high 8."""
    steps = []  # (nibbles as int8x16, the matching quad)
    for w in range(4):
        ww = T.reinterpret("uint8x16", qw[T.Ramp((g * wpr + kb * 4 + w) * 4, 1, 4)])
        steps.append((T.reinterpret("int8x16", T.bitwise_and(ww, T.Broadcast(T.uint8(15), 16))), quad(xq, t, kb, 0, w)))
        steps.append((T.reinterpret("int8x16", T.shift_right(ww, T.Broadcast(T.uint8(4), 16))), quad(xq, t, kb, 1, w)))
    if start is not None:
        acc = start
        for nib, q in steps:
            acc = sdot(acc, nib, q)
        return acc

    def half8(v, p):  # int16x8 of bytes 8p .. 8p+8 (sign-extended: what SMULL / SMLAL take)
        return T.Cast("int16x8", T.Shuffle([v], list(range(8 * p, 8 * p + 8))))

    sums = [T.Broadcast(T.int16(0), 8), T.Broadcast(T.int16(0), 8)]
    for nib, q in steps:
        sums = [sums[p] + half8(nib, p) * half8(q, p) for p in range(2)]
    return addp(*(T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.saddlp", v) for v in sums))


def linear_q4_a8(k_in: int, n_out: int, group: int, residual: bool, isa: str, rows4: bool = False):
    """y[n, N] = x[n, K] @ dequant(qweight, scales)[N, K]^T (+ r[n, N]) with int8 activations (see the module
    docstring); isa "dotprod" or "i8mm". Same signature as quant_kernels.linear_q4."""
    if isa not in ISAS:
        raise ValueError(f"arm_q4: isa must be one of {ISAS}, not {isa!r}")
    if group % QBLOCK:
        raise ValueError(f"arm_q4: the group must be a multiple of {QBLOCK}, not {group}")
    if rows4 and n_out % 4:
        raise ValueError(f"arm_q4: the rows4 layout needs N % 4 == 0, not {n_out}")
    mm = isa == "i8mm"
    nb = k_in // QBLOCK  # full activation blocks
    wpr = -(-k_in // group) * group // 8  # packed words per row
    nbw = max(nb, 1)
    bpg = group // QBLOCK  # activation blocks per weight group
    blocks = -(-n_out // SB)
    last = n_out - 1
    step = 2 * MM_TP if mm else DOT_TOK  # tokens of a prefill tile
    nkc, rem = nb // KB, nb % KB  # full weight chunks, blocks of the last partial one
    rows_per_pass = 2 * MM_RP if mm else 4 * DOT_RV

    def row(j):  # rows past N - 1 compute a copy of a real row (rows4: of the last group, lane for lane)
        return T.min(j // 4, last // 4) * 4 + j % 4 if rows4 else T.min(j, last)

    # ---- weight words: row-major [N, Kp/8], or rows4 (layout.to_rows4, a flat buffer [N/4, Kp/8, 4]): word w of
    # rows 4g .. 4g+3 side by side, so one 16-byte load is 4 rows x 4 bytes (lanes = rows for the indexed SDOT)
    def word(qw, j, w):  # uint32 word w of row j
        return qw[(j // 4 * wpr + w) * 4 + j % 4] if rows4 else qw[j, w]

    # ---- quantization (exactly quant_kernels' block_scale + rint / clip)
    @T.macro
    def block_scale(x, m, i, kb):  # m[1] = dx = max|x| / 127, m[2] = 1 / dx (0 when dx = 0)
        m[0] = T.float32(0)
        for b in range(QBLOCK):
            m[0] = T.max(m[0], T.abs(x[i, kb * QBLOCK + b]))
        m[1] = m[0] / T.float32(A8_MAX)
        m[2] = T.Select(m[1] > T.float32(0), T.float32(1) / m[1], T.float32(0))

    def q8(x, m, i, k):  # int8 code of x[i, k] with block scale m
        return T.Cast("int8", T.max(T.min(T.nearbyint(x[i, k] * m[2]), T.float32(A8_MAX)), T.float32(-A8_MAX)))

    @T.macro
    def quantize_half(x, xq, xs, xd, i, t):  # token i -> slot t: per block 16 even inputs then 16 odd ones,
        # xs = -2 * sum(q) (the lane start of decode_tile's SDOT), xd = dx
        m = T.alloc_local((3,), "float32")
        qs = T.alloc_local((1,), "int32")
        for kb in range(nb):
            block_scale(x, m, i, kb)
            xd[t, kb] = m[1]
            qs[0] = 0
            for h, b in T.grid(2, QBLOCK // 2):
                xq[t, kb * QBLOCK + h * 16 + b] = q8(x, m, i, kb * QBLOCK + 2 * b + h)
                qs[0] = qs[0] + T.Cast("int32", xq[t, kb * QBLOCK + h * 16 + b])
            xs[t, kb] = qs[0] * -2

    @T.macro
    def quantize_pairs(x, xp, xdp, i0, npairs):  # tokens i0 + 2p, i0 + 2p + 1 -> xp[p, block, word]: 16 bytes =
        # [t0 even quad, t0 odd quad, t1 even quad, t1 odd quad] (even quad of word w: inputs 8w, 8w+2, 8w+4, 8w+6);
        # xdp[p, block] = [dx t0, dx t1, dx t0, dx t1] (the lanes of an SMMLA result: rows x tokens)
        for p in T.parallel(npairs):
            m = T.alloc_local((3,), "float32")
            for t in range(2):
                for kb in range(nb):
                    block_scale(x, m, i0 + 2 * p + t, kb)
                    xdp[p, kb * 4 + t] = m[1]
                    xdp[p, kb * 4 + 2 + t] = m[1]
                    for w, h, e in T.grid(4, 2, 4):
                        xp[p, (kb * 4 + w) * 16 + t * 8 + h * 4 + e] = q8(x, m, i0 + 2 * p + t,
                                                                          kb * QBLOCK + w * 8 + 2 * e + h)

    @T.macro
    def quantize_tokens(x, xq, xd, i0, cnt):  # dotprod prefill: tokens i0 .. i0+cnt, half-major blocks
        for e in T.parallel(cnt):
            m = T.alloc_local((3,), "float32")
            for kb in range(nb):
                block_scale(x, m, i0 + e, kb)
                xd[e, kb] = m[1]
                for h, b in T.grid(2, QBLOCK // 2):
                    xq[e, kb * QBLOCK + h * 16 + b] = q8(x, m, i0 + e, kb * QBLOCK + 2 * b + h)

    # ---- the float end of every output: inputs past the last full block, then y (+ r)
    @T.macro
    def finish(x, qw, sc, r_, y, i, j, v, add):  # y[i, j] = v + the float tail (+ r[i, j])
        tl = T.alloc_local((1,), "float32")
        tl[0] = v
        for k in range(nb * QBLOCK, k_in):
            nib = T.bitwise_and(T.shift_right(word(qw, j, k // 8), T.Cast("uint32", (k % 8) * 4)), T.uint32(15))
            tl[0] = tl[0] + x[i, k] * ((T.Cast("float32", nib) - T.float32(8)) * T.Cast("float32", sc[j, k // group]))
        if add:
            y[i, j] = r_[i, j] + tl[0]
        else:
            y[i, j] = tl[0]

    # ---- decode: DEC_ROWS rows x 1 token, two SDOT per row and block; rows meet in the lanes
    def row_dot(qw, xq, xs, t, j, kb):  # row-major weights: int32x4 whose lanes sum to block kb's dot of row j
        # (clamped) with q
        wb = T.reinterpret("uint8x16", qw[row(j), T.Ramp(kb * 4, 1, 4)])
        return sdot(sdot(T.Broadcast(xs[t, kb], 4),
                         T.reinterpret("int8x16", T.bitwise_and(wb, T.Broadcast(T.uint8(15), 16))),
                         xq[t, T.Ramp(kb * QBLOCK, 1, 16)]),
                    T.reinterpret("int8x16", T.shift_right(wb, T.Broadcast(T.uint8(4), 16))),
                    xq[t, T.Ramp(kb * QBLOCK + 16, 1, 16)])

    def scales4(sc, j, k0, c, width):  # float16x4: scales of rows j .. j+4 (clamped) at block k0 + c, from one load
        # of the chunk's scales per row (one group per block, width > 1; LLVM shares the loads between the blocks)
        return T.Shuffle([sc[row(j + r), T.Ramp(k0, 1, width)] for r in range(4)], [r * width + c for r in range(4)])

    def rows_dot(qw, xq, xs, t, j, kb):  # int32x4: lane r = block kb's dot of row j + r (j % 4 == 0; clamped)
        if rows4:
            return rows4_dot(qw, wpr, xq, t, row(j) // 4, kb, T.Broadcast(xs[t, kb] * 4, 4))  # lanes start at -8 sum(q)
        return addp(addp(row_dot(qw, xq, xs, t, j, kb), row_dot(qw, xq, xs, t, j + 1, kb)),
                    addp(row_dot(qw, xq, xs, t, j + 2, kb), row_dot(qw, xq, xs, t, j + 3, kb)))

    @T.macro
    def decode_chunk(qw, sc, xq, xs, xd, acc, sdx, t, j0, k0, width):  # blocks k0 .. k0+width (width static)
        for c in T.unroll(width):  # sdx[c, r] = scale of row r * dx, rows in lanes (one FMA serves 4 rows)
            if bpg == 1 and width > 1:
                for v in T.unroll(DEC_ROWS // 4):
                    sdx[T.Ramp(c * DEC_ROWS + 4 * v, 1, 4)] = T.Cast(
                        "float32x4", scales4(sc, j0 + 4 * v, k0, c, width)) * T.Broadcast(xd[t, k0 + c], 4)
            else:
                for r in T.vectorized(DEC_ROWS):
                    sdx[c * DEC_ROWS + r] = T.Cast("float32", sc[row(j0 + r), (k0 + c) // bpg]) * xd[t, k0 + c]
        for c in T.unroll(width):
            for v in T.unroll(DEC_ROWS // 4):  # 4 rows: their 4-lane SDOT sums reduced by 3 ADDP to one vector
                acc[T.Ramp(v * 4, 1, 4)] = acc[T.Ramp(v * 4, 1, 4)] + T.Cast(
                    "float32x4", rows_dot(qw, xq, xs, t, j0 + 4 * v, k0 + c)) * sdx[T.Ramp(c * DEC_ROWS + 4 * v, 1, 4)]

    @T.macro
    def decode_tile(x, qw, sc, xq, xs, xd, r_, y, i, t, j0, add):  # y[i, j0 .. j0+DEC_ROWS) (rows clamped)
        acc = T.alloc_local((DEC_ROWS,), "float32")  # [rows]
        sdx = T.alloc_local((CHUNK * DEC_ROWS,), "float32")  # [CHUNK blocks, rows] scale * dx
        for e in T.vectorized(DEC_ROWS):
            acc[e] = T.float32(0)
        for kc in range(nb // CHUNK):
            decode_chunk(qw, sc, xq, xs, xd, acc, sdx, t, j0, kc * CHUNK, CHUNK)
        if nb % CHUNK != 0:
            decode_chunk(qw, sc, xq, xs, xd, acc, sdx, t, j0, nb // CHUNK * CHUNK, nb % CHUNK)
        for r in T.unroll(DEC_ROWS):
            finish(x, qw, sc, r_, y, i, row(j0 + r), acc[r], add)

    # ---- dotprod prefill: weights as 4 rows x 4 inputs per vector, token quads broadcast
    @T.macro
    def prep_dot(qw, sc, ws, swf, j0, b0, nbk):  # ws[g, bb, h, w] = int8x16 [row 4g+r: quad h of word w] - 8;
        # swf[g, bb] = float32x4 scales of rows 4g .. 4g+4
        wt = T.alloc_local((4,), "uint32")
        for g in range(SB // 4):
            for bb in range(nbk):
                for h, w in T.grid(2, 4):
                    for r in range(4):
                        wt[r] = T.bitwise_and(T.shift_right(word(qw, row(j0 + 4 * g + r), (b0 + bb) * 4 + w),
                                                            T.uint32(4 * h)), T.uint32(NIB))
                    ws[T.Ramp((((g * KB + bb) * 2 + h) * 4 + w) * 16, 1, 16)] = T.reinterpret(
                        "int8x16", wt[T.Ramp(0, 1, 4)]) - T.Broadcast(T.int8(8), 16)
                for r in range(4):
                    swf[(g * KB + bb) * 4 + r] = T.Cast("float32", sc[row(j0 + 4 * g + r), (b0 + bb) // bpg])

    @T.macro
    def dot_tile(xq, xd, ws, swf, accs, e0, b0, nbk, g0):  # tokens e0 .. e0+DOT_TOK x row groups g0 .. g0+DOT_RV
        acc = T.alloc_local((DOT_TOK * DOT_RV * 4,), "float32")
        ai = T.alloc_local((DOT_TOK * DOT_RV * 4,), "int32")
        for t in T.unroll(DOT_TOK):
            for v in T.unroll(DOT_RV):
                acc[T.Ramp((t * DOT_RV + v) * 4, 1, 4)] = accs[T.Ramp((e0 + t) * SB + (g0 + v) * 4, 1, 4)]
        for bb in range(nbk):
            for e in T.vectorized(DOT_TOK * DOT_RV * 4):
                ai[e] = 0
            for h in T.unroll(2):
                for w in T.unroll(4):
                    for t in T.unroll(DOT_TOK):
                        for v in T.unroll(DOT_RV):
                            ai[T.Ramp((t * DOT_RV + v) * 4, 1, 4)] = sdot(
                                ai[T.Ramp((t * DOT_RV + v) * 4, 1, 4)],
                                ws[T.Ramp(((((g0 + v) * KB + bb) * 2 + h) * 4 + w) * 16, 1, 16)],
                                quad(xq, e0 + t, b0 + bb, h, w))
            for t in T.unroll(DOT_TOK):
                for v in T.unroll(DOT_RV):
                    acc[T.Ramp((t * DOT_RV + v) * 4, 1, 4)] = acc[T.Ramp((t * DOT_RV + v) * 4, 1, 4)] + T.Cast(
                        "float32x4", ai[T.Ramp((t * DOT_RV + v) * 4, 1, 4)]) * (
                        swf[T.Ramp(((g0 + v) * KB + bb) * 4, 1, 4)] * T.Broadcast(xd[e0 + t, b0 + bb], 4))
        for t in T.unroll(DOT_TOK):
            for v in T.unroll(DOT_RV):
                accs[T.Ramp((e0 + t) * SB + (g0 + v) * 4, 1, 4)] = acc[T.Ramp((t * DOT_RV + v) * 4, 1, 4)]

    # ---- i8mm prefill: weights as 2 rows x 8 inputs per packed word, activations as 2 tokens x 8 inputs
    @T.macro
    def prep_mm(qw, sc, ws, swf, j0, b0, nbk):  # ws[p, bb, w] = int8x16 [row 2p: word w's low nibbles, high
        # nibbles; row 2p+1: the same] - 8; swf[p, bb] = [s(2p), s(2p), s(2p+1), s(2p+1)]
        wt = T.alloc_local((4,), "uint32")
        for p in range(SB // 2):
            for bb in range(nbk):
                for w in range(4):
                    for r, h in T.grid(2, 2):
                        wt[r * 2 + h] = T.bitwise_and(T.shift_right(word(qw, row(j0 + 2 * p + r), (b0 + bb) * 4 + w),
                                                                    T.uint32(4 * h)), T.uint32(NIB))
                    ws[T.Ramp(((p * KB + bb) * 4 + w) * 16, 1, 16)] = T.reinterpret(
                        "int8x16", wt[T.Ramp(0, 1, 4)]) - T.Broadcast(T.int8(8), 16)
                for r, h in T.grid(2, 2):
                    swf[(p * KB + bb) * 4 + r * 2 + h] = T.Cast("float32", sc[row(j0 + 2 * p + r), (b0 + bb) // bpg])

    @T.macro
    def mm_tile(xp, xdp, ws, swf, accm, p0, b0, nbk, q0):  # token pairs p0 .. p0+MM_TP x row pairs q0 .. q0+MM_RP
        # accm[pair, row pair] = float32x4 [r0 t0, r0 t1, r1 t0, r1 t1]
        acc = T.alloc_local((MM_TP * MM_RP * 4,), "float32")
        ai = T.alloc_local((MM_TP * MM_RP * 4,), "int32")
        for tp in T.unroll(MM_TP):
            for rp in T.unroll(MM_RP):
                acc[T.Ramp((tp * MM_RP + rp) * 4, 1, 4)] = accm[T.Ramp(((p0 + tp) * (SB // 2) + q0 + rp) * 4, 1, 4)]
        for bb in range(nbk):
            for e in T.vectorized(MM_TP * MM_RP * 4):
                ai[e] = 0
            for w in range(4):
                for tp in T.unroll(MM_TP):
                    for rp in T.unroll(MM_RP):
                        ai[T.Ramp((tp * MM_RP + rp) * 4, 1, 4)] = smmla(
                            ai[T.Ramp((tp * MM_RP + rp) * 4, 1, 4)],
                            ws[T.Ramp((((q0 + rp) * KB + bb) * 4 + w) * 16, 1, 16)],
                            xp[p0 + tp, T.Ramp(((b0 + bb) * 4 + w) * 16, 1, 16)])
            for tp in T.unroll(MM_TP):
                for rp in T.unroll(MM_RP):
                    acc[T.Ramp((tp * MM_RP + rp) * 4, 1, 4)] = acc[T.Ramp((tp * MM_RP + rp) * 4, 1, 4)] + T.Cast(
                        "float32x4", ai[T.Ramp((tp * MM_RP + rp) * 4, 1, 4)]) * (
                        swf[T.Ramp(((q0 + rp) * KB + bb) * 4, 1, 4)] * xdp[p0 + tp, T.Ramp((b0 + bb) * 4, 1, 4)])
        for tp in T.unroll(MM_TP):
            for rp in T.unroll(MM_RP):
                accm[T.Ramp(((p0 + tp) * (SB // 2) + q0 + rp) * 4, 1, 4)] = acc[T.Ramp((tp * MM_RP + rp) * 4, 1, 4)]

    @T.macro
    def prefill_rows(x, qw, sc, xq, xd, xp, xdp, r_, y, i0, cnt, j0, add):  # tokens i0 .. i0+cnt x rows j0 .. j0+SB
        ws = T.alloc_local((SB * KB * QBLOCK,), "int8")  # prepared weights of one chunk (4 KB)
        swf = T.alloc_local((SB * KB * (2 if mm else 1),), "float32")
        accs = T.alloc_local((TOKS * SB,), "float32")  # [tokens, rows] (i8mm: [pairs, row pairs, 4 lanes])
        for e in range(cnt * SB):
            accs[e] = T.float32(0)
        for c in range(nkc + int(rem > 0)):
            if mm:
                prep_mm(qw, sc, ws, swf, j0, c * KB, T.min(KB, nb - c * KB))
                for tl in range(cnt // step):
                    for q in range(SB // 2 // MM_RP):
                        mm_tile(xp, xdp, ws, swf, accs, tl * MM_TP, c * KB, T.min(KB, nb - c * KB), q * MM_RP)
            else:
                prep_dot(qw, sc, ws, swf, j0, c * KB, T.min(KB, nb - c * KB))
                for tl in range(cnt // step):
                    for g in range(SB // 4 // DOT_RV):
                        dot_tile(xq, xd, ws, swf, accs, tl * DOT_TOK, c * KB, T.min(KB, nb - c * KB), g * DOT_RV)
        for e in range(cnt):
            for r in range(SB):
                if mm:
                    finish(x, qw, sc, r_, y, i0 + e, row(j0 + r),
                           accs[((e // 2) * (SB // 2) + r // 2) * 4 + (r % 2) * 2 + e % 2], add)
                else:
                    finish(x, qw, sc, r_, y, i0 + e, row(j0 + r), accs[e * SB + r], add)

    @T.macro
    def body(x, qw, sc, r_, y, n, add):
        xq = T.alloc_buffer((TOKS if not mm else 1, nbw * QBLOCK), "int8")  # dotprod prefill: [tokens, K] q
        xd = T.alloc_buffer((TOKS if not mm else 1, nbw), "float32")  # [tokens, blocks] dx
        xp = T.alloc_buffer((TOKS // 2 if mm else 1, nbw * 64), "int8")  # i8mm: [pairs, block, word, 16] q
        xdp = T.alloc_buffer((TOKS // 2 if mm else 1, nbw * 4), "float32")  # i8mm: [pairs, block, 4] dx
        xqd = T.alloc_buffer((step - 1, nbw * QBLOCK), "int8")  # decode tokens: [tokens, K] q (half-major)
        xsd = T.alloc_buffer((step - 1, nbw), "int32")  # [tokens, blocks] -2 sum(q)
        xdd = T.alloc_buffer((step - 1, nbw), "float32")  # [tokens, blocks] dx
        npre = n // step * step  # tokens of full prefill tiles
        for pc in range((npre + TOKS - 1) // TOKS):
            if mm:
                quantize_pairs(x, xp, xdp, pc * TOKS, T.min(TOKS, npre - pc * TOKS) // 2)
            else:
                quantize_tokens(x, xq, xd, pc * TOKS, T.min(TOKS, npre - pc * TOKS))
            for blk in T.parallel(blocks):
                prefill_rows(x, qw, sc, xq, xd, xp, xdp, r_, y, pc * TOKS, T.min(TOKS, npre - pc * TOKS), blk * SB,
                             add)
        for t in range(n - npre):
            quantize_half(x, xqd, xsd, xdd, npre + t, t)
        for blk in T.parallel(blocks):
            for t in range(n - npre):
                for jr in range(SB // DEC_ROWS):
                    decode_tile(x, qw, sc, xqd, xsd, xdd, r_, y, npre + t, t, blk * SB + jr * DEC_ROWS, add)

    assert rows_per_pass <= SB and SB % rows_per_pass == 0 and TOKS % step == 0
    return q4_linear_func(k_in, n_out, group, residual, body, rows4)
