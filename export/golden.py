"""Golden results of a bundle (mcpm-config.json "golden"; docs/self-test.md): what the model must compute.

At export, the PyTorch reference of the bundle's quantization (:func:`mcpm.quantize.apply.reference_for`: the
dequantized weights, the run-time int8 activations of ``-a8`` schemes, K and V rounded to the KV cache's dtype) reads a
fixed prompt and continues it greedily for ``GOLDEN_STEPS`` tokens; the record keeps the prompt's ids, the greedy ids
and, at every step, the five largest logits and max|logit|. The C runtime's self-test (``mcpm_self_test_json``) feeds
the same ids on a phone, in every kernel set, and compares its logits with these (teacher-forced: one near-tie does
not derail the rest). The reference is independent of the compiled plan: a wrong kernel, a wrong weight order or a
wrong plan all show.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from mcpm.quantize.recipe import Recipe

# A paragraph long enough to cross a prefill-chunk boundary (> 64 tokens with the usual tokenizers), with digits,
# punctuation and a line break; truncated to what the context holds.
GOLDEN_PROMPT = (
    "The people of the United States, in order to form a more perfect union, wrote down in 1787 how their "
    "government would work. Seven articles describe the Congress, the President and the courts; twenty-seven "
    "amendments followed.\nA small language model running on a phone reads this text and continues it:"
)
GOLDEN_STEPS = 16
TOP = 5
# Tolerances, as a fraction of max|logit| at that step, of the runtime's logits against the reference's. Measured on
# the host (tests/test_quant_a8.py): float activations differ by ~5e-5 (summation order only), int8 activations by
# up to 1.6e-2 (a float-rounding difference flips an int8 code now and then; median 5e-3).
TOLERANCE_FLOAT = 2e-3
TOLERANCE_A8 = 0.03
# Skip the golden run when its peak would take more of the host's memory than this. Its peak is ~6.4 bytes per
# parameter (measured: 17 GiB for a MiniCPM-2B-shaped checkpoint of 2.7B parameters: the float32 weights plus one
# tensor's quantize/dequantize temporaries).
REFERENCE_BYTES_PER_PARAM = 6.5
MAX_REFERENCE_SHARE = 0.8


def tolerance_for(recipe: Recipe) -> float:
    schemes = (recipe.default, *(r.scheme for r in recipe.rules))
    return TOLERANCE_A8 if any(s.activations == "int8" for s in schemes) else TOLERANCE_FLOAT


def reference_too_large(lm: nn.Module) -> str:
    """'' when the float32 reference of ``lm`` fits comfortably in this machine's memory, else why not."""
    need = REFERENCE_BYTES_PER_PARAM * sum(p.numel() for p in lm.parameters())
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return ""
    if need > MAX_REFERENCE_SHARE * have:
        return (f"the float32 reference needs about {need / 2**30:.1f} GiB, more than {MAX_REFERENCE_SHARE:.0%} of "
                f"this machine's {have / 2**30:.0f} GiB")
    return ""


@torch.no_grad()
def golden_results(lm: nn.Module, tokenizer: Any, recipe: Recipe, kv_dtype: str, context_length: int) -> dict[str, Any]:
    """The "golden" record of a bundle. ``lm`` (the loaded language model) becomes its own float32 reference in place:
    call this after the weights are written, when the export needs ``lm`` no more."""
    from mcpm.export.reference_generate import TorchStepper
    from mcpm.quantize.apply import reference_for

    steps = max(1, min(GOLDEN_STEPS, context_length // 4))
    ids = tokenizer.encode(GOLDEN_PROMPT, add_bos=True)
    prompt = ids[: max(1, context_length - steps - 1)]
    reference = reference_for(lm.float(), recipe, kv_dtype, inplace=True)
    stepper = TorchStepper(reference)
    logits = stepper.prefill(prompt).float()
    out: list[int] = []
    top5: list[list[list[float]]] = []
    scale: list[float] = []
    for step in range(steps):
        if step:
            logits = stepper.decode(out[-1]).float()
        values, order = torch.topk(logits, TOP)
        top5.append([[int(i), float(v)] for i, v in zip(order, values, strict=True)])
        scale.append(float(logits.abs().max()))
        out.append(int(order[0]))
    return {
        "reference": f"PyTorch reference of {recipe.name} (dequantized weights"
                     f"{', int8 activations' if tolerance_for(recipe) == TOLERANCE_A8 else ''}, KV {kv_dtype})",
        "prompt": GOLDEN_PROMPT,
        "prompt_ids": prompt,
        "ids": out,
        "top5": top5,  # [step][rank] = [id, logit]: the logits that predicted ids[step]
        "scale": scale,  # [step] max|logit|
        "tolerance": tolerance_for(recipe),  # fraction of scale[step]
        "text": tokenizer.decode([i for i in out if i < tokenizer.piece_count or i in tokenizer.added.values()]),
    }
