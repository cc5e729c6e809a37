"""Lower the relax IRModule of model_def to a static execution plan (plan.Plan) plus native kernels.

Phases (each a function IRModule -> IRModule, run under the target; ``debug_dump`` writes phase-NN-<name>.txt):
    legalize        library dispatch, LegalizeOps, AnnotateTIROpPattern, FoldConstant
    fuse            FuseOps, FuseTIR
    schedule        optional dlight cpu schedules (GEMV, Reduction) on legalized (block) PrimFuncs only
    dataflow_lower  RewriteDataflowReshape, ToNonDataflow, RemovePurityChecking, CallTIRRewrite
    memory_plan     StaticPlanBlockMemory, LowerAllocTensor  -- and STOP (no VM builtins after this)
    extract         walk prefill / decode: alloc_storage, alloc_tensor, aliases, reshape views, tuple items,
                    kernel calls -> plan.EntryPlan
Kernels: the referenced PrimFuncs get a ``global_symbol`` and are compiled with tvm.compile to an object file whose
symbols are ``__tvm_ffi_<name>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm
from tvm import relax, sym, tirx
from tvm.relax.backend.cpu_generic.pipeline import library_dispatch_passes
from tvm.s_tir import dlight as dl

from mcpm.errors import McpmError
from mcpm.export.compiler.layout import bundle_weight_params, is_vision_config, vision_max_patches
from mcpm.export.compiler.model_def import build_module
from mcpm.export.compiler.plan import (
    ALIGN,
    ENTRY_INPUTS,
    SYMBOL_PREFIX,
    CacheArg,
    EntryPlan,
    InputArg,
    KernelCall,
    KernelVariant,
    Plan,
    ScalarArg,
    Storage,
    TensorRef,
    VariantTarget,
    WeightArg,
    WeightInfo,
    validate,
)
from mcpm.export.compiler.runner import HOST_TARGET
from mcpm.export.compiler.spec import CompileSpec
from mcpm.export.models.minicpm.config import MiniCPMConfig

ENTRIES = ("prefill", "decode")
VISION_PLAN_ENTRIES = ("embed", "prefill_embeds", "vision")  # MiniCPM-V adds these (docs/minicpmv.md)
INPUT_NAMES = frozenset(name for names in ENTRY_INPUTS.values() for name in names)

# ---------------------------------------------------------------- phases


def phase_legalize(mod: tvm.IRModule, target) -> tvm.IRModule:
    passes = library_dispatch_passes(target) + [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
    ]
    return tvm.transform.Sequential(passes)(mod)


def phase_fuse(mod: tvm.IRModule, target) -> tvm.IRModule:
    return tvm.transform.Sequential([relax.transform.FuseOps(), relax.transform.FuseTIR()])(mod)


def _has_blocks(func: tirx.PrimFunc) -> bool:
    """Legalized TIR has a root SBlockRealize; the hand-written kernels are blockless (already scheduled)."""
    return type(func.body).__name__ == "SBlockRealize"


def phase_schedule(mod: tvm.IRModule, target, enabled: bool = False) -> tvm.IRModule:
    """dlight default cpu schedules; off by default (the relax-VM runner compiles unscheduled TIR too)."""
    if not enabled:
        return mod
    todo = {gv: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc) and _has_blocks(f)}
    done = dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())(tvm.IRModule(todo))
    funcs = {gv: (done[gv.name_hint] if gv in todo else f) for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs)  # same GlobalVars: the relax calls still refer to them


def phase_dataflow_lower(mod: tvm.IRModule, target) -> tvm.IRModule:
    passes = [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
    ]
    return tvm.transform.Sequential(passes)(mod)


def phase_memory_plan(mod: tvm.IRModule, target) -> tvm.IRModule:
    passes = [relax.transform.StaticPlanBlockMemory(), relax.transform.LowerAllocTensor()]
    return tvm.transform.Sequential(passes)(mod)


def lower_module(
    mod: tvm.IRModule, target: dict | None = None, debug_dump: Path | None = None, schedule: bool = False
) -> tvm.IRModule:
    """Run the phases up to memory_plan (the IR the extractor reads)."""
    tgt = tvm.target.Target(target or HOST_TARGET)
    phases: list[tuple[str, Callable]] = [
        ("legalize", phase_legalize),
        ("fuse", phase_fuse),
        ("schedule", lambda m, t: phase_schedule(m, t, schedule)),
        ("dataflow_lower", phase_dataflow_lower),
        ("memory_plan", phase_memory_plan),
    ]
    with tgt:
        for i, (name, fn) in enumerate(phases, 1):
            mod = fn(mod, tgt)
            _dump(debug_dump, i, name, mod.script())
    return mod


def _dump(debug_dump: Path | None, index: int, name: str, text: str) -> None:
    if debug_dump is not None:
        debug_dump.mkdir(parents=True, exist_ok=True)
        (debug_dump / f"phase-{index:02d}-{name}.txt").write_text(text)


# ---------------------------------------------------------------- symbolic dims


class _Dims:
    """Turns shape expressions of the symbolic n into [a, b] = a * n + b, valid for 1 <= n <= n_max."""

    def __init__(self, n_var, n_max: int) -> None:
        self.n_var, self.n_max = n_var, n_max
        self.analyzer = sym.Analyzer()
        if n_var is not None:
            self.analyzer.bind(n_var, tvm.ir.Range(1, n_max + 1))
        self.cache: dict[str, tuple[int, int]] = {}

    def value_at(self, expr, n: int) -> int:
        an = sym.Analyzer()
        if self.n_var is not None:
            an.bind(self.n_var, tvm.tirx.IntImm("int64", n))  # substitutes n
        v = an.simplify(expr)
        if not isinstance(v, tvm.tirx.IntImm):
            raise McpmError(f"shape expression {expr} is not a function of n only")
        return int(v.value)

    def linear(self, expr) -> tuple[int, int]:
        if isinstance(expr, int):
            return (0, expr)
        expr = self.analyzer.simplify(expr)
        if isinstance(expr, tvm.tirx.IntImm):
            return (0, int(expr.value))
        key = str(expr)
        if key not in self.cache:
            vals = [self.value_at(expr, n) for n in range(1, self.n_max + 1)]
            a = vals[1] - vals[0] if len(vals) > 1 else 0
            b = vals[0] - a
            if any(v != a * n + b for n, v in enumerate(vals, 1)):
                raise McpmError(f"shape expression {expr} is not linear in n on 1..{self.n_max}")
            self.cache[key] = (a, b)
        return self.cache[key]

    def shape(self, values) -> list[tuple[int, int]]:
        return [self.linear(v) for v in values]

    def max_int(self, expr) -> int:
        a, b = self.linear(expr)
        return max(a + b, a * self.n_max + b)


def _tensor_type(var) -> tuple[list, str]:
    ty = var.ty
    return list(ty.shape.values) if hasattr(ty.shape, "values") else list(ty.shape), str(ty.dtype)


# ---------------------------------------------------------------- extraction


@dataclass
class _Env:
    """What each relax Var (keyed by identity) stands for."""

    dims: _Dims
    values: dict  # Var handle -> plan Arg | tuple of Args
    storages: list[Storage]
    storage_of: dict  # storage Var handle -> storage id


def _same(a, b) -> bool:
    return a is not None and b is not None and a.same_as(b)


def _key(var) -> int:
    """Var identity (binding names repeat: ``storage`` twice), stable across Python wrapper objects."""
    return var.__chandle__()


def _lookup(env: _Env, var):
    try:
        return env.values[_key(var)]
    except KeyError:
        raise McpmError(f"plan extraction: unbound variable {var.name}") from None


def _bind(env: _Env, var, value) -> None:
    env.values[_key(var)] = value


def _int(x) -> int:
    return int(x.value) if hasattr(x, "value") else int(x)


def _params_env(func, weights: list[WeightInfo], dims: _Dims) -> dict:
    """Each parameter by its name: an input (ENTRY_INPUTS), the scalar pos, a cache ``k_cache_<i>`` /
    ``v_cache_<i>``, or a weight (relax name = weight name with "." -> "_") of the plan's weight list, so an
    entry may take any subset of the weights."""
    by_name = {w.name.replace(".", "_"): (i, w) for i, w in enumerate(weights)}
    if len(by_name) != len(weights):
        raise McpmError("plan extraction: two weights have the same parameter name")
    values: dict = {}
    for p in func.params:
        name = p.name
        if name == "pos":
            values[_key(p)] = ScalarArg("pos", "int64")
            continue
        shape, dtype = _tensor_type(p)
        if name in INPUT_NAMES:
            values[_key(p)] = InputArg(name, dtype, dims.shape(shape))
        elif name.startswith(("k_cache_", "v_cache_")) and name[8:].isdigit():
            values[_key(p)] = CacheArg(int(name[8:]), name[0], dtype, dims.shape(shape))
        elif name in by_name:
            index, w = by_name[name]
            got = dims.shape(shape)
            if dtype != w.dtype or got != [(0, x) for x in w.shape]:
                raise McpmError(f"plan extraction: parameter {name} is {dtype}{got}, weight {w.name} is "
                                f"{w.dtype}{w.shape}")
            values[_key(p)] = WeightArg(index, w.name, dtype, got)
        else:
            raise McpmError(f"plan extraction: parameter {name} is no input, cache or weight of the plan")
    return values


def _op_name(call) -> str | None:
    return call.op.name if isinstance(call.op, tvm.ir.Op) else None


def _alloc_storage(env: _Env, var, call) -> None:
    # alloc_storage(ShapeExpr([size_bytes]), device, scope, dtype); the logits storage may be symbolic in n
    size = env.dims.max_int(call.args[0].values[0])
    sid = len(env.storages)
    env.storages.append(Storage(sid, -(-size // ALIGN) * ALIGN, ALIGN))
    env.storage_of[_key(var)] = sid


def _alloc_tensor(env: _Env, var, call) -> None:
    # alloc_tensor(storage, offset, ShapeExpr(shape), dtype, ...)
    sid = env.storage_of[_key(call.args[0])]
    offset = env.dims.linear(call.args[1])
    if offset[0]:
        raise McpmError(f"plan extraction: symbolic offset in {var.name}")
    _, dtype = _tensor_type(var)  # (== the alloc's dtype argument)
    _bind(env, var, TensorRef(sid, offset[1], dtype, env.dims.shape(call.args[2].values)))


def _reshape(env: _Env, var, call) -> None:
    """A view: same storage/weight, new shape (only planned tensors and weights are reshaped here)."""
    src = _lookup(env, call.args[0])
    shape, _ = _tensor_type(var)
    new = env.dims.shape(shape)
    if not isinstance(src, (TensorRef, WeightArg, CacheArg, InputArg)):
        raise McpmError(f"plan extraction: reshape of {type(src).__name__}")
    fields = dict(src.__dict__, shape=new)
    _bind(env, var, type(src)(**fields))


def _kernel_arg(env: _Env, a):
    if isinstance(a, tvm.tirx.IntImm):  # a constant scalar argument (not seen in model_def so far)
        raise McpmError(f"plan extraction: constant scalar kernel argument {a}")
    if env.dims.n_var is not None and a.same_as(env.dims.n_var):  # the symbolic token count
        return ScalarArg("n", str(a.ty.dtype))
    v = _lookup(env, a)
    if isinstance(v, tuple):
        raise McpmError(f"plan extraction: tuple passed to a kernel ({a.name})")
    return v


def _walk(env: _Env, func, mod: tvm.IRModule) -> list[KernelCall]:
    calls: list[KernelCall] = []
    for block in func.body.blocks:
        for b in block.bindings:
            v, var = b.value, b.var
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.GlobalVar):
                if not isinstance(mod[v.op], tirx.PrimFunc):
                    raise McpmError(f"plan extraction: call of non-TIR function {v.op.name_hint}")
                calls.append(KernelCall(v.op.name_hint, [_kernel_arg(env, a) for a in v.args]))
            elif isinstance(v, relax.Call) and _op_name(v) == "relax.memory.alloc_storage":
                _alloc_storage(env, var, v)
            elif isinstance(v, relax.Call) and _op_name(v) == "relax.memory.alloc_tensor":
                _alloc_tensor(env, var, v)
            elif isinstance(v, relax.Call) and _op_name(v) == "relax.reshape":
                _reshape(env, var, v)
            elif isinstance(v, relax.Call):
                raise McpmError(f"plan extraction: unsupported op {_op_name(v) or v.op}")
            elif isinstance(v, relax.Tuple):
                _bind(env, var, tuple(_lookup(env, f) for f in v.fields))
            elif isinstance(v, relax.TupleGetItem):
                _bind(env, var, _lookup(env, v.tuple_value)[v.index])
            elif isinstance(v, tvm.ir.expr.Var):
                _bind(env, var, _lookup(env, v))
            else:
                raise McpmError(f"plan extraction: unsupported binding {type(v).__name__} for {var.name}")
    return calls


def extract_entry(mod: tvm.IRModule, name: str, weights: list[WeightInfo]) -> EntryPlan:
    """One relax function -> EntryPlan; its first parameter is the input whose first dim is n."""
    func = mod[name]
    n_dim = _tensor_type(func.params[0])[0][0]
    if isinstance(n_dim, tvm.tirx.IntImm):
        dims, n_max = _Dims(None, int(n_dim.value)), int(n_dim.value)
    else:
        n_max = int(func.attrs["tir_var_upper_bound"][n_dim.name])
        dims = _Dims(n_dim, n_max)
    env = _Env(dims, {}, [], {})
    env.values = _params_env(func, weights, dims)
    calls = _walk(env, func, mod)
    out = _lookup(env, func.body.body)
    if not isinstance(out, TensorRef):
        raise McpmError(f"plan extraction: {name} returns {type(out).__name__}, not a planned tensor")
    return EntryPlan(name, n_max, env.storages, calls, out)


def plan_entries(cfg: MiniCPMConfig) -> tuple[str, ...]:
    """The entries of a model's plan: prefill, decode (+ embed, prefill_embeds, vision for MiniCPM-V)."""
    return ENTRIES + VISION_PLAN_ENTRIES if is_vision_config(cfg) else ENTRIES


def vision_section(cfg: MiniCPMConfig, spec: CompileSpec) -> dict:
    """plan.json "vision" (docs/minicpmv.md)."""
    c: Any = cfg
    return {"patch": c.patch_size, "pos_grid": c.vision_pos_grid, "max_patches": vision_max_patches(cfg, spec),
            "query_num": c.query_num, "hidden": c.hidden_size, "vision_hidden": c.vision_hidden}


def extract_plan(mod: tvm.IRModule, cfg: MiniCPMConfig, spec: CompileSpec, target: dict | None = None) -> Plan:
    weights = [WeightInfo(p.name, list(p.shape), p.dtype) for p in bundle_weight_params(cfg, spec)]
    entries = {name: extract_entry(mod, name, weights) for name in plan_entries(cfg)}
    kernels: list[str] = []
    for e in entries.values():
        for c in e.calls:
            if c.kernel not in kernels:
                kernels.append(c.kernel)
    plan = Plan(
        target=dict(target or HOST_TARGET),
        kernels=kernels,
        max_ctx=spec.max_ctx,
        chunk=spec.chunk,
        vocab_size=cfg.vocab_size,
        num_layers=cfg.num_hidden_layers,
        cache_shape=[spec.max_ctx, cfg.num_kv_heads, cfg.head_dim],
        cache_dtype=spec.kv_dtype,
        weights=weights,
        entries=entries,
        extra={"all_logits": spec.all_logits, "weights": spec.recipe.name if spec.recipe else spec.int4_group},
        vision=vision_section(cfg, spec) if "vision" in entries else None,
    )
    validate(plan)
    return plan


# ---------------------------------------------------------------- kernels


def kernel_module(mod: tvm.IRModule, names: list[str], symbol_prefix: str = "") -> tvm.IRModule:
    """The named PrimFuncs with global_symbol = symbol_prefix + name (they are private in the relax module)."""
    funcs = {}
    for name in names:
        f = mod[name]
        funcs[name] = f.with_attr("global_symbol", symbol_prefix + name)
    return tvm.IRModule(funcs)


def compile_kernels(mod: tvm.IRModule, names: list[str], target: dict | None = None, symbol_prefix: str = ""):
    """tvm.compile of the kernels alone: Executable whose .mod holds ``__tvm_ffi_<symbol_prefix><name>``."""
    return tvm.compile(kernel_module(mod, names, symbol_prefix), target=tvm.target.Target(target or HOST_TARGET))


@dataclass
class Exported:
    plan: Plan
    plan_path: Path
    object_path: Path
    executable: object  # tvm Executable of the (fallback) kernels; callable in-process for host targets
    lowered: tvm.IRModule | None = None  # the module the plan was extracted from (the GPU phase schedules it)


def target_sensitive(spec: CompileSpec) -> bool:
    """Whether a kernel set's target changes the kernels of this spec: only the -a8 linears pick instructions by
    the set (quant_kernels.arm_dot_isa); every other kernel is built once for all sets."""
    schemes = [spec.recipe.default, *(r.scheme for r in spec.recipe.rules)] if spec.recipe else []
    return any(s.activations == "int8" for s in schemes)


def variant_module(cfg: MiniCPMConfig, spec: CompileSpec, target: dict, schedule: bool, plan: Plan) -> tvm.IRModule:
    """The model built and lowered again under a kernel set's own target (kernel factories may pick instructions
    only that set has: quant_kernels.arm_dot_isa); its plan must be the fallback's (same kernels, calls, storages),
    so one plan.json and one weights.bin serve every set."""
    with tvm.target.Target(target):
        built = build_module(cfg, spec)
    lowered = lower_module(built, target, None, schedule)
    again = extract_plan(lowered, cfg, spec, plan.target)
    def shape(p: Plan) -> dict:
        return {k: v for k, v in p.to_dict().items() if k != "kernel_variants"}

    if shape(again) != shape(plan):
        raise McpmError("internal: a kernel set's plan differs from the fallback's", "report this as a bug in mcpm")
    return lowered


def export_plan(
    cfg: MiniCPMConfig,
    spec: CompileSpec,
    out_dir: Path,
    target: dict | None = None,
    debug_dump: Path | None = None,
    schedule: bool = False,
    variants: list[VariantTarget] | None = None,
) -> Exported:
    """build_module -> phases -> plan.json + kernels.o in out_dir.

    With variants (preference order, the last is the fallback and must use ``target``), every variant but the
    fallback is compiled again to ``kernels-<name>.o`` with symbols ``__tvm_ffi_<name>_<kernel>``, and the plan
    lists them as kernel_variants.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with tvm.target.Target(target or HOST_TARGET):  # kernel factories pick their instructions (decode_isa)
        built = build_module(cfg, spec)
    lowered = lower_module(built, target, debug_dump, schedule)
    plan = extract_plan(lowered, cfg, spec, target)
    _dump(debug_dump, 6, "extract", plan.to_json())
    exe = compile_kernels(lowered, plan.kernels, target)
    obj = out_dir / plan.object_file
    exe.mod.write_to_file(str(obj))
    if variants:
        if variants[-1].requires or variants[-1].tvm_target != target:
            raise ValueError("the last kernel variant must be the fallback compiled for the plan's target")
        for v in variants[:-1]:
            prefix = f"{v.name}_"
            vobj = f"kernels-{v.name}.o"
            vlowered = variant_module(cfg, spec, v.tvm_target, schedule, plan) if target_sensitive(spec) else lowered
            compile_kernels(vlowered, plan.kernels, v.tvm_target, prefix).mod.write_to_file(str(out_dir / vobj))
            plan.kernel_variants.append(KernelVariant(v.name, vobj, SYMBOL_PREFIX + prefix, v.requires))
        fallback = variants[-1]
        plan.kernel_variants.append(KernelVariant(fallback.name, plan.object_file, plan.symbol_prefix, ()))
        validate(plan)
    path = out_dir / "plan.json"
    path.write_text(plan.to_json())
    return Exported(plan, path, obj, exe, lowered)
