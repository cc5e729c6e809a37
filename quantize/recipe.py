"""Quantization recipes: a default scheme plus ordered pattern rules over parameter names (first match wins).

    recipe = Recipe.parse("q4g32", ["lm_head=q8", "layers.0.*=f16"])

Patterns are shell-style globs over the model's own parameter names (``embed.weight``, ``lm_head.weight``,
``layers.3.attn.wq.weight`` ...); ``lm_head`` alone matches ``lm_head.weight``. Only 2-D weights are quantized:
norm weights stay float32. A tied ``lm_head`` is the embedding: one copy, quantized by the embedding's rule.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from mcpm.errors import McpmError
from mcpm.quantize.schemes import QuantScheme, get_scheme


@dataclass(frozen=True)
class Rule:
    pattern: str
    scheme: QuantScheme

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern) or fnmatch.fnmatchcase(name, self.pattern + ".weight")


@dataclass(frozen=True)
class Recipe:
    default: QuantScheme
    rules: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, default: str, rules: list[str] | tuple[str, ...] = ()) -> Recipe:
        parsed = []
        for text in rules:
            pattern, sep, scheme = text.partition("=")
            if not sep or not pattern.strip() or not scheme.strip():
                raise McpmError(f"quantization rule {text!r} is not PATTERN=SCHEME", "e.g. --quant-rule lm_head=q8")
            parsed.append(Rule(pattern.strip(), get_scheme(scheme.strip())))
        return cls(get_scheme(default), tuple(parsed))

    def scheme_for(self, name: str, ndim: int) -> QuantScheme:
        if ndim != 2:
            return get_scheme("f32")
        for rule in self.rules:
            if rule.matches(name):
                return rule.scheme
        return self.default

    def check_rules_match(self, names: list[str]) -> None:
        """A one-line error for a rule whose pattern matches none of ``names`` (the model's weight names): such a
        rule would be ignored silently, and the export would not be what was asked for."""
        for rule in self.rules:
            if not any(rule.matches(n) for n in names):
                examples = ", ".join(n for n in names if n.endswith(".weight"))[:160]
                raise McpmError(f"--quant-rule {rule.pattern}={rule.scheme.name} matches no weight of this model "
                                f"(its weights: {examples}, ...)", "fix the pattern (fnmatch, e.g. 'layers.*.mlp.*')")

    @property
    def name(self) -> str:
        return ",".join([self.default.name, *(f"{r.pattern}={r.scheme.name}" for r in self.rules)])
