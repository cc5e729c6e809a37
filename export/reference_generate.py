"""Token generation loop (streaming callback, sampling, timing) over any model that can prefill and decode:
the PyTorch reference (with or without a KV cache) or a compiled bundle."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from mcpm.errors import ContextOverflowError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int = 0


@dataclass
class GenerationResult:
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stopped_by: str = "length"

    def stats(self) -> dict[str, float]:
        decoded = max(len(self.tokens) - 1, 0)  # the first token comes out of the prefill
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": len(self.tokens),
            "prefill_tok_s": self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0,
            "decode_tok_s": decoded / self.decode_s if self.decode_s else 0.0,
            "ttft_ms": self.prefill_s * 1000.0,
        }


def sample_token(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int:
    """logits: [vocab] float32."""
    if params.temperature <= 0.0:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, 0) - sorted_probs < params.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


class Stepper(Protocol):
    """A model with a KV cache: logits [vocab] of the last position after each call."""

    def prefill(self, ids: list[int]) -> torch.Tensor: ...

    def decode(self, token: int) -> torch.Tensor: ...


class TorchStepper:
    """The PyTorch reference as a Stepper; without ``use_cache`` every step re-runs the whole sequence."""

    def __init__(self, model: nn.Module, use_cache: bool = True) -> None:
        self.model, self.use_cache = model, use_cache
        self.cache = model.new_cache() if use_cache else None  # type: ignore[operator]
        self.ids: list[int] = []

    @torch.no_grad()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        self.ids += ids
        if self.use_cache:
            return self.model(torch.tensor([ids]), self.cache)[0, -1]
        return self.model(torch.tensor([self.ids]))[0, -1]

    def decode(self, token: int) -> torch.Tensor:
        return self.prefill([token])


def generate(
    model: nn.Module | Stepper,
    prompt: list[int],
    max_new_tokens: int,
    context_length: int,
    stop_ids: tuple[int, ...] = (),
    params: SamplingParams | None = None,
    on_token: Callable[[int], None] | None = None,
    use_cache: bool = True,
    allowed: torch.Tensor | None = None,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` after ``prompt`` (a torch reference model or any Stepper). ``allowed``
    (bool [vocab], e.g. Tokenizer.decodable_mask) limits which ids may be drawn."""
    params = params or SamplingParams()
    if not prompt:
        raise ContextOverflowError("the prompt is empty", "give at least one token (e.g. a BOS)")
    if len(prompt) >= context_length:
        raise ContextOverflowError(
            f"prompt of {len(prompt)} tokens does not fit the context of {context_length} tokens",
            "shorten the prompt or use a model/bundle with a longer context",
        )
    stepper = TorchStepper(model, use_cache) if isinstance(model, nn.Module) else model
    max_new_tokens = min(max_new_tokens, context_length - len(prompt))
    gen = torch.Generator().manual_seed(params.seed)
    result = GenerationResult(prompt_tokens=len(prompt))
    t0 = time.perf_counter()
    logits = stepper.prefill(prompt)
    for step in range(max_new_tokens):
        if step > 0:
            logits = stepper.decode(result.tokens[-1])
        logits = logits.float()
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        token = sample_token(logits, params, gen)
        now = time.perf_counter()
        if step == 0:
            result.prefill_s = now - t0
        else:
            result.decode_s = now - t0 - result.prefill_s
        result.tokens.append(token)
        if on_token is not None:
            on_token(token)
        if token in stop_ids:
            result.stopped_by = "stop"
            break
    return result
