"""Greedy generation with a KV cache equals generation that re-runs the whole prefix every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mcpm.export.loading import load_model
from mcpm.export.reference_generate import SamplingParams, generate
from tests.conftest import tiny_minicpm, tiny_minicpm3, write_tiny

CONFIGS = {
    "minicpm-gqa-tied": tiny_minicpm(),
    "minicpm-untied": tiny_minicpm(tie_word_embeddings=False, num_key_value_heads=4),
    "minicpm-moe": tiny_minicpm(num_experts=4, num_experts_per_tok=2),
    "minicpm-dynamic-ntk": tiny_minicpm(max_position_embeddings=16, rope_scaling={"type": "dynamic", "factor": 2.0}),
    "minicpm3-mla": tiny_minicpm3(),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("prompt_len", [1, 5])
def test_cached_greedy_equals_uncached(tmp_path: Path, name: str, prompt_len: int) -> None:
    write_tiny(tmp_path, CONFIGS[name], seed=11)
    model = load_model(tmp_path, tokenizer=False).model
    prompt = torch.randint(3, 4096, (prompt_len,)).tolist()
    cached = generate(model, prompt, 12, context_length=10_000)
    uncached = generate(model, prompt, 12, context_length=10_000, use_cache=False)
    if name == "minicpm-dynamic-ntk":
        # dynamic NTK changes theta with the total length, and cached keys keep the theta they were rotated
        # with (as in the published implementation): both agree only while within max_position_embeddings.
        assert cached.tokens[: 16 - prompt_len] == uncached.tokens[: 16 - prompt_len]
    else:
        assert cached.tokens == uncached.tokens
    # random tied models often repeat one token greedily: sampled runs (same seed) exercise varied paths too
    params = SamplingParams(temperature=4.0, seed=5)
    sampled = generate(model, prompt, 12, context_length=10_000, params=params)
    sampled_uncached = generate(model, prompt, 12, context_length=10_000, params=params, use_cache=False)
    assert len(set(sampled.tokens)) > 3
    n = 16 - prompt_len if name == "minicpm-dynamic-ntk" else 12
    assert sampled.tokens[:n] == sampled_uncached.tokens[:n]


@pytest.mark.parametrize("name", ["minicpm-gqa-tied", "minicpm3-mla"])
def test_chunked_prefill_logits_match_full(tmp_path: Path, name: str) -> None:
    """Prefill in chunks of 4 (odd total 11, a chunk boundary inside) gives the logits of one full pass."""
    write_tiny(tmp_path, CONFIGS[name], seed=12)
    model = load_model(tmp_path, tokenizer=False).model
    ids = torch.randint(3, 4096, (1, 11))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        parts = [model(ids[:, s : s + 4], cache) for s in range(0, 11, 4)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-4, rtol=1e-4)


def test_context_overflow_is_a_clear_error(tmp_path: Path) -> None:
    from mcpm.errors import ContextOverflowError

    write_tiny(tmp_path, tiny_minicpm(), seed=1)
    model = load_model(tmp_path, tokenizer=False).model
    with pytest.raises(ContextOverflowError, match="does not fit the context of 8 tokens"):
        generate(model, list(range(3, 12)), 4, context_length=8)
