"""mcpm_generate + the C sampler (runtime_bindings/c/mcpm_sampler.c), mcpm_stats_json and `mcpm bench`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcpm.errors import McpmError

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built")

PROMPT = np.random.default_rng(3).integers(3, 4096, 21).astype(np.int32)  # [21]: one chunk of 16 + 5
N_NEW = 16


@pytest.fixture(scope="module")
def bundle(default_q4_bundle: Path) -> Path:
    return default_q4_bundle


@pytest.fixture(scope="module")
def model(bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    from mcpm.runtime import Model
    from mcpm.runtime.build import build_library

    library = build_library(bundle, cache_dir=tmp_path_factory.mktemp("mcpm-cache"))
    with Model.load(bundle, threads=2, library=library) as m:
        yield m


def generate(model, max_new: int = N_NEW, sampling=None, **kw) -> list[int]:
    model.reset()
    return model.generate(PROMPT, max_new, sampling, **kw)


def argmax_loop(model, max_new: int = N_NEW) -> list[int]:
    model.reset()
    logits = model.prefill(PROMPT)
    out: list[int] = []
    for i in range(max_new):
        if i:
            logits = model.decode(out[-1])
        out.append(int(np.argmax(logits)))
    return out


def test_greedy_equals_prefill_decode_argmax(model) -> None:
    ref = argmax_loop(model)
    got = generate(model)
    assert got == ref and len(set(got)) > 1
    assert model.position == len(PROMPT) + N_NEW - 1  # the last token is not fed
    assert generate(model, sampling={"top_k": 1, "temperature": 1.0, "seed": 5}) == ref
    assert generate(model, sampling={"temperature": 1e-5, "seed": 7}) == ref
    assert generate(model, sampling={"temperature": 0.0, "top_p": 0.5, "seed": 7}) == ref


def test_seeded_sampling_is_reproducible(model) -> None:
    from mcpm.runtime import Sampling

    s1 = Sampling(temperature=1.5, top_p=0.95, min_p=0.01, seed=1)
    a, b = generate(model, sampling=s1), generate(model, sampling=s1)
    assert a == b and len(a) == N_NEW
    c = generate(model, sampling={"temperature": 1.5, "top_p": 0.95, "min_p": 0.01, "seed": 2})
    assert c != a
    assert a != argmax_loop(model)


def test_stop_ids_and_cancellation(model) -> None:
    ref = generate(model)
    stop = ref[5]
    got = generate(model, stop_ids=[999999, stop])
    assert got == ref[: ref.index(stop) + 1]
    seen: list[int] = []

    def cancel_after_4(token: int) -> bool:
        seen.append(token)
        return len(seen) == 4

    got = generate(model, on_token=cancel_after_4)
    assert got == seen == ref[:4]

    def boom(token: int) -> bool:
        raise ValueError("from the callback")

    with pytest.raises(ValueError, match="from the callback"):
        generate(model, on_token=boom)
    assert generate(model, max_new=0) == []


def test_errors_are_checked_before_any_work(model) -> None:
    model.reset()
    with pytest.raises(McpmError, match="prompt of 128 tokens does not fit the context of 128 tokens"):
        model.generate(np.ones(128, np.int32), 4)
    assert model.position == 0
    with pytest.raises(McpmError, match="top_p 1.5 must be in"):
        model.generate(PROMPT, 4, {"top_p": 1.5})
    with pytest.raises(McpmError, match="unknown sampling setting"):
        model.generate(PROMPT, 4, {"top_q": 0.5})
    with pytest.raises(McpmError, match="out of range 0..4095"):
        model.generate([1, 4096], 4)
    assert model.position == 0
    # the context fills up: fewer tokens, no error
    assert len(model.generate(np.ones(120, np.int32), 50)) == 8


def test_stats_json(model, bundle: Path) -> None:
    import json

    generate(model)
    stats = model.stats()
    assert set(stats) == {"load_ms", "prefill_tokens", "prefill_tok_s", "decode_tokens", "decode_tok_s", "ttft_ms",
                          "peak_rss_kb", "threads", "kernel_variant", "device", "gpu_device", "gpu_program", "notice",
                          "image_encode_ms", "image_slices", "image_patches", "kv_dtype", "kv_bytes",
                          "kv_bytes_per_token"}
    plan = json.loads((bundle / "plan.json").read_text())
    cache = plan["cache"]  # [C, Hkv, d] per layer, k and v
    per_token = 2 * plan["num_layers"] * cache["shape"][1] * cache["shape"][2] * \
        {"float16": 2, "float32": 4}[cache["dtype"]]
    assert stats["kv_dtype"] == cache["dtype"] and stats["kv_bytes_per_token"] == per_token
    assert stats["kv_bytes"] == per_token * cache["shape"][0]
    assert stats["image_encode_ms"] == 0 and stats["image_slices"] == 0 and stats["image_patches"] == 0
    assert stats["kernel_variant"] == "default"  # a host bundle has one kernel set
    assert stats["device"] == "cpu" and stats["notice"] == ""
    assert stats["prefill_tokens"] == len(PROMPT) and stats["decode_tokens"] == N_NEW - 1
    assert stats["threads"] == 2
    for key in ("load_ms", "prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_kb"):
        assert stats[key] > 0, (key, stats)


def reference_probs(logits: np.ndarray, hist: np.ndarray, s: dict) -> np.ndarray:
    """numpy version of the C sampler's filters: penalty, temperature, top-k, top-p, min-p; float64 softmax."""
    lg = logits.astype(np.float32).copy()  # [V]
    v = lg.size
    rp, last_n = np.float32(s.get("repetition_penalty", 1.0)), s.get("repeat_last_n", 64)
    if rp != 1 and last_n != 0:
        window = hist if last_n < 0 else hist[-last_n:]
        for t in set(window.tolist()):
            lg[t] = lg[t] / rp if lg[t] > 0 else lg[t] * rp
    out = np.zeros(v, np.float64)
    temp = s.get("temperature", 0.0)
    if temp <= 0:
        out[int(np.argmax(lg))] = 1.0
        return out
    lg = lg / np.float32(temp)
    keep = np.lexsort((np.arange(v), -lg))  # by logit desc, then id

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x.astype(np.float64) - float(x.max()))
        return e / e.sum()

    top_k = s.get("top_k", 0)
    if 0 < top_k < v:
        keep = keep[:top_k]
    top_p = s.get("top_p", 1.0)
    if top_p < 1:
        cum = np.cumsum(softmax(lg[keep]))
        keep = keep[: int(np.argmax(cum >= np.float64(np.float32(top_p)))) + 1]
    min_p = s.get("min_p", 0.0)
    if min_p > 0:
        x = lg[keep].astype(np.float64)
        keep = keep[np.exp(x - x.max()) >= np.float64(np.float32(min_p))]
    out[keep] = softmax(lg[keep])
    return out


CASES = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_k": 40},
    {"temperature": 1.3, "top_p": 0.8},
    {"temperature": 1.0, "min_p": 0.05},
    {"temperature": 0.9, "top_k": 100, "top_p": 0.9, "min_p": 0.02, "repetition_penalty": 1.3, "repeat_last_n": 8},
    {"temperature": 0.0, "repetition_penalty": 2.0, "repeat_last_n": -1},
    {"temperature": 1.0, "repetition_penalty": 0.8, "repeat_last_n": 0},
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_sampler_probs_match_numpy(model, case: int) -> None:
    from mcpm.runtime.binding import sampler_probs

    rng = np.random.default_rng(case)
    s = CASES[case]
    for _ in range(3):
        logits = (rng.standard_normal(500) * 3).astype(np.float32)  # [500]
        hist = rng.integers(0, 500, 30).astype(np.int32)  # [30]
        logits[hist[-3:]] += 6  # make the penalty matter
        got = sampler_probs(model._lib, logits, hist, s)
        ref = reference_probs(logits, hist, s)
        assert got.dtype == np.float32 and abs(float(got.sum()) - 1) < 1e-5
        np.testing.assert_allclose(got, ref, atol=1e-6)
        assert ((got > 0) == (ref > 0)).all()
    with pytest.raises(McpmError, match="min_p"):
        sampler_probs(model._lib, np.zeros(4, np.float32), [], {"min_p": -1.0})


def test_cli_bench_json(bundle: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mcpm.cli", "bench", str(bundle), "-p", "16", "-n", "8", "-r", "2",
                           "-t", "2", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n_prompt"] == 16 and result["n_gen"] == 8 and result["threads"] == 2
    assert len(result["runs"]) == 2 and result["target"]["name"] == "host"
    assert result["machine"]["cpu_count"] >= 1
    for run in result["runs"]:
        assert run["prefill_tokens"] == 16 and run["decode_tokens"] == 7 and run["decode_tok_s"] > 0
    assert result["summary"]["prefill_tok_s"]["mean"] > 0
    text = subprocess.run([sys.executable, "-m", "mcpm.cli", "bench", str(bundle), "-p", "8", "-n", "4", "-r", "1"],
                          capture_output=True, text=True)
    assert text.returncode == 0 and "pp8" in text.stdout and "tg4" in text.stdout, text.stderr
