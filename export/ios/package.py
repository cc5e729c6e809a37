"""The iOS stage of ``mcpm-export --target ios``: the kernels as an XCFramework, the Swift package ``MCPM`` (C
runtime as a SwiftPM C target + the XCFramework) and the SwiftUI demo app, wired to the bundle.

Output layout (OUT = ``-o``)::

    OUT/bundle/                                  the bundle (copy it to the app with the Files app, or keep it embedded)
    OUT/MCPM/                                    Swift package (from ios_app/MCPM)
    OUT/MCPM/MCPMKernels.xcframework             ios-arm64 (device) + ios-arm64_x86_64-simulator static libraries
    OUT/MCPM/Sources/CMCPM/                      the C runtime: the files of runtime_bindings/c, copied here
    OUT/MCPM/Sources/CMCPM/mcpm_kernel_table.c   generated: every kernel symbol per variant (static lookup)
    OUT/MCPM/Sources/CMCPM/mcpm_metal.m          GPU bundles only: the Metal dispatcher, built INSTEAD of
                                                 mcpm_opencl.c (same interface, mcpm_opencl.h), + Metal.framework
    OUT/App/                                     the SwiftUI app (from ios_app/App)
    OUT/App/Models/<name>/                       the bundle without *.o (hard links), embedded in the app
    OUT/project.yml                              XcodeGen spec: `xcodegen` makes MCPMDemo.xcodeproj

Device kernels are the bundle's own objects (arm64-apple-ios14.0: kernels-i8mm.o, kernels-dotprod.o, kernels.o).
The simulator's are compiled here from the same plan (the bundle's model config, context, chunk and quantization):
arm64 with every kernel variant, x86_64 with the fallback only (the runtime picks it on Intel Macs), each with the
symbol prefix of the plan's variant, so one generated kernel table serves every slice.

Nothing here is compiled or run by Apple's tools: see ios_app/README.md for what a person with a Mac checks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcpm.errors import McpmError
from mcpm.export.ios.macho import c_to_macho, check_object
from mcpm.export.ios.xcframework import Slice, check_xcframework, static_library, write_xcframework

ROOT = Path(__file__).resolve().parents[2]
IOS_APP_DIR = ROOT / "ios_app"
PACKAGE_NAME = "MCPM"
XCFRAMEWORK_NAME = "MCPMKernels.xcframework"
LIBRARY_NAME = "libmcpm_kernels.a"
TABLE_NAME = "mcpm_kernel_table.c"
DEVICE_ID = "ios-arm64"
SIMULATOR_ID = "ios-arm64_x86_64-simulator"
SIMULATOR_ARCHS = ("arm64", "x86_64")
MODULE_MAP = 'module MCPMKernels {\n    header "mcpm.h"\n    export *\n}\n'
# Where the C runtime goes in the Swift package: the .c files and private headers in Sources/CMCPM, the public
# header mcpm.h in Sources/CMCPM/include (next to the committed module.modulemap).
CMCPM_DIR = Path("Sources") / "CMCPM"
PUBLIC_HEADER = "mcpm.h"
# GPU bundles (plan.json has a "gpu" section): the Metal dispatcher replaces the OpenCL one in the C target. Both
# define mcpm_opencl.h's mcpm_gpu_* functions, so exactly one of them may be in the target. A CPU-only package keeps
# mcpm_opencl.c (it compiles everywhere and only dlopens libOpenCL when asked for the GPU) and never depends on the
# Objective-C file, which cannot be compiled on the machines that export.
METAL_DIR = ROOT / "runtime_bindings" / "metal"
METAL_SOURCE = "mcpm_metal.m"
OPENCL_SOURCE = "mcpm_opencl.c"
METAL_DEFINE = "MCPM_METAL"  # Swift compilation condition of the MCPM target: MCPMDevice.gpu/.auto available
# (anchor in ios_app/MCPM/Package.swift, replacement) for GPU packages
PACKAGE_GPU_EDITS = (
    ('                .linkedLibrary("m"),\n',
     '                .linkedLibrary("m"),\n'
     '                .linkedFramework("Metal"),  // mcpm_metal.m (GPU bundle)\n'
     '                .linkedFramework("Foundation"),\n'),
    ('            path: "Sources/MCPM"\n',
     f'            path: "Sources/MCPM",\n            swiftSettings: [.define("{METAL_DEFINE}")]  // GPU bundle\n'),
)


@dataclass
class IosPackage:
    bundle: Path
    xcframework: Path
    package_dir: Path
    app_dir: Path
    project_yml: Path
    model_name: str
    kernel_variants: tuple[str, ...]
    device: str = "cpu"

    def next_steps(self) -> str:
        out = self.project_yml.parent
        return "\n".join([
            "next, on a Mac with Xcode 15+ and XcodeGen (brew install xcodegen):",
            f"  copy {out} to the Mac, then: cd {out.name} && xcodegen && open MCPMDemo.xcodeproj",
            "  in Xcode: target MCPMDemo > Signing & Capabilities > Team = your team (change the bundle id "
            "org.mcpm.demo if Xcode says it is taken)",
            "  choose an iPhone (iOS 16+; USB or Wi-Fi, developer mode on) or a simulator, then Run (Cmd-R)",
            f"  chat with '{self.model_name}'; Benchmark tab: Run; or launch with -benchmark: it writes "
            "Documents/bench/latest.json",
            "  report: the phone model, iOS version and latest.json (decode_tok_s, prefill_tok_s, ttft_ms, "
            "kernel_variant) - see ios_app/README.md",
        ])


# ---------------------------------------------------------------- kernels


def _plan(bundle: Path):  # -> Plan
    from mcpm.export.compiler.plan import Plan

    path = bundle / "plan.json"
    if not path.is_file():
        raise McpmError(f"{path} is missing: {bundle} is not a bundle", "export one with mcpm-export --target ios")
    return Plan.from_json(path.read_text())


def _variants(plan) -> list[tuple[str, str, str]]:  # (name, object_file, C symbol prefix), fallback last
    if plan.kernel_variants:
        return [(v.name, v.object_file, v.symbol_prefix) for v in plan.kernel_variants]
    return [("default", plan.object_file, plan.symbol_prefix)]


def kernel_symbols(plan, arch: str = "arm64") -> set[str]:
    """Mach-O names of every kernel the slice of arch must define: all variants on arm64, the fallback on x86_64."""
    variants = _variants(plan) if arch == "arm64" else _variants(plan)[-1:]
    return {c_to_macho(prefix + k) for _, _, prefix in variants for k in plan.kernels}


def compile_simulator_kernels(bundle: Path, work: Path) -> dict[str, list[Path]]:
    """The simulator's kernel objects (arch -> objects), compiled from the bundle's model config and compile
    options: the plan is extracted again and must list the bundle's kernels."""
    import tvm

    from mcpm.export.bundle.reader import CONFIG_NAME
    from mcpm.export.bundle.target import get_target, ios_simulator_variants
    from mcpm.export.compiler.lower import compile_kernels, extract_plan, lower_module, target_sensitive, variant_module
    from mcpm.export.compiler.model_def import build_module
    from mcpm.export.compiler.plan import SYMBOL_PREFIX
    from mcpm.export.compiler.spec import CompileSpec
    from mcpm.export.families import family_for
    from mcpm.export.hf_config import parse_config
    from mcpm.quantize.recipe import Recipe

    config = json.loads((bundle / CONFIG_NAME).read_text())
    family = family_for(config["family"])
    cfg = parse_config(family.config_cls, config["model_config"])
    default, *rules = str(config["quantization"]).split(",")
    plan = _plan(bundle)
    vision: dict[str, Any] = {}
    if plan.vision:  # MiniCPM-V: the vision weights' dtype and the slice bound the bundle was exported with
        dtypes = {w.dtype for w in plan.weights if w.name == "vision.patch_w"}
        vision = {"vision_dtype": dtypes.pop() if dtypes else "float16", "max_patches": plan.vision["max_patches"]}
    spec = CompileSpec(max_ctx=int(config["context_length"]), chunk=int(config["prefill_chunk"]),
                       recipe=Recipe.parse(default, rules), num_experts=getattr(cfg, "num_experts", 0) or 0,
                       kv_dtype=plan.cache_dtype, **vision)
    device_target = get_target("ios").tvm_target
    with tvm.target.Target(device_target):  # the same kernel choices as the device export (quant_kernels)
        built = build_module(cfg, spec)
    lowered = lower_module(built, device_target)
    again = extract_plan(lowered, cfg, spec, device_target)
    if again.kernels != plan.kernels:
        raise McpmError(f"compiling the simulator kernels of {bundle} gave a different kernel list than its plan",
                        "export the bundle again with this mcpm (--target ios)")
    variants = _variants(plan)
    out: dict[str, list[Path]] = {}
    for arch in SIMULATOR_ARCHS:
        sim = {v.name: v for v in ios_simulator_variants(arch)}
        wanted = variants if arch == "arm64" else variants[-1:]
        objs = []
        for i, (name, _, prefix) in enumerate(wanted):
            v = sim.get(name) or (ios_simulator_variants(arch)[-1] if i == len(wanted) - 1 else None)
            if v is None:
                raise McpmError(f"the simulator has no kernel set {name!r}", "export again with --target ios")
            obj = work / f"simulator-{arch}" / f"kernels-{name}.o"
            obj.parent.mkdir(parents=True, exist_ok=True)
            # a non-fallback set is built under its own target (SDOT / SMMLA kernels), as the device's are
            module = lowered if i == len(wanted) - 1 or not target_sensitive(spec) else \
                variant_module(cfg, spec, v.tvm_target, False, again)
            compile_kernels(module, plan.kernels, v.tvm_target, prefix.removeprefix(SYMBOL_PREFIX)) \
                .mod.write_to_file(str(obj))
            check_object(obj, arch, "iossimulator")
            objs.append(obj)
        out[arch] = objs
    return out


def kernel_table_source(plan, model_name: str) -> str:
    """C source of mcpm_kernel_table.c: {symbol, address} of every kernel of every variant (the non-fallback
    variants only on arm64: the x86_64 simulator has the fallback alone), ending with {0, 0}. It defines
    mcpm_static_kernels(), which the runtime (mcpm_cpu.c) uses instead of dlsym when it is linked in. No
    #include: it compiles freestanding."""
    variants = _variants(plan)
    lines = [
        "/* Generated by mcpm-export --target ios (mcpm.export.ios.package): do not edit.",
        f" * Model '{model_name}': {len(plan.kernels)} kernels x variants {', '.join(v[0] for v in variants)}.",
        " * mcpm_static_kernels() gives the runtime every kernel by name (mcpm_cpu.c looks kernels up here",
        " * instead of dlsym), and referencing them makes the linker load them from libmcpm_kernels.a",
        " * (MCPMKernels.xcframework).",
        " * The function types are placeholders: the runtime only stores the addresses and calls them with the TVM",
        " * FFI signature int(void*, const TVMFFIAny*, int32_t, TVMFFIAny*). */",
        "",
        "typedef struct mcpm_static_kernel {",
        "    const char* symbol;",
        "    void* fn;",
        "} mcpm_static_kernel;",
        "",
    ]
    for i, (name, _, prefix) in enumerate(variants):
        fallback = i == len(variants) - 1
        lines.append(f"/* variant {name} */")
        if not fallback:
            lines.append("#if defined(__aarch64__)")
        lines += [f"int {prefix}{k}(void* self, void* args, int nargs, void* ret);" for k in plan.kernels]
        if not fallback:
            lines.append("#endif")
    lines += ["", "static const mcpm_static_kernel TABLE[] = {"]
    for i, (_name, _, prefix) in enumerate(variants):
        fallback = i == len(variants) - 1
        if not fallback:
            lines.append("#if defined(__aarch64__)")
        lines += [f'    {{"{prefix}{k}", (void*)&{prefix}{k}}},' for k in plan.kernels]
        if not fallback:
            lines.append("#endif")
    lines += [
        "    {0, 0},",
        "};",
        "",
        '__attribute__((visibility("hidden"))) const mcpm_static_kernel* mcpm_static_kernels(void);',
        "const mcpm_static_kernel* mcpm_static_kernels(void) { return TABLE; }",
        "",
        "/* declared in include/mcpm_kernel_table.h; called by the Swift layer so that this file is always linked */",
        "int mcpm_kernel_table_count(void);",
        "int mcpm_kernel_table_count(void) { return (int)(sizeof TABLE / sizeof TABLE[0]) - 1; }",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- package and app


def bundle_has_gpu(bundle: Path) -> bool:
    """plan.json has a "gpu" section (exported with --device gpu)."""
    return "gpu" in json.loads((Path(bundle) / "plan.json").read_text())


def copy_runtime_sources(dest: Path, metal: bool = False) -> list[Path]:
    """Copies runtime_bindings/c's sources and headers (the files every platform builds: mcpm.runtime.build's
    SOURCES and HEADERS, plus the headers they include) into a SwiftPM C target folder: mcpm.h into include/, the
    rest next to it. With metal, runtime_bindings/metal/mcpm_metal.m replaces mcpm_opencl.c. Returns the copied
    files."""
    from mcpm.runtime.build import C_DIR, HEADERS, SOURCES

    missing = [n for n in (*SOURCES, *HEADERS) if not (C_DIR / n).is_file()]
    if metal and not (METAL_DIR / METAL_SOURCE).is_file():
        missing.append(str(METAL_DIR / METAL_SOURCE))
    if missing:
        raise McpmError(f"runtime sources are missing from {C_DIR}: {', '.join(missing)}",
                        "reinstall mcpm from its source tree (pip install -e .)")
    names = [n for n in (*SOURCES, *HEADERS) if not (metal and n == OPENCL_SOURCE)]
    for name in names:  # plus every header they include with "..." (transitively) that lies in C_DIR
        for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', (C_DIR / name).read_text(), re.M):
            if inc not in names and (C_DIR / inc).is_file():
                names.append(inc)
    out = []
    for name in names:
        target = dest / "include" / name if name == PUBLIC_HEADER else dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(C_DIR / name, target)
        out.append(target)
    if metal:
        shutil.copy2(METAL_DIR / METAL_SOURCE, dest / METAL_SOURCE)
        out.append(dest / METAL_SOURCE)
    return out


def enable_metal(package_swift: Path) -> None:
    """A GPU package's manifest: Metal.framework for the C target, MCPM_METAL for the Swift target."""
    text = package_swift.read_text()
    for anchor, new in PACKAGE_GPU_EDITS:
        if text.count(anchor) != 1:
            raise McpmError(f"{package_swift} does not have the expected layout ({anchor.strip()!r})",
                            "reinstall mcpm from its source tree (pip install -e .)")
        text = text.replace(anchor, new)
    package_swift.write_text(text)


def stage_model(bundle: Path, dest: Path) -> list[Path]:
    """The bundle's files without *.o and dotfiles into dest (hard links where possible, else copies)."""
    if dest.exists():
        shutil.rmtree(dest)
    out = []
    for src in sorted(bundle.rglob("*")):
        rel = src.relative_to(bundle)
        if not src.is_file() or src.suffix == ".o" or any(p.startswith(".") for p in rel.parts):
            continue
        dst = dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        out.append(dst)
    return out


def package_ios(bundle_dir: Path, out_dir: Path, model_name: str, device: str = "cpu",
                work_dir: Path | None = None) -> IosPackage:
    """MCPMKernels.xcframework from the bundle's kernels (+ the simulator's, compiled here), the Swift package and
    the demo app wired to the bundle under out_dir. Raises McpmError on a missing tool, kernels that are not
    arm64 Mach-O for iOS, or an XCFramework that fails :func:`check_xcframework`."""
    bundle = Path(bundle_dir)
    out = Path(out_dir)
    if device not in ("cpu", "gpu"):
        raise McpmError(f"unknown device {device!r}", "use --device cpu or --device gpu")
    metal = device == "gpu"
    if metal and not bundle_has_gpu(bundle):
        raise McpmError(f"{bundle} has no GPU kernels (plan.json has no \"gpu\" section)",
                        "export it with --device gpu")
    if metal:  # newLibraryWithSource reads it from the model folder in the app (stage_model copies it)
        metal_src = str(json.loads((bundle / "plan.json").read_text())["gpu"].get("metal_source", ""))
        if not metal_src or not (bundle / metal_src).is_file():
            raise McpmError(f"{bundle / metal_src} is missing", "export the bundle again with --device gpu")
    for src in (IOS_APP_DIR / PACKAGE_NAME / "Package.swift", IOS_APP_DIR / "App", IOS_APP_DIR / "project.yml"):
        if not src.exists():
            raise McpmError(f"{src} is missing", "reinstall mcpm from its source tree (pip install -e .)")
    plan = _plan(bundle)
    variants = _variants(plan)
    device_objects = [bundle / obj for _, obj, _ in variants]
    for obj in device_objects:
        check_object(obj, "arm64", "ios")

    pkg = out / PACKAGE_NAME
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(IOS_APP_DIR / PACKAGE_NAME, pkg, ignore=shutil.ignore_patterns(".*", "*.xcframework"))
    with tempfile.TemporaryDirectory(prefix="mcpm-ios-", dir=work_dir) as tmp:
        work = Path(tmp)
        sim = compile_simulator_kernels(bundle, work)
        device_lib = static_library(device_objects, work / "device" / LIBRARY_NAME)
        sim_lib = static_library([o for arch in SIMULATOR_ARCHS for o in sim[arch]], work / "simulator" / LIBRARY_NAME)
        from mcpm.runtime.build import C_DIR

        headers = {f"MCPMKernels/{PUBLIC_HEADER}": (C_DIR / PUBLIC_HEADER).read_text(),
                   "MCPMKernels/module.modulemap": MODULE_MAP}
        xcf = write_xcframework(pkg / XCFRAMEWORK_NAME, [
            Slice(DEVICE_ID, "ios", None, ("arm64",), device_lib),
            Slice(SIMULATOR_ID, "ios", "simulator", SIMULATOR_ARCHS, sim_lib),
        ], headers)
    problems = check_xcframework(xcf, {arch: kernel_symbols(plan, arch) for arch in SIMULATOR_ARCHS})
    if problems:
        raise McpmError(f"{xcf.name} fails its checks: {'; '.join(problems)}", "report this as a bug in mcpm")
    copy_runtime_sources(pkg / CMCPM_DIR, metal=metal)
    if metal:
        enable_metal(pkg / "Package.swift")
    (pkg / CMCPM_DIR / TABLE_NAME).write_text(kernel_table_source(plan, model_name))

    app = out / "App"
    if app.exists():
        shutil.rmtree(app)
    shutil.copytree(IOS_APP_DIR / "App", app, ignore=shutil.ignore_patterns(".*", "Models"))
    stage_model(bundle, app / "Models" / model_name)
    project = out / "project.yml"
    shutil.copy2(IOS_APP_DIR / "project.yml", project)
    shutil.copy2(IOS_APP_DIR / "README.md", out / "README-ios.md")
    return IosPackage(bundle, xcf, pkg, app, project, model_name, tuple(v[0] for v in variants), device)
