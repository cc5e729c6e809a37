"""The MiniCPM reference (unfolded muP scales) against transformers' Llama/Mixtral with the scales folded in.

Both sides read the same safetensors file: the reference through mcpm's loader and name map, the
transformers model by its own (Llama-compatible) names. A swapped q/k, a dropped RoPE, a wrong or missing
scale, or a tied/untied mix-up changes the logits far beyond the tolerance.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from mcpm.export.loading import load_model
from tests.conftest import tiny_minicpm, write_tiny

ATOL = 2e-4  # float32 end to end; logits are O(1..10)


def folded_state(hf: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """HF MiniCPM tensors -> Llama tensors with scale_emb, residual scale and logit divisor folded in."""
    layers = cfg["num_hidden_layers"]
    residual = cfg["scale_depth"] / math.sqrt(layers)
    divisor = cfg["hidden_size"] / cfg["dim_model_base"]
    out = {k: v.clone() for k, v in hf.items()}
    embed = hf["model.embed_tokens.weight"]
    out["model.embed_tokens.weight"] = embed * cfg["scale_emb"]
    out["lm_head.weight"] = embed.clone() if cfg["tie_word_embeddings"] else hf["lm_head.weight"]
    out["model.norm.weight"] = hf["model.norm.weight"] / divisor
    for i in range(layers):
        for name in (f"model.layers.{i}.self_attn.o_proj.weight", f"model.layers.{i}.mlp.down_proj.weight"):
            if name in out:
                out[name] = hf[name] * residual
    return out


def llama_for(cfg: dict, rope_scaling: dict | None = None) -> LlamaForCausalLM:
    lc = LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"], max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"], rope_theta=cfg["rope_theta"], tie_word_embeddings=False,
        rope_scaling=rope_scaling, attention_bias=False, mlp_bias=False,
    )
    lc._attn_implementation = "eager"
    return LlamaForCausalLM(lc).eval()


def reference_logits(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    loaded = load_model(model_dir, tokenizer=False)
    with torch.no_grad():
        return loaded.model(ids)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("seq", [1, 7, 19])
def test_dense_matches_llama_with_folded_scales(tmp_path: Path, tied: bool, seq: int) -> None:
    cfg = tiny_minicpm(tie_word_embeddings=tied)
    write_tiny(tmp_path, cfg, seed=3)
    llama = llama_for(cfg)
    state = folded_state(load_file(tmp_path / "model.safetensors"), cfg)
    missing, unexpected = llama.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m for m in missing)
    ids = torch.randint(0, cfg["vocab_size"], (2, seq))
    with torch.no_grad():
        expected = llama(ids).logits
    got = reference_logits(tmp_path, ids)
    assert expected.abs().max() > 0.5  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)


def test_tied_and_untied_differ(tmp_path: Path) -> None:
    """An untied checkpoint's own lm_head is used (a loader that reused the embedding would pass the test above
    only by accident if lm_head equalled the embedding)."""
    cfg = tiny_minicpm(tie_word_embeddings=False)
    write_tiny(tmp_path, cfg, seed=4)
    sd = load_file(tmp_path / "model.safetensors")
    assert not torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])


def test_dynamic_ntk_rope_matches_llama(tmp_path: Path) -> None:
    """MiniCPM-2B-128k style: theta grows once the sequence passes max_position_embeddings."""
    cfg = tiny_minicpm(max_position_embeddings=12, rope_scaling={"type": "dynamic", "factor": 4.0}, rope_theta=10000.0)
    write_tiny(tmp_path, cfg, seed=5)
    llama = llama_for(cfg, rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    llama.load_state_dict(folded_state(load_file(tmp_path / "model.safetensors"), cfg), strict=False)
    ids = torch.randint(0, cfg["vocab_size"], (1, 29))  # beyond 12 positions: the dynamic base is in effect
    with torch.no_grad():
        expected = llama(ids).logits
    torch.testing.assert_close(reference_logits(tmp_path, ids), expected, atol=ATOL, rtol=1e-4)
    # and it is not the plain RoPE
    plain = llama_for(cfg)
    plain.load_state_dict(folded_state(load_file(tmp_path / "model.safetensors"), cfg), strict=False)
    with torch.no_grad():
        assert (plain(ids).logits - expected).abs().max() > 1e-2


def test_moe_matches_mixtral_with_folded_scales(tmp_path: Path) -> None:
    cfg = tiny_minicpm(num_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)
    write_tiny(tmp_path, cfg, seed=6)
    hf = load_file(tmp_path / "model.safetensors")
    folded = folded_state(hf, cfg)
    residual = cfg["scale_depth"] / math.sqrt(cfg["num_hidden_layers"])
    mc = MixtralConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"], max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"], rope_theta=cfg["rope_theta"], tie_word_embeddings=False,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
    )
    mc._attn_implementation = "eager"
    mixtral = MixtralForCausalLM(mc).eval()
    state = {k: v for k, v in folded.items() if ".mlp." not in k}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp"
        state[f"{p}.gate.weight"] = hf[f"{p}.gate.weight"]
        state[f"{p}.experts.gate_up_proj"] = torch.stack(
            [torch.cat([hf[f"{p}.experts.{e}.w1.weight"], hf[f"{p}.experts.{e}.w3.weight"]]) for e in range(4)]
        )
        state[f"{p}.experts.down_proj"] = torch.stack([hf[f"{p}.experts.{e}.w2.weight"] * residual for e in range(4)])
    missing, unexpected = mixtral.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    ids = torch.randint(0, cfg["vocab_size"], (2, 11))
    with torch.no_grad():
        expected = mixtral(ids).logits
    torch.testing.assert_close(reference_logits(tmp_path, ids), expected, atol=ATOL, rtol=1e-4)
