"""What to compile: context length, prefill chunk, logits layout, weight format."""

from __future__ import annotations

from dataclasses import dataclass

from mcpm.errors import McpmError


@dataclass(frozen=True)
class CompileSpec:
    max_ctx: int = 256  # static KV cache rows per layer: [max_ctx, kv_heads, head_dim]
    chunk: int = 32  # prefill takes 1 <= n <= chunk tokens per call
    all_logits: bool = False  # False: logits of the last position [1, vocab]; True: every position [n, vocab]
    int4_group: int = 0  # 0: float32 linear weights; G > 0: int4 symmetric packed (qweight, scales) with group G

    def __post_init__(self) -> None:
        if not (1 <= self.chunk <= self.max_ctx):
            raise McpmError(f"chunk ({self.chunk}) must be in 1..max_ctx ({self.max_ctx})")
        if self.int4_group and self.int4_group % 8:
            raise McpmError(f"int4 group ({self.int4_group}) must be a multiple of 8")
