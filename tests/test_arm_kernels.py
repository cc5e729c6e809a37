"""ARM64 int4 x int8 kernels (export/compiler/arm_q4.py: SDOT and SMMLA tiles) run under qemu-user against NumPy,
and the proof that the three ARM kernel sets of an export differ in the instructions their names promise."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tvm

from mcpm.export.compiler import arm_q4
from mcpm.export.compiler import quant_kernels as qk
from mcpm.quantize.activations import fake_quant_int8_np
from mcpm.quantize.packing import dequantize, quantize
from mcpm.quantize.schemes import get_scheme
from mcpm.runtime.build import C_DIR
from mcpm.runtime.cross import CROSS_CC, missing_cross_tools, run_qemu

HARNESS = Path(__file__).parent / "native" / "kernel_run.c"
MATTR = {"neon": ["+neon"], "dotprod": ["+neon", "+v8.2a", "+dotprod"],
         "i8mm": ["+neon", "+v8.2a", "+dotprod", "+i8mm"]}
KERNEL_TOL = 1e-5  # max |kernel - NumPy float64| / max |y|: fp32 accumulation order only
# tokens: decode (1), decode tiles after full prefill tiles (3, 5, 7), tile multiples, two passes of TOKS (130)
TOKENS = (1, 2, 3, 4, 5, 7, 8, 67, 130)


def arm_target(kset: str) -> dict:
    return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": MATTR[kset]}


def build_kernel(kset: str, k: int, n_out: int, residual: bool, out: Path, rows4: bool = False) -> Path:
    """linear_q4(act=int8) constructed and compiled under the kernel set's target, linked into kernel_run."""
    with tvm.target.Target(arm_target(kset)):
        func = qk.linear_q4(k, n_out, 32, residual, act="int8", rows4=rows4)
    mod = tvm.IRModule({"f": func.with_attr("global_symbol", "f")})
    obj = out / f"{kset}-{k}-{n_out}-{int(residual)}-{int(rows4)}.o"
    tvm.compile(mod, target=tvm.target.Target(arm_target(kset))).mod.write_to_file(str(obj))
    exe = obj.with_suffix("")
    res = subprocess.run([CROSS_CC, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(C_DIR), "-o",
                          str(exe), str(HARNESS), str(obj), "-lm"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return exe


def a8_inputs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Activations of both signs whose magnitudes differ per block, one all-zero block, ties-prone values."""
    nb = -(-k // 32)
    mags = np.float32(10.0) ** rng.uniform(-2, 2, size=(n, nb)).astype(np.float32)
    x = (rng.standard_normal((n, nb * 32)).astype(np.float32) * np.repeat(mags, 32, axis=1))[:, :k]
    if k >= 64:
        x[:, 32:64] = 0.0
    x[0, : min(32, k)] = (np.arange(-16, 16, dtype=np.float32) + np.float32(0.5))[: min(32, k)]
    return np.ascontiguousarray(x, dtype=np.float32)


@pytest.mark.skipif(bool(missing_cross_tools()), reason="ARM64 cross tools missing (make setup installs them)")
@pytest.mark.parametrize("kset", ["dotprod", "i8mm", "neon"])
@pytest.mark.parametrize(("k", "n_out", "residual", "rows4"), [
    (64, 48, False, False), (96, 40, True, False), (304, 20, False, False), (288, 33, True, False),
    (16, 16, False, False), (304, 20, True, True), (96, 44, False, True), (16, 8, False, True)])
def test_a8_kernel_sets_match_numpy_under_qemu(kset: str, k: int, n_out: int, residual: bool, rows4: bool,
                                               tmp_path: Path) -> None:
    """K with a float tail (304 = 9 blocks + 16; 16 = no full block), N not a multiple of 16 (33, 20, 44), 9 weight
    blocks (a partial prepared chunk), token counts that leave decode tiles after the prefill tiles; rows4: the
    weights in layout.to_rows4's order (what Android and Linux ARM64 exports store), N % 8 != 0 (a decode tile
    past the last group) included."""
    from mcpm.export.compiler.layout import to_rows4

    exe = build_kernel(kset, k, n_out, residual, tmp_path, rows4)
    rng = np.random.default_rng(k * 1000 + n_out)
    w = (rng.standard_normal((n_out, k)) * rng.uniform(0.01, 0.5, size=(n_out, 1))).astype(np.float32)
    packed = quantize(w, get_scheme("q4g32-a8"))
    qw, sc = packed.tensors["qweight"], packed.tensors["scales"]
    if rows4:
        qw = to_rows4(qw)
    wd = dequantize(packed).astype(np.float64)  # [N, K]
    qw.tofile(tmp_path / "qw.bin")
    sc.tofile(tmp_path / "sc.bin")
    for n in TOKENS:
        x = a8_inputs(rng, n, k)
        r = rng.standard_normal((n, n_out)).astype(np.float32)
        x.tofile(tmp_path / "x.bin")
        r.tofile(tmp_path / "r.bin")
        args = [f"f32:{n},{k}:{tmp_path / 'x.bin'}", f"u32:{n_out},{qw.shape[1]}:{tmp_path / 'qw.bin'}",
                f"f16:{n_out},{sc.shape[1]}:{tmp_path / 'sc.bin'}",
                *([f"f32:{n},{n_out}:{tmp_path / 'r.bin'}"] if residual else []),
                f"out:f32:{n},{n_out}:{tmp_path / 'y.bin'}"]
        res = run_qemu(exe, args, timeout=120)
        assert res.returncode == 0, res.stderr
        y = np.fromfile(tmp_path / "y.bin", dtype=np.float32).reshape(n, n_out)
        expected = fake_quant_int8_np(x).astype(np.float64) @ wd.T + (r if residual else 0.0)
        err = np.abs(y - expected).max() / np.abs(expected).max()
        assert err < KERNEL_TOL, (kset, k, n_out, residual, n, err)


def test_default_scheme_per_target() -> None:
    from mcpm.quantize.schemes import default_scheme

    assert [default_scheme(p) for p in ("android", "ios", "linux", "host")] == ["q4g32-a8"] * 3 + ["q4g32"]
    assert default_scheme("android", "gpu") == "q4g32"  # GPU kernels take float activations


def test_rows4_order() -> None:
    """layout.to_rows4 puts element (j, w) at ((j // 4) * W + w) * 4 + j % 4 (the kernels' index), bit-exact; the
    predicate picks int4-a8 weights with N % 4 == 0 of ARM CPU exports, never the embedding."""
    from mcpm.export.compiler.layout import to_rows4, uses_rows4
    from mcpm.export.compiler.spec import CompileSpec
    from mcpm.quantize.recipe import Recipe

    n, w = 12, 5
    q = np.arange(n * w, dtype=np.uint32).reshape(n, w) * np.uint32(2654435761)
    flat = to_rows4(q).reshape(-1)
    assert to_rows4(q).shape == (n, w)
    for j in range(n):
        for c in range(w):
            assert flat[((j // 4) * w + c) * 4 + j % 4] == q[j, c]
    with pytest.raises(ValueError, match="N % 4"):
        to_rows4(q[:6])
    arm = CompileSpec(max_ctx=64, chunk=16, recipe=Recipe.parse("q4g32-a8", ()), q4_rows4=True)
    assert uses_rows4("layers.0.wqkv", 48, arm) and uses_rows4("lm_head", 48, arm)
    assert not uses_rows4("layers.0.wqkv", 46, arm) and not uses_rows4("embed", 48, arm)
    assert not uses_rows4("layers.0.wqkv", 48, CompileSpec(max_ctx=64, chunk=16, recipe=Recipe.parse("q4g32-a8", ())))
    assert not uses_rows4("layers.0.wqkv", 48, CompileSpec(max_ctx=64, chunk=16, recipe=Recipe.parse("q4g32", ()),
                                                           q4_rows4=True))


def test_dot_isa_follows_the_target() -> None:
    for kset, want in (("neon", None), ("dotprod", "dotprod"), ("i8mm", "i8mm")):
        with tvm.target.Target(arm_target(kset)):
            assert qk.arm_dot_isa() == want
    with tvm.target.Target({"kind": "llvm"}):
        assert qk.arm_dot_isa() is None
    with pytest.raises(ValueError, match="isa must be one of"):
        arm_q4.linear_q4_a8(64, 16, 32, False, "sve")


# ---------------------------------------------------------------- the kernel sets of an export differ

def histogram(obj: Path, symbol_part: str) -> Counter[str]:
    """Mnemonics of the functions whose name contains symbol_part (llvm-objdump, with every feature decoded)."""
    text = subprocess.run(["llvm-objdump", "-d", "--no-show-raw-insn", "--mattr=+dotprod,+i8mm,+fullfp16",
                           str(obj)], capture_output=True, text=True, check=True).stdout
    counts: Counter[str] = Counter()
    inside = False
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            inside = symbol_part in head.group(1)
        elif inside and (m := re.match(r"^\s+[0-9a-f]+:\s+(\S+)", line)):
            counts[m.group(1)] += 1
    return counts


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("llvm-objdump", "clang", "javac", "aapt", "apksigner")),
                    reason="llvm-objdump or the Android build tools missing (make setup installs them)")
def test_android_kernel_sets_use_their_instructions(default_android_out: tuple[Path, str]) -> None:
    """q4g32-a8 for Android: the int4 linear kernels of kernels-dotprod.o use SDOT, kernels-i8mm.o SMMLA, and
    the NEON fallback neither; the three objects differ."""
    b = default_android_out[0] / "bundle"  # the ARM default scheme: a8
    assert json.loads((b / "mcpm-config.json").read_text())["quantization"] == "q4g32-a8"
    sets = {"neon": histogram(b / "kernels.o", "linear_q4"), "dotprod": histogram(b / "kernels-dotprod.o", "linear_q4"),
            "i8mm": histogram(b / "kernels-i8mm.o", "linear_q4")}
    assert sets["dotprod"]["sdot"] > 0 and sets["dotprod"]["smmla"] == 0
    assert sets["i8mm"]["smmla"] > 0 and sets["i8mm"]["sdot"] > 0  # decode tiles stay SDOT
    assert sets["neon"]["sdot"] == 0 == sets["neon"]["smmla"]
    assert sets["neon"] != sets["dotprod"] != sets["i8mm"]
