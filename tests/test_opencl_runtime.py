"""The C runtime's OpenCL dispatcher (runtime_bindings/c/mcpm_opencl.c) on PoCL, through the ctypes binding.

Two kinds of bundles:
- a synthetic bundle written here (4 plan kernels with hand-written C kernels for the CPU and OpenCL kernels for the
  GPU: several launches per call, int32/int64/constant scalars, 2-D grids, a tensor at a nonzero storage offset,
  caches written at `pos`): the dispatcher's mechanics, its validation and its errors, independent of the exporter;
- tiny MiniCPM models exported with `--device gpu` (f32 and q4g32), when the exporter has that option: GPU logits
  against the CPU path, greedy text, prefill == decode steps and a negative control.
Every test skips with the reason when there is no OpenCL platform (apt: pocl-opencl-icd).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import opencl_unavailable

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "runtime_bindings" / "c"
H, V, CTX, CHUNK = 16, 48, 64, 8
SCRATCH_OFFSET = 256  # bytes into storage 3: a sub-buffer (PoCL binds at multiples of 128 bytes)


NO_OPENCL = opencl_unavailable()
pytestmark = [
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built"),
    pytest.mark.skipif(bool(NO_OPENCL), reason=NO_OPENCL or "OpenCL present"),
]

# ---------------------------------------------------------------- the synthetic bundle

CPU_KERNELS = r"""
#include <stdint.h>
typedef struct { void* data; int32_t dev_type, dev_id; int32_t ndim; uint8_t code, bits; uint16_t lanes;
                 int64_t* shape; int64_t* strides; uint64_t byte_offset; } DLT;
typedef struct { int32_t type_index; uint32_t pad; union { int64_t i; double d; void* p; } u; } Any;
#define T(i) ((DLT*)args[i].u.p)
#define F(i) ((float*)T(i)->data)
enum { H = 16 };

int __tvm_ffi_embed(void* self, const Any* args, int32_t nargs, Any* ret) {  /* tokens, emb, x */
    (void)self; (void)nargs; (void)ret;
    const int32_t* tok = (const int32_t*)T(0)->data;
    int64_t n = T(0)->shape[0];
    for (int64_t i = 0; i < n; i++)
        for (int h = 0; h < H; h++) F(2)[i * H + h] = F(1)[tok[i] * H + h];
    return 0;
}

int __tvm_ffi_kv_write(void* self, const Any* args, int32_t nargs, Any* ret) {  /* x, gain, k, v, pos */
    (void)self; (void)nargs; (void)ret;
    int64_t n = T(0)->shape[0], pos = args[4].u.i;
    for (int64_t i = 0; i < n; i++)
        for (int h = 0; h < H; h++) {
            F(2)[(pos + i) * H + h] = F(0)[i * H + h];
            F(3)[(pos + i) * H + h] = F(0)[i * H + h] * F(1)[h];
        }
    return 0;
}

int __tvm_ffi_attend(void* self, const Any* args, int32_t nargs, Any* ret) {  /* x, k, v, pos, y */
    (void)self; (void)nargs; (void)ret;
    int64_t n = T(0)->shape[0], pos = args[3].u.i;
    for (int64_t i = 0; i < n; i++)
        for (int h = 0; h < H; h++) {
            int64_t t = pos + i;
            float acc = 0.0f;
            for (int64_t j = 0; j <= t; j++) acc += F(1)[j * H + h] * F(2)[j * H + h];
            F(4)[i * H + h] = F(0)[i * H + h] + acc / (float)(t + 1);
        }
    return 0;
}

int __tvm_ffi_head(void* self, const Any* args, int32_t nargs, Any* ret) {  /* y, wout, scratch, n, logits */
    (void)self; (void)nargs; (void)ret;
    int64_t n = args[3].u.i, vocab = T(1)->shape[0];
    for (int h = 0; h < H; h++) F(2)[h] = F(0)[(n - 1) * H + h] * 0.5f;
    for (int64_t v = 0; v < vocab; v++) {
        float acc = 0.0f;
        for (int h = 0; h < H; h++) acc += F(2)[h] * F(1)[v * H + h];
        F(4)[v] = acc;
    }
    return 0;
}
"""

CL_KERNELS = r"""
#define H 16
__kernel void embed_k(__global const float* emb, __global const int* tokens, __global float* x, int total) {
    int g = get_global_id(0);
    if (g < total) x[g] = emb[tokens[g / H] * H + g % H];
}
__kernel void kv_write_k(__global float* k, __global const float* x, long pos) {
    int i = get_group_id(0), h = get_local_id(0);
    k[(pos + i) * H + h] = x[i * H + h];
}
__kernel void kv_write_v(__global float* v, __global const float* x, __global const float* gain, long pos) {
    int i = get_group_id(0), h = get_local_id(0);
    v[(pos + i) * H + h] = x[i * H + h] * gain[h];
}
__kernel void attend_k(__global const float* x, __global const float* k, __global const float* v, __global float* y,
                       int pos) {
    int i = get_group_id(1), h = get_local_id(0);
    int t = pos + i;
    float acc = 0.0f;
    for (int j = 0; j <= t; j++) acc += k[j * H + h] * v[j * H + h];
    y[i * H + h] = x[i * H + h] + acc / (float)(t + 1);
}
__kernel void lastrow_k(__global const float* y, __global float* scratch, int n) {
    int h = get_local_id(0);
    scratch[h] = y[(n - 1) * H + h] * 0.5f;
}
__kernel void matvec_k(__global const float* w, __global const float* scratch, __global float* out, int vocab) {
    int r = get_global_id(0);
    if (r >= vocab) return;
    float acc = 0.0f;
    for (int h = 0; h < H; h++) acc += scratch[h] * w[r * H + h];
    out[r] = acc;
}
"""


def _t(storage: int, shape: list[list[int]], offset: int = 0) -> dict:
    return {"kind": "tensor", "storage": storage, "offset": offset, "dtype": "float32", "shape": shape}


def _entry(n_max: int) -> dict:
    rows = [[1, 0], [0, H]] if n_max > 1 else [[0, 1], [0, H]]
    cache = {"dtype": "float32", "shape": [[0, CTX], [0, 1], [0, H]]}
    pos = {"kind": "scalar", "name": "pos", "dtype": "int64"}
    calls = [
        {"kernel": "embed", "args": [
            {"kind": "input", "name": "tokens", "dtype": "int32", "shape": [rows[0]]},
            {"kind": "weight", "index": 0, "name": "emb", "dtype": "float32", "shape": [[0, V], [0, H]]},
            _t(0, rows)]},
        {"kernel": "kv_write", "args": [
            _t(0, rows), {"kind": "weight", "index": 1, "name": "gain", "dtype": "float32", "shape": [[0, H]]},
            {"kind": "cache", "layer": 0, "which": "k", **cache}, {"kind": "cache", "layer": 0, "which": "v", **cache},
            pos]},
        {"kernel": "attend", "args": [
            _t(0, rows), {"kind": "cache", "layer": 0, "which": "k", **cache},
            {"kind": "cache", "layer": 0, "which": "v", **cache}, pos, _t(1, rows)]},
        {"kernel": "head", "args": [
            _t(1, rows), {"kind": "weight", "index": 2, "name": "wout", "dtype": "float32", "shape": [[0, V], [0, H]]},
            _t(3, [[0, H]], SCRATCH_OFFSET), {"kind": "scalar", "name": "n", "dtype": "int64"},
            _t(2, [[0, 1], [0, V]])]},
    ]
    return {"n_max": n_max,
            "storages": [{"id": 0, "size": n_max * H * 4, "align": 64}, {"id": 1, "size": n_max * H * 4, "align": 64},
                         {"id": 2, "size": V * 4, "align": 64}, {"id": 3, "size": SCRATCH_OFFSET + H * 4, "align": 64}],
            "calls": calls, "output": _t(2, [[0, 1], [0, V]])}


def gpu_section() -> dict:
    ceil = lambda *e: [*e, 63, "+", 64, "//"]  # noqa: E731
    return {
        "version": 1, "opencl_source": "kernels.cl", "metal_source": "kernels.metal",
        "launches": {
            "embed": [{"kernel": "embed_k", "params": [{"arg": 1}, {"arg": 0}, {"arg": 2},
                                                       {"scalar": "int32", "expr": ["n", H, "*"]}],
                       "grid": [ceil("n", H, "*"), [1], [1]], "block": [64, 1, 1]}],
            "kv_write": [{"kernel": "kv_write_k",
                          "params": [{"arg": 2}, {"arg": 0}, {"scalar": "int64", "expr": ["pos"]}],
                          "grid": [["n"], [1], [1]], "block": [H, 1, 1]},
                         {"kernel": "kv_write_v", "params": [{"arg": 3}, {"arg": 0}, {"arg": 1},
                                                             {"scalar": "int64", "expr": ["pos"]}],
                          "grid": [["n"], [1], [1]], "block": [H, 1, 1]}],
            "attend": [{"kernel": "attend_k", "params": [{"arg": 0}, {"arg": 1}, {"arg": 2}, {"arg": 4},
                                                         {"scalar": "int32", "expr": ["pos"]}],
                        "grid": [[1], ["n"], [1]], "block": [H, 1, 1]}],
            "head": [{"kernel": "lastrow_k", "params": [{"arg": 0}, {"arg": 2}, {"scalar": "int32", "expr": ["n"]}],
                      "grid": [[1], [1], [1]], "block": [H, 1, 1]},
                     {"kernel": "matvec_k",
                      "params": [{"arg": 1}, {"arg": 2}, {"arg": 4}, {"scalar": "int32", "expr": [V]}],
                      "grid": [[V, 15, "+", 16, "//"], [1], [1]], "block": [16, 1, 1]}],
        },
    }


def synth_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"emb": rng.standard_normal((V, H)).astype(np.float32),
            "gain": rng.uniform(0.5, 1.5, H).astype(np.float32),
            "wout": rng.standard_normal((V, H)).astype(np.float32)}


def write_synth(out: Path, gpu: bool = True) -> Path:
    from mcpm.export.bundle.weights_file import write_weights

    out.mkdir(parents=True)
    w = synth_weights()
    write_weights(out / "weights.bin", list(w.items()), len(w))
    plan = {"magic": "MCPMPLAN", "version": 1, "target": "llvm", "object_file": "kernels.o",
            "symbol_prefix": "__tvm_ffi_", "kernels": ["embed", "kv_write", "attend", "head"],
            "max_ctx": CTX, "chunk": CHUNK, "vocab_size": V, "num_layers": 1,
            "cache": {"shape": [CTX, 1, H], "dtype": "float32"},
            "weights": [{"name": k, "shape": list(a.shape), "dtype": "float32"} for k, a in w.items()],
            "entries": {"prefill": _entry(CHUNK), "decode": _entry(1)}}
    if gpu:
        plan["gpu"] = gpu_section()
        (out / "kernels.cl").write_text(CL_KERNELS)
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    (out / "kernels.c").write_text(CPU_KERNELS)
    res = subprocess.run(["gcc", "-std=c11", "-O2", "-fPIC", "-Wall", "-Werror", "-c", str(out / "kernels.c"), "-o",
                          str(out / "kernels.o")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


def numpy_reference(tokens: list[int], decodes: list[int]) -> np.ndarray:
    """[1 + len(decodes), V]: the synthetic model in numpy (float64)."""
    w = synth_weights()
    k = np.zeros((CTX, H))
    v = np.zeros((CTX, H))
    rows = []
    pos = 0
    for step in [tokens] + [[t] for t in decodes]:
        x = w["emb"][step].astype(np.float64)
        n = len(step)
        k[pos:pos + n] = x
        v[pos:pos + n] = x * w["gain"]
        y = np.stack([x[i] + (k[:pos + i + 1] * v[:pos + i + 1]).sum(0) / (pos + i + 1) for i in range(n)])
        rows.append(w["wout"] @ (y[-1] * 0.5))
        pos += n
    return np.stack(rows)


def patch_plan(bundle: Path, fn) -> None:
    plan = json.loads((bundle / "plan.json").read_text())
    fn(plan)
    (bundle / "plan.json").write_text(json.dumps(plan))


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(tmp_path_factory.mktemp("synth") / "bundle")


@pytest.fixture(scope="module")
def synth_lib(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mcpm.runtime.build import build_library

    return build_library(synth, cache_dir=tmp_path_factory.mktemp("libcache"))


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def load(bundle: Path, lib: Path, device: str, **kw):
    from mcpm.runtime.binding import Model

    return Model.load(bundle, threads=1, library=lib, device=device, **kw)


def run_steps(model, tokens, decodes) -> np.ndarray:
    return np.stack([model.prefill(tokens)] + [model.decode(t) for t in decodes])


TOKENS = [3, 17, 5, 40, 11, 2, 9, 33, 47, 0, 21]  # 11 tokens: a chunk of 8 + 3
DECODES = [7, 19, 44, 1]


def test_synthetic_gpu_matches_cpu_and_numpy(synth: Path, synth_lib: Path) -> None:
    ref = numpy_reference(TOKENS, DECODES)
    with load(synth, synth_lib, "cpu") as cpu, load(synth, synth_lib, "gpu") as gpu:
        assert (cpu.device, gpu.device) == ("cpu", "gpu")
        c, g = run_steps(cpu, TOKENS, DECODES), run_steps(gpu, TOKENS, DECODES)
        assert np.abs(c - ref).max() / np.abs(ref).max() < 1e-5
        assert np.abs(g - c).max() / np.abs(c).max() < 1e-5
        assert gpu.position == len(TOKENS) + len(DECODES)
        gpu.reset()  # reset: the same again
        np.testing.assert_allclose(run_steps(gpu, TOKENS, DECODES), g, rtol=0, atol=1e-6 * np.abs(g).max())
        stats = gpu.stats()
        assert stats["device"] == "gpu" and stats["gpu_device"].startswith("OpenCL: ") and stats["notice"] == ""
        assert cpu.stats()["device"] == "cpu" and cpu.kernel_times() == []


def test_synthetic_prefill_equals_decode_steps(synth: Path, synth_lib: Path) -> None:
    with load(synth, synth_lib, "gpu") as gpu:
        whole = gpu.prefill(TOKENS)
        gpu.reset()
        gpu.prefill(TOKENS[:1])
        for t in TOKENS[1:-1]:
            gpu.decode(t)
        steps = gpu.decode(TOKENS[-1])
    np.testing.assert_allclose(steps, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def test_synthetic_greedy_generate_equal(synth: Path, synth_lib: Path) -> None:
    with load(synth, synth_lib, "cpu") as cpu, load(synth, synth_lib, "gpu") as gpu:
        a = cpu.generate([3, 17, 5], 32)
        b = gpu.generate([3, 17, 5], 32)
    assert a == b and len(a) == 32


def test_wrong_grid_fails_the_comparison(synth: Path, synth_lib: Path, tmp_path: Path) -> None:
    """Negative control: attention over half the rows (a plausible off-by-a-factor grid) must change the logits."""
    bad = copy_of(synth, tmp_path)
    half_rows = [[1], ["n", 2, "//", 1, "max"], [1]]
    patch_plan(bad, lambda p: p["gpu"]["launches"]["attend"][0].__setitem__("grid", half_rows))
    with load(synth, synth_lib, "cpu") as cpu, load(bad, synth_lib, "gpu") as gpu:
        c, g = cpu.prefill(TOKENS), gpu.prefill(TOKENS)
    assert np.abs(g - c).max() / np.abs(c).max() > 1e-2


def test_profiling_times_per_plan_kernel(synth: Path, synth_lib: Path) -> None:
    with load(synth, synth_lib, "gpu", profile=True) as gpu:
        gpu.generate([3, 17, 5], 4)  # 1 prefill + 3 decodes
        times = gpu.kernel_times()
    by = {t["kernel"]: t for t in times}
    assert set(by) == {"embed", "kv_write", "attend", "head"}
    assert all(t["count"] == 4 and t["ms"] >= 0 for t in times)
    assert by["head"]["launches"] == 8 and by["kv_write"]["launches"] == 8 and by["embed"]["launches"] == 4
    assert [t["ms"] for t in times] == sorted((t["ms"] for t in times), reverse=True)


def test_program_binary_cache(synth: Path, synth_lib: Path, tmp_path: Path) -> None:
    with load(synth, synth_lib, "gpu", cache_dir=tmp_path) as first:
        a = first.prefill(TOKENS)
        assert first.stats()["gpu_program"] == "built"
    assert len(list((tmp_path / "opencl").glob("*.bin"))) == 1
    with load(synth, synth_lib, "gpu", cache_dir=tmp_path) as second:
        assert second.stats()["gpu_program"] == "cached"
        np.testing.assert_array_equal(second.prefill(TOKENS), a)
    for f in (tmp_path / "opencl").glob("*.bin"):  # a corrupted cache entry: rebuilt from source
        f.write_bytes(b"garbage")
    with load(synth, synth_lib, "gpu", cache_dir=tmp_path) as third:
        assert third.stats()["gpu_program"] == "built"
        np.testing.assert_array_equal(third.prefill(TOKENS), a)


def test_auto_without_gpu_section_runs_on_cpu(synth_lib: Path, tmp_path: Path) -> None:
    from mcpm.errors import McpmError

    cpu_only = write_synth(tmp_path / "cpu-only", gpu=False)
    with load(cpu_only, synth_lib, "auto") as m:
        assert m.device == "cpu" and "no GPU kernels" in m.notice and "no GPU kernels" in m.stats()["notice"]
        assert np.isfinite(m.prefill(TOKENS)).all()
    with pytest.raises(McpmError, match="has no GPU kernels"):
        load(cpu_only, synth_lib, "gpu")
    with pytest.raises(McpmError, match="unknown device"):
        load(cpu_only, synth_lib, "tpu")


def _set(path: list, value):
    def fn(plan: dict) -> None:
        node = plan["gpu"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return fn


BAD_PLANS = [
    ("no-launches", _set(["launches", "head"], []), "kernel 'head' has no launch list"),
    ("unknown-kernel", _set(["launches", "nope"], []), "launches for 'nope', which is not a kernel of the plan"),
    ("arg-range", _set(["launches", "embed", 0, "params", 0], {"arg": 9}),
     "binds arg 9, but prefill call 0 has 3 args"),
    ("arg-scalar", _set(["launches", "attend", 0, "params", 0], {"arg": 3}), "a scalar of prefill call 2"),
    ("grid-zero", _set(["launches", "embed", 0, "grid", 0], ["n", 16, "*", 64, "//"]),
     "grid[0] = 0 at n=1 pos=0 (prefill entry"),
    ("block-big", _set(["launches", "embed", 0, "block"], [64, 32, 1]), "block of 2048 threads (at most 1024)"),
    ("rpn-bad", _set(["launches", "embed", 0, "grid", 0], ["n", "+"]), "operator '+' lacks an operand"),
    ("rpn-div0", _set(["launches", "embed", 0, "grid", 0], ["n", 0, "//"]), "division by zero"),
    ("rpn-token", _set(["launches", "embed", 0, "grid", 0], ["n", "**"]), "unknown token '**'"),
    ("scalar-dtype", _set(["launches", "embed", 0, "params", 3], {"scalar": "int8", "expr": [1]}),
     "scalar dtype 'int8'"),
    ("version", _set(["version"], 2), "field 'version' must be 1"),
    ("missing-kernel", _set(["launches", "embed", 0, "kernel"], "embed_missing"),
     "device kernel 'embed_missing' (launch 0 of plan kernel 'embed', prefill call 0) is not in the bundle's OpenCL"),
    ("wrong-arity", _set(["launches", "embed", 0, "params", 3], {"arg": 0}), "clSetKernelArg(3) failed"),
    ("misaligned", lambda p: [c["args"][2].__setitem__("offset", 64) for e in ("prefill", "decode")
                              for c in p["entries"][e]["calls"] if c["kernel"] == "head"],
     "binds buffers only at multiples of 128 bytes"),
]


@pytest.mark.parametrize(("damage", "message"), [(d, m) for _, d, m in BAD_PLANS], ids=[i for i, _, _ in BAD_PLANS])
def test_bad_launch_records_give_one_line_errors(synth: Path, synth_lib: Path, tmp_path: Path, damage, message) -> None:
    from mcpm.errors import McpmError

    bad = copy_of(synth, tmp_path)
    patch_plan(bad, damage)
    with pytest.raises(McpmError) as exc:
        load(bad, synth_lib, "gpu")
    assert message in str(exc.value) and "\n" not in str(exc.value).split(": ", 1)[1], str(exc.value)
    with load(bad, synth_lib, "auto") as m:  # auto: the same reason as a notice, on the CPU
        assert m.device == "cpu" and message in m.notice, m.notice


def test_broken_kernel_source_shows_the_build_log(synth: Path, synth_lib: Path, tmp_path: Path) -> None:
    from mcpm.errors import McpmError

    bad = copy_of(synth, tmp_path)
    (bad / "kernels.cl").write_text(CL_KERNELS.replace("acc += scratch[h]", "acc += scratchh[h]"))
    with pytest.raises(McpmError, match=r"kernels.cl failed to build on OpenCL: .*build log: .*scratchh"):
        load(bad, synth_lib, "gpu")
    (bad / "kernels.cl").unlink()
    with pytest.raises(McpmError, match="kernels.cl is missing: re-export the bundle with --device gpu"):
        load(bad, synth_lib, "gpu")


NO_PLATFORM_DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from mcpm.errors import McpmError
    from mcpm.runtime.binding import Model
    bundle, lib = Path(sys.argv[1]), Path(sys.argv[2])
    try:
        Model.load(bundle, threads=1, library=lib, device="gpu")
        raise SystemExit("gpu loaded without a platform")
    except McpmError as exc:
        print("GPU-ERROR:", exc)
    m = Model.load(bundle, threads=1, library=lib, device="auto")
    print("AUTO:", m.device, m.notice)
    m.prefill([1, 2, 3])
    """
)


def test_no_platform_errors_and_auto_falls_back(synth: Path, synth_lib: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-vendors"
    empty.mkdir()
    (tmp_path / "driver.py").write_text(NO_PLATFORM_DRIVER)
    env = dict(os.environ, OCL_ICD_VENDORS=str(empty), OPENCL_VENDOR_PATH=str(empty))
    res = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(synth), str(synth_lib), str(ROOT)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "GPU-ERROR:" in res.stdout and "no OpenCL platform" in res.stdout, res.stdout
    assert "AUTO: cpu device auto: running on the CPU: no OpenCL platform" in res.stdout, res.stdout


NO_LIBRARY_SHIM = textwrap.dedent(
    """
    /* LD_PRELOAD shim: dlopen of libOpenCL* fails with a reason per name (interposes dlopen and dlerror). */
    #define _GNU_SOURCE
    #include <dlfcn.h>
    #include <string.h>
    static const char* pending;
    void* dlopen(const char* name, int flags) {
        void* (*real)(const char*, int) = (void* (*)(const char*, int))dlsym(RTLD_NEXT, "dlopen");
        if (name && strstr(name, "libOpenCL")) {
            pending = strcmp(name, "libOpenCL.so") ? "reason-A (not installed)" : "reason-B (namespace denied)";
            return NULL;
        }
        return real(name, flags);
    }
    char* dlerror(void) {
        char* (*real)(void) = (char* (*)(void))dlsym(RTLD_NEXT, "dlerror");
        if (pending) { const char* m = pending; pending = NULL; return (char*)m; }
        return real();
    }
    """
)


def test_no_library_error_names_every_reason(synth: Path, synth_lib: Path, tmp_path: Path) -> None:
    """Without a loadable libOpenCL the error gives each name's own reason (it used to give only the first name's,
    libOpenCL.so.1's "not found", hiding why libOpenCL.so, the name on phones, failed)."""
    (tmp_path / "shim.c").write_text(NO_LIBRARY_SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "shim.so"), str(tmp_path / "shim.c"), "-ldl"],
                   check=True)
    (tmp_path / "driver.py").write_text(NO_PLATFORM_DRIVER)
    env = dict(os.environ, LD_PRELOAD=str(tmp_path / "shim.so"))
    res = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(synth), str(synth_lib), str(ROOT)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert ("no OpenCL library (libOpenCL.so.1: reason-A (not installed); libOpenCL.so: reason-B (namespace "
            "denied)): install an OpenCL driver") in res.stdout, res.stdout
    assert "AUTO: cpu device auto: running on the CPU: no OpenCL library" in res.stdout, res.stdout


def test_cl_header_values_match_khronos(tmp_path: Path) -> None:
    """mcpm_cl.h declares the OpenCL constants itself (the runtime never includes CL/cl.h): check them."""
    header = Path("/usr/include/CL/cl.h")
    if not header.is_file():
        pytest.skip("no /usr/include/CL/cl.h (apt-get install opencl-headers)")
    text = (C_DIR / "mcpm_cl.h").read_text()
    names = sorted({line.split()[1] for line in text.splitlines() if line.startswith("#define MCL_")})
    checks = "\n".join(f'_Static_assert((long long)({n}) == (long long)({n.replace("MCL_", "CL_", 1)}), "{n}");'
                       for n in names)
    protos = [("GetPlatformIDs", "clGetPlatformIDs"), ("CreateContext", "clCreateContext"),
              ("EnqueueNDRangeKernel", "clEnqueueNDRangeKernel"), ("CreateSubBuffer", "clCreateSubBuffer"),
              ("EnqueueFillBuffer", "clEnqueueFillBuffer"), ("CreateProgramWithBinary", "clCreateProgramWithBinary")]
    sigs = "\n".join(f"static mcl_{a}_fn t_{a} = (mcl_{a}_fn)0; static __typeof__(&{b}) u_{a} = 0;" for a, b in protos)
    src = tmp_path / "check.c"
    src.write_text('#define CL_TARGET_OPENCL_VERSION 120\n#include <CL/cl.h>\n#include <CL/cl_ext.h>\n'
                   f'#include "mcpm_cl.h"\n{checks}\n'
                   '_Static_assert(sizeof(mcl_buffer_region) == sizeof(cl_buffer_region), "region");\n'
                   f"{sigs}\nint main(void) {{ return 0; }}\n")
    res = subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Wno-unused-variable", "-Werror", "-I", str(C_DIR), "-c",
                          str(src), "-o", str(tmp_path / "check.o")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert len(names) > 30


def test_compiles_warning_free_with_clang(tmp_path: Path) -> None:
    """gcc -Wall -Wextra -Werror builds it in every other test (build_library, the sanitizer build); clang here."""
    if shutil.which("clang") is None:
        pytest.skip("clang not found")
    for src in ("mcpm_opencl.c", "mcpm_gpu_setup.c", "mcpm_runtime.c"):
        res = subprocess.run(["clang", "-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden", "-O2",
                              "-c", str(C_DIR / src), "-o", str(tmp_path / "x.o")], capture_output=True, text=True)
        assert res.returncode == 0, (src, res.stderr)


# ---------------------------------------------------------------- the same under AddressSanitizer + UBSan

ASAN_DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, sys.argv[4])
    from mcpm.errors import McpmError
    from mcpm.runtime.binding import Model
    from tests.test_opencl_runtime import (BAD_PLANS, DECODES, MODEL_DECODES, MODEL_TOKENS, TOKENS, copy_of, patch_plan,
                                           run_steps)
    lib, bundle, work, synthetic = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[5] == "1"
    toks, decs, prompt = (TOKENS, DECODES, [3, 17, 5]) if synthetic else (MODEL_TOKENS, MODEL_DECODES, [1, 422, 1092])
    cpu = Model.load(bundle, threads=1, library=lib, device="cpu")
    gpu = Model.load(bundle, threads=1, library=lib, device="gpu", profile=True, cache_dir=work / "cache")
    c, g = run_steps(cpu, toks, decs), run_steps(gpu, toks, decs)
    assert np.abs(g - c).max() / np.abs(c).max() < 1e-4
    assert cpu.generate(prompt, 32) == gpu.generate(prompt, 32)
    assert len(gpu.kernel_times()) > 3 and gpu.stats()["device"] == "gpu"
    cpu.close(); gpu.close()
    for i, (name, damage, message) in enumerate(BAD_PLANS if synthetic else []):
        bad = copy_of(bundle, work / name)
        patch_plan(bad, damage)
        try:
            Model.load(bad, threads=1, library=lib, device="gpu")
            raise SystemExit(name + " loaded")
        except McpmError as exc:
            assert message in str(exc), (name, str(exc))
    print("ASAN-OK")
    """
)


def _asan(bundle: Path, tmp_path: Path, synthetic: bool) -> None:
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip("gcc has no libasan.so")
    from mcpm.runtime.build import LIBS, SOURCES

    lib = tmp_path / "libmcpm_asan.so"
    cmd = ["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden", "-shared",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1",
           "-o", str(lib), *[str(C_DIR / s) for s in SOURCES], str(bundle / "kernels.o"), *LIBS]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (tmp_path / "driver.py").write_text(ASAN_DRIVER)
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    res = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(lib), str(bundle), str(tmp_path), str(ROOT),
                          "1" if synthetic else "0"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "ASAN-OK" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]


def test_under_address_and_ub_sanitizers(synth: Path, tmp_path: Path) -> None:
    _asan(synth, tmp_path, synthetic=True)


# ---------------------------------------------------------------- exported tiny models (mcpm-export --device gpu)


def _gpu_export_mode() -> str:
    """"exporter": mcpm-export --device gpu (ExportOptions.device); "compiler": only export/compiler/gpu.py's
    export_gpu (the exporter does not call it yet: the gpu section is added here the way the exporter will); "" none."""
    try:
        from mcpm.export.exporter import ExportOptions
    except Exception:  # noqa: BLE001
        return ""
    if "device" in {f.name for f in dataclasses.fields(ExportOptions)}:
        return "exporter"
    try:
        from mcpm.export.compiler.gpu import export_gpu  # noqa: F401
    except Exception:  # noqa: BLE001
        return ""
    return "compiler"


GPU_EXPORT = _gpu_export_mode()
needs_gpu_export = pytest.mark.skipif(not GPU_EXPORT, reason="no GPU export (mcpm-export --device gpu) in this tree")


def export_gpu_bundle(model_dir: Path, out: Path, quant: str) -> Path:
    from mcpm.export.exporter import ExportOptions, run_export

    if GPU_EXPORT == "exporter":
        run_export(ExportOptions(model_dir, out, "host", quant, (), 64, 8, progress=False, device="gpu"))
        return out
    from mcpm.export.bundle.target import get_target
    from mcpm.export.compiler.gpu import export_gpu
    from mcpm.export.compiler.lower import build_module, extract_plan, lower_module
    from mcpm.export.compiler.spec import CompileSpec
    from mcpm.export.loading import load_model
    from mcpm.quantize.recipe import Recipe

    run_export(ExportOptions(model_dir, out, "host", quant, (), 64, 8, progress=False))
    loaded = load_model(model_dir, progress=False)
    spec = CompileSpec(max_ctx=64, chunk=8, recipe=Recipe.parse(quant, ()), num_experts=loaded.config.num_experts)
    target = get_target("host").tvm_target
    lowered = lower_module(build_module(loaded.config, spec), target, None, False)
    plan = extract_plan(lowered, loaded.config, spec, target)
    on_disk = json.loads((out / "plan.json").read_text())
    assert json.loads(plan.to_json())["entries"] == on_disk["entries"], "the re-extracted plan differs"
    on_disk["gpu"] = export_gpu(lowered, plan, out)
    (out / "plan.json").write_text(json.dumps(on_disk))
    return out


@pytest.fixture(scope="module")
def gpu_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    from mcpm.runtime.build import build_library
    from tests.conftest import tiny_minicpm, write_tiny

    root = tmp_path_factory.mktemp("gpubundles")
    tiny = write_tiny(root / "tiny-model", tiny_minicpm(tie_word_embeddings=False), seed=3)
    out = {}
    for quant in ("f32", "q4g32"):
        b = export_gpu_bundle(tiny, root / f"tiny-{quant}", quant)
        out[quant] = (b, build_library(b, cache_dir=root / "libs"))
    return out


MODEL_TOKENS = np.random.default_rng(0).integers(3, 4096, 19).astype(np.int32).tolist()  # 2 chunks + 3
MODEL_DECODES = [5, 77, 1000, 4095, 3]


@needs_gpu_export
@pytest.mark.parametrize("quant", ["f32", "q4g32"])
def test_model_gpu_logits_match_cpu(gpu_bundles, quant: str) -> None:
    bundle, lib = gpu_bundles[quant]
    with load(bundle, lib, "cpu") as cpu, load(bundle, lib, "gpu") as gpu:
        c = run_steps(cpu, MODEL_TOKENS, MODEL_DECODES)
        g = run_steps(gpu, MODEL_TOKENS, MODEL_DECODES)
        rel = np.abs(g - c).max() / np.abs(c).max()
        assert rel < 1e-4, rel
        cpu.reset()
        gpu.reset()
        ids = [1, 422, 1092, 31]
        assert cpu.generate(ids, 32) == gpu.generate(ids, 32)


@needs_gpu_export
@pytest.mark.parametrize("quant", ["f32", "q4g32"])
def test_model_prefill_equals_decode_steps(gpu_bundles, quant: str) -> None:
    bundle, lib = gpu_bundles[quant]
    toks = MODEL_TOKENS[:10]
    with load(bundle, lib, "gpu") as gpu:
        whole = gpu.prefill(toks)
        gpu.reset()
        gpu.prefill(toks[:1])
        for t in toks[1:-1]:
            gpu.decode(t)
        steps = gpu.decode(toks[-1])
    assert np.abs(steps - whole).max() / np.abs(whole).max() < 1e-4


@needs_gpu_export
def test_model_wrong_grid_fails_the_comparison(gpu_bundles, tmp_path: Path) -> None:
    """Negative control on a real plan: halve the grid's x of every launch of one kernel used by both entries."""
    bundle, lib = gpu_bundles["f32"]
    bad = copy_of(bundle, tmp_path)
    plan = json.loads((bad / "plan.json").read_text())
    name = next(k for k in plan["kernels"] if k.startswith("linear"))
    for launch in plan["gpu"]["launches"][name]:
        launch["grid"][0] = [*launch["grid"][0], 2, "//", 1, "max"]
    (bad / "plan.json").write_text(json.dumps(plan))
    with load(bundle, lib, "cpu") as cpu, load(bad, lib, "gpu") as gpu:
        c = run_steps(cpu, MODEL_TOKENS, MODEL_DECODES)
        g = run_steps(gpu, MODEL_TOKENS, MODEL_DECODES)
    assert not np.allclose(g, c, rtol=1e-3, atol=1e-3 * np.abs(c).max())


@needs_gpu_export
def test_model_under_address_and_ub_sanitizers(gpu_bundles, tmp_path: Path) -> None:
    _asan(gpu_bundles["q4g32"][0], tmp_path, synthetic=False)
