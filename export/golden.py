"""Golden results of a bundle (mcpm-config.json "golden"; docs/self-test.md): what the model must compute.

At export, the PyTorch reference of the bundle's quantization (:func:`mcpm.quantize.apply.reference_for`: the
dequantized weights, the run-time int8 activations of ``-a8`` schemes, K and V rounded to the KV cache's dtype) reads a
fixed prompt and continues it greedily for ``GOLDEN_STEPS`` tokens; the record keeps the prompt's ids, the greedy ids
and, at every step, the five largest logits and max|logit|. The C runtime's self-test (``mcpm_self_test_json``) feeds
the same ids on a phone, in every kernel set, and compares its logits with these (teacher-forced: one near-tie does
not derail the rest). The reference is independent of the compiled plan: a wrong kernel, a wrong weight order or a
wrong plan all show.

MiniCPM-V bundles also get ``golden["image"]``: a generated image (``golden_image``: gradients and a checkerboard,
computed by the same integer formula in C) that the processor slices (overview + 2 slices, one above the other, where
the context holds them), a fixed question, the chat turn's ids (BOS, template, image placeholders, question) and the
same per-step record. The reference is the MiniCPMV model with the vision weights rounded to the bundle's vision
dtype; the self-test encodes the image on the device (its own resize, normalize, vision tower and resampler), builds
the turn's ids and feeds them, so slicing, placeholder layout, vision kernels and feature placement are checked too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mcpm.quantize.recipe import Recipe

if TYPE_CHECKING:
    from mcpm.export.models.minicpmv.model import MiniCPMV

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
GOLDEN_IMAGE_MESSAGE = "What is in this picture? Describe it in one sentence."
# Skip the golden run when its peak would take more of the host's memory than this. Its peak is ~6.4 bytes per
# parameter (measured: 17 GiB for a MiniCPM-2B-shaped checkpoint of 2.7B parameters: the float32 weights plus one
# tensor's quantize/dequantize temporaries).
REFERENCE_BYTES_PER_PARAM = 6.5
# The golden image runs after the LM's golden run, whose quantize/dequantize temporaries are gone by then: the LM's
# float32 weights stay, and the vision tower and resampler join them in float32 (with their bf16 originals while
# converting). An estimate, not a measurement: peak = max(text peak, 4 B x LM + 6 B x vision parameters).
FLOAT32_BYTES = 4.0
VISION_BYTES_PER_PARAM = 6.0
MAX_REFERENCE_SHARE = 0.8


def machine_bytes() -> int:
    """This machine's physical memory (0 when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def tolerance_for(recipe: Recipe) -> float:
    schemes = (recipe.default, *(r.scheme for r in recipe.rules))
    return TOLERANCE_A8 if any(s.activations == "int8" for s in schemes) else TOLERANCE_FLOAT


def reference_too_large(lm: nn.Module, vision: tuple[nn.Module, ...] = ()) -> str:
    """'' when the float32 reference of ``lm`` (and of the ``vision`` modules, for the golden image) fits comfortably
    in this machine's memory, else why not."""
    lm_params = sum(p.numel() for p in lm.parameters())
    need = REFERENCE_BYTES_PER_PARAM * lm_params
    if vision:
        vision_params = sum(p.numel() for m in vision for p in m.parameters())
        need = max(need, FLOAT32_BYTES * lm_params + VISION_BYTES_PER_PARAM * vision_params)
    have = machine_bytes()
    if have and need > MAX_REFERENCE_SHARE * have:
        return (f"the float32 reference needs about {need / 2**30:.1f} GiB, more than {MAX_REFERENCE_SHARE:.0%} of "
                f"this machine's {have / 2**30:.0f} GiB")
    return ""


def golden_image(width: int, height: int) -> np.ndarray:
    """The self-test's image, uint8 [height, width, 3]: red rises left to right, green top to bottom, blue a
    32-pixel checkerboard (30 / 230). mcpm_selftest.c computes the same pixels."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = [(x * 255) // max(width - 1, 1), (y * 255) // max(height - 1, 1), ((x // 32 + y // 32) % 2) * 200 + 30]
    return np.stack(rgb, axis=-1).astype(np.uint8)


def _greedy_record(first: torch.Tensor, decode: Callable[[int], torch.Tensor], steps: int) -> dict[str, Any]:
    """Greedy ids, top-5 [id, logit] and max|logit| for ``steps`` steps from the logits ``first`` [vocab]."""
    logits = first.float()
    out: list[int] = []
    top5: list[list[list[float]]] = []
    scale: list[float] = []
    for step in range(steps):
        if step:
            logits = decode(out[-1]).float()
        values, order = torch.topk(logits, TOP)
        top5.append([[int(i), float(v)] for i, v in zip(order, values, strict=True)])
        scale.append(float(logits.abs().max()))
        out.append(int(order[0]))
    return {"ids": out,
            "top5": top5,  # [step][rank] = [id, logit]: the logits that predicted ids[step]
            "scale": scale}  # [step] max|logit|


def _text(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode([i for i in ids if i < tokenizer.piece_count or i in tokenizer.added.values()])


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
    record = _greedy_record(stepper.prefill(prompt), stepper.decode, steps)
    return {
        "reference": f"PyTorch reference of {recipe.name} (dequantized weights"
                     f"{', int8 activations' if tolerance_for(recipe) == TOLERANCE_A8 else ''}, KV {kv_dtype})",
        "prompt": GOLDEN_PROMPT,
        "prompt_ids": prompt,
        **record,
        "tolerance": tolerance_for(recipe),  # fraction of scale[step]
        "text": _text(tokenizer, record["ids"]),
    }


@torch.no_grad()
def image_golden_results(model: MiniCPMV, tokenizer: Any, vision_dtype: str, max_patches: int,
                         context_length: int, tolerance: float) -> dict[str, Any] | None:
    """golden["image"] of a MiniCPM-V bundle, or None when no golden image fits the context or ``max_patches``.
    ``tolerance``: the text's; the vision tower adds no more (measured on the host, tiny MiniCPM-V: 1e-4 of
    max|logit| with float16 vision weights and q4g32, 7e-3 with q4g32-a8).
    ``model`` (MiniCPMV) must already hold the LM's reference (:func:`golden_results`); its vision weights are
    rounded to ``vision_dtype`` in place."""
    from mcpm.export.models.minicpmv.preprocess import ImageTokens, image_positions, prepare_config_image
    from mcpm.export.models.minicpmv.prompt import chat_prompt_ids

    cfg = model.cfg
    side = cfg.scale_resolution
    steps = max(1, min(GOLDEN_STEPS, context_length // 8))
    # tall: overview + 2 slices in two rows (their placeholders have the newline between rows) where they fit
    for width, height in ((side, 2 * side), (side, side)):
        prep = prepare_config_image(golden_image(width, height), cfg)
        patches = max(-(-p.shape[1] // cfg.patch_size) * -(-p.shape[2] // cfg.patch_size) for p in prep.pixels)
        ids = chat_prompt_ids(tokenizer, GOLDEN_IMAGE_MESSAGE, [prep], cfg.query_num)
        if patches <= max_patches and len(ids) + steps < context_length:
            break
    else:
        return None
    for tower in (model.vision, model.resampler):
        tower.float()
        if vision_dtype == "float16":
            for p in tower.parameters():
                p.copy_(p.half().float())
    cache = model.new_cache()
    slices = [torch.from_numpy(p) for p in prep.pixels]
    positions = torch.from_numpy(image_positions(ids, ImageTokens.from_tokenizer(tokenizer)))
    first = model(torch.tensor([ids]), slices, positions, cache=cache)[0, -1]
    record = _greedy_record(first, lambda t: model(torch.tensor([[t]]), cache=cache)[0, -1], steps)
    return {"width": width, "height": height, "message": GOLDEN_IMAGE_MESSAGE, "slices": len(prep.pixels),
            "prompt_ids": ids, **record, "tolerance": tolerance,
            "text": _text(tokenizer, record["ids"])}
