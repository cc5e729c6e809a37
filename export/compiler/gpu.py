"""GPU phase of the export: one scheduled TIR per plan kernel, built for OpenCL and Metal, plus launch records.

Input: the lowered module whose plan (extract_plan) the CPU bundle uses, so calls and storages are shared.
    hand-written (blockless) kernels  -> their GPU versions (gpu_kernels; same parameter lists)
    legalized (block) kernels         -> dlight GPU rules under the metal target (no dl.gpu.Matmul: it crashes on
                                         metal in 0.27, and the dense plan has no block matmul)
The scheduled module is built once per target (same TIR); the IR right after SplitHostDevice is captured (pass
instrument): its host functions hold ``call_ffi_kernel(name, args..., launch values..., launch_params=[tags])``.
Args that are a buffer parameter's data pointer become {"arg": i} (i = the PrimFunc parameter = plan call arg);
other args are scalars, turned into RPN expressions of "n" (the shape var that is the token count, checked
against every call of the kernel) and "pos" (the scalar parameter). docs/gpu-plan.md is the format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import tvm
from tvm import tirx
from tvm.s_tir import dlight as dl

from mcpm.errors import McpmError
from mcpm.export.compiler.gpu_kernels import gpu_version
from mcpm.export.compiler.plan import (
    CacheArg,
    InputArg,
    Plan,
    ScalarArg,
    TensorRef,
    WeightArg,
)

GPU_VERSION = 1
OPENCL_SOURCE = "kernels.cl"
METAL_SOURCE = "kernels.metal"
SCHEDULE_TARGET = {"kind": "metal", "host": {"kind": "llvm"}}
BUILD_TARGETS = {"opencl": {"kind": "opencl", "host": {"kind": "llvm"}}, "metal": SCHEDULE_TARGET}
SCALAR_DTYPES = ("int32", "int64", "float32")
RPN_OPS = ("+", "-", "*", "//", "%", "min", "max")
MAX_BLOCK = 1024
_BINOPS = {"Add": "+", "Sub": "-", "Mul": "*", "FloorDiv": "//", "FloorMod": "%", "Min": "min", "Max": "max",
           "Div": "//", "Mod": "%"}  # Div/Mod: truncated, equal to floor for the non-negative sizes seen here


def _err(msg: str) -> McpmError:
    return McpmError(f"gpu export: {msg}")


def _has_blocks(func: tirx.PrimFunc) -> bool:
    return type(func.body).__name__ == "SBlockRealize"


def _key(obj) -> int:
    return obj.__chandle__()


def _is_buf(param) -> bool:
    """0.27: buffer parameters are Vars of BufferType (with .shape/.dtype/.data); scalars have a PrimType."""
    return type(param.ty).__name__ == "BufferType"


def _scalar_dtype(param) -> str:
    return str(param.ty.dtype)


def _expr_dtype(e) -> str:
    try:
        return str(e.dtype)
    except AttributeError:
        ty = getattr(e, "ty", None)
        return str(getattr(ty, "dtype", "?"))


# ---------------------------------------------------------------- scheduling


def _signature(func: tirx.PrimFunc) -> list[tuple]:
    """Per parameter: ("buf", shape text, dtype) or ("scalar", dtype); float16 counts as uint16 (bit patterns)."""
    sig: list[tuple] = []
    for p in func.params:
        if _is_buf(p):
            dtype = "uint16" if str(p.dtype) == "float16" else str(p.dtype)
            sig.append(("buf", str([str(d) for d in p.shape]), dtype))
        else:
            sig.append(("scalar", _scalar_dtype(p)))
    return sig


def gpu_module(lowered: tvm.IRModule, plan: Plan) -> tvm.IRModule:
    """Module of the plan's kernels for GPUs (global_symbol = plan kernel name)."""
    funcs, todo = {}, {}
    for name in plan.kernels:
        f = lowered[name]
        if not isinstance(f, tirx.PrimFunc):
            raise _err(f"{name} is not a TIR function")
        if _has_blocks(f):
            for p in f.params:
                if _is_buf(p) and str(p.dtype) == "float16":
                    raise _err(f"kernel {name} computes in float16 (a float16 embedding or weight outside the "
                               "hand-written kernels): use a q4 or f32 embedding for --device gpu")
            todo[name] = f
            continue
        g = gpu_version(name, plan.max_ctx)
        if _signature(g) != _signature(f):
            raise _err(f"GPU version of {name} has parameters {_signature(g)}, the CPU kernel {_signature(f)}")
        funcs[name] = g
    if todo:
        with tvm.target.Target(SCHEDULE_TARGET):
            done = dl.ApplyDefaultSchedule(
                dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                dl.gpu.Fallback(),
            )(tvm.IRModule(todo))
        for name in todo:
            funcs[name] = done[name]
    return tvm.IRModule({name: funcs[name].with_attr("global_symbol", name) for name in plan.kernels})


@tvm.ir.instrument.pass_instrument
class _AfterSplit:
    """Keeps the module right after SplitHostDevice (host functions still have their buffer parameters)."""

    def __init__(self) -> None:
        self.mod = None

    def run_after_pass(self, mod, info) -> None:
        if info.name.endswith("SplitHostDevice"):
            self.mod = mod


def build(mod: tvm.IRModule, kind: str) -> tuple[str, tvm.IRModule]:
    """(device source, module after SplitHostDevice) of mod built for BUILD_TARGETS[kind]."""
    snap = _AfterSplit()
    with tvm.transform.PassContext(instruments=[snap]):
        exe = tvm.compile(mod, target=tvm.target.Target(BUILD_TARGETS[kind]))
    if snap.mod is None:
        raise _err("SplitHostDevice did not run")
    devs = [m for m in exe.mod.imports if m.kind in ("opencl", "metal")] or list(exe.mod.imports)
    if len(devs) != 1:
        raise _err(f"expected one {kind} device module, got {[m.kind for m in exe.mod.imports]}")
    return devs[0].inspect_source(), snap.mod


def metal_library_source(src: str) -> str:
    """TVM's per-kernel Metal sources concatenated repeat the preamble (include, using, union __TVMArgUnion):
    keep the first of each, so the file is one translation unit for newLibraryWithSource."""
    seen: set[str] = set()
    out: list[str] = []

    def once(block: str) -> str:
        if block in seen:
            return ""
        seen.add(block)
        return block

    pattern = re.compile(r"#include <metal_stdlib>\n|using namespace metal;\n|union __TVMArgUnion \{[^}]*\};\n")
    pos = 0
    for m in pattern.finditer(src):
        out.append(src[pos : m.start()])
        out.append(once(m.group(0)))
        pos = m.end()
    out.append(src[pos:])
    unions = {b for b in seen if b.startswith("union")}
    if len(unions) > 1:
        raise _err("the Metal kernels define union __TVMArgUnion differently")
    return "".join(out)


# ---------------------------------------------------------------- launch records


def _walk(stmt, lets: dict, out: list, where: str) -> None:
    kind = type(stmt).__name__
    if kind == "SeqStmt":
        for s in stmt.seq:
            _walk(s, lets, out, where)
    elif kind in ("LetStmt", "Bind"):
        lets[_key(stmt.var)] = stmt.value
        if hasattr(stmt, "body"):
            _walk(stmt.body, lets, out, where)
    elif kind == "Evaluate":
        v = stmt.value
        if type(v).__name__ == "Call" and isinstance(v.op, tvm.ir.Op) and v.op.name.endswith("call_ffi_kernel"):
            out.append(v)
        elif not (isinstance(v, tirx.IntImm)):
            raise _err(f"{where}: unexpected host statement {v}")
    elif kind in ("DeclBuffer", "AttrStmt", "AllocBuffer"):
        if kind == "DeclBuffer":  # a flat view of a parameter: data = buffer_data(param or another view)
            lets[_key(stmt.buffer)] = stmt.data
        if getattr(stmt, "body", None) is not None:
            _walk(stmt.body, lets, out, where)
    elif kind == "AssertStmt":  # host-side checks (none in our kernels): dispatchers do not run host code
        if getattr(stmt, "body", None) is not None:
            _walk(stmt.body, lets, out, where)
    else:
        raise _err(f"{where}: host code has a {kind} around its launches (not expressible as launch records)")


def _param_of(e, data: dict, lets: dict) -> int | None:
    """Parameter index of a buffer's data pointer (through tirx.buffer_data and DeclBuffer views), else None."""
    for _ in range(16):
        if type(e).__name__ == "Call" and isinstance(e.op, tvm.ir.Op) and e.op.name.endswith("buffer_data"):
            v = e.args[0]
            if _key(v) in data:
                return data[_key(v)]
            if _key(v) not in lets:
                return None
            e = lets[_key(v)]
        elif type(e).__name__ == "Var" and _key(e) in data:
            return data[_key(e)]
        else:
            return None
    return None


def _rpn(e, names: dict, lets: dict, where: str) -> list:
    if isinstance(e, int):
        return [e]
    if isinstance(e, tirx.IntImm):
        return [int(e.value)]
    kind = type(e).__name__
    if kind == "Var":
        k = _key(e)
        if k in names:
            return list(names[k])
        if k in lets:
            return _rpn(lets[k], names, lets, where)
        raise _err(f"{where}: launch value uses unknown variable {e}")
    if kind == "Cast":
        if not str(e.dtype).startswith("int"):
            raise _err(f"{where}: non-integer cast in a launch value {e}")
        return _rpn(e.value, names, lets, where)
    if kind in _BINOPS:
        return _rpn(e.a, names, lets, where) + _rpn(e.b, names, lets, where) + [_BINOPS[kind]]
    if kind == "Call" and isinstance(e.op, tvm.ir.Op) and e.op.name.endswith("if_then_else"):
        # e.g. strided_slice's clamp "n < 1 ? a : b": decided by 1 <= n <= n_max (the plan's range)
        an = names["__analyzer__"]
        if an.can_prove(e.args[0]):
            return _rpn(e.args[1], names, lets, where)
        if an.can_prove(tirx.Not(e.args[0])):
            return _rpn(e.args[2], names, lets, where)
    raise _err(f"{where}: cannot express {kind} {e} as a launch expression")


def eval_rpn(expr, n: int, pos: int) -> int:
    """Value of an RPN expression (docs/gpu-plan.md); McpmError on a malformed one."""
    if not isinstance(expr, list) or not expr:
        raise McpmError(f"bad RPN expression {expr!r}")
    stack: list[int] = []
    for tok in expr:
        if isinstance(tok, bool):
            raise McpmError(f"bad RPN token {tok!r}")
        if isinstance(tok, int):
            stack.append(tok)
        elif tok == "n":
            stack.append(n)
        elif tok == "pos":
            stack.append(pos)
        elif tok in RPN_OPS:
            if len(stack) < 2:
                raise McpmError(f"RPN stack underflow in {expr!r}")
            b, a = stack.pop(), stack.pop()
            if tok in ("//", "%") and b == 0:
                raise McpmError(f"division by zero in {expr!r}")
            stack.append({"+": a + b, "-": a - b, "*": a * b, "//": a // b if b else 0, "%": a % b if b else 0,
                          "min": min(a, b), "max": max(a, b)}[tok])
        else:
            raise McpmError(f"bad RPN token {tok!r}")
    if len(stack) != 1:
        raise McpmError(f"RPN expression {expr!r} leaves {len(stack)} values")
    return stack[0]


def _calls_of(plan: Plan) -> dict[str, list]:
    """kernel -> [(call, n_max)] over both entries."""
    calls: dict[str, list] = {}
    for e in plan.entries.values():
        for c in e.calls:
            calls.setdefault(c.kernel, []).append((c, e.n_max))
    return calls


def _dim_rpn(forms: set) -> tuple[list, int, int] | None:
    """RPN of a dim from its plan forms {((a, b), n_max)} (a * n + b) over the calls, with its value range."""
    top = max(nm for _, nm in forms)
    if all(a * n + b == n for (a, b), nm in forms for n in (1, nm)):
        return ["n"], 1, top
    shapes = {f for f, _ in forms}
    if len(shapes) == 1:
        a, b = next(iter(shapes))
        if a == 0:
            return [b], b, b
        if a > 0 and b >= 0:
            return ["n", a, "*", b, "+"], a + b, a * top + b
    return None


def _names(func: tirx.PrimFunc, kernel: str, calls: list) -> dict:
    """Var handle -> RPN for the PrimFunc's symbolic dims and scalar parameters (from the plan's calls)."""
    an = tvm.sym.Analyzer()
    names: dict = {"__analyzer__": an}
    params = list(func.params)
    for i, p in enumerate(params):
        if _is_buf(p):
            for d, dim in enumerate(p.shape):
                if isinstance(dim, tirx.Var) and _key(dim) not in names:
                    forms = set()
                    for c, n_max in calls:
                        a = c.args[i]
                        if isinstance(a, ScalarArg):
                            raise _err(f"kernel {kernel}: parameter {i} is a buffer but the plan passes a scalar")
                        forms.add((tuple(a.shape[d]), n_max))
                    got = _dim_rpn(forms)
                    if got is None:
                        raise _err(f"kernel {kernel}: dim {dim} of parameter {i} has shapes {sorted(forms)} "
                                   "in different calls (not one expression of n)")
                    names[_key(dim)] = got[0]
                    an.bind(dim, tvm.ir.Range(got[1], got[2] + 1))
        else:
            for c, _ in calls:
                a = c.args[i]
                if not isinstance(a, ScalarArg) or a.name != calls[0][0].args[i].name:
                    raise _err(f"kernel {kernel}: scalar parameter {i} is not the same plan scalar in every call")
            name = calls[0][0].args[i].name  # "pos" | "n"
            names[_key(p)] = [name]
            if name == "n":
                an.bind(p, tvm.ir.Range(1, max(nm for _, nm in calls) + 1))
    return names


def launch_records(split: tvm.IRModule, plan: Plan) -> dict[str, list]:
    """Plan kernel name -> its launches (docs/gpu-plan.md) from the module after SplitHostDevice."""
    calls = _calls_of(plan)
    launches: dict[str, list] = {}
    for kernel in plan.kernels:
        func = split[kernel]
        data = {_key(p): i for i, p in enumerate(func.params) if _is_buf(p)}  # buffer param -> plan arg
        names = _names(func, kernel, calls[kernel])
        found: list = []
        lets: dict = {}
        _walk(func.body, lets, found, kernel)
        if not found:
            raise _err(f"kernel {kernel} launches no device kernel")
        records = []
        for call in found:
            dev = str(call.args[0].value)
            tags = [str(t) for t in getattr(call.attrs, "launch_params", None) or []]
            if not tags:
                raise _err(f"{kernel}: call_ffi_kernel without launch_params")
            args = list(call.args[1:])
            nargs = len(args) - len(tags)
            params: list[dict] = []
            for a in args[:nargs]:
                param = _param_of(a, data, lets)
                if param is not None:
                    params.append({"arg": param})
                else:
                    dtype = _expr_dtype(a)
                    if dtype not in SCALAR_DTYPES or dtype == "float32":
                        raise _err(f"{kernel}/{dev}: scalar argument {a} of type {dtype}")
                    params.append({"scalar": dtype, "expr": _rpn(a, names, lets, f"{kernel}/{dev}")})
            grid, block = [[1], [1], [1]], [1, 1, 1]
            for tag, v in zip(tags, args[nargs:], strict=True):
                m = re.fullmatch(r"(blockIdx|threadIdx)\.([xyz])", tag)
                if not m:
                    raise _err(f"{kernel}/{dev}: unsupported launch parameter {tag}")
                axis = "xyz".index(m.group(2))
                expr = _rpn(v, names, lets, f"{kernel}/{dev}")
                if m.group(1) == "blockIdx":
                    grid[axis] = expr
                elif len(expr) != 1:
                    raise _err(f"{kernel}/{dev}: work-group size {tag} is not a constant")
                else:
                    block[axis] = expr[0]
            records.append({"kernel": dev, "params": params, "grid": grid, "block": block})
        launches[kernel] = records
    return launches


# ---------------------------------------------------------------- sources and validation


_CL_SIG = re.compile(r"__kernel void (\w+)\(([^)]*)\)\s*\{")
_METAL_SIG = re.compile(r"kernel void (\w+)\((.*?)\)\s*\{", re.S)


def opencl_signatures(src: str) -> dict[str, list[str]]:
    """Device kernel -> parameter kinds ("buf" | "int32" | "int64" | "float32") from the OpenCL source."""
    out = {}
    for m in _CL_SIG.finditer(src):
        kinds = []
        for p in m.group(2).split(","):
            p = p.strip()
            if "*" in p:
                kinds.append("buf")
            else:
                kinds.append({"int": "int32", "long": "int64", "float": "float32"}.get(p.split()[0], p.split()[0]))
        out[m.group(1)] = kinds
    return out


def metal_signatures(src: str) -> dict[str, tuple[int, list[str]]]:
    """Device kernel -> (buffer count, scalar struct field types) from the Metal source."""
    structs = {m.group(1): [f.split()[0] for f in m.group(2).strip().split(";") if f.strip()]
               for m in re.finditer(r"struct (\w+)_args_t \{(.*?)\};", src, re.S)}
    out = {}
    for m in _METAL_SIG.finditer(src):
        nbuf = len(re.findall(r"device \w+\* \w+ \[\[ buffer\(\d+\) \]\]", m.group(2)))
        out[m.group(1)] = (nbuf, structs.get(m.group(1), []))
    return out


def check_sources(launches: dict, cl_src: str, metal_src: str) -> None:
    """Every launch's device kernel exists in both sources with the parameters its record lists."""
    cl, mt = opencl_signatures(cl_src), metal_signatures(metal_src)
    for kernel, recs in launches.items():
        for r in recs:
            dev = r["kernel"]
            kinds = ["buf" if "arg" in p else p["scalar"] for p in r["params"]]
            if cl.get(dev) != kinds:
                raise _err(f"{kernel}: OpenCL kernel {dev} has parameters {cl.get(dev)}, record says {kinds}")
            nbuf = kinds.count("buf")
            want = (nbuf, [{"int32": "int", "int64": "long", "float32": "float"}[k] for k in kinds if k != "buf"])
            got = mt.get(dev)
            if got is None or got[0] != want[0] or len(got[1]) != len(want[1]):
                raise _err(f"{kernel}: Metal kernel {dev} has (buffers, scalars) {got}, record says {want}")
            if kinds[:nbuf] != ["buf"] * nbuf:
                raise _err(f"{kernel}/{dev}: scalars before buffers (the Metal struct layout assumes buffers first)")


def check_offsets(plan: Plan) -> None:
    """The GPU dispatchers bind whole buffers: every planned tensor arg must start at byte 0 of its storage."""
    for e in plan.entries.values():
        for ci, c in enumerate(e.calls):
            for a in c.args:
                if isinstance(a, TensorRef) and a.offset != 0:
                    raise _err(f"{e.name} call {ci} ({c.kernel}) reads storage {a.storage} at byte offset "
                               f"{a.offset}: GPU launch records bind buffers at offset 0")
        if e.output.offset != 0:
            raise _err(f"{e.name} output is at byte offset {e.output.offset} (must be 0 for GPU bundles)")


def aliased_kernels(plan: Plan) -> set[str]:
    """Plan kernels called with one storage bound to two buffer params (in-place calls such as ``multiply``)."""
    out = set()
    for e in plan.entries.values():
        for c in e.calls:
            storages = [a.storage for a in c.args if isinstance(a, TensorRef)]
            if len(storages) != len(set(storages)):
                out.add(c.kernel)
    return out


def unrestrict_aliased(cl_src: str, launches: dict, aliased: set[str]) -> str:
    """Drops ``restrict`` from the device kernels of aliased plan kernels: OpenCL C makes writes through a
    restrict pointer that another parameter also reaches undefined (PoCL tolerates it, strict compilers may not)."""
    names = {launch["kernel"] for k in aliased for launch in launches.get(k, [])}

    def fix(m: re.Match) -> str:
        return m.group(0).replace(" restrict ", " ") if m.group(1) in names else m.group(0)

    return re.sub(r"__kernel void (\w+)\([^)]*\)", fix, cl_src)


def export_gpu(lowered: tvm.IRModule, plan: Plan, out_dir: Path) -> dict:
    """Writes kernels.cl and kernels.metal to out_dir; returns plan.json's "gpu" section (validated)."""
    check_offsets(plan)
    mod = gpu_module(lowered, plan)
    cl_src, cl_split = build(mod, "opencl")
    metal_raw, metal_split = build(mod, "metal")
    metal_src = metal_library_source(metal_raw)
    launches = launch_records(cl_split, plan)
    if json.dumps(launch_records(metal_split, plan), sort_keys=True) != json.dumps(launches, sort_keys=True):
        raise _err("the OpenCL and Metal builds of the same scheduled TIR launch differently")
    check_sources(launches, cl_src, metal_src)
    cl_src = unrestrict_aliased(cl_src, launches, aliased_kernels(plan))
    out_dir = Path(out_dir)
    (out_dir / OPENCL_SOURCE).write_text(cl_src)
    (out_dir / METAL_SOURCE).write_text(metal_src)
    section = {"version": GPU_VERSION, "opencl_source": OPENCL_SOURCE, "metal_source": METAL_SOURCE,
               "launches": launches}
    validate_gpu_section({**plan.to_dict(), "gpu": section}, cl_src)
    return section


def _vfail(msg: str) -> McpmError:
    return McpmError(f"invalid plan: gpu: {msg}")


def validate_gpu_section(plan_dict: dict, opencl_source: str | None = None) -> None:
    """The loaders' rules of docs/gpu-plan.md on plan.json (a dict with a "gpu" section); one-line McpmError.

    With ``opencl_source``, device kernel names must be defined there."""
    gpu = plan_dict.get("gpu")
    if not isinstance(gpu, dict):
        raise _vfail("no gpu section (export with --device gpu)")
    if gpu.get("version") != GPU_VERSION:
        raise _vfail(f"version {gpu.get('version')!r}, expected {GPU_VERSION}")
    for key in ("opencl_source", "metal_source"):
        v = gpu.get(key)
        if not isinstance(v, str) or not v or "/" in v or v.startswith("."):
            raise _vfail(f"bad {key} {v!r}")
    launches = gpu.get("launches")
    if not isinstance(launches, dict):
        raise _vfail("launches is not an object")
    defined = set(opencl_signatures(opencl_source)) if opencl_source is not None else None
    calls: dict[str, list] = {}
    for name, e in plan_dict["entries"].items():
        for c in e["calls"]:
            calls.setdefault(c["kernel"], []).append((c, int(e["n_max"]), name))
    for kernel in plan_dict["kernels"]:
        recs = launches.get(kernel)
        if not isinstance(recs, list) or not recs:
            raise _vfail(f"kernel {kernel} has no launches")
        for li, r in enumerate(recs):
            _validate_launch(kernel, li, r, calls.get(kernel, []), defined)
    extra = sorted(set(launches) - set(plan_dict["kernels"]))
    if extra:
        raise _vfail(f"launches for unknown kernel {extra[0]}")


def _validate_launch(kernel: str, li: int, r, calls: list, defined: set | None) -> None:
    where = f"kernel {kernel} launch {li}"
    if not isinstance(r, dict) or not isinstance(r.get("kernel"), str) or not r["kernel"]:
        raise _vfail(f"{where}: no device kernel name")
    where += f" ({r['kernel']})"
    if defined is not None and r["kernel"] not in defined:
        raise _vfail(f"{where}: device kernel {r['kernel']} is not in the OpenCL source")
    params = r.get("params")
    if not isinstance(params, list):
        raise _vfail(f"{where}: params is not a list")
    tensor_kinds = (TensorRef.kind, WeightArg.kind, CacheArg.kind, InputArg.kind)
    for pi, p in enumerate(params):
        if isinstance(p, dict) and set(p) == {"arg"}:
            i = p["arg"]
            if not isinstance(i, int) or isinstance(i, bool):
                raise _vfail(f"{where}: param {pi}: bad arg index {i!r}")
            for c, _, entry in calls:
                if not 0 <= i < len(c["args"]):
                    raise _vfail(f"{where}: param {pi}: arg {i} out of range in {entry} (0..{len(c['args']) - 1})")
                if c["args"][i]["kind"] not in tensor_kinds:
                    raise _vfail(f"{where}: param {pi}: arg {i} is a {c['args'][i]['kind']}, not a buffer")
        elif isinstance(p, dict) and set(p) == {"scalar", "expr"}:
            if p["scalar"] not in SCALAR_DTYPES:
                raise _vfail(f"{where}: param {pi}: unknown scalar type {p['scalar']!r}")
            for _, n_max, _ in calls or [(None, 1, None)]:
                for n in (1, n_max):
                    _eval(p["expr"], n, where)
        else:
            raise _vfail(f"{where}: param {pi} is neither {{arg}} nor {{scalar, expr}}: {p!r}")
    grid, block = r.get("grid"), r.get("block")
    if not isinstance(grid, list) or len(grid) != 3:
        raise _vfail(f"{where}: grid must have 3 expressions")
    if not isinstance(block, list) or len(block) != 3 or not all(isinstance(b, int) and b >= 1 for b in block):
        raise _vfail(f"{where}: block must be 3 integers >= 1, got {block!r}")
    if block[0] * block[1] * block[2] > MAX_BLOCK:
        raise _vfail(f"{where}: block {block} has more than {MAX_BLOCK} threads")
    for n_max in sorted({nm for _, nm, _ in calls} or {1}):
        for n in (1, n_max):
            for axis, g in zip("xyz", grid, strict=True):
                v = _eval(g, n, where)
                if v < 1:
                    raise _vfail(f"{where}: grid {axis} is {v} at n={n} (must be >= 1)")


def _eval(expr, n: int, where: str) -> int:
    try:
        return eval_rpn(expr, n, 0)
    except McpmError as e:
        raise _vfail(f"{where}: {e.problem}") from None
