"""The shipped default model: size, scales, readable greedy English, perplexity, CLI generation."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mcpm.export.loading import DEFAULT_MODEL_DIR, LoadedModel, load_model
from mcpm.export.reference_generate import generate

PROMPT = "We must work together to"


@pytest.fixture(scope="module")
def default() -> LoadedModel:
    return load_model(DEFAULT_MODEL_DIR)


def heldout_words() -> set[str]:
    return set(re.findall(r"[a-z]+", (DEFAULT_MODEL_DIR / "heldout.txt").read_text().lower()))


def test_checkpoint_is_small_and_minicpm_shaped(default: LoadedModel) -> None:
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir() if p.name != "heldout.txt")
    assert size <= 20 * 2**20
    cfg = default.config
    assert default.family.model_type == "minicpm"
    assert cfg.scale_emb != 1 and cfg.residual_scale != 1 and cfg.logit_divisor != 1
    assert cfg.num_kv_heads < cfg.num_attention_heads  # GQA
    n_params = sum(p.numel() for p in default.model.parameters())
    assert 1_000_000 < n_params < 10_000_000


def test_greedy_continuation_is_readable_english(default: LoadedModel) -> None:
    tok = default.tokenizer
    assert tok is not None
    ids = tok.encode(PROMPT, add_bos=True)
    out = generate(default.model, ids, 40, default.config.max_position_embeddings, tok.stop_ids)
    text = tok.decode(out.tokens)
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) >= 15, text
    known = heldout_words()
    share = sum(w.lower() in known for w in words) / len(words)
    assert share >= 0.85, (share, text)  # real English words, not fragments


def test_heldout_perplexity_matches_training_report(default: LoadedModel) -> None:
    """Perplexity through mcpm's loader on held-out text is in line with what training reported."""
    tok = default.tokenizer
    assert tok is not None
    reported = json.loads((DEFAULT_MODEL_DIR / "training.json").read_text())["heldout_perplexity"]
    ids = torch.tensor(tok.encode((DEFAULT_MODEL_DIR / "heldout.txt").read_text()[:20000], add_bos=True)[:1025])
    with torch.no_grad():
        logits = default.model(ids[None, :-1])[0]
    ppl = math.exp(F.cross_entropy(logits.float(), ids[1:]).item())
    assert ppl < 1.5 * reported, (ppl, reported)
    assert ppl < 200  # an untrained model of this vocabulary scores ~4096


def test_cached_and_uncached_greedy_agree_on_default_model(default: LoadedModel) -> None:
    tok = default.tokenizer
    assert tok is not None
    ids = tok.encode("The Congress of the United States", add_bos=True)
    a = generate(default.model, ids, 32, 2048)
    b = generate(default.model, ids, 32, 2048, use_cache=False)
    assert a.tokens == b.tokens and len(set(a.tokens)) > 5


def test_cli_generate_reference_streams_text_and_stats() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mcpm.cli", "generate", "default", "--reference", "-p", PROMPT, "-n", "12", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    *text_lines, stats_line = proc.stdout.strip().splitlines()
    stats = json.loads(stats_line)
    assert "".join(text_lines).startswith(PROMPT) and len("".join(text_lines)) > len(PROMPT) + 10
    assert stats["generated_tokens"] == 12 and stats["decode_tok_s"] > 0 and stats["prefill_tok_s"] > 0


def test_cli_chat_template_and_context_overflow() -> None:
    long_prompt = "word " * 3000
    proc = subprocess.run(
        [sys.executable, "-m", "mcpm.cli", "generate", "default", "--reference", "-p", long_prompt],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "does not fit the context of 2048 tokens" in proc.stderr and "Traceback" not in proc.stderr
