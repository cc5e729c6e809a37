"""Static execution plan of a compiled model: fixed storages + an ordered list of native kernel calls per entry.

JSON layout (version 1), everything a plain-C runtime needs besides the kernel object file:

    {"magic": "MCPMPLAN", "version": 1, "target": {...}, "object_file": "kernels.o", "symbol_prefix": "__tvm_ffi_",
     "kernels": ["linear_64_128", ...],                       # symbol = symbol_prefix + name
     "kernel_variants": [                                     # optional; preference order, the last one is the
        {"name": "i8mm", "object_file": "kernels-i8mm.o",    # fallback (= object_file/symbol_prefix above)
         "symbol_prefix": "__tvm_ffi_i8mm_", "requires": ["dotprod", "i8mm"]}, ...,
        {"name": "neon", "object_file": "kernels.o", "symbol_prefix": "__tvm_ffi_", "requires": []}],
     "max_ctx": 48, "chunk": 4, "vocab_size": 4096, "num_layers": 3,
     "cache": {"shape": [48, 2, 16], "dtype": "float32"},     # one k and one v cache per layer
     "weights": [{"name": "embed", "shape": [4096, 64], "dtype": "float32"}, ...],   # weight_params order
     "entries": {"prefill": {"n_max": 4, "storages": [{"id": 0, "size": 1536, "align": 64}, ...],
                             "calls": [{"kernel": "take1", "args": [ARG, ...]}, ...], "output": TENSOR}}}

The runtime uses the first kernel variant whose required CPU features the machine has (every variant's object
is linked into the library). A dim is [a, b] = a * n + b (n = tokens in this call, 1 <= n <= n_max). ARG is one of
    {"kind": "input",  "name": "tokens", "dtype": "int32", "shape": [[1, 0]]}
    {"kind": "scalar", "name": "pos" | "n", "dtype": "int64"}
    {"kind": "weight", "index": i, "name": "...", "dtype": ..., "shape": [[0, 4096], [0, 64]]}
    {"kind": "cache",  "layer": l, "which": "k" | "v", "dtype": ..., "shape": [...]}
    {"kind": "tensor", "storage": s, "offset": bytes, "dtype": ..., "shape": [...]}   # a view into storage s
MiniCPM-V plans add the entries embed, prefill_embeds and vision (inputs "embeds", "patches", "pos_interp",
"key_pos"; ENTRY_INPUTS) and a top-level "vision" section (VISION_FIELDS); docs/minicpmv.md.
Tensor args are passed to kernels as DLTensors (cpu, compact strides, byte_offset 0, data 64-byte aligned);
scalars as int64. Kernels take their DPS outputs last; calls must run in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from mcpm.errors import McpmError

PLAN_MAGIC = "MCPMPLAN"
PLAN_VERSION = 1
SYMBOL_PREFIX = "__tvm_ffi_"
ALIGN = 64
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "uint32": 4, "int8": 1, "uint8": 1}
SCALARS = ("pos", "n")
# entry -> its InputArg names (docs/minicpmv.md); entries with the KV caches take the scalar pos and advance it
ENTRY_INPUTS: dict[str, tuple[str, ...]] = {
    "prefill": ("tokens",),
    "decode": ("tokens",),
    "embed": ("tokens",),
    "prefill_embeds": ("embeds",),
    "vision": ("patches", "pos_interp", "key_pos"),
}
CACHE_ENTRIES = ("prefill", "decode", "prefill_embeds")
VISION_ENTRIES = ("embed", "prefill_embeds", "vision")
# plan.json "vision": what a runtime needs to build the vision entry's inputs
VISION_FIELDS = ("patch", "pos_grid", "max_patches", "query_num", "hidden", "vision_hidden")

Dim = tuple[int, int]  # a * n + b
# CPU features a kernel variant may require (the C runtime knows how to detect exactly these)
VARIANT_FEATURES = ("dotprod", "i8mm", "fp16")


@dataclass(frozen=True)
class VariantTarget:
    """One kernel set of an export target: compiled for tvm_target, used on CPUs with every feature in requires."""

    name: str
    tvm_target: dict
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class KernelVariant:
    name: str
    object_file: str
    symbol_prefix: str
    requires: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"name": self.name, "object_file": self.object_file, "symbol_prefix": self.symbol_prefix,
                "requires": list(self.requires)}

    @classmethod
    def from_dict(cls, d: dict) -> KernelVariant:
        return cls(str(d["name"]), str(d["object_file"]), str(d["symbol_prefix"]), tuple(d.get("requires", ())))


def dim_value(d: Dim, n: int) -> int:
    return d[0] * n + d[1]


def shape_at(shape: list[Dim], n: int) -> list[int]:
    return [dim_value(d, n) for d in shape]


def nbytes(shape: list[Dim], dtype: str, n: int) -> int:
    size = DTYPE_BYTES[dtype]
    for v in shape_at(shape, n):
        size *= v
    return size


def _err(msg: str) -> McpmError:
    return McpmError(f"invalid plan: {msg}")


def _shape_from(raw) -> list[Dim]:
    try:
        return [(int(a), int(b)) for a, b in raw]
    except (TypeError, ValueError) as e:
        raise _err(f"bad shape {raw!r}") from e


# ---------------------------------------------------------------- args


@dataclass
class InputArg:
    kind: ClassVar[str] = "input"
    name: str
    dtype: str
    shape: list[Dim]


@dataclass
class ScalarArg:
    kind: ClassVar[str] = "scalar"
    name: str  # "pos" (first cache row written) or "n" (tokens in this call)
    dtype: str = "int64"


@dataclass
class WeightArg:
    kind: ClassVar[str] = "weight"
    index: int  # into Plan.weights
    name: str
    dtype: str
    shape: list[Dim]


@dataclass
class CacheArg:
    kind: ClassVar[str] = "cache"
    layer: int
    which: str  # "k" | "v"
    dtype: str
    shape: list[Dim]


@dataclass
class TensorRef:
    kind: ClassVar[str] = "tensor"
    storage: int
    offset: int  # bytes into the storage
    dtype: str
    shape: list[Dim]


Arg = InputArg | ScalarArg | WeightArg | CacheArg | TensorRef
ARG_TYPES: dict[str, type] = {t.kind: t for t in (InputArg, ScalarArg, WeightArg, CacheArg, TensorRef)}


def arg_to_dict(a: Arg) -> dict:
    d = {"kind": a.kind, **a.__dict__}
    if "shape" in d:
        d["shape"] = [list(x) for x in d["shape"]]
    return d


def arg_from_dict(d: dict) -> Arg:
    if not isinstance(d, dict) or d.get("kind") not in ARG_TYPES:
        raise _err(f"unknown arg {d!r}")
    fields = {k: v for k, v in d.items() if k != "kind"}
    if "shape" in fields:
        fields["shape"] = _shape_from(fields["shape"])
    try:
        return ARG_TYPES[d["kind"]](**fields)
    except TypeError as e:
        raise _err(f"bad {d['kind']} arg {d!r}") from e


# ---------------------------------------------------------------- plan


@dataclass
class Storage:
    id: int
    size: int  # bytes (for n = n_max)
    align: int = ALIGN


@dataclass
class KernelCall:
    kernel: str
    args: list[Arg]


@dataclass
class EntryPlan:
    name: str
    n_max: int  # 1 for decode, chunk for prefill
    storages: list[Storage]
    calls: list[KernelCall]
    output: TensorRef  # logits [1 or n, vocab]


@dataclass
class WeightInfo:
    name: str
    shape: list[int]
    dtype: str


@dataclass
class Plan:
    target: dict
    kernels: list[str]
    max_ctx: int
    chunk: int
    vocab_size: int
    num_layers: int
    cache_shape: list[int]
    cache_dtype: str
    weights: list[WeightInfo]
    entries: dict[str, EntryPlan]
    object_file: str = "kernels.o"
    version: int = PLAN_VERSION
    symbol_prefix: str = SYMBOL_PREFIX
    extra: dict = field(default_factory=dict)
    kernel_variants: list[KernelVariant] = field(default_factory=list)
    vision: dict | None = None  # MiniCPM-V: {"patch", "pos_grid", "max_patches", "query_num", "hidden", ...}

    def symbols(self) -> list[str]:
        return [self.symbol_prefix + k for k in self.kernels]

    def object_files(self) -> list[str]:
        """Every kernel object the runtime library must be linked with (the fallback's last)."""
        names = [v.object_file for v in self.kernel_variants if v.object_file != self.object_file]
        return [*dict.fromkeys(names), self.object_file]

    # ---- json

    def to_dict(self) -> dict:
        return {
            "magic": PLAN_MAGIC,
            "version": self.version,
            "target": self.target,
            "object_file": self.object_file,
            "symbol_prefix": self.symbol_prefix,
            "kernels": list(self.kernels),
            **({"kernel_variants": [v.to_dict() for v in self.kernel_variants]} if self.kernel_variants else {}),
            "max_ctx": self.max_ctx,
            "chunk": self.chunk,
            "vocab_size": self.vocab_size,
            "num_layers": self.num_layers,
            "cache": {"shape": list(self.cache_shape), "dtype": self.cache_dtype},
            "weights": [{"name": w.name, "shape": list(w.shape), "dtype": w.dtype} for w in self.weights],
            "entries": {name: _entry_to_dict(e) for name, e in self.entries.items()},
            **({"vision": dict(self.vision)} if self.vision is not None else {}),
            "extra": self.extra,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise _err(f"not JSON ({e})") from e
        except RecursionError:
            raise _err("nested too deeply to be a plan") from None
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        if not isinstance(d, dict):
            raise _err("top level is not an object")
        if d.get("magic") != PLAN_MAGIC:
            raise _err(f"bad magic {d.get('magic')!r} (not an mcpm plan)")
        if d.get("version") != PLAN_VERSION:
            raise _err(f"version {d.get('version')!r}, expected {PLAN_VERSION}")
        try:
            plan = cls(
                target=d["target"],
                kernels=list(d["kernels"]),
                max_ctx=int(d["max_ctx"]),
                chunk=int(d["chunk"]),
                vocab_size=int(d["vocab_size"]),
                num_layers=int(d["num_layers"]),
                cache_shape=[int(x) for x in d["cache"]["shape"]],
                cache_dtype=d["cache"]["dtype"],
                weights=[WeightInfo(w["name"], [int(x) for x in w["shape"]], w["dtype"]) for w in d["weights"]],
                entries={name: _entry_from_dict(name, e) for name, e in d["entries"].items()},
                object_file=d.get("object_file", "kernels.o"),
                symbol_prefix=d.get("symbol_prefix", SYMBOL_PREFIX),
                extra=d.get("extra", {}),
                kernel_variants=[KernelVariant.from_dict(v) for v in d.get("kernel_variants", [])],
                vision=dict(d["vision"]) if d.get("vision") is not None else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise _err(f"missing or malformed field ({type(e).__name__}: {e})") from e
        try:
            validate(plan)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:  # wrong types
            raise _err(f"malformed field ({type(e).__name__}: {e})") from e
        return plan


def _entry_to_dict(e: EntryPlan) -> dict:
    return {
        "n_max": e.n_max,
        "storages": [{"id": s.id, "size": s.size, "align": s.align} for s in e.storages],
        "calls": [{"kernel": c.kernel, "args": [arg_to_dict(a) for a in c.args]} for c in e.calls],
        "output": arg_to_dict(e.output),
    }


def _entry_from_dict(name: str, d: dict) -> EntryPlan:
    out = arg_from_dict(d["output"])
    if not isinstance(out, TensorRef):
        raise _err(f"{name}: output must be a planned tensor")
    return EntryPlan(
        name=name,
        n_max=int(d["n_max"]),
        storages=[Storage(int(s["id"]), int(s["size"]), int(s.get("align", ALIGN))) for s in d["storages"]],
        calls=[KernelCall(c["kernel"], [arg_from_dict(a) for a in c["args"]]) for c in d["calls"]],
        output=out,
    )


# ---------------------------------------------------------------- validation


def validate(plan: Plan) -> None:
    """Raise McpmError (one line) on the first inconsistency."""
    if len(set(plan.kernels)) != len(plan.kernels):
        raise _err("duplicate kernel names")
    _check_dtype(plan.cache_dtype, "cache")
    for w in plan.weights:
        _check_dtype(w.dtype, f"weight {w.name}")
    _validate_variants(plan)
    kernels = set(plan.kernels)
    for name, e in plan.entries.items():
        if name not in ENTRY_INPUTS:
            raise _err(f"unknown entry {name!r} (known: {', '.join(ENTRY_INPUTS)})")
        _validate_entry(plan, e, kernels)
    _validate_vision(plan)


def _validate_vision(plan: Plan) -> None:
    """MiniCPM-V: embed / prefill_embeds / vision and the "vision" section come together, with matching sizes."""
    present = [name for name in VISION_ENTRIES if name in plan.entries]
    if plan.vision is None and "vision" not in plan.entries:
        return
    missing = [name for name in VISION_ENTRIES if name not in present]
    if missing:
        raise _err(f"a vision plan needs the entries {', '.join(VISION_ENTRIES)}; {', '.join(missing)} missing")
    if plan.vision is None:
        raise _err("the vision entry needs the plan's \"vision\" section")
    v = plan.vision
    for key in VISION_FIELDS:
        if not isinstance(v.get(key), int) or isinstance(v.get(key), bool) or v[key] < 1:
            raise _err(f"vision.{key} must be a positive integer, got {v.get(key)!r}")
    hid, q = v["hidden"], v["query_num"]
    if plan.entries["vision"].n_max != v["max_patches"]:
        raise _err(f"vision entry n_max {plan.entries['vision'].n_max} != vision.max_patches {v['max_patches']}")
    for name in ("embed", "prefill_embeds"):
        if plan.entries[name].n_max != plan.chunk:
            raise _err(f"{name}: n_max {plan.entries[name].n_max} != chunk {plan.chunk}")
    expect = {"embed": [[1, 0], [0, hid]], "vision": [[0, q], [0, hid]]}
    for name, shape in expect.items():
        got = [list(d) for d in plan.entries[name].output.shape]
        if got != shape:
            raise _err(f"{name} output shape {got}, expected {shape}")
    inputs = _inputs(plan.entries["prefill_embeds"])
    if "embeds" not in inputs or [list(d) for d in inputs["embeds"].shape] != [[1, 0], [0, hid]]:
        raise _err(f"prefill_embeds must take embeds f32 [n, {hid}]")
    missing = [name for name in ENTRY_INPUTS["vision"] if name not in _inputs(plan.entries["vision"])]
    if missing:
        raise _err(f"the vision entry does not read its inputs {', '.join(missing)}")


def _inputs(e: EntryPlan) -> dict[str, InputArg]:
    return {a.name: a for c in e.calls for a in c.args if isinstance(a, InputArg)}


def _validate_variants(plan: Plan) -> None:
    if not plan.kernel_variants:
        return
    names = [v.name for v in plan.kernel_variants]
    if len(set(names)) != len(names):
        raise _err(f"duplicate kernel variant names {names}")
    for v in plan.kernel_variants:
        unknown = sorted(set(v.requires) - set(VARIANT_FEATURES))
        if unknown:
            raise _err(f"kernel variant {v.name!r} requires unknown CPU features {unknown}")
        if not v.symbol_prefix or "/" in v.object_file or v.object_file.startswith("."):
            raise _err(f"kernel variant {v.name!r}: bad object_file/symbol_prefix")
    last = plan.kernel_variants[-1]
    if last.requires or (last.object_file, last.symbol_prefix) != (plan.object_file, plan.symbol_prefix):
        raise _err("the last kernel variant must be the fallback: no requirements, the plan's object_file "
                   "and symbol_prefix")


def kernel_object_files(bundle_dir: Path) -> list[Path]:
    """The kernel objects of a bundle (read from its plan.json) that its runtime library links."""
    plan_path = Path(bundle_dir) / "plan.json"
    if not plan_path.is_file():
        raise McpmError(f"{plan_path} is missing: {bundle_dir} is not a bundle", "export one with mcpm-export")
    plan = Plan.from_json(plan_path.read_text())
    return [Path(bundle_dir) / name for name in plan.object_files()]


def _check_dtype(dtype: str, where: str) -> None:
    if dtype not in DTYPE_BYTES:
        raise _err(f"{where}: unknown dtype {dtype!r}")


def _validate_entry(plan: Plan, e: EntryPlan, kernels: set[str]) -> None:
    if e.n_max < 1:
        raise _err(f"{e.name}: n_max {e.n_max} < 1")
    for i, s in enumerate(e.storages):
        if s.id != i or s.size < 0 or s.align < 1:
            raise _err(f"{e.name}: storage #{i} has id {s.id}, size {s.size}, align {s.align}")
    for ci, call in enumerate(e.calls):
        where = f"{e.name} call {ci} ({call.kernel})"
        if call.kernel not in kernels:
            raise _err(f"{where}: unknown kernel {call.kernel!r}")
        for a in call.args:
            _validate_arg(plan, e, a, where)
            if e.name not in CACHE_ENTRIES and (isinstance(a, CacheArg) or (isinstance(a, ScalarArg)
                                                                         and a.name == "pos")):
                raise _err(f"{where}: the {e.name} entry has no KV cache (got {a.kind} {getattr(a, 'name', '')})")
    _validate_arg(plan, e, e.output, f"{e.name} output")


def _validate_arg(plan: Plan, e: EntryPlan, a: Arg, where: str) -> None:
    _check_dtype(a.dtype, where)
    if isinstance(a, ScalarArg):
        if a.name not in SCALARS:
            raise _err(f"{where}: unknown scalar {a.name!r}")
        return
    for n in (1, e.n_max):  # dims are linear in n: checking both ends covers 1..n_max
        if any(v < 0 for v in shape_at(a.shape, n)):
            raise _err(f"{where}: negative dim in {a.shape} at n={n}")
    if isinstance(a, TensorRef):
        if not 0 <= a.storage < len(e.storages):
            raise _err(f"{where}: storage id {a.storage} out of range 0..{len(e.storages) - 1}")
        size = e.storages[a.storage].size
        end = a.offset + max(nbytes(a.shape, a.dtype, 1), nbytes(a.shape, a.dtype, e.n_max))
        if a.offset < 0 or a.offset % ALIGN or end > size:
            raise _err(f"{where}: bytes {a.offset}..{end} outside storage {a.storage} of {size} bytes")
    elif isinstance(a, WeightArg):
        if not 0 <= a.index < len(plan.weights):
            raise _err(f"{where}: weight index {a.index} out of range")
        w = plan.weights[a.index]
        if w.dtype != a.dtype or [[0, x] for x in w.shape] != [list(d) for d in a.shape]:
            raise _err(f"{where}: weight {a.index} is {w.dtype}{w.shape}, arg says {a.dtype}{a.shape}")
    elif isinstance(a, CacheArg):
        if not 0 <= a.layer < plan.num_layers or a.which not in ("k", "v"):
            raise _err(f"{where}: bad cache ref layer {a.layer} {a.which!r}")
    elif isinstance(a, InputArg) and a.name not in ENTRY_INPUTS.get(e.name, ()):
        raise _err(f"{where}: unknown input {a.name!r}")
