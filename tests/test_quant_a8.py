"""The ``q4g32-a8`` scheme: q4g32 weights (the same bytes) with activations quantized to int8 per 32 inputs at run
time (docs/quantization.md, "Activation quantization").

(1) fake_quant_int8 (torch) and its NumPy twin against a scalar implementation written from the formula;
(2) the scheme packs bit-identically to q4g32; (3) the reference (activation_quantized / reference_for) hooks
exactly the a8 linears and the logits matmul; (4) linear_q4(act="int8") against NumPy; (5) C runtime greedy
parity with the a8 reference on the default model; (6) the one-line refusals (--device gpu, MoE experts).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm.target import codegen

from mcpm.errors import McpmError
from mcpm.export.compiler import quant_kernels as qk
from mcpm.export.compiler.runner import HOST_TARGET
from mcpm.export.loading import load_model
from mcpm.quantize.activations import fake_quant_int8, fake_quant_int8_np, quantize_int8_np
from mcpm.quantize.apply import activation_quantized, dequantized_copy, reference_for
from mcpm.quantize.packing import dequantize, quantize
from mcpm.quantize.recipe import Recipe
from mcpm.quantize.schemes import DEFAULT_SCHEME, SCHEMES, get_scheme
from tests.conftest import tiny_minicpm, tiny_minicpm3, write_tiny

# ---------------------------------------------------------------- (1) the activation quantization


def scalar_fake_quant(row: list[float]) -> list[float]:
    """The formula of docs/quantization.md, one element at a time (np.float32 scalars, Python's round = half even)."""
    k = len(row)
    out = [np.float32(v) for v in row]
    for b in range(k // 32):
        amax = np.float32(0)
        for i in range(32 * b, 32 * b + 32):
            amax = max(amax, np.float32(abs(np.float32(row[i]))))
        dx = np.float32(amax / np.float32(127))
        inv = np.float32(np.float32(1) / dx) if dx > 0 else np.float32(0)
        for i in range(32 * b, 32 * b + 32):
            q = min(max(round(float(np.float32(np.float32(row[i]) * inv))), -127), 127)
            out[i] = np.float32(np.float32(q) * dx)
    return out


def tricky_rows(k: int) -> np.ndarray:
    """Rows with ties at .5 (dx = 1 and dx = 0.5), a zero block, blocks whose largest magnitude is negative,
    all-negative and random blocks, and a float tail when K % 32 != 0."""
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((6, k)).astype(np.float32) * np.float32(3)
    nb = k // 32
    ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5, 4.5] + [0.0] * 21 + [127.0], np.float32)
    if nb >= 1:
        rows[0, :32] = ties  # amax 127: dx = 1, x * inv = x exactly -> every .5 is a tie
        rows[1, :32] = ties / np.float32(2)  # amax 63.5: dx = 0.5, inv = 2 -> the same ties
        rows[3, :32] = -np.abs(rows[3, :32])  # all negative
    if nb >= 2:
        rows[0, 32:64] = 0.0  # zero block: dx = 0, inv = 0, x' = 0
        rows[2, 32:64] *= np.float32(1e-3)  # small magnitudes next to large ones
        rows[2, 40] = np.float32(-5.0)  # the block's largest magnitude is negative
    if nb >= 3:
        rows[4, 64:96] = -np.abs(rows[4, 64:96])
        rows[4, 70] = np.float32(-100.0)
    return rows


@pytest.mark.parametrize("k", [32, 64, 80, 96, 100, 17])
def test_fake_quant_matches_the_scalar_formula(k: int) -> None:
    x = tricky_rows(k)
    expected = np.array([scalar_fake_quant(list(r)) for r in x], np.float32)
    got_np = fake_quant_int8_np(x)
    got_t = fake_quant_int8(torch.from_numpy(x)).numpy()
    assert got_np.dtype == np.float32 and got_t.dtype == np.float32
    assert np.array_equal(got_np.view(np.uint32), expected.view(np.uint32))  # bit-exact (signs of zero too)
    assert np.array_equal(got_t.view(np.uint32), expected.view(np.uint32))
    nb = k // 32
    assert np.array_equal(got_np[:, nb * 32 :], x[:, nb * 32 :])  # the K % 32 tail stays float
    if nb >= 1:
        assert np.array_equal(got_np[0, :10], [0, 2, 2, 0, -2, -2, 126, -126, 4, 4])  # ties to even
        assert np.array_equal(got_np[1, :10], np.array([0, 2, 2, 0, -2, -2, 126, -126, 4, 4], np.float32) / 2)
    if nb >= 2:
        assert not got_np[0, 32:64].any()


def test_fake_quant_shapes_dtypes_and_int8_codes() -> None:
    x = torch.from_numpy(tricky_rows(96)).reshape(2, 3, 96) * 7
    y = fake_quant_int8(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    assert torch.equal(y, fake_quant_int8(x.reshape(6, 96)).reshape(2, 3, 96))  # rows are independent
    assert fake_quant_int8(x.bfloat16()).dtype == torch.bfloat16
    assert fake_quant_int8_np(x.numpy().astype(np.float64)).dtype == np.float64
    q, dx = quantize_int8_np(x.numpy())
    assert q.dtype == np.int8 and q.shape == (2, 3, 96) and dx.dtype == np.float32 and dx.shape == (2, 3, 3)
    assert np.abs(q).max() == 127 and q.min() >= -127
    back = (q.reshape(2, 3, 3, 32).astype(np.float32) * dx[..., None]).reshape(2, 3, 96)
    assert np.array_equal(back, fake_quant_int8_np(x.numpy()))
    small = torch.randn(4, 31)
    assert torch.equal(fake_quant_int8(small), small)  # no full block: unchanged


# ---------------------------------------------------------------- (2) the scheme


def test_scheme_is_q4g32_with_int8_activations_and_packs_the_same_bytes() -> None:
    a8, base = get_scheme("q4g32-a8"), get_scheme("q4g32")
    assert DEFAULT_SCHEME == "q4g32" and a8.activations == "int8"
    assert all(s.activations == "float" for name, s in SCHEMES.items() if name != "q4g32-a8")
    assert (a8.kind, a8.group_size, a8.float_dtype) == (base.kind, base.group_size, base.float_dtype)
    assert a8.bits_per_weight(80) == base.bits_per_weight(80) and a8.packed_bytes(7, 80) == base.packed_bytes(7, 80)
    w = (np.random.default_rng(0).standard_normal((9, 80)) * 0.05).astype(np.float32)
    pa, pb = quantize(w, a8), quantize(w, base)
    assert pa.tensors.keys() == pb.tensors.keys()
    for key in pa.tensors:
        assert pa.tensors[key].tobytes() == pb.tensors[key].tobytes(), key


# ---------------------------------------------------------------- (3) the reference


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # hidden 80: a 16-input float tail in every hidden -> linear; intermediate 96: three blocks
    return write_tiny(tmp_path_factory.mktemp("a8"), tiny_minicpm(hidden_size=80, intermediate_size=96), seed=8)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> torch.nn.Module:
    return load_model(tiny_dir, tokenizer=False).model


IDS = torch.randint(3, 4096, (1, 9), generator=torch.Generator().manual_seed(4))


def record_linear_inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Registers a pre-hook on every nn.Linear that records its input as the module sees it at that point (after
    the pre-hooks registered before this one); filled by the next forward."""
    seen: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0].clone()))
    return seen


def linear_inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model)
    seen = record_linear_inputs(model)
    with torch.no_grad():
        model(IDS)
    return seen


def test_reference_for_quantizes_activations_only_for_a8(tiny: torch.nn.Module) -> None:
    with torch.no_grad():
        plain = dequantized_copy(tiny, Recipe.parse("q4g32"))(IDS)
        assert torch.equal(reference_for(tiny, Recipe.parse("q4g32"))(IDS), plain)  # no a8 weight: no hooks
        a8 = reference_for(tiny, Recipe.parse("q4g32-a8"))(IDS)
    assert (a8 - plain).abs().max() > 1e-6  # not a no-op
    assert (a8 - plain).abs().max() < 0.1 * plain.abs().max()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in tiny.modules())  # copies only


def test_minicpm3_linears_are_hooked_too(tmp_path: Path) -> None:
    model = load_model(write_tiny(tmp_path / "m3", tiny_minicpm3(hidden_size=96), seed=2), tokenizer=False).model
    recipe = Recipe.parse("q4g32-a8")
    quant = activation_quantized(model, recipe)
    hooked = [n for n, m in quant.named_modules() if isinstance(m, torch.nn.Linear) and m._forward_pre_hooks]
    assert len(hooked) == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 3 * 8  # MLA 5 + MLP 3
    with torch.no_grad():
        assert (quant(IDS) - model(IDS)).abs().max() > 1e-6


@pytest.mark.parametrize("rules", [["layers.1.*=q4g32-a8"], ["layers.*.mlp.w_down=q4g32-a8"], []])
def test_hooks_exactly_the_a8_linears(rules: list[str], tiny: torch.nn.Module) -> None:
    recipe = Recipe.parse("q4g32", rules)
    model = copy.deepcopy(tiny)
    raw = record_linear_inputs(model)  # before the a8 hooks
    activation_quantized(model, recipe, inplace=True)
    seen = record_linear_inputs(model)  # after them
    with torch.no_grad():
        model(IDS)
    unhooked = linear_inputs(tiny)
    assert raw.keys() == seen.keys() == unhooked.keys() and len(raw) == 3 * 7
    changed = 0
    for name in raw:
        if recipe.scheme_for(f"{name}.weight", 2).activations == "int8":
            assert torch.equal(seen[name], fake_quant_int8(raw[name])), name
            assert not torch.equal(seen[name], raw[name]), name
            changed += 1
        else:
            assert torch.equal(seen[name], raw[name]), name
    assert changed == {0: 0, 1: 7 if "layers.1" in "".join(rules) else 3}[len(rules)]
    for name in raw:  # in execution order (recorded in the forward): nothing moves up to the first a8 linear
        assert torch.equal(raw[name], unhooked[name]), name
        if recipe.scheme_for(f"{name}.weight", 2).activations == "int8":
            break


@pytest.mark.parametrize("tied", [True, False])
def test_logits_matmul_input_is_quantized(tied: bool, tiny: torch.nn.Module, tmp_path: Path) -> None:
    model = tiny
    if not tied:
        model = load_model(write_tiny(tmp_path / "u", tiny_minicpm(hidden_size=80, intermediate_size=96,
                                                                   tie_word_embeddings=False), seed=9),
                           tokenizer=False).model
    head = "embed" if tied else "lm_head"
    normed: list[torch.Tensor] = []
    handle = model.final_norm.register_forward_hook(lambda m, a, out: normed.append(out))
    with torch.no_grad():
        plain = model(IDS)
        handle.remove()
        quant = activation_quantized(model, Recipe.parse("q4g32", [f"{head}=q4g32-a8"]))
        assert linear_inputs(quant).keys() == linear_inputs(model).keys()
        got = quant(IDS)
        weight = model.embed.weight if tied else model.lm_head.weight
        x = normed[0] / model.cfg.logit_divisor
        assert torch.equal(plain, F.linear(x, weight))
        assert torch.equal(got, F.linear(fake_quant_int8(x), weight))
    assert (got - plain).abs().max() > 1e-6
    other = "lm_head" if tied else "embed"  # the other weight's rule never touches the logits
    with torch.no_grad():
        assert torch.equal(activation_quantized(model, Recipe.parse("q4g32", [f"{other}=q4g32-a8"]))(IDS), plain)


# ---------------------------------------------------------------- (4) the kernel

HOST = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}
HOST_AVX2 = codegen.target_has_features("avx2", tvm.target.Target(HOST))
# path -> target linear_q4 is constructed under (quant_kernels.decode_isa); each is compiled for this machine
PATHS = {"x86-avx2": HOST, "arm64": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
         "f32": HOST_TARGET}
KERNEL_TOL = 1e-5  # max |kernel - NumPy float64| / max |y|: fp32 accumulation order only (measured <= 5e-7)
TOKENS = (1, 2, 3, 4, 5, 7, 8, 64, 67)


def build_a8(isa: str, k: int, n_out: int, residual: bool):
    if isa == "x86-avx2" and not HOST_AVX2:
        pytest.skip("this CPU has no AVX2")
    with tvm.target.Target(PATHS[isa]):
        assert qk.decode_isa(32) == isa
        func = qk.linear_q4(k, n_out, 32, residual, act="int8")
    mod = tvm.IRModule({"f": func.with_attr("global_symbol", "f")})
    return tvm.compile(mod, target=tvm.target.Target(HOST))["f"]


def a8_inputs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Activations of both signs whose magnitudes differ per block, one all-zero block, ties-prone values."""
    nb = -(-k // 32)
    mags = np.float32(10.0) ** rng.uniform(-2, 2, size=(n, nb)).astype(np.float32)
    x = (rng.standard_normal((n, nb * 32)).astype(np.float32) * np.repeat(mags, 32, axis=1))[:, :k]
    x[:, 32:64] = 0.0  # an all-zero block
    x[0, :32] = np.arange(-16, 16, dtype=np.float32) + np.float32(0.5)  # amax 16.5
    return np.ascontiguousarray(x, dtype=np.float32)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize(("k", "n_out"), [(64, 48), (96, 40), (80, 33), (304, 20)])  # 304: 9 blocks + 16 floats
@pytest.mark.parametrize("isa", list(PATHS))
def test_linear_q4_int8_activations_match_numpy(isa: str, k: int, n_out: int, residual: bool) -> None:
    f = build_a8(isa, k, n_out, residual)
    rng = np.random.default_rng(k * 1000 + n_out)
    w = (rng.standard_normal((n_out, k)) * rng.uniform(0.01, 0.5, size=(n_out, 1))).astype(np.float32)
    packed = quantize(w, get_scheme("q4g32-a8"))  # scales != 1, per row
    qw, sc = packed.tensors["qweight"], packed.tensors["scales"]
    wd = dequantize(packed).astype(np.float64)  # [N, K]
    dev = tvm.cpu()
    for n in TOKENS:
        x = a8_inputs(rng, n, k)
        r = rng.standard_normal((n, n_out)).astype(np.float32)
        expected = fake_quant_int8_np(x).astype(np.float64) @ wd.T + (r if residual else 0.0)
        y = tvm.runtime.tensor(np.zeros((n, n_out), np.float32), dev)
        args = [tvm.runtime.tensor(a, dev) for a in (x, qw, sc, *((r,) if residual else ()))]
        f(*args, y)
        err = np.abs(y.numpy() - expected).max() / np.abs(expected).max()
        assert err < KERNEL_TOL, (isa, k, n_out, residual, n, err)
        float_err = np.abs(x.astype(np.float64) @ wd.T + (r if residual else 0.0) - expected).max()
        assert float_err / np.abs(expected).max() > 10 * KERNEL_TOL  # the int8 rounding is visible at this tolerance


# ---------------------------------------------------------------- (5) C runtime greedy parity

# Greedy tokens of an a8 bundle cannot equal the reference's bit for bit over 64 tokens: the int8 rounding is
# discontinuous, so float-rounding differences between the compiled plan and PyTorch (rms_norm, attention, the
# residual scale folded into fp16 scales: ~5e-5 of the logits for q4g32) flip a few int8 codes per forward, and
# each flip moves the logits by ~1e-3 (measured: 1e-6 relative noise on the embedding moves the a8 reference's
# logits by 8e-3, the q4g32 one's by 2e-6; bundle vs a8 reference, teacher-forced: median 5e-3, max 1.6e-2 of
# max|logit|). So along the C runtime's greedy tokens, each token must be the reference's argmax or, at a near-tie
# (reference's lead below NEAR_TIE * max|logit|), within that distance of it.
NEAR_TIE = 0.03


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built")
def test_c_runtime_greedy_follows_the_a8_reference(tmp_path: Path) -> None:
    import json

    from mcpm.export.exporter import ExportOptions, run_export
    from mcpm.export.loading import DEFAULT_MODEL_DIR
    from mcpm.export.reference_generate import TorchStepper, generate
    from tests.test_c_greedy_parity import N, c_greedy

    bundle = tmp_path / "a8"
    run_export(ExportOptions(DEFAULT_MODEL_DIR, bundle, "host", "q4g32-a8", (), 128, 16, progress=False))
    kernels = json.dumps(json.loads((bundle / "plan.json").read_text()).get("kernels"))
    assert "linear_q4a8_" in kernels and "linear_q4_" not in kernels  # every linear (and the logits) is a8
    ids, ours = c_greedy(bundle)
    assert len(ours) == N and len(set(ours)) > 10
    reference = reference_for(load_model(DEFAULT_MODEL_DIR).model, Recipe.parse("q4g32-a8"))
    expected = generate(reference, ids, N, 128).tokens
    stepper, near_ties = TorchStepper(reference), []
    logits = stepper.prefill(ids)
    for i, token in enumerate(ours):  # teacher-forced along the C runtime's tokens
        gap = float(logits.max() - logits[token]) / float(logits.abs().max())
        assert gap < NEAR_TIE, (i, gap)
        if gap > 0:
            near_ties.append(i)
        logits = stepper.decode(token)
    assert len(near_ties) <= 3, near_ties
    first = near_ties[0] if near_ties else N
    assert ours[:first] == expected[:first]  # plain greedy equality up to the first near-tie
    assert first >= 16


# ---------------------------------------------------------------- (6) refusals


def test_gpu_export_refuses_a8(tmp_path: Path) -> None:
    from mcpm.export.compiler.gpu_kernels import gpu_version
    from mcpm.export.exporter import ExportOptions, run_export
    from mcpm.export.loading import DEFAULT_MODEL_DIR

    want = "scheme q4g32-a8 quantizes activations on the CPU only; export with --quant q4g32 for --device gpu"
    for quant, rules in (("q4g32-a8", ()), ("q4g32", ("layers.0.*=q4g32-a8",))):
        with pytest.raises(McpmError) as e:
            run_export(ExportOptions(DEFAULT_MODEL_DIR, tmp_path / "g", "host", quant, rules, 128, 16,
                                     progress=False, device="gpu"))
        assert str(e.value) == want and "\n" not in str(e.value)
    assert not (tmp_path / "g").exists()  # refused before anything was written
    with pytest.raises(McpmError, match="^scheme q4g32-a8 quantizes activations on the CPU only;"):
        gpu_version("linear_q4a8_256_768_32_add", 128)


def test_moe_experts_refuse_a8() -> None:
    from mcpm.export.compiler.spec import CompileSpec
    from mcpm.export.compiler.weights import check_supported
    from mcpm.export.models.minicpm.config import MiniCPMConfig

    raw = {k: v for k, v in tiny_minicpm(num_experts=4, num_experts_per_tok=2, num_hidden_layers=2).items()
           if k != "some_unknown_key"}
    cfg = MiniCPMConfig(**raw)
    with pytest.raises(McpmError) as e:
        check_supported(cfg, CompileSpec(max_ctx=64, chunk=4, recipe=Recipe.parse("q4g32-a8"), num_experts=4))
    msg = str(e.value)
    assert "\n" not in msg and "layers.0 experts" in msg and "--quant-rule 'layers.*.mlp.experts.*=q4g32'" in msg
    # the suggested fix is accepted (the router keeps q4g32-a8: a dense linear)
    fixed = Recipe.parse("q4g32-a8", ["layers.*.mlp.experts.*=q4g32"])
    check_supported(cfg, CompileSpec(max_ctx=64, chunk=4, recipe=fixed, num_experts=4))
    assert CompileSpec(recipe=fixed, num_experts=4).scheme_for("layers.1.router").name == "q4g32-a8"
