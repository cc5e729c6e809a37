"""Apply a recipe to a reference model: packed weights, their size, and a dequantized copy for quality checks."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from mcpm.quantize.packing import PackedWeight, dequantize, quantize
from mcpm.quantize.recipe import Recipe


def quantizable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters that a recipe applies to (2-D weights; a tied lm_head is the embedding itself)."""
    return {name: p for name, p in model.named_parameters() if p.dim() == 2}


def weight_bytes(model: nn.Module, recipe: Recipe) -> tuple[int, int]:
    """(bytes of all weights once packed, number of weights); works on meta-device models (shapes only)."""
    total, count = 0, 0
    for name, p in model.named_parameters():
        scheme = recipe.scheme_for(name, p.dim())
        n, k = (p.shape[0], p.shape[1]) if p.dim() == 2 else (1, p.numel())
        total += scheme.packed_bytes(n, k)
        count += p.numel()
    return total, count


def quantize_model(model: nn.Module, recipe: Recipe) -> dict[str, PackedWeight]:
    return {
        name: quantize(p.detach().float().numpy(), recipe.scheme_for(name, 2)) for name, p in quantizable(model).items()
    }


def dequantized_copy(model: nn.Module, recipe: Recipe) -> nn.Module:
    """A float copy of ``model`` whose weights are exactly what the packed weights dequantize to."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in quantizable(clone).items():
            packed = quantize(p.detach().float().numpy(), recipe.scheme_for(name, 2))
            p.copy_(torch.from_numpy(np.ascontiguousarray(dequantize(packed))).to(p.dtype))
    return clone
