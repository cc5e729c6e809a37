"""Tensor-name mapping between a model's own parameter names and a checkpoint's (Hugging Face) names.

A family's loader declares an ordered list of ``(own, hf)`` patterns where ``{i}`` (layer) and ``{e}``
(expert) stand for integers; the first pattern that matches a name wins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm

from mcpm.errors import CheckpointError
from mcpm.export.checkpoint import TensorReader


def _compile(pattern: str) -> re.Pattern[str]:
    regex = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{e\}", r"(?P<e>\d+)")
    return re.compile(f"^{regex}$")


class NameMap:
    def __init__(self, rules: Sequence[tuple[str, str]]) -> None:
        self.rules = [(own, hf, _compile(own), _compile(hf)) for own, hf in rules]

    def to_hf(self, own_name: str) -> str:
        for _, hf, own_re, _ in self.rules:
            m = own_re.match(own_name)
            if m:
                return hf.format(**m.groupdict())
        raise KeyError(f"no checkpoint name for parameter {own_name!r}")

    def to_own(self, hf_name: str) -> str | None:
        for own, _, _, hf_re in self.rules:
            m = hf_re.match(hf_name)
            if m:
                return own.format(**m.groupdict())
        return None


# The Llama-style names every MiniCPM LM checkpoint shares (the muP skeleton, the output projection and the
# dense SiLU-gated MLP); a family adds its attention (and MoE) names.
COMMON_HF_RULES: list[tuple[str, str]] = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("final_norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("layers.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.mlp_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.attn.wo.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("layers.{i}.mlp.w_gate.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    ("layers.{i}.mlp.w_up.weight", "model.layers.{i}.mlp.up_proj.weight"),
    ("layers.{i}.mlp.w_down.weight", "model.layers.{i}.mlp.down_proj.weight"),
]


def load_weights(model: nn.Module, reader: TensorReader, names: NameMap, dtype: torch.dtype, progress: bool) -> None:
    """Copy every parameter of ``model`` from the checkpoint, checking names and shapes."""
    params = dict(model.named_parameters())
    for own_name, param in tqdm(params.items(), desc="loading weights", unit="tensor", disable=not progress):
        hf_name = names.to_hf(own_name)
        tensor = reader.get(hf_name, tuple(param.shape))
        with torch.no_grad():
            param.copy_(tensor.to(dtype))
            finite = bool(torch.isfinite(param).all())
        if not finite:  # NaN/Inf weights exported "fine" and generated only ⁇
            bad = int((~torch.isfinite(param)).sum())
            raise CheckpointError(f"tensor {hf_name!r} has {bad} values that are not finite (NaN or Inf)",
                                  "the checkpoint is damaged: download or convert it again")


# Buffers some checkpoints carry that the model recomputes (RoPE frequencies and caches): never weights.
RECOMPUTED = re.compile(r".*\.rotary_emb\.(inv_freq|cos_cached|sin_cached)$")


def check_no_extra_tensors(reader: TensorReader, names: NameMap, model: nn.Module, ignore: Sequence[str] = (),
                           allow_unused: bool = False) -> None:
    """Refuse tensors of known shape-class that the model lacks (e.g. more layers than config.json says), and
    tensors the family does not map at all (e.g. a q_proj.bias): dropping them would silently change the model."""
    own = {n for n, _ in model.named_parameters()}
    extra = [n for n in reader.names() if (o := names.to_own(n)) is not None and o not in own and n not in ignore]
    if extra:
        raise CheckpointError(
            f"checkpoint has tensors the config does not account for (e.g. {extra[0]!r})",
            "config.json and the weights do not belong together",
        )
    unmapped = [n for n in reader.names() if names.to_own(n) is None and n not in ignore and not RECOMPUTED.match(n)]
    if unmapped and not allow_unused:
        more = f" and {len(unmapped) - 1} more" if len(unmapped) > 1 else ""
        raise CheckpointError(
            f"checkpoint tensor {unmapped[0]!r}{more} is not part of this model family (mcpm would drop it, "
            "changing the model)", "check the checkpoint's architecture, or pass --allow-unused-tensors to drop them",
        )
