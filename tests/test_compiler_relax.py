"""TVM-compiled minicpm (export/compiler) against the PyTorch reference: f32 parity, chunked prefill + decode, int4."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import tvm

from mcpm.errors import McpmError
from mcpm.export.compiler.layout import weight_params
from mcpm.export.compiler.model_def import build_module
from mcpm.export.compiler.runner import CompiledModel, compile_model, compile_module
from mcpm.export.compiler.spec import CompileSpec
from mcpm.export.compiler.weights import logical_weight
from mcpm.export.loading import load_model
from mcpm.quantize.packing import PackedWeight, dequantize
from mcpm.quantize.schemes import QuantScheme
from tests.conftest import tiny_minicpm, write_tiny

MAX_CTX, CHUNK = 48, 4


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module", params=["tied", "untied"])
def loaded(request, tmp_path_factory):
    # GQA (4 q / 2 kv heads), scale_emb 3.5, scale_depth 1.7, logit divisor 4 (all != 1)
    cfg = tiny_minicpm(tie_word_embeddings=request.param == "tied", rope_theta=777.0, rms_norm_eps=1e-4)
    return load_model(write_tiny(tmp_path_factory.mktemp(request.param), cfg, seed=3), tokenizer=False)


@pytest.fixture(scope="module")
def compiled_last(loaded):
    return compile_model(loaded, CompileSpec(max_ctx=MAX_CTX, chunk=CHUNK))


def reference(loaded, ids: np.ndarray) -> np.ndarray:
    """PyTorch logits [n, V] of the whole sequence."""
    with torch.no_grad():
        return loaded.model(torch.tensor(ids[None], dtype=torch.long))[0].numpy()


def ids_of(n: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 4096, n).astype(np.int32)


def test_module_shape(loaded):
    mod = build_module(loaded.config, CompileSpec(max_ctx=MAX_CTX, chunk=CHUNK))
    assert int(mod["prefill"].attrs["tir_var_upper_bound"]["n"]) == CHUNK
    n_params = 2 + 2 * loaded.config.num_hidden_layers + len(weight_params(loaded.config, CompileSpec(MAX_CTX, CHUNK)))
    assert len(mod["prefill"].params) == len(mod["decode"].params) == n_params


def test_all_positions_match_reference(loaded):
    """One prefill of 7 tokens (chunk 8) returning every position's logits."""
    cm = compile_model(loaded, CompileSpec(max_ctx=MAX_CTX, chunk=8, all_logits=True))
    ids = ids_of(7)
    got = cm.prefill(ids)  # [7, V]
    assert got.shape == (7, loaded.config.vocab_size)
    assert rel_err(got, reference(loaded, ids)) < 1e-4


def test_mha_other_dims_match_reference(tmp_path):
    """kv heads == heads (MiniCPM-2B style), head_dim 12, 2 layers, untied: prefill 5 (4 + 1) then 2 decodes."""
    cfg = tiny_minicpm(
        hidden_size=48, num_attention_heads=4, num_key_value_heads=4, intermediate_size=80, num_hidden_layers=2,
        tie_word_embeddings=False, scale_depth=0.6, scale_emb=2.5, dim_model_base=12,
    )  # fmt: skip
    lm = load_model(write_tiny(tmp_path / "mha", cfg, seed=7), tokenizer=False)
    cm = compile_model(lm, CompileSpec(max_ctx=16, chunk=4))
    ids = ids_of(7, seed=9)
    ref = reference(lm, ids)
    assert rel_err(cm.prefill(ids[:5])[0], ref[4]) < 1e-4
    assert rel_err(cm.decode(int(ids[5]))[0], ref[5]) < 1e-4
    assert rel_err(cm.decode(int(ids[6]))[0], ref[6]) < 1e-4


@pytest.mark.parametrize("n_prompt", [1, 4, 5, 7])
def test_chunked_prefill_then_decode_match_reference(loaded, compiled_last, n_prompt):
    """prefill (chunks of 4: 5 = 4 + 1, 7 = 4 + 3) then decode steps, each step against the reference."""
    cm = compiled_last
    cm.reset()
    ids = ids_of(n_prompt + 6, seed=n_prompt)
    ref = reference(loaded, ids)  # [n, V]
    got = cm.prefill(ids[:n_prompt])  # [1, V]
    assert got.shape == (1, loaded.config.vocab_size)
    assert rel_err(got[0], ref[n_prompt - 1]) < 1e-4
    for t in range(n_prompt, len(ids)):
        assert rel_err(cm.decode(int(ids[t]))[0], ref[t]) < 1e-4
    assert cm.pos == len(ids)


def test_prefill_plus_decodes_equals_longer_prefill(compiled_last):
    cm = compiled_last
    ids = ids_of(9, seed=11)
    cm.reset()
    long = cm.prefill(ids)  # chunks 4 + 4 + 1
    k_long, v_long = cm.cache_numpy(2)
    cm.reset()
    cm.prefill(ids[:5])
    for t in ids[5:8]:
        cm.decode(int(t))
    short = cm.decode(int(ids[8]))
    k_short, v_short = cm.cache_numpy(2)
    np.testing.assert_allclose(short, long, rtol=0, atol=1e-5 * np.abs(long).max())
    np.testing.assert_allclose(k_short[:9], k_long[:9], rtol=0, atol=1e-5 * np.abs(k_long[:9]).max())
    np.testing.assert_allclose(v_short[:9], v_long[:9], rtol=0, atol=1e-5 * np.abs(v_long[:9]).max())


def test_cache_holds_roped_keys_of_reference(loaded, compiled_last):
    cm = compiled_last
    ids = ids_of(6, seed=5)
    cm.reset()
    cm.prefill(ids)
    cache = loaded.model.new_cache()
    with torch.no_grad():
        loaded.model(torch.tensor(ids[None], dtype=torch.long), cache=cache)
    for layer in range(loaded.config.num_hidden_layers):
        k_ref, v_ref = (t[0].transpose(0, 1).numpy() for t in cache.layers[layer].tensors)  # [T, Hkv, d]
        k, v = cm.cache_numpy(layer)
        assert rel_err(k[:6], k_ref) < 1e-4 and rel_err(v[:6], v_ref) < 1e-4


def test_context_full_and_bad_token_raise(compiled_last):
    cm = compiled_last
    cm.reset()
    cm.prefill(ids_of(MAX_CTX - 1))
    cm.decode(1)
    with pytest.raises(McpmError, match="context full"):
        cm.decode(1)
    cm.reset()
    with pytest.raises(McpmError, match="out of range"):
        cm.decode(4096)


_TWIN_EXE: dict[str, object] = {}


@pytest.mark.parametrize("group", [32, 64])  # 64: w_down's K = 96 is padded to 128 (a partial last group)
def test_int4_kernel_reads_packed_weights(loaded, group):
    """int4 module == float module fed the dequantized weights (same math; packed vs float reads).

    The float twin is built untied and gets the dequantized embedding as both its embedding and (when tied) lm_head,
    so the int4 lookup kernel and the tied head reading the one packed embedding are both checked.
    """
    cfg = loaded.config
    spec4 = CompileSpec(max_ctx=MAX_CTX, chunk=CHUNK, int4_group=group)
    spec32 = CompileSpec(max_ctx=MAX_CTX, chunk=CHUNK)
    q4 = compile_model(loaded, spec4)
    packed = dict(zip((p.name for p in weight_params(cfg, spec4)), q4.weights, strict=True))
    floats2d = [p.name for p in weight_params(cfg, spec4) if p.dtype == "float32" and len(p.shape) == 2]
    assert floats2d == ["rope_cos", "rope_sin"]  # every linear and the embedding (= tied lm_head) are packed
    scheme = QuantScheme(f"q4g{group}", "int4-sym", group)
    cfg_f = dataclasses.replace(cfg, tie_word_embeddings=False)
    twin = []
    for p in weight_params(cfg_f, spec32):
        src = "embed" if p.name == "lm_head" and cfg.tie_word_embeddings else p.name
        if src + ".qweight" in packed:
            t = {"qweight": packed[src + ".qweight"].numpy(), "scales": packed[src + ".scales"].numpy()}
            twin.append(dequantize(PackedWeight(scheme, p.shape, t)))
        else:
            twin.append(logical_weight(loaded.model, cfg, spec32, p.name))
    key = repr(cfg_f)
    if key not in _TWIN_EXE:  # the float twin is the same for every group
        _TWIN_EXE[key] = compile_module(build_module(cfg_f, spec32))
    f32 = CompiledModel(_TWIN_EXE[key], cfg_f, spec32, twin)
    ids = ids_of(7, seed=2)
    a, b = q4.prefill(ids), f32.prefill(ids)  # [1, V]: chunks 4 + 3
    assert rel_err(a, b) < 1e-4
    assert rel_err(q4.decode(5), f32.decode(5)) < 1e-4
    assert rel_err(a[0], reference(loaded, ids)[-1]) < 0.5  # int4 stays near the float reference


def test_kernel_rejects_cache_overflow_and_oversized_chunk(compiled_last):
    """Raw VM calls: kv_append asserts pos + n <= max_ctx; the VM checks every tensor against its planned storage
    (sized for n = chunk), so a much larger n fails cleanly (n slightly above chunk may fit and run)."""
    cm = compiled_last
    three = tvm.runtime.tensor(np.arange(3, dtype=np.int32))
    with pytest.raises(Exception, match="exceeds max_ctx"):
        cm.vm["prefill"](three, MAX_CTX - 2, *cm.caches, *cm.weights)
    too_many = tvm.runtime.tensor(np.arange(4 * CHUNK, dtype=np.int32))
    with pytest.raises(Exception, match="storage allocation failure"):
        cm.vm["prefill"](too_many, 0, *cm.caches, *cm.weights)
