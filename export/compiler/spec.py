"""What to compile: context length, prefill chunk, logits layout, weight format (a quantization recipe)."""

from __future__ import annotations

from dataclasses import dataclass

from mcpm.errors import McpmError
from mcpm.quantize.recipe import Recipe
from mcpm.quantize.schemes import SCHEMES, QuantScheme

# compiled weight (layout name suffix) -> the reference parameters fused into it
FUSED_PARTS = {
    "wqkv": ("attn.wq", "attn.wk", "attn.wv"),
    "wo": ("attn.wo",),
    "w_gate_up": ("mlp.w_gate", "mlp.w_up"),
    "w_down": ("mlp.w_down",),
    "router": ("mlp.router",),  # MoE: [E, D]
}
# MoE: the stacked expert weights of a layer, per expert e (see layout.linear_shapes)
MOE_PARTS = {
    "moe_gate_up": ("w_gate", "w_up"),
    "moe_down": ("w_down",),
}


@dataclass(frozen=True)
class CompileSpec:
    max_ctx: int = 256  # static KV cache rows per layer: [max_ctx, kv_heads, head_dim]
    chunk: int = 32  # prefill takes 1 <= n <= chunk tokens per call
    all_logits: bool = False  # False: logits of the last position [1, vocab]; True: every position [n, vocab]
    int4_group: int = 0  # without a recipe: 0 = float32 weights; G > 0 = int4 symmetric, group G
    recipe: Recipe | None = None  # per-weight schemes (ordered rules); overrides int4_group
    num_experts: int = 0  # MiniCPM-MoE: the config's num_experts (names the stacked experts' reference weights)
    vision_dtype: str = "float16"  # MiniCPM-V: float dtype of the vision tower's and resampler's weights
    max_patches: int = 0  # MiniCPM-V: most patches of one slice (0: layout.default_max_patches)
    kv_dtype: str = "float32"  # KV cache rows: float32 or float16 (half the memory; mcpm-export's default on the CPU)
    q4_rows4: bool = False  # ARM CPU exports: int4-a8 linear weights in the rows4 order (layout.uses_rows4)

    def __post_init__(self) -> None:
        if not (1 <= self.chunk <= self.max_ctx):
            raise McpmError(f"chunk ({self.chunk}) must be in 1..max_ctx ({self.max_ctx})")
        if self.int4_group and self.int4_group % 8:
            raise McpmError(f"int4 group ({self.int4_group}) must be a multiple of 8")
        if self.vision_dtype not in ("float16", "float32"):
            raise McpmError(f"vision weight dtype {self.vision_dtype!r} is not supported", "use f16 or f32")
        if self.kv_dtype not in ("float32", "float16"):
            raise McpmError(f"KV cache dtype {self.kv_dtype!r} is not supported", "use --kv-dtype f16 or f32")
        if self.max_patches < 0:
            raise McpmError(f"max_patches ({self.max_patches}) must be positive", "give --max-patches N >= 1")

    def scheme_for(self, name: str) -> QuantScheme:
        """Scheme of a compiled 2-D weight: ``embed``, ``lm_head`` or ``layers.<i>.<wqkv|wo|w_gate_up|w_down>``."""
        if self.recipe is None:
            g = self.int4_group
            return QuantScheme(f"q4g{g}", "int4-sym", g) if g else SCHEMES["f32"]
        if name in ("embed", "lm_head"):
            return self.recipe.scheme_for(f"{name}.weight", 2)
        prefix, _, fused = name.rpartition(".")
        if fused in MOE_PARTS:
            if self.num_experts <= 0:
                raise McpmError(f"{name} is an MoE weight but the compile spec has num_experts = 0")
            names = [f"mlp.experts.{e}.{w}" for e in range(self.num_experts) for w in MOE_PARTS[fused]]
        else:
            names = list(FUSED_PARTS[fused])
        schemes = {self.recipe.scheme_for(f"{prefix}.{part}.weight", 2) for part in names}
        if len(schemes) > 1:
            parts = ", ".join(f"{prefix}.{p}" for p in names)
            raise McpmError(f"{parts} are fused into one weight but the quantization rules give them different "
                            f"schemes ({', '.join(sorted(s.name for s in schemes))})", "give them one scheme")
        return schemes.pop()
