"""Apply a recipe to a reference model: packed weights, their size, and a dequantized copy for quality checks.

``reference_for`` is what a quantized bundle computes, in PyTorch: the dequantized weights and, for the weights
whose scheme quantizes activations (``-a8``), the run-time int8 quantization of those linears' inputs.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from mcpm.export.models.layers import MuPCausalLM
from mcpm.quantize.activations import fake_quant_int8
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


def dequantized_copy(model: nn.Module, recipe: Recipe, inplace: bool = False) -> nn.Module:
    """A float copy of ``model`` (``model`` itself if ``inplace``) whose weights are exactly what the packed weights
    dequantize to."""
    clone = model if inplace else copy.deepcopy(model)
    with torch.no_grad():
        for name, p in quantizable(clone).items():
            packed = quantize(p.detach().float().numpy(), recipe.scheme_for(name, 2))
            p.copy_(torch.from_numpy(np.ascontiguousarray(dequantize(packed))).to(p.dtype))
    return clone


def reference_for(model: nn.Module, recipe: Recipe, kv_dtype: str = "float32", inplace: bool = False) -> nn.Module:
    """The float model a bundle quantized with ``recipe`` computes: :func:`dequantized_copy` plus the activation
    quantization of the ``-a8`` weights (:func:`activation_quantized`; a no-op for the other schemes), with K and V
    rounded to the bundle's KV cache dtype (``kv_dtype``, plan.json "cache"). ``inplace``: ``model`` itself becomes
    the reference (no copy: the export's golden run, when the model is needed no more)."""
    from mcpm.export.models.minicpm.model import with_kv_dtype

    quantized = dequantized_copy(model, recipe, inplace=inplace)
    return with_kv_dtype(activation_quantized(quantized, recipe, inplace=True), kv_dtype)


def _quantize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (fake_quant_int8(args[0]), *args[1:])


def activation_quantized(model: nn.Module, recipe: Recipe, inplace: bool = False) -> nn.Module:
    """``model`` (a copy unless ``inplace``) whose linears with an ``-a8`` scheme (activations == "int8") see
    :func:`mcpm.quantize.activations.fake_quant_int8` of their input, as the kernels quantize it at run time.

    Hooks: a forward pre-hook on each such ``nn.Linear`` (parameter names relative to ``model``, as for
    :func:`dequantized_copy`), and for each MuPCausalLM whose logits weight (the tied ``embed.weight``, else
    ``lm_head.weight``) has an a8 scheme, its ``logits_input`` (applied to the input of
    ``F.linear(final_norm(h) / logit_divisor, W)``). The weights are left as they are (see :func:`reference_for`).
    """
    if not inplace:
        model = copy.deepcopy(model)

    def a8(name: str) -> bool:
        return recipe.scheme_for(name, 2).activations == "int8"

    heads = {name: m for name, m in model.named_modules() if isinstance(m, MuPCausalLM)}
    head_linears = {id(m.lm_head) for m in heads.values() if m.lm_head is not None}  # via logits_input below
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and id(m) not in head_linears and a8(f"{name}.weight"):
            m.register_forward_pre_hook(_quantize_input)
    for prefix, lm in heads.items():
        head = "embed.weight" if lm.lm_head is None else "lm_head.weight"
        if a8(f"{prefix}.{head}" if prefix else head):
            lm.logits_input = fake_quant_int8
    return model
