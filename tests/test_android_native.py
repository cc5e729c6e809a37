"""libmcpm.so for Android arm64-v8a without the NDK (mcpm.export.android.native): Debian's clang + ld.lld, the
private bionic headers (runtime_bindings/android/include) and stub system libraries generated from the allow-lists.

The library is built once per module from a tiny model exported with --target android (three kernel objects);
the checks read it back with llvm-readelf. The JNI layer is also compiled for the host and driven from a JVM
(org.mcpm.demo.McpmNative of android_app/src) over a tiny host bundle, when javac/java are installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mcpm.errors import McpmError
from mcpm.export.android import native
from tests.conftest import opencl_unavailable, tiny_minicpm, write_tiny

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "android_app" / "README.md"
JAVA_SRC = ROOT / "android_app" / "src" / "org" / "mcpm" / "demo"
JNI_C = ROOT / "runtime_bindings" / "jni" / "mcpm_jni.c"

_missing = [t for t in ("clang", "ld.lld", "llvm-readelf") if not any(
    shutil.which(n) for n in (t, *(f"{t}-{v}" for v in range(20, 13, -1))))]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"Android native build tools missing: {', '.join(_missing)} "
                                                       "(make setup installs clang, lld, llvm)")

TINY_CTX, TINY_CHUNK = 32, 8


def _host_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mcpm.export.exporter import ExportOptions, run_export

    base = tmp_path_factory.mktemp("android-native-host")
    ckpt = write_tiny(base / "ckpt", tiny_minicpm(num_hidden_layers=1))
    out = base / "bundle"
    # --device gpu: the CPU kernels plus kernels.cl and plan.json's "gpu" section (the JVM test runs both)
    run_export(ExportOptions(ckpt, out, "host", "q4g32", (), TINY_CTX, TINY_CHUNK, progress=False, device="gpu"))
    return out


@pytest.fixture(scope="module")
def android_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """plan.json + the three AArch64 kernel objects of a tiny model (the compile phase of --target android alone:
    the full export also builds the APK, which needs the Java tools)."""
    from mcpm.export.bundle.target import get_target
    from mcpm.export.compiler.lower import export_plan
    from mcpm.export.compiler.spec import CompileSpec
    from mcpm.export.loading import load_model
    from mcpm.quantize.recipe import Recipe

    base = tmp_path_factory.mktemp("android-native-kernels")
    cfg = load_model(write_tiny(base / "ckpt", tiny_minicpm(num_hidden_layers=1)), progress=False).config
    spec = CompileSpec(max_ctx=TINY_CTX, chunk=TINY_CHUNK, recipe=Recipe.parse("q4g32", ()),
                       num_experts=cfg.num_experts)
    target = get_target("android")
    out = base / "bundle"
    out.mkdir()
    export_plan(cfg, spec, out, target.tvm_target, variants=list(target.variants))
    return out


@pytest.fixture(scope="module")
def android_lib(android_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("android-lib")
    return native.build_android_library(native.bundle_kernel_objects(android_bundle),
                                        out / "lib" / "arm64-v8a" / "libmcpm.so", out / "work")


def _contract_methods() -> set[str]:
    """The native methods the README's contract lists (`static native <type> <name>(`)."""
    return set(re.findall(r"static native \w+ (\w+)\(", README.read_text()))


def _android_cc(tmp: Path, source: str, name: str) -> Path:
    """Compiles C source for the Android target with the private headers; returns the object."""
    src = tmp / f"{name}.c"
    src.write_text(source)
    obj = tmp / f"{name}.o"
    subprocess.run([native._tool("clang"), f"--target={native.TRIPLE}", *native.android_include_flags(),
                    *native.CFLAGS, "-c", str(src), "-o", str(obj)], check=True, capture_output=True, text=True)
    return obj


# ---------------------------------------------------------------- the library


def test_bundle_has_three_kernel_sets(android_bundle: Path) -> None:
    objs = native.bundle_kernel_objects(android_bundle)
    assert sorted(p.name for p in objs) == ["kernels-dotprod.o", "kernels-i8mm.o", "kernels.o"]


def test_library_passes_the_android_checks(android_lib: Path) -> None:
    r = native.check_android_library(android_lib)
    assert r.ok, r.problems
    assert r.machine == "AArch64"
    assert r.soname == "libmcpm.so"
    assert set(r.needed) <= {"libc.so", "libm.so", "libdl.so", "liblog.so"}
    assert {"libc.so", "libm.so", "libdl.so", "liblog.so"} == set(r.needed)  # all four are really used
    assert r.load_alignments and all(a % 16384 == 0 for a in r.load_alignments)
    allowed = set().union(*(native.allowed_symbols(lib) for lib in native.SYSTEM_LIBS))
    assert set(r.undefined) <= allowed
    # the bionic spellings, not glibc's
    assert "__errno" in r.undefined and "__errno_location" not in r.undefined
    assert "aligned_alloc" not in r.undefined  # API 28 only: the runtime uses posix_memalign
    assert not any(s.startswith("__emutls") for s in r.undefined)  # emulated TLS is linked in


def test_jni_exports_equal_the_contract(android_lib: Path) -> None:
    r = native.check_android_library(android_lib)
    contract = _contract_methods()
    assert contract == {"load", "chat", "complete", "reset", "stats", "bench", "kernelTimes", "free", "hasVision",
                        "maxImagePixels", "encodeImage", "clearImages", "stop", "selfTest", "kernelVariants"}
    assert set(r.jni_methods) == contract
    java = (JAVA_SRC / "McpmNative.java").read_text()
    assert set(re.findall(r"static native \w+ (\w+)\(", java)) == contract


_JNI_TYPES = {"void": "void", "boolean": "jboolean", "int": "jint", "long": "jlong", "float": "jfloat",
              "String": "jstring", "TextSink": "jobject", "int[]": "jintArray"}


def _java_natives(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (return type, parameter types) of every `static native` declaration in text."""
    out = {}
    for ret, name, params in re.findall(r"static native (\w+) (\w+)\(([^()]*)\)", text):
        out[name] = (ret, tuple(p.split()[0] for p in params.split(",") if p.strip()))
    return out


def test_jni_signatures_match_java_and_readme() -> None:
    """The C functions take the JNI types of the Java declarations (a wrong parameter list would link but crash on
    the phone), and the README's contract declares the same signatures as McpmNative.java."""
    java = _java_natives((JAVA_SRC / "McpmNative.java").read_text())
    assert _java_natives(README.read_text()) == java
    assert java["load"] == ("long", ("String", "int", "String", "String", "String", "boolean"))
    assert java["kernelTimes"] == ("String", ("long",))
    assert java["hasVision"] == ("boolean", ("long",))
    assert java["maxImagePixels"] == ("long", ("long",))
    assert java["stop"] == ("void", ("long",))
    assert java["selfTest"] == ("String", ("long",)) and java["kernelVariants"] == ("String", ("long",))
    assert java["encodeImage"] == ("int", ("long", "int[]", "int", "int"))
    assert java["clearImages"] == ("void", ("long",))
    c = {}
    for ret, name, params in re.findall(r"JNIEXPORT (\w+) JNICALL Java_org_mcpm_demo_McpmNative_(\w+)\(([^()]*)\)",
                                        JNI_C.read_text()):
        c[name] = (ret, tuple(p.split()[0].rstrip("*") for p in params.split(",")))
    assert set(c) == set(java)
    for name, (ret, params) in java.items():
        assert c[name] == (_JNI_TYPES[ret], ("JNIEnv", "jclass", *(_JNI_TYPES[t] for t in params))), name


def test_kernel_symbols_are_exported(android_lib: Path, android_bundle: Path) -> None:
    """mcpm_model_load finds the kernels with dlsym: every variant's symbols must be in the dynamic table."""
    plan = json.loads((android_bundle / "plan.json").read_text())
    out = subprocess.run([native._tool("llvm-readelf"), "--dyn-syms", "--wide", str(android_lib)],
                         capture_output=True, text=True, check=True).stdout
    names = {f[7] for f in (line.split() for line in out.splitlines()) if len(f) >= 8 and f[6] != "UND"}
    for v in plan["kernel_variants"]:
        assert any(n.startswith(v["symbol_prefix"]) for n in names), v


def test_a_disallowed_libc_call_fails_the_link(android_bundle: Path, tmp_path: Path) -> None:
    """Negative control: system() is in bionic but not in the allow-list, so the link must fail, naming it."""
    source = ('int system(const char* cmd);\n'
              '__attribute__((visibility("default"))) int mcpm_bad(void) { return system("id"); }\n')
    bad = _android_cc(tmp_path, source, "bad")
    with pytest.raises(McpmError) as e:
        native.build_android_library([*native.bundle_kernel_objects(android_bundle), bad],
                                     tmp_path / "libmcpm.so", tmp_path / "work")
    assert "undefined symbol: system" in str(e.value)
    assert not (tmp_path / "libmcpm.so").exists()


def test_host_kernels_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "k.c"
    src.write_text("int k(void) { return 1; }\n")
    obj = tmp_path / "k.o"
    subprocess.run(["cc" if shutil.which("cc") else native._tool("clang"), "-c", str(src), "-o", str(obj)],
                   check=True)
    with pytest.raises(McpmError, match="not an aarch64"):
        native.build_android_library([obj], tmp_path / "libmcpm.so")


def test_check_reports_problems(tmp_path: Path) -> None:
    """A library with another SONAME, an extra NEEDED entry, 4 KiB pages and a stray import fails the check."""
    stubs = native.build_stub_libraries(tmp_path / "stubs")
    (tmp_path / "libz_stub.c").write_text('__attribute__((visibility("default"))) void deflate(void) {}\n')
    subprocess.run([native._tool("clang"), f"--target={native.TRIPLE}", "-nostdinc", "-fPIC", "-c",
                    str(tmp_path / "libz_stub.c"), "-o", str(tmp_path / "z.o")], check=True)
    subprocess.run([native._tool("ld.lld"), "-shared", "-soname", "libz.so", "-o", str(stubs / "libz.so"),
                    str(tmp_path / "z.o")], check=True)
    obj = _android_cc(tmp_path, "void deflate(void);\n"
                                "__attribute__((visibility(\"default\"))) void f(void) { deflate(); }\n", "uses_z")
    lib = tmp_path / "libother.so"
    subprocess.run([native._tool("ld.lld"), "-shared", "-soname", "libother.so", "-z", "max-page-size=4096",
                    "-o", str(lib), str(obj), f"-L{stubs}", "-lz", "-lc"], check=True)
    r = native.check_android_library(lib)
    text = "; ".join(r.problems)
    assert "SONAME" in text and "libz.so" in text and "aligned to 4096" in text and "deflate" in text


def test_missing_tools_give_a_setup_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    with pytest.raises(McpmError, match="make setup"):
        native.build_stub_libraries(tmp_path)


def test_compile_errors_show_the_first_error_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "c"
    broken.mkdir()
    for name in native.SOURCES:
        (broken / name).write_text("int ok;\n")
    (broken / native.SOURCES[0]).write_text("int f(void) { return undeclared_thing; }\n")
    monkeypatch.setattr(native, "C_DIR", broken)
    kernels = _android_cc(tmp_path, "int k(void) { return 1; }\n", "k")
    with pytest.raises(McpmError, match=r"compiling .*error: use of undeclared identifier 'undeclared_thing'"):
        native.build_android_library([kernels], tmp_path / "libmcpm.so")


# ---------------------------------------------------------------- headers: bionic's arm64 ABI, warning-free runtime


ABI_CHECKS = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
_Static_assert(sizeof(pthread_mutex_t) == 40 && sizeof(pthread_cond_t) == 48, "pthread");
_Static_assert(sizeof(pthread_attr_t) == 56 && sizeof(pthread_t) == 8, "pthread");
_Static_assert(sizeof(struct stat) == 128 && offsetof(struct stat, st_mode) == 16, "stat");
_Static_assert(offsetof(struct stat, st_size) == 48 && offsetof(struct stat, st_mtim) == 88, "stat");
_Static_assert(sizeof(struct timespec) == 16 && sizeof(struct rusage) == 144, "time");
_Static_assert(offsetof(struct rusage, ru_maxrss) == 32, "rusage");
_Static_assert(sizeof(off_t) == 8 && sizeof(time_t) == 8 && sizeof(mode_t) == 4 && sizeof(dev_t) == 8, "types");
_Static_assert(sizeof(Dl_info) == 32, "Dl_info");
_Static_assert(CLOCK_MONOTONIC == 1 && O_RDONLY == 0 && O_CLOEXEC == 02000000 && PROT_READ == 1, "const");
_Static_assert(MAP_PRIVATE == 2 && RTLD_NOW == 2 && RTLD_NOLOAD == 4 && RTLD_LAZY == 1, "const");
_Static_assert(_SC_NPROCESSORS_ONLN == 0x61 && RUSAGE_SELF == 0 && SEEK_END == 2, "const");
_Static_assert(AT_HWCAP == 16 && AT_HWCAP2 == 26, "auxv");
_Static_assert(HWCAP_ASIMDDP == (1 << 20) && HWCAP2_I8MM == (1 << 13) && HWCAP_ASIMDHP == (1 << 10), "hwcap");
_Static_assert(INT_MAX == 2147483647 && PATH_MAX == 4096 && sizeof(long) == 8, "limits");
int use(void) {
    void* p = NULL;
    int ok = posix_memalign(&p, 64, 128) == 0 && ((unsigned long)p % 64) == 0;
    ok = ok && MAP_FAILED == (void*)-1 && isnan(NAN) && errno == 0;
    free(p);
    fprintf(stderr, "%d %ld\n", ok, sysconf(_SC_NPROCESSORS_ONLN));
    return ok;
}
"""


def test_bionic_abi_of_the_private_headers(tmp_path: Path) -> None:
    _android_cc(tmp_path, ABI_CHECKS, "abi")


def test_headers_declare_only_allowed_functions(tmp_path: Path) -> None:
    """Every function the private headers declare (clang's AST of all of them) is in an allow-list: a call that
    compiles also links. static inline helpers are exempt."""
    headers = sorted(str(h.relative_to(native.INCLUDE_DIR)) for h in native.INCLUDE_DIR.rglob("*.h"))
    src = tmp_path / "all.c"
    src.write_text("".join(f"#include <{h}>\n" for h in headers))
    res = subprocess.run([native._tool("clang"), f"--target={native.TRIPLE}", *native.android_include_flags(),
                          "-fsyntax-only", "-Xclang", "-ast-dump", str(src)],
                         capture_output=True, text=True, check=True)
    declared = set()
    for line in res.stdout.splitlines():
        m = re.match(r"^\|-FunctionDecl .*? (?:used )?(?:referenced )?(\w+) '[^']*'(.*)$", line)
        if m and "implicit" not in line and "static" not in m.group(2):
            declared.add(m.group(1))
    allowed = set().union(*(native.allowed_symbols(lib) for lib in native.SYSTEM_LIBS))
    assert {"malloc", "pthread_create", "getauxval", "dladdr", "expf", "__errno"} <= declared
    assert declared - allowed == set()


def test_runtime_sources_compile_warning_free_with_pedantic(tmp_path: Path) -> None:
    """The unchanged runtime sources with the private headers: -Wall -Wextra -Werror (the build), plus -Wpedantic
    to see that the headers themselves are clean; no diagnostics at all."""
    flags = [f"--target={native.TRIPLE}", *native.android_include_flags(), *native.CFLAGS, "-Wpedantic",
             f"-I{native.C_DIR}", "-fsyntax-only"]
    for src in [*(native.C_DIR / s for s in native.SOURCES), JNI_C, native.ANDROID_DIR / "mcpm_android_rt.c"]:
        res = subprocess.run([native._tool("clang"), *flags, str(src)], capture_output=True, text=True)
        assert res.returncode == 0 and not res.stderr.strip(), (src.name, res.stderr)


# ---------------------------------------------------------------- the JNI layer on the host


def _host_jni_includes() -> list[list[str]]:
    found = []
    for jni_h in sorted(Path("/usr/lib/jvm").glob("*/include/jni.h")):
        found.append([f"-I{jni_h.parent}", f"-I{jni_h.parent / 'linux'}"])
    if Path("/usr/include/android/nativehelper/jni.h").is_file():
        found.append(["-I/usr/include/android/nativehelper"])
    return found


def test_jni_layer_compiles_for_the_host() -> None:
    if not shutil.which("gcc") or not _host_jni_includes():
        pytest.skip("gcc or a jni.h (openjdk / android-libnativehelper-dev) is missing")
    for inc in _host_jni_includes():
        res = subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-Wpedantic", "-fsyntax-only", *inc,
                              f"-I{native.C_DIR}", str(JNI_C)], capture_output=True, text=True)
        assert res.returncode == 0, (inc, res.stderr)


JAVA_SMOKE = r"""
package org.mcpm.demo;

public final class JniSmoke {
    static final class Collect implements McpmNative.TextSink {
        final StringBuilder text = new StringBuilder();
        int pieces;
        final int stopAfter;
        Collect(int stopAfter) { this.stopAfter = stopAfter; }
        public boolean onText(String piece) { text.append(piece); pieces++; return pieces < stopAfter; }
    }

    static String q(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20 || c > 0x7e) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    public static void main(String[] args) throws Exception {
        McpmNative.ensureLoaded();
        StringBuilder out = new StringBuilder("{");
        try {
            McpmNative.load(args[0] + "/does-not-exist", 1, "cpu", null, null, false);
            out.append("\"load_error\": null,");
        } catch (McpmException e) {
            out.append("\"load_error\": ").append(q(e.getMessage())).append(',');
        }
        String badDevice = null;
        try {
            McpmNative.load(args[0], 1, "npu", null, null, false);
        } catch (McpmException e) {
            badDevice = e.getMessage();
        }
        out.append("\"bad_device\": ").append(badDevice == null ? "null" : q(badDevice)).append(',');
        long h = McpmNative.load(args[0], 2, null, null, null, false);
        Collect a = new Collect(1 << 30), b = new Collect(1 << 30), stop = new Collect(1);
        int na = McpmNative.complete(h, "Hello h\u00e9llo \ud83d\ude00", 12, 0f, 0, 1f, 0L, a);
        int nb = McpmNative.complete(h, "Hello h\u00e9llo \ud83d\ude00", 12, 0f, 0, 1f, 0L, b);
        int ns = McpmNative.complete(h, "Hello", 12, 0f, 0, 1f, 0L, stop);
        int nn = McpmNative.complete(h, "Hello", 12, 0.8f, 40, 0.9f, 7L, null);
        int nPlain = McpmNative.complete(h, "Hello", 12, 0f, 0, 1f, 0L, null);
        final long hs = h;
        final int[] stopPieces = {0};
        int nStopped = McpmNative.complete(h, "Hello", 12, 0f, 0, 1f, 0L, new McpmNative.TextSink() {
            public boolean onText(String piece) { stopPieces[0]++; McpmNative.stop(hs); return true; }
        });
        int nAfterStop = McpmNative.complete(h, "Hello", 12, 0f, 0, 1f, 0L, null);
        McpmNative.stop(0L);
        McpmNative.reset(h);
        Collect c = new Collect(1 << 30);
        int nc = McpmNative.chat(h, "Hi there", 6, 0f, 0, 1f, 0L, c);
        String thrown = null;
        try {
            McpmNative.complete(h, "Hello", 12, 0f, 0, 1f, 0L, new McpmNative.TextSink() {
                public boolean onText(String piece) { throw new IllegalStateException("from the sink"); }
            });
        } catch (IllegalStateException e) {
            thrown = e.getMessage();
        }
        String badSampling = null;
        try {
            McpmNative.complete(h, "Hello", 4, 1f, 0, 5f, 0L, null);
        } catch (McpmException e) {
            badSampling = e.getMessage();
        }
        String bench = McpmNative.bench(h, 8, 4);
        String tooLong = null;
        try {
            McpmNative.bench(h, 1000, 4);
        } catch (McpmException e) {
            tooLong = e.getMessage();
        }
        String stats = McpmNative.stats(h);
        String cpuTimes = McpmNative.kernelTimes(h);
        boolean vision = McpmNative.hasVision(h);
        long maxPixels = McpmNative.maxImagePixels(h);
        String notVision = null, shortPixels = null, nullPixels = null, emptyImage = null, noHandle = null;
        try {
            McpmNative.encodeImage(h, new int[6], 3, 2);
        } catch (McpmException e) {
            notVision = e.getMessage();
        }
        try {
            McpmNative.encodeImage(h, new int[5], 3, 2);
        } catch (McpmException e) {
            shortPixels = e.getMessage();
        }
        try {
            McpmNative.encodeImage(h, null, 3, 2);
        } catch (McpmException e) {
            nullPixels = e.getMessage();
        }
        try {
            McpmNative.encodeImage(h, new int[6], 0, 2);
        } catch (McpmException e) {
            emptyImage = e.getMessage();
        }
        try {
            McpmNative.encodeImage(0L, new int[6], 3, 2);
        } catch (McpmException e) {
            noHandle = e.getMessage();
        }
        McpmNative.clearImages(h);
        McpmNative.clearImages(0L);
        Collect afterImage = new Collect(1 << 30);
        int nAfterImage = McpmNative.chat(h, "Hi there", 4, 0f, 0, 1f, 0L, afterImage);
        McpmNative.free(h);
        McpmNative.free(0L);
        String gpu = "null";
        if (args.length > 2 && args[1].equals("gpu")) {  // an OpenCL platform answers (PoCL)
            long g = McpmNative.load(args[0], 2, "gpu", null, args[2], true);
            Collect ga = new Collect(1 << 30);
            int nga = McpmNative.complete(g, "Hello h\u00e9llo \ud83d\ude00", 12, 0f, 0, 1f, 0L, ga);
            String gbench = McpmNative.bench(g, 8, 4);
            String times = McpmNative.kernelTimes(g);
            McpmNative.free(g);
            gpu = "{\"n\": " + nga + ", \"a\": " + q(ga.text.toString()) + ", \"bench\": " + gbench
                    + ", \"kernel_times\": " + times + "}";
        }
        out.append("\"na\": ").append(na).append(", \"nb\": ").append(nb).append(", \"ns\": ").append(ns)
           .append(", \"nn\": ").append(nn).append(", \"nc\": ").append(nc)
           .append(", \"a\": ").append(q(a.text.toString())).append(", \"b\": ").append(q(b.text.toString()))
           .append(", \"stop_pieces\": ").append(stop.pieces).append(", \"n_stopped\": ").append(nStopped)
           .append(", \"stopped_pieces\": ").append(stopPieces[0]).append(", \"n_after_stop\": ").append(nAfterStop)
           .append(", \"n_plain\": ").append(nPlain).append(", \"chat_pieces\": ").append(c.pieces)
           .append(", \"thrown\": ").append(thrown == null ? "null" : q(thrown))
           .append(", \"bad_sampling\": ").append(badSampling == null ? "null" : q(badSampling))
           .append(", \"too_long\": ").append(tooLong == null ? "null" : q(tooLong))
           .append(", \"bench\": ").append(bench).append(", \"stats\": ").append(stats)
           .append(", \"vision\": ").append(vision).append(", \"vision_0\": ").append(McpmNative.hasVision(0L))
           .append(", \"max_pixels\": ").append(maxPixels)
           .append(", \"max_pixels_0\": ").append(McpmNative.maxImagePixels(0L))
           .append(", \"not_vision\": ").append(notVision == null ? "null" : q(notVision))
           .append(", \"short_pixels\": ").append(shortPixels == null ? "null" : q(shortPixels))
           .append(", \"null_pixels\": ").append(nullPixels == null ? "null" : q(nullPixels))
           .append(", \"empty_image\": ").append(emptyImage == null ? "null" : q(emptyImage))
           .append(", \"no_handle\": ").append(noHandle == null ? "null" : q(noHandle))
           .append(", \"n_after_image\": ").append(nAfterImage)
           .append(", \"cpu_kernel_times\": ").append(cpuTimes).append(", \"kernel_times_0\": ")
           .append(McpmNative.kernelTimes(0L) == null ? "null" : "\"?\"").append(", \"gpu\": ").append(gpu)
           .append('}');
        System.out.println(out);
    }
}
"""


def _host_jni_build(bundle: Path, work: Path, jdk_inc: list[str], main_class: str, main_source: str) -> Path:
    """work/libmcpm.so (the runtime + the JNI layer + bundle's kernels, for the host) and the app's McpmNative and
    McpmException classes with main_class compiled into work/classes (returned)."""
    from mcpm.runtime.build import CFLAGS, LIBS, SOURCES

    subprocess.run(["gcc", *CFLAGS, *jdk_inc, f"-I{native.C_DIR}", "-o", str(work / "libmcpm.so"),
                    *(str(native.C_DIR / s) for s in SOURCES), str(JNI_C), str(bundle / "kernels.o"), *LIBS],
                   check=True)
    src = work / "src" / "org" / "mcpm" / "demo"
    src.mkdir(parents=True)
    (src / f"{main_class}.java").write_text(main_source)
    classes = work / "classes"
    java_files = [JAVA_SRC / "McpmNative.java", JAVA_SRC / "McpmException.java", src / f"{main_class}.java"]
    subprocess.run(["javac", "-d", str(classes), *map(str, java_files)], check=True)
    return classes


@pytest.mark.skipif(not (shutil.which("javac") and shutil.which("java") and shutil.which("gcc")),
                    reason="javac, java or gcc missing")
def test_jni_layer_on_a_jvm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The JNI layer built for the host with the runtime and a tiny host bundle, called from Java through the app's
    own McpmNative/McpmException classes: streaming, stop, Java exceptions from the sink, McpmException, bench,
    the image natives' refusals on a bundle without a vision encoder."""
    jdk_inc = [inc for inc in _host_jni_includes() if "jvm" in inc[0]]
    if not jdk_inc:
        pytest.skip("no JDK jni.h under /usr/lib/jvm")
    bundle = _host_bundle(tmp_path_factory)
    work = tmp_path_factory.mktemp("jni-host")
    classes = _host_jni_build(bundle, work, jdk_inc[0], "JniSmoke", JAVA_SMOKE)
    gpu_args = ["gpu", str(work / "cache")] if not opencl_unavailable() else ["cpu"]
    res = subprocess.run(["java", "-Xcheck:jni", f"-Djava.library.path={work}", "-cp", str(classes),
                          "org.mcpm.demo.JniSmoke", str(bundle), *gpu_args], capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr
    assert "WARNING" not in res.stdout + res.stderr, res.stderr  # -Xcheck:jni complaints
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert "does-not-exist" in r["load_error"]
    assert 1 <= r["na"] <= 12 and r["na"] == r["nb"] and r["a"] == r["b"]  # greedy: deterministic
    assert r["stop_pieces"] == 1 and 1 <= r["ns"] <= 12  # the sink said stop after its first piece
    # stop() from inside the sink: the next cancel point (before the next token) ends the reply, without an error;
    # the next call starts with the flag cleared and generates as many tokens as without any stop
    assert r["stopped_pieces"] == 1 and 1 <= r["n_stopped"] <= 2 < r["n_plain"] == r["n_after_stop"]
    assert 1 <= r["nn"] <= 12 and 1 <= r["nc"] <= 6
    assert r["thrown"] == "from the sink"
    assert r["bad_sampling"] and "top_p" in r["bad_sampling"]
    assert r["too_long"] and "context" in r["too_long"]
    assert r["bench"]["prefill_tokens"] == 8 and r["bench"]["decode_tokens"] >= 3
    assert r["stats"]["threads"] == 2 and r["stats"]["device"] == "cpu" and r["stats"]["notice"] == ""
    assert r["bad_device"] and "unknown device 'npu'" in r["bad_device"]
    assert r["cpu_kernel_times"] == [] and r["kernel_times_0"] is None
    # image input on a plain LM bundle: the runtime's one-line refusal; argument checks in the JNI layer
    assert r["vision"] is False and r["vision_0"] is False and r["max_pixels"] == r["max_pixels_0"] == 0
    assert "no vision encoder" in r["not_vision"] and "\n" not in r["not_vision"], r["not_vision"]
    assert "has 5 ints" in r["short_pixels"] and "3x2" in r["short_pixels"]
    assert "null" in r["null_pixels"] and "empty" in r["empty_image"] and "handle 0" in r["no_handle"]
    assert 1 <= r["n_after_image"] <= 4  # the session still chats
    if opencl_unavailable():
        assert r["gpu"] is None
        return
    g = r["gpu"]  # device "gpu" on PoCL, profiled: same greedy text, a GPU name, per-kernel times
    assert g["n"] == r["na"] and g["a"] == r["a"]
    assert g["bench"]["device"] == "gpu" and g["bench"]["gpu_device"].startswith("OpenCL")
    assert g["bench"]["prefill_tokens"] == 8 and g["bench"]["decode_tokens"] >= 3
    assert g["kernel_times"] and all(t["count"] >= 1 and t["ms"] >= 0 for t in g["kernel_times"])
    ms = [t["ms"] for t in g["kernel_times"]]
    assert ms == sorted(ms, reverse=True)
    assert any((work / "cache" / "opencl").iterdir())  # the compiled program went to cacheDir/opencl


JAVA_VISION = r"""
package org.mcpm.demo;

public final class JniVision {
    static String q(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20 || c > 0x7e) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    public static void main(String[] args) throws Exception {
        McpmNative.ensureLoaded();
        int w = Integer.parseInt(args[1]), h = Integer.parseInt(args[2]);
        int[] argb = new int[w * h];  // what Bitmap.getPixels gives: 0xAARRGGBB; alpha must be ignored
        for (int i = 0; i < argb.length; i++) {
            argb[i] = ((i * 3) & 0xFF) << 24 | ((i * 7) & 0xFF) << 16 | ((i * 13) & 0xFF) << 8 | ((i * 29) & 0xFF);
        }
        long m = McpmNative.load(args[0], 2, "cpu", null, null, false);
        boolean vision = McpmNative.hasVision(m);
        long maxPixels = McpmNative.maxImagePixels(m);
        int runs = McpmNative.encodeImage(m, argb, w, h);
        String imageStats = McpmNative.stats(m);
        final StringBuilder text = new StringBuilder();
        int n = McpmNative.chat(m, "What is in the picture?", 6, 0f, 0, 1f, 0L, new McpmNative.TextSink() {
            public boolean onText(String piece) { text.append(piece); return true; }
        });
        McpmNative.free(m);
        System.out.println("{\"vision\": " + vision + ", \"max_pixels\": " + maxPixels + ", \"runs\": " + runs
                + ", \"stats\": " + imageStats
                + ", \"n\": " + n + ", \"text\": " + q(text.toString()) + "}");
    }
}
"""


@pytest.mark.skipif(not (shutil.which("javac") and shutil.which("java") and shutil.which("gcc")),
                    reason="javac, java or gcc missing")
def test_jni_image_on_a_minicpmv_bundle(tmp_path_factory: pytest.TempPathFactory) -> None:
    """encodeImage + chat through the JNI layer on a tiny MiniCPM-V bundle: the ARGB ints become the RGB8 image the
    Python binding encodes (same vision runs and patches, same greedy reply), under -Xcheck:jni."""
    import numpy as np

    from mcpm.runtime.binding import Model, Session
    from tests.test_cli_image import export_tiny_v_bundle

    jdk_inc = [inc for inc in _host_jni_includes() if "jvm" in inc[0]]
    if not jdk_inc:
        pytest.skip("no JDK jni.h under /usr/lib/jvm")
    bundle = export_tiny_v_bundle(tmp_path_factory.mktemp("jni-v-bundle"))
    work = tmp_path_factory.mktemp("jni-v-host")
    classes = _host_jni_build(bundle, work, jdk_inc[0], "JniVision", JAVA_VISION)
    w, h = 112, 56
    res = subprocess.run(["java", "-Xcheck:jni", f"-Djava.library.path={work}", "-cp", str(classes),
                          "org.mcpm.demo.JniVision", str(bundle), str(w), str(h)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "WARNING" not in res.stdout + res.stderr, res.stderr
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["vision"] is True and r["runs"] >= 2 and 1 <= r["n"] <= 6
    assert r["max_pixels"] == json.loads((bundle / "mcpm-config.json").read_text())["vision"]["max_pixels"] > 0
    assert r["stats"]["image_slices"] == r["runs"] and r["stats"]["image_encode_ms"] > 0
    i = np.arange(w * h, dtype=np.int64)
    rgb = np.stack([(i * 7) & 0xFF, (i * 13) & 0xFF, (i * 29) & 0xFF], axis=1).astype(np.uint8).reshape(h, w, 3)
    with Model.load(bundle, threads=2) as model, Session(model) as session:
        assert session.encode_image(rgb) == r["runs"]
        assert model.stats()["image_patches"] == r["stats"]["image_patches"]
        n, text = session.chat("What is in the picture?", 6)
    assert (n, text) == (r["n"], r["text"])
