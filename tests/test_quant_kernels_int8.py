"""linear_q4's integer decode tiles (quant_kernels.decode_isa) against a NumPy model of the same arithmetic.

Decode tokens (n < 4, and the n % 4 last tokens of a prefill) quantize x per block of 32 inputs to int16
(dx = max|x| / 32767, q = rint(x / dx), ties to even) and take exact integer dots with the nibbles; the model
below does the same in float64, so the kernel may only differ by fp32 rounding of its accumulation (the int16
quantization itself moves y by ~1e-5 relative to the float product, ten times the tolerance used here). Prefill
tokens keep float activations, except on "x86-avx2", whose prefill tiles quantize them the same way. Each path
is compiled for this machine: "x86-avx2" where the CPU has AVX2, "arm64" (target-independent LLVM IR) and "f32"
everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.target import codegen

from mcpm.export.compiler import quant_kernels as qk

HOST = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}
ARM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
HOST_AVX2 = codegen.target_has_features("avx2", tvm.target.Target(HOST))
PATHS = {"x86-avx2": HOST, "arm64": ARM, "f32": None}  # path -> the target it is constructed under
TOL = 2e-6  # |kernel - model| / max|model|


def build(isa: str, k: int, n_out: int, group: int, residual: bool = False):
    """linear_q4 constructed for path ``isa`` and compiled for this machine."""
    if isa == "x86-avx2" and not HOST_AVX2:
        pytest.skip("this CPU has no AVX2")
    if PATHS[isa] is None:
        func = qk.linear_q4(k, n_out, group, residual)
    else:
        with tvm.target.Target(PATHS[isa]):
            assert qk.decode_isa(group) == isa
            func = qk.linear_q4(k, n_out, group, residual)
    mod = tvm.IRModule({"f": func.with_attr("global_symbol", "f")})
    return tvm.compile(mod, target=tvm.target.Target(HOST))["f"]


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int64 [n, K // 32, 32], dx float32 [n, K // 32]): the kernel's activation quantization, in input order."""
    nb = x.shape[1] // qk.QBLOCK
    xb = x[:, : nb * qk.QBLOCK].reshape(x.shape[0], nb, qk.QBLOCK).astype(np.float32)
    dx = (np.abs(xb).max(axis=2) / np.float32(qk.QMAX)).astype(np.float32)
    inv = np.divide(np.float32(1), dx, out=np.zeros_like(dx), where=dx > 0).astype(np.float32)
    return np.rint(xb * inv[:, :, None]).astype(np.int64), dx


def model(x: np.ndarray, qw: np.ndarray, sc: np.ndarray, k: int, group: int, decode: bool) -> np.ndarray:
    """y [n, N] in float64: int16 activations per 32-block when ``decode`` (the inputs after the last full block
    in float), else float activations."""
    n_out = qw.shape[0]
    nib = ((qw[:, :, None] >> (4 * np.arange(8, dtype=np.uint32))) & 15).reshape(n_out, -1).astype(np.int64)
    w = (nib - 8).astype(np.float64) * np.repeat(sc.astype(np.float64), group, axis=1)
    if not decode:
        return x.astype(np.float64) @ w[:, :k].T
    nb = k // qk.QBLOCK
    q, dx = quantize_rows(x)
    dots = np.einsum("jbk,ibk->ijb", (nib[:, : nb * qk.QBLOCK] - 8).reshape(n_out, nb, qk.QBLOCK), q)  # exact
    s = sc.astype(np.float64)[:, np.arange(nb) * qk.QBLOCK // group]  # [N, nb]
    y = (dots * s[None] * dx.astype(np.float64)[:, None, :]).sum(axis=2)
    return y + x[:, nb * qk.QBLOCK :].astype(np.float64) @ w[:, nb * qk.QBLOCK : k].T


def weights(rng: np.random.Generator, k: int, n_out: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    kp = -(-k // group) * group
    qw = rng.integers(0, 2**32, size=(n_out, kp // 8), dtype=np.uint32)
    sc = (rng.standard_normal((n_out, kp // group)) * 0.01).astype(np.float16)
    return qw, sc


def run(f, x: np.ndarray, qw: np.ndarray, sc: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros((x.shape[0], qw.shape[0]), np.float32), dev)
    args = [tvm.runtime.tensor(a, dev) for a in (x, qw, sc)] + ([tvm.runtime.tensor(r, dev)] if r is not None else [])
    f(*args, y)
    return y.numpy()


def test_decode_isa_follows_the_current_target() -> None:
    assert qk.decode_isa(32) == "f32"  # no current target: the float tile (what build_module gets without one)
    with tvm.target.Target(ARM):
        assert qk.decode_isa(32) == "arm64" and qk.decode_isa(128) == "arm64" and qk.decode_isa(16) == "f32"
    with tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}):
        assert qk.decode_isa(32) == "x86-avx2"
    with tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}):
        assert qk.decode_isa(32) == "f32"  # no AVX2


@pytest.mark.parametrize("isa", list(PATHS))
@pytest.mark.parametrize(("k", "n_out", "group"), [(100, 37, 32), (300, 21, 128), (20, 7, 32)])
def test_decode_and_prefill_tokens_match_the_model(isa: str, k: int, n_out: int, group: int) -> None:
    """n = 1 and 3 (all decode), 6 (4 prefill + 2 decode); K with a partial last block, N not a multiple of 16."""
    rng = np.random.default_rng(k + n_out)
    qw, sc = weights(rng, k, n_out, group)
    f = build(isa, k, n_out, group)
    for n in (1, 3, 6):
        x = rng.standard_normal((n, k)).astype(np.float32)
        x[0, :3] *= 50  # one block with a large outlier
        x[-1, : min(k, 32)] = 0  # an all-zero block (dx = 0)
        got = run(f, x, qw, sc)
        p = n // 4 * 4
        want = np.concatenate([model(x[:p], qw, sc, k, group, isa == "x86-avx2"),
                               model(x[p:], qw, sc, k, group, isa != "f32")])
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= TOL * scale, (n, np.abs(got - want).max() / scale)
        if isa != "f32":  # int16 activations stay close to the float product
            exact = model(x, qw, sc, k, group, False)
            assert np.abs(got - exact).max() <= 2e-4 * scale


@pytest.mark.parametrize("isa", ["x86-avx2", "arm64"])
def test_quantization_rounds_half_to_even_and_residual_is_added(isa: str) -> None:
    """x = (m + 0.5) * 2^-10 with dx = 2^-10 exactly: every q is a tie (rounding half away from zero instead
    would move y by ~1e-4 relative)."""
    k, n_out, group = 64, 16, 32
    rng = np.random.default_rng(7)
    qw, sc = weights(rng, k, n_out, group)
    m = rng.integers(-2000, 2000, size=(1, k)).astype(np.float32)
    x = ((m + 0.5) * 2.0**-10).astype(np.float32)
    x[0, 0::32] = qk.QMAX * 2.0**-10  # each block's max: dx = 2^-10
    r = rng.standard_normal((1, n_out)).astype(np.float32)
    got = run(build(isa, k, n_out, group, residual=True), x, qw, sc, r) - r
    want = model(x, qw, sc, k, group, True)
    assert np.abs(got - want).max() <= TOL * np.abs(want).max()


@pytest.mark.parametrize(("mattr", "ops"), [(["+neon"], ("smull", "smlal")),
                                            (["+neon", "+v8.2a", "+dotprod", "+i8mm"], ("smull", "smlal"))])
def test_arm64_path_compiles_for_the_arm64_kernel_sets(mattr: list[str], ops: tuple[str, ...]) -> None:
    tgt = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": mattr}
    with tvm.target.Target(ARM):
        func = qk.linear_q4(256, 32, 32)
    asm = tvm.compile(tvm.IRModule({"f": func.with_attr("global_symbol", "f")}),
                      target=tvm.target.Target(tgt)).mod.inspect_source("asm")
    assert all(op in asm for op in ops)


def test_x86_path_uses_vpmaddwd() -> None:
    tgt = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
    with tvm.target.Target(tgt):
        func = qk.linear_q4(256, 32, 32)
    asm = tvm.compile(tvm.IRModule({"f": func.with_attr("global_symbol", "f")}),
                      target=tvm.target.Target(tgt)).mod.inspect_source("asm")
    assert "vpmaddwd" in asm and "vpmulhuw" in asm
