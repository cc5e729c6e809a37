"""Quality of quantized weights versus float: perplexity, mean KL divergence, top-1 agreement (``mcpm eval``).

Each recipe is measured on :func:`mcpm.quantize.apply.reference_for`: the dequantized weights, plus the int8
activation quantization of the ``-a8`` schemes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mcpm.quantize.apply import reference_for, weight_bytes
from mcpm.quantize.recipe import Recipe


@dataclass
class QualityRow:
    recipe: str
    bits_per_weight: float
    weight_mib: float
    perplexity: float
    mean_kl: float  # KL(float || quantized) per next-token distribution, nats
    top1_agreement: float  # share of positions whose argmax equals float's

    def as_dict(self) -> dict[str, float | str]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@torch.no_grad()
def _log_probs(model: nn.Module, windows: list[torch.Tensor]) -> list[torch.Tensor]:
    return [F.log_softmax(model(w[None, :-1])[0].float(), dim=-1) for w in windows]


def windows_of(tokens: list[int], seq_len: int) -> list[torch.Tensor]:
    ids = torch.tensor(tokens)
    return [ids[s : s + seq_len + 1] for s in range(0, len(tokens) - 1, seq_len) if len(ids[s : s + seq_len + 1]) > 1]


@torch.no_grad()
def evaluate(model: nn.Module, recipes: list[Recipe], tokens: list[int], seq_len: int = 256,
             progress: bool = False) -> list[QualityRow]:
    windows = windows_of(tokens, seq_len)
    targets = torch.cat([w[1:] for w in windows])
    reference = torch.cat(_log_probs(model, windows))  # [T, vocab]
    rows = []
    for recipe in tqdm(recipes, desc="evaluating schemes", disable=not progress):
        quant = reference if recipe.default.name == "f32" and not recipe.rules else None
        if quant is None:
            quant = torch.cat(_log_probs(reference_for(model, recipe), windows))  # + int8 activations (-a8)
        nll = F.nll_loss(quant, targets).item()
        kl = (reference.exp() * (reference - quant)).sum(-1).mean().item()
        agree = (reference.argmax(-1) == quant.argmax(-1)).float().mean().item()
        nbytes, count = weight_bytes(model, recipe)
        rows.append(QualityRow(recipe.name, 8 * nbytes / count, nbytes / 2**20, math.exp(nll), max(kl, 0.0), agree))
    return rows
