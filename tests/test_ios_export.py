"""`mcpm-export default --target ios` end to end, checked as far as this machine can without Apple's tools: the
XCFramework's Info.plist against its slices (Mach-O platform and arch of every member), every kernel symbol of the
plan in every slice, the generated kernel table linked with ld64.lld against each slice, the Swift package and app
layout wired to the bundle."""

from __future__ import annotations

import filecmp
import json
import plistlib
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcpm.export.compiler.plan import Plan
from mcpm.export.ios.macho import c_to_macho, compile_c, defined_symbols, inspect_macho, run_tool, tool
from mcpm.export.ios.package import kernel_symbols
from mcpm.export.ios.xcframework import check_xcframework, read_xcframework
from mcpm.export_cli import export
from mcpm.runtime.build import C_DIR, HEADERS, SOURCES

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("clang", "llvm-objdump", "llvm-nm", "llvm-libtool-darwin")


# what the kernels may take from libSystem (nearbyintf: rounding without SSE4.1, x86 simulator)
LIBSYSTEM = {"_expf", "_memcpy", "_memset", "dyld_stub_binder", "_sqrtf", "_powf", "_tanhf", "_logf", "_exp", "_sqrt",
             "_fmaxf", "_fminf", "_nearbyintf", "_bzero"}


def _have(name: str) -> bool:
    return any(shutil.which(c) for c in (name, *(f"{name}-{v}" for v in range(20, 13, -1))))


pytestmark = pytest.mark.skipif(not all(_have(t) for t in TOOLS),
                                reason=f"LLVM Mach-O tools missing ({', '.join(TOOLS)}): run make setup")


@pytest.fixture(scope="module")
def ios_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ios") / "out"
    res = CliRunner().invoke(export, ["default", "--target", "ios", "-o", str(out), "--context-length", "128",
                                      "--prefill-chunk", "16"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out, res.output


def _plan(out: Path) -> Plan:
    return Plan.from_json((out / "bundle" / "plan.json").read_text())


def test_layout_and_next_steps(ios_out: tuple[Path, str]) -> None:
    out, output = ios_out
    cfg = json.loads((out / "bundle" / "mcpm-config.json").read_text())
    assert cfg["target"]["platform"] == "ios" and cfg["target"]["triple"] == "arm64-apple-ios14.0"
    assert cfg["target"]["kernel_variants"] == ["i8mm", "dotprod", "neon"]
    for rel in ("MCPM/Package.swift", "MCPM/MCPMKernels.xcframework/Info.plist", "MCPM/Sources/CMCPM/include/mcpm.h",
                "MCPM/Sources/CMCPM/include/module.modulemap", "MCPM/Sources/CMCPM/mcpm_kernel_table.c",
                "MCPM/Sources/MCPM/MCPMSession.swift", "App/Info.plist", "App/MCPMDemoApp.swift", "project.yml",
                "App/Models/default/weights.bin", "App/Models/default/plan.json",
                "App/Models/default/mcpm-config.json"):
        assert (out / rel).is_file(), rel
    assert not list((out / "App" / "Models").rglob("*.o"))  # kernels are linked, not shipped as resources
    assert "xcodegen && open MCPMDemo.xcodeproj" in output and "Team" in output and "latest.json" in output


def test_xcframework_plist_matches_its_slices(ios_out: tuple[Path, str]) -> None:
    out, _ = ios_out
    xcf = out / "MCPM" / "MCPMKernels.xcframework"
    with open(xcf / "Info.plist", "rb") as f:
        info = plistlib.load(f)
    assert info["CFBundlePackageType"] == "XFWK" and info["XCFrameworkFormatVersion"] == "1.0"
    slices = {s.identifier: s for s in read_xcframework(xcf)}
    assert set(slices) == {"ios-arm64", "ios-arm64_x86_64-simulator"}
    assert slices["ios-arm64"].archs == ("arm64",) and slices["ios-arm64"].variant is None
    assert set(slices["ios-arm64_x86_64-simulator"].archs) == {"arm64", "x86_64"}
    assert slices["ios-arm64_x86_64-simulator"].variant == "simulator"
    # every member's LC_BUILD_VERSION (what `otool -l` prints) names the slice's platform and iOS 14.0
    device = inspect_macho(slices["ios-arm64"].library)
    assert set(device) == {"arm64"} and device["arm64"].platforms == {"ios"} and device["arm64"].minos == {"14.0"}
    assert len(device["arm64"].members) == 3  # i8mm, dotprod, neon
    sim = inspect_macho(slices["ios-arm64_x86_64-simulator"].library)
    assert set(sim) == {"arm64", "x86_64"}
    assert all(f.platforms == {"iossimulator"} and f.minos == {"14.0"} for f in sim.values())
    assert len(sim["arm64"].members) == 3 and len(sim["x86_64"].members) == 1
    for s in slices.values():
        hdr = xcf / s.identifier / "Headers" / "MCPMKernels"
        assert (hdr / "mcpm.h").read_text() == (C_DIR / "mcpm.h").read_text()
        assert 'header "mcpm.h"' in (hdr / "module.modulemap").read_text()
    assert check_xcframework(xcf) == []


def test_every_plan_kernel_in_every_slice(ios_out: tuple[Path, str]) -> None:
    out, _ = ios_out
    plan = _plan(out)
    xcf = out / "MCPM" / "MCPMKernels.xcframework"
    variants = {v.name: v.symbol_prefix for v in plan.kernel_variants}
    assert variants == {"i8mm": "__tvm_ffi_i8mm_", "dotprod": "__tvm_ffi_dotprod_", "neon": "__tvm_ffi_"}
    for s in read_xcframework(xcf):
        syms = defined_symbols(s.library)
        for arch in s.archs:
            want = {c_to_macho(p + k) for p in (variants.values() if arch == "arm64" else ["__tvm_ffi_"])
                    for k in plan.kernels}
            assert want == kernel_symbols(plan, arch)
            assert want <= syms[arch], (s.identifier, arch, sorted(want - syms[arch])[:3])
    # the device slice holds exactly the bundle's own objects
    assert check_xcframework(xcf, {a: kernel_symbols(plan, a) for a in ("arm64", "x86_64")}) == []


@pytest.mark.skipif(not _have("ld64.lld"), reason="ld64.lld missing (apt-get install lld)")
@pytest.mark.parametrize("triple,ident,arch,platform", [
    ("arm64-apple-ios14.0", "ios-arm64", "arm64", "ios"),
    ("arm64-apple-ios14.0-simulator", "ios-arm64_x86_64-simulator", "arm64", "ios-simulator"),
    ("x86_64-apple-ios14.0-simulator", "ios-arm64_x86_64-simulator", "x86_64", "ios-simulator"),
])
def test_kernel_table_links_against_each_slice(ios_out: tuple[Path, str], tmp_path: Path, triple: str, ident: str,
                                               arch: str, platform: str) -> None:
    """The generated mcpm_kernel_table.c compiles for the slice's triple and ld64.lld resolves every symbol it
    references from the slice's static library (what Xcode's link of the app does with the real runtime)."""
    out, _ = ios_out
    table = out / "MCPM" / "Sources" / "CMCPM" / "mcpm_kernel_table.c"
    header = out / "MCPM" / "Sources" / "CMCPM" / "include" / "mcpm_kernel_table.h"  # prototypes must match it
    obj = compile_c(table, triple, tmp_path / "table.o", ["-include", str(header), "-Wmissing-prototypes"])
    lib = out / "MCPM" / "MCPMKernels.xcframework" / ident / "libmcpm_kernels.a"
    dylib = tmp_path / "libcheck.dylib"
    run_tool([tool("ld64.lld"), "-arch", arch, "-platform_version", platform, "14.0", "14.0", "-dylib",
              "-undefined", "dynamic_lookup", "-o", str(dylib), str(obj), str(lib)], "linking the kernel table")
    undefined = set(run_tool([tool("llvm-nm"), "-u", str(dylib)], "nm").split())
    assert not [u for u in undefined if "tvm_ffi" in u], undefined
    # left for the runtime and libSystem: the error hook and libc/libm functions, nothing else
    assert undefined <= {"_TVMFFIErrorSetRaisedFromCStrParts", *LIBSYSTEM}, undefined
    defined = defined_symbols(dylib)[arch]
    assert kernel_symbols(_plan(out), arch) <= defined
    # the table accessor is there, hidden (the runtime's weak default is replaced at link time, never exported)
    assert "_mcpm_static_kernels" in run_tool([tool("llvm-nm"), "--defined-only", str(dylib)], "nm").split()
    assert "_mcpm_static_kernels" not in defined and "_mcpm_kernel_table_count" in defined


def _nm_m(path: Path, arch: str) -> list[tuple[str, str]]:
    """(kind, symbol) per line of `llvm-nm -m`: kind is e.g. "(undefined) external", "(__DATA,__data) weak external",
    "(__TEXT,__text) private external"."""
    rows = []
    for line in run_tool([tool("llvm-nm"), "-m", f"--arch={arch}", str(path)], "nm").splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.endswith(":"):
            rows.append((" ".join(parts[1 if parts[0] != "(undefined)" else 0:-1]), parts[-1]))
    return rows


@pytest.mark.parametrize("triple,ident,arch", [
    ("arm64-apple-ios14.0", "ios-arm64", "arm64"),
    ("x86_64-apple-ios14.0-simulator", "ios-arm64_x86_64-simulator", "x86_64"),
])
def test_kernel_abi_survives_xcodes_prelink(ios_out: tuple[Path, str], tmp_path: Path, triple: str, ident: str,
                                            arch: str) -> None:
    """Xcode prelinks the package's C target with `ld -r`, which turns private-extern (hidden) symbols into local
    ones; the kernels, linked later from the xcframework, must still find what they take from the runtime. So every
    symbol the kernels reference (undefined) or define weakly in __DATA (the backend slots), apart from libSystem's,
    must be a plain external definition of mcpm_kernel_abi.c compiled for Apple — and the same file compiled as
    for ELF makes them private (hidden there), which this check would refuse."""
    out, _ = ios_out
    src = out / "MCPM" / "Sources" / "CMCPM" / "mcpm_kernel_abi.c"
    lib = out / "MCPM" / "MCPMKernels.xcframework" / ident / "libmcpm_kernels.a"
    kernels = _nm_m(lib, arch)
    needed = {s for k, s in kernels if k == "(undefined) external" and s not in LIBSYSTEM}
    needed |= {s for k, s in kernels if k == "(__DATA,__data) weak external"}
    assert {"_TVMFFIErrorSetRaisedFromCStrParts", "___TVMBackendParallelLaunch", "___TVMBackendAllocWorkspace",
            "___TVMBackendFreeWorkspace"} <= needed, sorted(needed)
    abi = _nm_m(compile_c(src, triple, tmp_path / "abi.o", [f"-I{src.parent}"]), arch)
    exported = {s for k, s in abi if k.endswith(") external")}
    assert needed <= exported, sorted(needed - exported)
    as_elf = _nm_m(compile_c(src, triple, tmp_path / "abi-elf.o", [f"-I{src.parent}", "-U__APPLE__"]), arch)
    assert needed <= {s for k, s in as_elf if k.endswith("private external")}


def test_runtime_sources_are_copies_not_forks(ios_out: tuple[Path, str]) -> None:
    out, _ = ios_out
    cdir = out / "MCPM" / "Sources" / "CMCPM"
    for name in (*SOURCES, *HEADERS):
        copy = cdir / "include" / name if name == "mcpm.h" else cdir / name
        assert filecmp.cmp(copy, C_DIR / name, shallow=False), name
    # every "..." include of the C target resolves inside it (SwiftPM adds include/ to the target's search path)
    for f in [*cdir.glob("*.c"), *cdir.glob("*.h"), *cdir.glob("include/*.h")]:
        for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', f.read_text(), re.M):
            assert (cdir / inc).is_file() or (cdir / "include" / inc).is_file(), (f.name, inc)
    # in the repository the C target holds only its module map: the runtime is never forked there
    repo_cmcpm = ROOT / "ios_app" / "MCPM" / "Sources" / "CMCPM"
    assert sorted(p.relative_to(repo_cmcpm).as_posix() for p in repo_cmcpm.rglob("*") if p.is_file()) == \
        ["include/mcpm_kernel_table.h", "include/module.modulemap"]


def test_project_yml_wires_app_package_and_model(ios_out: tuple[Path, str]) -> None:
    yaml = pytest.importorskip("yaml")
    out, _ = ios_out
    spec = yaml.safe_load((out / "project.yml").read_text())
    assert (out / spec["packages"]["MCPM"]["path"] / "Package.swift").is_file()
    target = spec["targets"]["MCPMDemo"]
    assert target["platform"] == "iOS" and target["type"] == "application"
    assert (out / target["settings"]["base"]["INFOPLIST_FILE"]).is_file()
    folders = [s for s in target["sources"] if isinstance(s, dict) and s.get("type") == "folder"]
    assert [f["path"] for f in folders] == ["App/Models"] and (out / "App/Models/default/mcpm-config.json").is_file()
    assert {"package": "MCPM", "product": "MCPM"} in target["dependencies"]
    package_swift = (out / "MCPM" / "Package.swift").read_text()
    assert 'path: "MCPMKernels.xcframework"' in package_swift and (out / "MCPM/MCPMKernels.xcframework").is_dir()


def test_export_refuses_a_folder_that_is_not_an_export(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    res = CliRunner().invoke(export, ["default", "--target", "ios", "-o", str(tmp_path)])
    assert res.exit_code != 0 and "not empty and was not written by mcpm-export" in str(res.exception or res.output)
    assert (tmp_path / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------- --device gpu: the Metal dispatcher and kernels


@pytest.fixture(scope="module")
def ios_gpu_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import tiny_minicpm, write_tiny

    tiny = write_tiny(tmp_path_factory.mktemp("ios-gpu") / "tiny", tiny_minicpm())
    out = tmp_path_factory.mktemp("ios-gpu") / "out"
    res = CliRunner().invoke(export, [str(tiny), "--target", "ios", "--device", "gpu", "-o", str(out),
                                      "--context-length", "48", "--prefill-chunk", "4"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out


def test_gpu_package_has_metal_kernels_and_dispatcher(ios_gpu_out: Path) -> None:
    from mcpm.export.ios.package import METAL_DIR, METAL_SOURCE, OPENCL_SOURCE

    out = ios_gpu_out
    plan = json.loads((out / "bundle" / "plan.json").read_text())
    models = [p for p in (out / "App" / "Models").iterdir() if p.is_dir()]
    assert len(models) == 1
    metal = models[0] / plan["gpu"]["metal_source"]
    assert metal.is_file() and filecmp.cmp(metal, out / "bundle" / plan["gpu"]["metal_source"], shallow=False)
    cdir = out / "MCPM" / "Sources" / "CMCPM"
    assert filecmp.cmp(cdir / METAL_SOURCE, METAL_DIR / METAL_SOURCE, shallow=False)
    assert not (cdir / OPENCL_SOURCE).exists()  # one dispatcher: both define mcpm_gpu_*
    for name in (*SOURCES, *HEADERS):
        if name != OPENCL_SOURCE:
            copy = cdir / "include" / name if name == "mcpm.h" else cdir / name
            assert filecmp.cmp(copy, C_DIR / name, shallow=False), name
    for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', (cdir / METAL_SOURCE).read_text(), re.M):
        assert (cdir / inc).is_file(), inc
    package_swift = (out / "MCPM" / "Package.swift").read_text()
    assert '.linkedFramework("Metal")' in package_swift and '.define("MCPM_METAL")' in package_swift
    assert ".unsafeFlags(" not in package_swift


def test_cpu_package_keeps_the_opencl_dispatcher(ios_out: tuple[Path, str]) -> None:
    out, _ = ios_out
    cdir = out / "MCPM" / "Sources" / "CMCPM"
    assert (cdir / "mcpm_opencl.c").is_file() and not (cdir / "mcpm_metal.m").exists()
    assert "Metal" not in (out / "MCPM" / "Package.swift").read_text().split("linkerSettings", 1)[1].split("]", 1)[0]


def test_exported_swift_parses(ios_gpu_out: Path) -> None:
    """The Swift of a GPU package (Package.swift and MCPMSettings.swift edited by the exporter) and of its app is
    still valid Swift (tree-sitter's grammar; test_swift_syntax.py checks the sources)."""
    from tests.test_swift_syntax import syntax_errors

    files = sorted(ios_gpu_out.rglob("*.swift"))
    assert len(files) >= 10
    assert {str(p.relative_to(ios_gpu_out)): syntax_errors(p.read_bytes()) for p in files
            if syntax_errors(p.read_bytes())} == {}
