"""The Metal dispatcher (runtime_bindings/metal/mcpm_metal.m), checked without an Apple SDK:

(a) it compiles (clang -fsyntax-only, Objective-C, ARC, -Wall -Wextra -Werror) against tests/stubs/{Foundation,Metal},
    stub headers declaring only what it uses with Apple's signatures; it implements every function of
    mcpm_opencl.h, the interface of the OpenCL dispatcher, and mirrors that file's structure;
(b) the OpenCL and Metal dispatchers read the launch records only through mcpm_gpu_plan.c (neither parses the
    records' JSON itself), so they agree on every field by construction;
(c) the scalar struct it packs (8-byte slots in record order at [[buffer(nb)]]) is what kernels.metal declares for
    every launch of an exported tiny GPU bundle, and the packing code itself (compiled here as C) writes the bytes
    those struct fields read.
What only a Mac/iPhone can check: see ios_app/README.md (GPU section)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "runtime_bindings" / "c"
METAL = ROOT / "runtime_bindings" / "metal" / "mcpm_metal.m"
OPENCL = C_DIR / "mcpm_opencl.c"
PLAN_C = C_DIR / "mcpm_gpu_plan.c"
STUBS = ROOT / "tests" / "stubs"
OBJC = ["-x", "objective-c", "-fobjc-arc", "-fblocks", "-fobjc-runtime=ios-14.0", "-std=gnu11", "-Wall", "-Wextra",
        "-Werror", "-isystem", str(STUBS), "-I", str(C_DIR)]

needs_clang = pytest.mark.skipif(shutil.which("clang") is None, reason="clang not found")


def _strip_c(text: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", " ", text, flags=re.S)


def _functions(text: str) -> list[str]:
    """Names of the functions defined in a C/Objective-C file, in order."""
    return re.findall(r"^(?:static )?(?:const )?\w+[ \*]+(\w+)\([^;{]*\)\s*\{", _strip_c(text), re.M)


# ---------------------------------------------------------------- (a) it compiles against Apple's signatures


@needs_clang
def test_metal_dispatcher_compiles_against_apple_signatures(tmp_path: Path) -> None:
    res = subprocess.run(["clang", "-fsyntax-only", *OBJC, str(METAL)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # the stubs are not lenient: a wrong selector or argument type is an error
    broken = tmp_path / "broken.m"
    broken.write_text(METAL.read_text().replace("offset:b->offset atIndex:", "offset:b->offset index:", 1))
    res = subprocess.run(["clang", "-fsyntax-only", *OBJC, str(broken)], capture_output=True, text=True)
    assert res.returncode != 0 and "setBuffer:offset:index:" in res.stderr, res.stderr
    broken.write_text(METAL.read_text().replace("[g->dev newCommandQueue]", "[g->dev newCommandQueue:1]", 1))
    assert subprocess.run(["clang", "-fsyntax-only", *OBJC, str(broken)], capture_output=True).returncode != 0


@needs_clang
@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_shared_plan_module_compiles_warning_free(cc: str, tmp_path: Path) -> None:
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not found")
    for src in (PLAN_C, OPENCL):
        res = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden", "-O2",
                              "-c", str(src), "-o", str(tmp_path / "x.o")], capture_output=True, text=True)
        assert res.returncode == 0, (src.name, res.stderr)


def test_metal_implements_the_dispatcher_interface_and_mirrors_opencl() -> None:
    header = _strip_c((C_DIR / "mcpm_opencl.h").read_text())
    api = re.findall(r"\b(mcpm_gpu_\w+)\(", header)
    assert {"mcpm_gpu_open", "mcpm_gpu_run", "mcpm_gpu_free", "mcpm_gpu_device_name", "mcpm_gpu_program_origin",
            "mcpm_gpu_times_json", "mcpm_gpu_reset_times"} <= set(api)
    metal, opencl = _functions(METAL.read_text()), _functions(OPENCL.read_text())
    for name in api:  # the public functions, defined once in each
        assert metal.count(name) == 1 and opencl.count(name) == 1, name
    # same function order where the two have the same functions (the OpenCL-only ones: dlopen, program cache, ...)
    common = [f for f in opencl if f in metal]
    assert common == [f for f in metal if f in opencl]
    assert {"pick_device", "build_program", "new_buffer", "alloc_buffers", "arg_buffer", "set_scalar", "make_kernels",
            "collect_times", "sanitize"} <= set(common)
    text = METAL.read_text()
    assert "#import <Metal/Metal.h>" in text and "MTLCreateSystemDefaultDevice()" in text
    assert "newLibraryWithSource:" in text and "newComputePipelineStateWithFunction:" in text
    assert "dispatchThreadgroups:" in text and "waitUntilCompleted" in text and "MTLResourceStorageModeShared" in text


# ---------------------------------------------------------------- (b) one reader of the launch records

RECORD_KEYS = ("launches", "version", "params", "grid", "block", "kernel", "arg", "scalar", "expr")


def test_both_dispatchers_read_the_records_only_through_mcpm_gpu_plan() -> None:
    plan_c = PLAN_C.read_text()
    for key in RECORD_KEYS:
        assert f'"{key}"' in plan_c, key  # the one parser
    for f in (OPENCL, METAL):
        text = f.read_text()
        assert '#include "mcpm_gpu_plan.h"' in text, f.name
        literals = set(re.findall(r'"(\w+)"', _strip_c(text)))
        assert not literals & set(RECORD_KEYS), (f.name, literals & set(RECORD_KEYS))
        assert "json_child" not in text and "json_next" not in text, f.name  # no walking of the records
        # the only JSON either reads itself is the name of its own source file
        assert re.findall(r'json_get\([^)]*\)', text) == [
            f'json_get(d->doc, d->gpu, "{"metal" if f == METAL else "opencl"}_source")'], f.name
        for fn in ("gpu_plan_parse", "gpu_plan_scalar", "gpu_plan_grid", "gpu_plan_free", "gpu_plan_times_json",
                   "gpu_plan_reset_times"):
            assert f"{fn}(" in text, (f.name, fn)
    # neither keeps a private RPN evaluator or launch-record types
    for f in (OPENCL, METAL):
        text = _strip_c(f.read_text())
        assert "RPN_" not in text and "floordiv" not in text and "rec_set" not in text, f.name


# ---------------------------------------------------------------- (c) the scalar struct layout

PACK_HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mcpm_gpu_plan.h"
typedef unsigned long NSUInteger;
struct mcpm_gpu { gpu_plan recs; };
%s
/* the struct TVM's Metal codegen declares for (int32 a, int64 b, float32 c, int32 d): 8-byte slots */
struct k_args_t { int a[2]; long b; float c[2]; int d[2]; };
int main(void) {
    static mcpm_gpu g;
    gpu_rpn_tok toks[] = {{0, -5}, {0, (int64_t)1 << 40}, {0, 3}, {1, 0}};  /* RPN_NUM values, then "n" */
    g.recs.toks = toks;
    gpu_param ps[] = {{1, 0, GPU_SCALAR_INT32, {0, 1}}, {1, 0, GPU_SCALAR_INT64, {1, 1}},
                      {1, 0, GPU_SCALAR_FLOAT32, {2, 1}}, {1, 0, GPU_SCALAR_INT32, {3, 1}}};
    uint64_t slots[4];
    memset(slots, 0xAB, sizeof slots);
    char err[256];
    for (int i = 0; i < 4; i++)
        if (set_scalar(&g, slots, i, i, &ps[i], 7, 0, "k", err, sizeof err)) { puts(err); return 1; }
    struct k_args_t s;
    _Static_assert(sizeof s == sizeof slots, "8-byte slots");
    memcpy(&s, slots, sizeof s);
    printf("%%d %%ld %%g %%d\n", s.a[0], s.b, s.c[0], s.d[0]);
    gpu_param big = {1, 0, GPU_SCALAR_INT32, {1, 1}};
    if (!set_scalar(&g, slots, 0, 4, &big, 7, 0, "k", err, sizeof err)) return 2;
    puts(err);
    return 0;
}
"""


def _metal_function(name: str) -> str:
    text = METAL.read_text()
    start = text.index(f"static int {name}(")
    return text[start:text.index("\n}\n", start) + 3]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found")
def test_scalar_packing_writes_what_the_metal_struct_reads(tmp_path: Path) -> None:
    """mcpm_metal.m's set_scalar, compiled as C with the shared plan module: int32 -5, int64 2^40, float32 3 and
    int32 n=7 land where `int a[2]; long b; float c[2]; int d[2];` reads them ([0] of 32-bit fields)."""
    src = tmp_path / "pack.c"
    src.write_text(PACK_HARNESS % _metal_function("set_scalar"))
    exe = tmp_path / "pack"
    res = subprocess.run(["gcc", "-std=c11", "-Wall", "-Werror", "-I", str(C_DIR), "-o", str(exe), str(src),
                          str(PLAN_C), str(C_DIR / "mcpm_json.c")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    lines = out.stdout.splitlines()
    assert lines[0] == f"-5 {1 << 40} 3 7"
    assert "does not fit int32" in lines[1]


def metal_structs(src: str) -> dict[str, list[tuple[str, str]]]:
    """kernel -> [(field type, declarator)] of `struct <kernel>_args_t`."""
    out = {}
    for m in re.finditer(r"struct (\w+)_args_t \{(.*?)\};", src, re.S):
        out[m.group(1)] = [tuple(f.split(None, 1)) for f in (x.strip() for x in m.group(2).split(";")) if f]
    return out


def metal_kernel_params(src: str) -> dict[str, list[tuple[str, int]]]:
    """kernel -> [(kind 'buf' | 'args', [[buffer(i)]] index)] in declaration order."""
    out = {}
    for m in re.finditer(r"kernel void (\w+)\((.*?)\)\s*\{", src, re.S):
        params = []
        for p in re.finditer(r"(device \w+\*|constant (\w+)_args_t&) \w+ \[\[ buffer\((\d+)\) \]\]", m.group(2)):
            params.append(("args" if p.group(2) else "buf", int(p.group(3))))
        out[m.group(1)] = params
    return out


SLOT_FIELDS = {"int32": {("int", "[2]"), ("__TVMArgUnion", "")}, "int64": {("long", "")},
               "float32": {("float", "[2]"), ("__TVMArgUnion", "")}}


def check_layout(plan: dict, metal_src: str) -> int:
    """Every launch: buffers at [[buffer(0..nb-1)]] in record order, the args struct at [[buffer(nb)]] with one
    8-byte field per scalar in record order and of its dtype. Returns the number of launches checked."""
    structs, kparams = metal_structs(metal_src), metal_kernel_params(metal_src)
    checked = 0
    for plan_kernel, recs in plan["gpu"]["launches"].items():
        for r in recs:
            dev = r["kernel"]
            where = f"{plan_kernel}/{dev}"
            bufs = [p for p in r["params"] if "arg" in p]
            scalars = [p["scalar"] for p in r["params"] if "scalar" in p]
            assert dev in kparams, where
            expected = [("buf", i) for i in range(len(bufs))] + ([("args", len(bufs))] if scalars else [])
            assert kparams[dev] == expected, (where, kparams[dev])
            fields = structs.get(dev, [])
            assert len(fields) == len(scalars), (where, fields, scalars)
            for (ftype, decl), dtype in zip(fields, scalars, strict=True):
                suffix = re.sub(r"^\w+", "", decl.strip())
                assert (ftype, suffix) in SLOT_FIELDS[dtype], (where, ftype, decl, dtype)
            checked += 1
    return checked


def test_layout_checker_catches_a_mismatch() -> None:
    src = textwrap.dedent("""
        struct k_kernel_args_t {
          long n;
          int m[2];
        };
        kernel void k_kernel(  device float* a [[ buffer(0) ]],
          constant k_kernel_args_t& arg [[ buffer(1) ]],
          uint blockIdx [[threadgroup_position_in_grid]]
        ) {
        }
    """)
    plan = {"gpu": {"launches": {"k": [{"kernel": "k_kernel", "params": [
        {"arg": 0}, {"scalar": "int64", "expr": ["n"]}, {"scalar": "int32", "expr": [1]}]}]}}}
    assert check_layout(plan, src) == 1
    swapped = json.loads(json.dumps(plan))
    swapped["gpu"]["launches"]["k"][0]["params"][1:] = swapped["gpu"]["launches"]["k"][0]["params"][:0:-1]
    with pytest.raises(AssertionError):
        check_layout(swapped, src)


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import tiny_minicpm, write_tiny

    from mcpm.export.exporter import ExportOptions, run_export

    tiny = write_tiny(tmp_path_factory.mktemp("metal") / "tiny", tiny_minicpm())
    out = tmp_path_factory.mktemp("metal") / "bundle"
    run_export(ExportOptions(tiny, out, "host", "q4g32", (), 48, 4, progress=False, device="gpu"))
    return out


def test_scalar_struct_layout_matches_kernels_metal(gpu_bundle: Path) -> None:
    plan = json.loads((gpu_bundle / "plan.json").read_text())
    src = (gpu_bundle / plan["gpu"]["metal_source"]).read_text()
    n = check_layout(plan, src)
    assert n >= len(plan["kernels"])
    # the scalars actually used include n-dependent int64 values (the packing of test_scalar_packing_... covers
    # int32 and float32 too)
    assert any("scalar" in p for recs in plan["gpu"]["launches"].values() for r in recs for p in r["params"])
