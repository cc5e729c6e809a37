"""Named quantization schemes (frozen dataclasses in a registry, never loose strings).

Every scheme quantizes a 2-D weight ``W[N, K]`` (output rows, input columns) along K; the packed layout is
documented in ``docs/quantization.md`` and implemented in :mod:`mcpm.quantize.packing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mcpm.errors import McpmError


@dataclass(frozen=True)
class QuantScheme:
    name: str
    kind: Literal["int4-sym", "int4-asym", "int8-channel", "float"]
    group_size: int = 0  # along K; 0 = not grouped
    float_dtype: Literal["float16", "float32"] = "float16"  # storage of float weights / of scales
    description: str = ""
    # "float": the kernel multiplies float32 activations. "int8": it quantizes each activation row per block of
    # 32 inputs to int8 at run time (dx = max|x| / 127, q = rint(x * (1 / dx)); quantize/activations.py) and takes
    # integer dots with the weights, as llama.cpp's Q4_0 x Q8_0. Packing ignores it: the bytes depend on ``kind``.
    activations: Literal["float", "int8"] = "float"

    def bits_per_weight(self, k: int) -> float:
        """Storage bits per weight of one row of K inputs (scales and zeros included, padding excluded)."""
        if self.kind == "float":
            return 16.0 if self.float_dtype == "float16" else 32.0
        if self.kind == "int8-channel":
            return 8.0 + 16.0 / k
        per_group = 16 if self.kind == "int4-sym" else 32  # fp16 scale (+ fp16 min)
        return 4.0 + per_group / self.group_size

    def packed_bytes(self, n: int, k: int) -> int:
        """Bytes of the packed tensors of one W[N, K] (K padded to a whole group)."""
        if self.kind == "float":
            return n * k * (2 if self.float_dtype == "float16" else 4)
        if self.kind == "int8-channel":
            return n * k + 2 * n
        groups = -(-k // self.group_size)
        per_group = self.group_size // 2 + (2 if self.kind == "int4-sym" else 4)
        return n * groups * per_group


SCHEMES: dict[str, QuantScheme] = {
    s.name: s
    for s in (
        QuantScheme("q4g32", "int4-sym", 32, description="int4 symmetric, group 32 along K, fp16 scale (default)"),
        QuantScheme("q4g32-a8", "int4-sym", 32, activations="int8",
                    description="q4g32 weights (same bytes), activations quantized to int8 per 32 inputs at run time"),
        QuantScheme("q4g128", "int4-sym", 128, description="int4 symmetric, group 128 along K, fp16 scale"),
        QuantScheme("q4g32-asym", "int4-asym", 32, description="int4 asymmetric, group 32, fp16 scale + fp16 min"),
        QuantScheme("q8", "int8-channel", description="int8 symmetric per output channel, fp16 scale"),
        QuantScheme("f16", "float", float_dtype="float16", description="float16 weights"),
        QuantScheme("f32", "float", float_dtype="float32", description="float32 weights (no quantization)"),
    )
}
DEFAULT_SCHEME = "q4g32"
# ARM64 targets (android, ios, linux-arm64) default to int8 activations: with SDOT / SMMLA the int4 x int8 kernels
# take 2.6-2.8x fewer cycles per weight for decode and 3.3-6x for prefill than int4 x float (llvm-mca, make
# bench-arm), for a mean KL of 5.5e-5 on top of q4g32 (docs/quantization.md). GPU exports keep q4g32.
ARM_DEFAULT_SCHEME = "q4g32-a8"


def default_scheme(platform: str, device: str = "cpu") -> str:
    """The --quant default of an export target (its Target.platform) and device."""
    return ARM_DEFAULT_SCHEME if platform in ("android", "ios", "linux") and device == "cpu" else DEFAULT_SCHEME


def get_scheme(name: str) -> QuantScheme:
    if name not in SCHEMES:
        raise McpmError(f"unknown quantization scheme {name!r}", f"use one of {', '.join(SCHEMES)}")
    return SCHEMES[name]
