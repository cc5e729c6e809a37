"""The compiled ``vision`` entry (SigLIP tower + Resampler2, vision_def.py) vs the PyTorch reference on a tiny
MiniCPM-V 2.0, its input builders (vision_inputs.py) vs torch, and the linear_bias kernel on odd shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax
from tvm.script import tirx as T

from mcpm.export.compiler import vision_kernels
from mcpm.export.compiler.runner import compile_module
from mcpm.export.compiler.vision_def import vision_module, vision_weight_arrays, vision_weight_params
from mcpm.export.loading import load_model
from mcpm.export.models.minicpmv.resampler import sincos_2d
from mcpm.export.models.minicpmv.vision_inputs import aa_bicubic_matrix, key_pos, patchify, pos_interp, vision_inputs
from tests.conftest import write_tiny
from tests.test_minicpmv import tiny_minicpmv

MAX_PATCHES = 40
GRIDS = [(5, 5), (4, 4), (3, 5), (5, 3), (2, 7), (1, 9), (7, 1), (6, 6), (1, 1)]  # 5x5 = the native grid
ATOL_F32 = 1e-4
ATOL_F16 = 1e-4  # float16 weights vs the reference with the same weights rounded to float16
DRIFT_F16 = 1e-2  # float16 weights vs the unrounded reference (~2e-3 here; features are O(3))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    path = write_tiny(tmp_path_factory.mktemp("minicpmv_vision"), tiny_minicpmv(), seed=5)
    return load_model(Path(path), tokenizer=False).model


def _compiled(model, dtype: str):
    exe = compile_module(vision_module(model.cfg, dtype, MAX_PATCHES))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    weights = [tvm.runtime.tensor(a, tvm.cpu()) for _, a in vision_weight_arrays(model, dtype)]
    return vm, weights


def _run(vm, weights, pixels: np.ndarray, cfg) -> np.ndarray:
    inputs = vision_inputs(pixels, cfg)
    args = [tvm.runtime.tensor(inputs[k], tvm.cpu()) for k in ("patches", "pos_interp", "key_pos")]
    return vm["vision"](*args, *weights).numpy()


def _pixels(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    return (rng.random((3, rows * 14, cols * 14), dtype=np.float32) * 2 - 1).astype(np.float32)


def test_weight_arrays_match_params(tiny) -> None:
    for dtype in ("float32", "float16"):
        params = vision_weight_params(tiny.cfg, dtype)
        arrays = list(vision_weight_arrays(tiny, dtype))
        assert [p.name for p in params] == [name for name, _ in arrays]
        for p, (_, a) in zip(params, arrays, strict=True):
            assert a.shape == p.shape and str(a.dtype) == p.dtype and a.flags.c_contiguous, p.name
    assert params[0].name == "vision.patch_w" and params[-1].name == "resampler.proj"


def test_vision_float32_matches_reference(tiny) -> None:
    vm, weights = _compiled(tiny, "float32")
    rng = np.random.default_rng(0)
    for rows, cols in GRIDS:
        pixels = _pixels(rng, rows, cols)
        with torch.no_grad():
            want = tiny.encode_slice(torch.from_numpy(pixels)[None])[0].numpy()
        got = _run(vm, weights, pixels, tiny.cfg)
        assert got.shape == want.shape == (tiny.cfg.query_num, tiny.cfg.hidden_size)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_F32, err_msg=f"grid {rows}x{cols}")


def test_vision_float16_weights(tiny) -> None:
    """float16 weights: tight against the reference whose large matrices are rounded to float16 the same way."""
    vm, weights = _compiled(tiny, "float16")
    rounded = {name for name, a in vision_weight_arrays(tiny, "float16") if a.dtype == np.float16}
    ref = type(tiny)(tiny.cfg)
    ref.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        for t in (ref.vision.patch_embed.weight, ref.vision.pos_embed):
            t.copy_(t.half().float())
        for blk in ref.vision.blocks:
            for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
                lin.weight.copy_(lin.weight.half().float())
        r = ref.resampler
        r.kv_proj.weight.copy_(r.kv_proj.weight.half().float())
        d = tiny.cfg.hidden_size
        r.attn.in_proj_weight[d:].copy_(r.attn.in_proj_weight[d:].half().float())  # wk, wv (wq is folded, f32)
        for t in (r.attn.out_proj.weight, r.proj):
            t.copy_(t.half().float())
    assert "resampler.wk" in rounded and "resampler.q_const" not in rounded
    rng = np.random.default_rng(1)
    worst = 0.0
    for rows, cols in [(5, 5), (3, 5), (1, 9), (6, 6)]:
        pixels = _pixels(rng, rows, cols)
        with torch.no_grad():
            want = ref.encode_slice(torch.from_numpy(pixels)[None])[0].numpy()
            exact = tiny.encode_slice(torch.from_numpy(pixels)[None])[0].numpy()
        got = _run(vm, weights, pixels, tiny.cfg)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL_F16, err_msg=f"grid {rows}x{cols}")
        worst = max(worst, float(np.abs(got - exact).max()))
    assert worst < DRIFT_F16, f"float16 weights moved the features by {worst}"


# -- input builders vs torch ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_in,n_out", [(27, 32), (27, 16), (27, 27), (27, 1), (27, 100), (5, 3), (5, 9), (5, 4)])
def test_aa_bicubic_matrix_matches_interpolate(n_in: int, n_out: int) -> None:
    for dtype, atol in ((torch.float64, 1e-6), (torch.float32, 1e-5)):  # torch's float32 weights differ by ~2e-6
        eye = torch.eye(n_in, dtype=dtype).reshape(1, n_in, 1, n_in)  # channel c = unit vector e_c
        out = F.interpolate(eye, size=(1, n_out), mode="bicubic", antialias=True, align_corners=False)
        np.testing.assert_allclose(aa_bicubic_matrix(n_in, n_out), out[0, :, 0, :].T.numpy(), rtol=0, atol=atol)


@pytest.mark.parametrize("rows,cols", [(5, 5), (3, 7), (8, 2)])
def test_pos_interp_matches_interpolate(rows: int, cols: int) -> None:
    table = torch.randn(1, 5, 5, 6, dtype=torch.float64)  # [1, G, G, d]
    want = F.interpolate(table.permute(0, 3, 1, 2), size=(rows, cols), mode="bicubic", antialias=True,
                         align_corners=False).permute(0, 2, 3, 1).reshape(rows * cols, 6)
    got = pos_interp(rows, cols, 5).astype(np.float64) @ table.reshape(25, 6).numpy()
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)


def test_key_pos_matches_sincos_2d() -> None:
    for dim, rows, cols in ((64, 3, 5), (2304, 32, 32), (2304, 1, 40)):
        np.testing.assert_array_equal(key_pos(dim, rows, cols), sincos_2d(dim, rows, cols).numpy())


def test_patchify_matches_conv() -> None:
    rng = np.random.default_rng(2)
    pixels = rng.standard_normal((3, 28, 42), dtype=np.float32)
    w = rng.standard_normal((5, 3, 14, 14), dtype=np.float32)
    want = F.conv2d(torch.from_numpy(pixels)[None], torch.from_numpy(w), stride=14)[0]  # [5, 2, 3]
    got = patchify(pixels, 14) @ w.reshape(5, -1).T  # [6, 5]
    np.testing.assert_allclose(got, want.reshape(5, 6).T.numpy(), rtol=0, atol=1e-4)


# -- kernels --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k_in,n_out,n,bias,residual,gelu", [(37, 19, 7, True, True, False),
                                                             (24, 133, 5, False, False, False),
                                                             (588, 48, 9, True, False, True),
                                                             (25, 16, 3, False, True, False)])
def test_linear_bias_float16(k_in: int, n_out: int, n: int, bias: bool, residual: bool, gelu: bool) -> None:
    """Odd n (token tiles + single tokens), K % 8 != 0 (scalar tail), N not a multiple of the row blocks."""
    rng = np.random.default_rng(k_in)
    x = rng.standard_normal((n, k_in), dtype=np.float32)
    w = (rng.standard_normal((n_out, k_in)) / np.sqrt(k_in)).astype(np.float16)
    b = rng.standard_normal(n_out, dtype=np.float32)
    r = rng.standard_normal((n, n_out), dtype=np.float32)
    kernel = vision_kernels.linear_bias(k_in, n_out, "float16", residual, bias, gelu)
    f = tvm.compile(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}), target="llvm")
    args = [x, w] + ([b] if bias else []) + ([r] if residual else [])
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros((n, n_out), np.float32), dev)
    f["main"](*[tvm.runtime.tensor(a, dev) for a in args], y)
    want = x.astype(np.float64) @ w.astype(np.float64).T + (b if bias else 0) + (r if residual else 0)
    if gelu:
        want = F.gelu(torch.from_numpy(want), approximate="tanh").numpy()
    np.testing.assert_allclose(y.numpy(), want, rtol=0, atol=1e-5)


def test_exp_and_gelu_expressions() -> None:
    """vision_kernels.exp_le0 (softmax weights) and gelu_tanh (fc1 epilogue) vs float64 references."""
    x = np.concatenate([-np.geomspace(1e-6, 120, 3000), [0.0, -87.0, -88.0, -1e4]]).astype(np.float32)
    g = np.linspace(-12, 12, 3001, dtype=np.float32)

    @tvm.script.tirx.prim_func
    def main(a: T.Buffer((3004,), "float32"), ea: T.Buffer((3004,), "float32"), b: T.Buffer((3001,), "float32"),
             gb: T.Buffer((3001,), "float32")):
        for i in range(3004):
            ea[i] = vision_kernels.exp_le0(a[i])
        for i in range(3001):
            gb[i] = vision_kernels.gelu_tanh(b[i])

    f = tvm.compile(tvm.IRModule({"main": main}), target="llvm")
    dev = tvm.cpu()
    ea, gb = tvm.runtime.tensor(np.zeros(3004, np.float32), dev), tvm.runtime.tensor(np.zeros(3001, np.float32), dev)
    f["main"](tvm.runtime.tensor(x, dev), ea, tvm.runtime.tensor(g, dev), gb)
    want = np.exp(np.maximum(x.astype(np.float64), -87.0))
    np.testing.assert_allclose(ea.numpy(), want, rtol=1e-6, atol=0)
    gw = F.gelu(torch.from_numpy(g.astype(np.float64)), approximate="tanh").numpy()
    np.testing.assert_allclose(gb.numpy(), gw, rtol=0, atol=1e-6)


def test_vision_real_widths_two_blocks() -> None:
    """V2.0 widths (Dv 1152, 16 heads of 72, I 4304, D 2304, 18 resampler heads of 128, G 27, Q 64) with two
    blocks and random weights, one odd 19x23 grid: the kernel paths the tiny config does not reach."""
    from types import SimpleNamespace

    from mcpm.export.families import all_presets
    from mcpm.export.hf_config import parse_config
    from mcpm.export.models.minicpmv.config import MiniCPMVConfig
    from mcpm.export.models.minicpmv.resampler import Resampler
    from mcpm.export.models.minicpmv.vision import VisionTower

    _, data = all_presets()["minicpm-v-2"]
    vc = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 3, "num_attention_heads": 16,
          "image_size": 384, "patch_size": 14}
    cfg = parse_config(MiniCPMVConfig, dict(data, vision_config=vc))
    torch.manual_seed(0)
    vision, resampler = VisionTower(cfg), Resampler(cfg)
    with torch.no_grad():
        vision.pos_embed.normal_(0, 0.5)
        resampler.query.normal_(0, 1)
        resampler.attn.in_proj_weight.normal_(0, cfg.hidden_size**-0.5)
        resampler.proj.normal_(0, cfg.hidden_size**-0.5)
    model = SimpleNamespace(cfg=cfg, vision=vision, resampler=resampler)
    exe = compile_module(vision_module(cfg, "float32", 1152))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    weights = [tvm.runtime.tensor(a, tvm.cpu()) for _, a in vision_weight_arrays(model, "float32")]
    pixels = _pixels(np.random.default_rng(3), 19, 23)
    with torch.no_grad():
        want = resampler(vision(torch.from_numpy(pixels)[None]), 19, 23)[0].numpy()
    got = _run(vm, weights, pixels, cfg)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, float(np.abs(want).max())))
