"""benchmarks/gguf_writer.py: Q4_0 bytes bit-exact with ggml's reference, the MiniCPM scale keys, the q/k permutation.

The slow test runs llama.cpp (the `make bench-peer` virtualenv) on a tiny random checkpoint written as an f32 GGUF
with an f32 KV cache and flash attention off (its CPU kernel rounds through f16) and compares every position's
logits with the PyTorch reference model.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_minicpm, write_tiny

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

gguf = pytest.importorskip("gguf")
gw = importlib.import_module("benchmarks.gguf_writer")


def q4_0_ggml_reference(x: np.ndarray) -> np.ndarray:
    """ggml-quants.c quantize_row_q4_0_ref transliterated block by block (float32 arithmetic, fp16 scale)."""
    rows, cols = x.shape
    out = np.zeros((rows, cols // 32 * 18), dtype=np.uint8)
    f32 = np.float32
    for r in range(rows):
        for b in range(cols // 32):
            blk = x[r, b * 32:(b + 1) * 32].astype(f32)
            amax, vmax = f32(0), f32(0)
            for v in blk:  # first element of largest magnitude keeps its sign
                if amax < abs(v):
                    amax, vmax = abs(v), v
            d = f32(vmax / f32(-8))
            idd = f32(f32(1) / d) if d != 0 else f32(0)
            qs = np.zeros(16, dtype=np.uint8)
            for j in range(16):
                x0, x1 = f32(blk[j] * idd), f32(blk[j + 16] * idd)
                xi0, xi1 = min(15, int(f32(x0 + f32(8.5)))), min(15, int(f32(x1 + f32(8.5))))  # (int8_t) truncates
                qs[j] = xi0 | (xi1 << 4)
            o = b * 18
            out[r, o:o + 2] = np.frombuffer(np.float16(d).tobytes(), dtype=np.uint8)
            out[r, o + 2:o + 18] = qs
    return out


def _awkward_matrix() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 128)).astype(np.float32)
    x[0, :32] = 0.0  # all-zero block: d = 0
    x[1, :32] = 1.0
    x[1, 5] = -3.0  # negative maximum
    x[1, 32:64] = np.linspace(-7, 7, 32, dtype=np.float32)  # ties of |max| at both ends: first one wins
    x[2, :32] = np.arange(32, dtype=np.float32) - 16  # exact multiples of d: x*id + 8.5 lands on .5
    x[3] *= 1e-6  # tiny scales (fp16 subnormal territory)
    x[4] *= 1e4
    return x


def test_q4_0_matches_ggml_reference_bit_for_bit() -> None:
    x = _awkward_matrix()
    assert np.array_equal(gw.quantize_q4_0(x), q4_0_ggml_reference(x))


def test_q4_0_layout_and_roundtrip() -> None:
    x = np.random.default_rng(1).standard_normal((5000, 64)).astype(np.float32)  # > ROW_CHUNK rows
    q = gw.quantize_q4_0(x)
    assert q.shape == (5000, 2 * 18) and q.dtype == np.uint8
    assert np.array_equal(q[:7], q4_0_ggml_reference(x[:7]))
    d = q[:, :2].copy().view(np.float16).astype(np.float32)  # [rows, 1]: scale of the first block
    err = np.abs(gw.dequantize_q4_0(q) - x)[:, :32].max(axis=1)
    assert np.all(err <= np.abs(d[:, 0]) * 1.001)  # half a step, or one step where +8 is clipped to 7
    assert np.median(err / np.abs(d[:, 0])) < 0.5


def test_rope_permutation_round_trip_and_pairs() -> None:
    n_head, d, cols = 3, 8, 5
    w = np.arange(n_head * d * cols, dtype=np.float32).reshape(n_head * d, cols)
    p = gw.permute_rope_rows(w, n_head)
    assert np.array_equal(gw.unpermute_rope_rows(p, n_head), w)
    for h in range(n_head):  # HF row i and i + d/2 of a head become the adjacent pair (2i, 2i+1)
        for i in range(d // 2):
            assert np.array_equal(p[h * d + 2 * i], w[h * d + i])
            assert np.array_equal(p[h * d + 2 * i + 1], w[h * d + d // 2 + i])


def test_rope_permutation_equals_llama_cpp_converter() -> None:
    """convert_hf_to_gguf.py's LlamaModel.permute, copied verbatim."""

    def permute(weights: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
        if n_head_kv is not None and n_head != n_head_kv:
            n_head = n_head_kv
        return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
                .swapaxes(1, 2)
                .reshape(weights.shape))

    w = torch.randn(4 * 16, 64)
    k = torch.randn(2 * 16, 64)
    assert torch.equal(torch.from_numpy(gw.permute_rope_rows(w.numpy(), 4)), permute(w, 4, 4))
    assert torch.equal(torch.from_numpy(gw.permute_rope_rows(k.numpy(), 2)), permute(k, 4, 2))


def _field(reader, key: str):
    f = reader.fields[key]
    return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]][0]


@pytest.mark.parametrize("qtype", ["q4_0", "f32"])
def test_written_gguf_keys_and_tensors(tmp_path: Path, qtype: str) -> None:
    cfg = tiny_minicpm()
    ckpt = write_tiny(tmp_path / "ckpt", cfg)
    s = gw.write_gguf(ckpt, tmp_path / "m.gguf", qtype)
    r = gguf.GGUFReader(str(s.path))
    assert _field(r, "general.architecture") == "minicpm"
    assert _field(r, "minicpm.embedding_scale") == pytest.approx(3.5)
    assert _field(r, "minicpm.residual_scale") == pytest.approx(1.7 / math.sqrt(3), rel=1e-6)
    assert _field(r, "minicpm.logit_scale") == pytest.approx(64 / 16)  # hidden / dim_model_base, not the inverse
    assert _field(r, "minicpm.attention.head_count_kv") == 2
    assert _field(r, "tokenizer.ggml.model") == "llama"
    assert len(r.fields["tokenizer.ggml.tokens"].data) == cfg["vocab_size"]
    tensors = {t.name: t for t in r.tensors}
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    q = tensors["blk.0.attn_q.weight"]
    want = gguf.GGMLQuantizationType.Q4_0 if qtype == "q4_0" else gguf.GGMLQuantizationType.F32
    assert q.tensor_type == want and tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    from mcpm.export.checkpoint import TensorReader

    with TensorReader(ckpt) as ck:
        wq = ck.get("model.layers.0.self_attn.q_proj.weight").float().numpy()
        wk = ck.get("model.layers.0.self_attn.k_proj.weight").float().numpy()
    got_q = np.asarray(q.data).reshape(64, -1)
    got_k = np.asarray(tensors["blk.0.attn_k.weight"].data).reshape(32, -1)
    if qtype == "f32":
        assert np.array_equal(gw.unpermute_rope_rows(got_q, 4), wq)
        assert np.array_equal(gw.unpermute_rope_rows(got_k, 2), wk)  # k is permuted per kv head
    else:
        assert np.array_equal(got_q, gw.quantize_q4_0(gw.permute_rope_rows(wq, 4)))
        assert np.array_equal(got_k, gw.quantize_q4_0(gw.permute_rope_rows(wk, 2)))
    assert s.weight_bytes == sum(int(t.n_bytes) for t in r.tensors)


# ------------------------------------------------------------------------------------------- slow: llama.cpp


def _peer_python() -> Path:
    peer = importlib.import_module("benchmarks.peer")
    if peer.peer_info() is None:
        pytest.skip("the llama.cpp peer venv is not built (python -m benchmarks.peer --build-peer-only)")
    return Path(peer.peer_python())


@pytest.mark.slow
def test_llama_cpp_f32_logits_match_reference(tmp_path: Path) -> None:
    py = _peer_python()
    ckpt = write_tiny(tmp_path / "ckpt", tiny_minicpm())
    gguf_path = gw.write_gguf(ckpt, tmp_path / "m-f32.gguf", "f32").path
    ids = np.random.default_rng(3).integers(0, 4096, 24).tolist()
    out = tmp_path / "logits.npy"
    worker = REPO / "benchmarks" / "llama_worker.py"
    res = subprocess.run([str(py), str(worker), "logits", "--gguf", str(gguf_path), "--threads", "2", "--prompt",
                          ",".join(map(str, ids)), "--kv", "f32", "--flash-attn", "off", "--n-ctx", "64",
                          "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["kv"] == "f32"
    got = np.load(out)  # [n, vocab]

    from mcpm.export.loading import load_model

    model = load_model(ckpt, dtype=torch.float64, progress=False).model
    with torch.no_grad():
        want = model(torch.tensor([ids]))[0].double().numpy()  # [n, vocab]
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    print(f"llama.cpp f32 vs PyTorch float64 reference: max |diff| / max |logit| = {rel:.3e}")
    assert rel < 1e-6, rel  # measured 1.8e-7; flash attention (its default "auto") gives ~1e-4: f16 inside
    assert np.array_equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.slow
def test_q4_0_matches_ggml_itself(tmp_path: Path) -> None:
    py = _peer_python()
    x = np.concatenate([_awkward_matrix(), np.random.default_rng(5).standard_normal((64, 128)).astype(np.float32)])
    np.save(tmp_path / "x.npy", x)
    worker = REPO / "benchmarks" / "llama_worker.py"
    res = subprocess.run([str(py), str(worker), "quantize_q4_0", "--inp", str(tmp_path / "x.npy"), "--out",
                          str(tmp_path / "q.npy")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert np.array_equal(np.load(tmp_path / "q.npy"), gw.quantize_q4_0(x))
