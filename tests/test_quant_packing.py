"""Packed quantization layouts, bit-exact against a scalar reference written element by element from the spec."""

from __future__ import annotations

import numpy as np
import pytest

from mcpm.errors import McpmError
from mcpm.quantize.packing import dequantize, quantize
from mcpm.quantize.recipe import Recipe
from mcpm.quantize.schemes import SCHEMES, get_scheme

F32, F16 = np.float32, np.float16


def _inv(d: np.float16) -> np.float32:
    return F32(0) if F32(d) == 0 else F32(1) / F32(d)


def scalar_int4(w: np.ndarray, group: int, symmetric: bool) -> dict[str, np.ndarray]:
    """docs/quantization.md, one element at a time."""
    n_rows, k = w.shape
    groups = -(-k // group)
    words = np.zeros((n_rows, groups * group // 8), dtype=np.uint32)
    scales = np.zeros((n_rows, groups), dtype=F16)
    mins = np.zeros((n_rows, groups), dtype=F16)
    for n in range(n_rows):
        nibbles = []
        for g in range(groups):
            real = [F32(w[n, c]) for c in range(g * group, min(k, (g + 1) * group))]
            if symmetric:
                m = max(real, key=abs) if any(v != 0 for v in real) else F32(0)
                for v in real:  # first element of largest magnitude (argmax semantics)
                    if abs(v) == abs(m):
                        m = v
                        break
                d = F16(F32(m) / F32(-8))
                scales[n, g] = d
                for j in range(group):
                    if j < len(real):
                        q = min(7, max(-8, round(float(F32(real[j] * _inv(d)))))) + 8
                    else:
                        q = 8
                    nibbles.append(q)
            else:
                lo, hi = min(real), max(real)
                d = F16(F32(hi - lo) / F32(15))
                mn = F16(lo)
                scales[n, g], mins[n, g] = d, mn
                for j in range(group):
                    q = min(15, max(0, round(float(F32(F32(real[j] - F32(mn)) * _inv(d)))))) if j < len(real) else 0
                    nibbles.append(q)
        for wi in range(len(nibbles) // 8):
            value = 0
            for j in range(8):
                value |= nibbles[8 * wi + j] << (4 * j)
            words[n, wi] = value
    out = {"qweight": words, "scales": scales}
    if not symmetric:
        out["mins"] = mins
    return out


def weight_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    ties = np.array([[-2.0, 0.125, 0.375, -0.125, 0.625, 1.75, -1.875, 0.0] * 4], dtype=F32)  # d = 0.25: x.5 ties
    zeros = np.zeros((2, 32), dtype=F32)
    return [
        rng.standard_normal((5, 64)).astype(F32),
        rng.standard_normal((3, 70)).astype(F32) * 3,  # K not a multiple of the group: padding
        (rng.standard_normal((4, 256)) * np.array([1e-3, 1.0, 50.0, 1e-6])[:, None]).astype(F32),
        ties,
        zeros,
        np.abs(rng.standard_normal((2, 96))).astype(F32),  # all positive: the max maps to -8 with a negative scale
    ]


@pytest.mark.parametrize("scheme", ["q4g32", "q4g128", "q4g32-asym"])
@pytest.mark.parametrize("case", range(6))
def test_int4_bit_exact_against_scalar_reference(scheme: str, case: int) -> None:
    w = weight_cases()[case]
    s = get_scheme(scheme)
    packed = quantize(w, s)
    expected = scalar_int4(w, s.group_size, symmetric=s.kind == "int4-sym")
    assert packed.tensors.keys() == expected.keys()
    for name, ref in expected.items():
        got = packed.tensors[name]
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        assert got.tobytes() == ref.tobytes(), name
    assert packed.nbytes == s.packed_bytes(*w.shape)


def test_q8_bit_exact_and_layout() -> None:
    w = weight_cases()[2]
    packed = quantize(w, get_scheme("q8"))
    d = (np.abs(w).max(axis=1) / F32(127)).astype(F16)
    for n in range(w.shape[0]):
        for c in range(w.shape[1]):
            q = min(127, max(-127, round(float(F32(w[n, c] * _inv(d[n]))))))
            assert packed.tensors["qweight"][n, c] == q
    assert packed.tensors["scales"].tobytes() == d.tobytes()


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_dequantize_error_is_bounded(scheme: str) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 200)).astype(F32)
    deq = dequantize(quantize(w, get_scheme(scheme)))
    assert deq.shape == w.shape
    err = np.abs(deq - w).max()
    bound = {"q4g32": 0.35, "q4g32-a8": 0.35, "q4g128": 0.5, "q4g32-asym": 0.25, "q8": 0.03, "f16": 2e-3,
             "f32": 0.0}[scheme]
    assert err <= bound
    if scheme.startswith("q4"):
        assert err > 0.01  # it really is 4-bit


def test_symmetric_int4_uses_all_levels_and_padding_is_zero() -> None:
    w = weight_cases()[1]
    packed = quantize(w, get_scheme("q4g32"))
    all_nibbles = np.array([(packed.tensors["qweight"] >> (4 * j)) & 0xF for j in range(8)])
    assert all_nibbles.min() == 0  # level -8 is used
    # padding elements (k >= 70) hold nibble 8, i.e. exactly zero
    last_words = packed.tensors["qweight"][:, -1]
    nibbles = [(int(x) >> (4 * j)) & 0xF for x in last_words for j in range(8)]
    assert nibbles.count(8) >= 3 * 2


def test_bits_per_weight() -> None:
    assert get_scheme("q4g32").bits_per_weight(2304) == 4.5
    assert get_scheme("q4g128").bits_per_weight(2304) == 4.125
    assert get_scheme("q4g32-asym").bits_per_weight(2304) == 5.0
    assert get_scheme("f16").bits_per_weight(2304) == 16.0


def test_recipe_rules_first_match_wins() -> None:
    recipe = Recipe.parse("q4g32", ["lm_head=q8", "layers.0.*=f16", "layers.*=q4g128"])
    assert recipe.scheme_for("lm_head.weight", 2).name == "q8"
    assert recipe.scheme_for("layers.0.attn.wq.weight", 2).name == "f16"
    assert recipe.scheme_for("layers.1.attn.wq.weight", 2).name == "q4g128"
    assert recipe.scheme_for("embed.weight", 2).name == "q4g32"
    assert recipe.scheme_for("layers.1.attn_norm.weight", 1).name == "f32"
    with pytest.raises(McpmError, match="unknown quantization scheme 'q3'"):
        Recipe.parse("q3")
    with pytest.raises(McpmError, match="not PATTERN=SCHEME"):
        Recipe.parse("q4g32", ["lm_head"])
