"""The C runtime's iOS paths, tested on this host: the static kernel table (mcpm_static_kernels, generated as
mcpm_kernel_table.c) finds kernels that dlsym cannot see, the Apple branch of the CPU feature check compiles
warning-free, and the ios target presets."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mcpm.export.bundle.target import IOS_SIMULATOR_TRIPLES, get_target, ios_simulator_variants
from mcpm.runtime.build import C_DIR, LIBS, SOURCES

CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden", "-O2", "-shared"]


def test_ios_target_presets() -> None:
    t = get_target("ios")
    assert get_target("ios-arm64") == t and t.platform == "ios" and t.triple == "arm64-apple-ios14.0"
    assert [v.name for v in t.variants] == ["i8mm", "dotprod", "neon"]
    assert [v.requires for v in t.variants] == [("dotprod", "i8mm"), ("dotprod",), ()]
    assert all(v.tvm_target["mtriple"] == "arm64-apple-ios14.0" for v in t.variants)
    assert t.record()["kernel_variants"] == ["i8mm", "dotprod", "neon"]
    arm = ios_simulator_variants("arm64")
    assert [v.name for v in arm] == ["i8mm", "dotprod", "neon"]
    assert all(v.tvm_target["mtriple"] == IOS_SIMULATOR_TRIPLES["arm64"] for v in arm)
    (x86,) = ios_simulator_variants("x86_64")
    assert x86.requires == () and x86.tvm_target == {"kind": "llvm", "mtriple": "x86_64-apple-ios14.0-simulator"}


@pytest.mark.skipif(shutil.which("clang") is None or not Path("/usr/aarch64-linux-gnu/include").is_dir(),
                    reason="clang or the aarch64 glibc headers (libc6-dev-arm64-cross) missing")
def test_apple_cpu_feature_branch_compiles(tmp_path: Path) -> None:
    """No Apple SDK here: aarch64 glibc headers stand in, __APPLE__ replaces __linux__, and a stub <sys/sysctl.h>
    declares sysctlbyname as Apple's does. Checks the branch is taken and is -Wall -Wextra -Werror clean."""
    (tmp_path / "sys").mkdir()
    (tmp_path / "sys" / "sysctl.h").write_text(
        "#include <stddef.h>\nint sysctlbyname(const char*, void*, size_t*, void*, size_t);\n")
    flags = ["clang", "--target=aarch64-linux-gnu", "-U__linux__", "-U__linux", "-Ulinux", "-D__APPLE__",
             "-isystem", str(tmp_path), "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{C_DIR}"]
    res = subprocess.run([*flags, "-fsyntax-only", str(C_DIR / "mcpm_cpu.c")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    pre = subprocess.run([*flags, "-E", str(C_DIR / "mcpm_cpu.c")], capture_output=True, text=True).stdout
    for key in ("hw.optional.arm.FEAT_DotProd", "hw.optional.arm.FEAT_I8MM"):
        assert key in pre
    assert "getauxval" not in pre.split("int mcpm_cpu_has(", 1)[1].split("int mcpm_pick_variant", 1)[0]


# ---------------------------------------------------------------- the static kernel table on the host


@pytest.fixture(scope="module")
def host_bundle(default_q4_bundle: Path) -> Path:
    """The session's default host bundle (read-only)."""
    return default_q4_bundle


def _build(bundle: Path, out: Path, table: bool) -> Path:
    """The runtime + the bundle's kernels as a static archive whose symbols stay hidden in the shared library
    (--exclude-libs): dlsym cannot find them, so only the generated table can; without the table nothing even
    references them."""
    from mcpm.export.compiler.plan import Plan
    from mcpm.export.ios.package import kernel_table_source

    plan = Plan.from_json((bundle / "plan.json").read_text())
    work = out.parent
    archive = work / "libkernels.a"
    if not archive.is_file():
        subprocess.run(["ar", "rcs", str(archive), *(str(bundle / o) for o in plan.object_files())], check=True)
    srcs = [str(C_DIR / s) for s in SOURCES]
    if table:
        (work / "mcpm_kernel_table.c").write_text(kernel_table_source(plan, "host"))
        srcs.append(str(work / "mcpm_kernel_table.c"))
    cmd = ["gcc", *CFLAGS, f"-I{C_DIR}", "-o", str(out), *srcs, "-Wl,--exclude-libs,ALL", str(archive), *LIBS]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.mcpm_model_load.restype = ctypes.c_void_p
    lib.mcpm_model_load.argtypes = [ctypes.c_char_p, ctypes.c_void_p]  # NULL params = defaults
    lib.mcpm_last_error.restype = ctypes.c_char_p
    lib.mcpm_last_error.argtypes = [ctypes.c_void_p]
    lib.mcpm_prefill.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.mcpm_vocab_size.argtypes = [ctypes.c_void_p]
    lib.mcpm_model_free.argtypes = [ctypes.c_void_p]
    lib.mcpm_model_free.restype = None
    return lib


def _prefill(lib: ctypes.CDLL, bundle: Path) -> np.ndarray:
    h = lib.mcpm_model_load(str(bundle).encode(), None)
    assert h, lib.mcpm_last_error(None).decode()
    try:
        tokens = np.array([1, 5, 9, 13, 200], dtype=np.int32)
        logits = np.zeros(lib.mcpm_vocab_size(h), dtype=np.float32)
        assert lib.mcpm_prefill(h, tokens.ctypes.data, len(tokens), logits.ctypes.data) == 0, \
            lib.mcpm_last_error(h).decode()
        return logits
    finally:
        lib.mcpm_model_free(h)


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("ar") is None, reason="gcc/ar missing")
def test_static_kernel_table_finds_hidden_kernels(host_bundle: Path, tmp_path: Path) -> None:
    with_table = _build(host_bundle, tmp_path / "libwith.so", table=True)
    dyn = subprocess.run(["nm", "-D", "--defined-only", str(with_table)], capture_output=True, text=True).stdout
    assert "__tvm_ffi_" not in dyn and "mcpm_static_kernels" not in dyn  # nothing dlsym could find
    logits = _prefill(_bind(with_table), host_bundle)

    reference = tmp_path / "libref.so"  # the ordinary build: kernels.o linked in, found with dlsym
    res = subprocess.run(["gcc", *CFLAGS, "-o", str(reference), *[str(C_DIR / s) for s in SOURCES],
                          *(str(p) for p in sorted(host_bundle.glob("*.o"))), *LIBS], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(logits, _prefill(_bind(reference), host_bundle))

    without = _bind(_build(host_bundle, tmp_path / "libwithout.so", table=False))
    assert not without.mcpm_model_load(str(host_bundle).encode(), None)
    assert "kernel symbol __tvm_ffi_" in without.mcpm_last_error(None).decode()


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("ar") is None, reason="gcc/ar missing")
def test_table_is_kept_when_the_runtime_is_an_archive(host_bundle: Path, tmp_path: Path) -> None:
    """If the app links the C target as a static archive, the runtime's weak mcpm_static_kernels() alone would
    not pull in the table's archive member; the Swift layer's call to mcpm_kernel_table_count() does. Simulated
    with an 'app' object that calls it (or not), the runtime + table in one archive, the kernels in another."""
    from mcpm.export.compiler.plan import Plan
    from mcpm.export.ios.package import kernel_table_source

    plan = Plan.from_json((host_bundle / "plan.json").read_text())
    (tmp_path / "mcpm_kernel_table.c").write_text(kernel_table_source(plan, "host"))
    objs = []
    for src in [*(C_DIR / s for s in SOURCES), tmp_path / "mcpm_kernel_table.c"]:
        obj = tmp_path / (src.stem + ".o")
        res = subprocess.run(["gcc", *CFLAGS[:-1], f"-I{C_DIR}", "-c", str(src), "-o", str(obj)],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        objs.append(str(obj))
    subprocess.run(["ar", "rcs", str(tmp_path / "libcmcpm.a"), *objs], check=True)
    subprocess.run(["ar", "rcs", str(tmp_path / "libkernels.a"), *(str(host_bundle / o) for o in plan.object_files())],
                   check=True)
    results = {}
    for calls_count in (True, False):
        app = tmp_path / f"app{int(calls_count)}.c"
        app.write_text('#include "mcpm.h"\nint mcpm_kernel_table_count(void);\n'
                       '__attribute__((visibility("default"))) int app_kernels(void) { return '
                       + ("mcpm_kernel_table_count()" if calls_count else "0") + "; }\n"
                       '__attribute__((visibility("default"))) void* app_load(const char* d) '
                       "{ return mcpm_model_load(d, 0); }\n")
        lib = tmp_path / f"libapp{int(calls_count)}.so"
        res = subprocess.run(["gcc", *CFLAGS, f"-I{C_DIR}", "-o", str(lib), str(app), "-Wl,--exclude-libs,ALL",
                              str(tmp_path / "libcmcpm.a"), str(tmp_path / "libkernels.a"), *LIBS],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        cdll = ctypes.CDLL(str(lib))
        cdll.app_load.restype = ctypes.c_void_p
        cdll.app_load.argtypes = [ctypes.c_char_p]
        results[calls_count] = (cdll.app_kernels(), bool(cdll.app_load(str(host_bundle).encode())))
    assert results[True] == (len(plan.kernels), True)
    assert results[False] == (0, False)  # without the reference the table (and the kernels) are not linked
