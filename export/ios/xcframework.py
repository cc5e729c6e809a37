"""Static libraries and an XCFramework of them, written without Xcode (``xcodebuild -create-xcframework`` makes
the same folder): one library per slice, a ``Headers`` folder per slice and an ``Info.plist`` written with
plistlib.

    lib = static_library([k1, k2], work / "device" / "libmcpm_kernels.a")       # llvm-libtool-darwin -static
    write_xcframework(out / "MCPMKernels.xcframework", [Slice("ios-arm64", "ios", None, ("arm64",), lib)],
                      headers={"MCPMKernels/mcpm.h": mcpm_h_text})
    problems = check_xcframework(out / "MCPMKernels.xcframework")                # [] when every slice matches

Layout::

    MCPMKernels.xcframework/Info.plist
    MCPMKernels.xcframework/ios-arm64/libmcpm_kernels.a
    MCPMKernels.xcframework/ios-arm64/Headers/MCPMKernels/{mcpm.h,module.modulemap}
    MCPMKernels.xcframework/ios-arm64_x86_64-simulator/libmcpm_kernels.a   (fat: arm64 + x86_64)
    MCPMKernels.xcframework/ios-arm64_x86_64-simulator/Headers/...

The headers sit in a subfolder named after the module: Xcode copies the headers of every static-library
XCFramework into one include folder, where two top-level ``module.modulemap`` files would collide.
"""

from __future__ import annotations

import plistlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mcpm.errors import McpmError
from mcpm.export.ios.macho import inspect_macho, run_tool, tool

# LC_BUILD_VERSION platform of each (SupportedPlatform, SupportedPlatformVariant)
MACHO_PLATFORM = {("ios", None): "ios", ("ios", "simulator"): "iossimulator", ("macos", None): "macos"}


@dataclass(frozen=True)
class Slice:
    identifier: str  # LibraryIdentifier, e.g. "ios-arm64", "ios-arm64_x86_64-simulator"
    platform: str  # SupportedPlatform: "ios" | "macos"
    variant: str | None  # SupportedPlatformVariant: "simulator" or None (device)
    archs: tuple[str, ...]  # SupportedArchitectures
    library: Path  # the static library to copy in (its file name is kept as LibraryPath)

    @property
    def macho_platform(self) -> str:
        return MACHO_PLATFORM[(self.platform, self.variant)]


def static_library(objects: Sequence[Path], out: Path) -> Path:
    """llvm-libtool-darwin -static: one archive of objects (of two architectures: a fat archive)."""
    if not objects:
        raise McpmError(f"no objects for {out.name}", "export the bundle again with --target ios")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    run_tool([tool("llvm-libtool-darwin"), "-static", "-o", str(out), *map(str, objects)],
             f"archiving {out.name}")
    return out


def write_xcframework(out: Path, slices: Sequence[Slice], headers: Mapping[str, str]) -> Path:
    """Writes the XCFramework folder out (replacing one that is there): each slice's library, the headers
    (relative path -> text) in every slice's Headers folder, and Info.plist."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    libraries = []
    for s in slices:
        d = out / s.identifier
        d.mkdir()
        shutil.copy2(s.library, d / s.library.name)
        for rel, text in headers.items():
            (d / "Headers" / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / "Headers" / rel).write_text(text)
        entry: dict[str, object] = {
            "LibraryIdentifier": s.identifier,
            "LibraryPath": s.library.name,
            "HeadersPath": "Headers",
            "SupportedArchitectures": list(s.archs),
            "SupportedPlatform": s.platform,
        }
        if s.variant:
            entry["SupportedPlatformVariant"] = s.variant
        libraries.append(entry)
    info = {"AvailableLibraries": libraries, "CFBundlePackageType": "XFWK", "XCFrameworkFormatVersion": "1.0"}
    with open(out / "Info.plist", "wb") as f:
        plistlib.dump(info, f, fmt=plistlib.FMT_XML, sort_keys=True)
    return out


def read_xcframework(path: Path) -> list[Slice]:
    """The slices an XCFramework's Info.plist declares (library paths resolved inside path)."""
    plist = Path(path) / "Info.plist"
    if not plist.is_file():
        raise McpmError(f"{plist} is missing: {path} is not an XCFramework", "export it again with --target ios")
    with open(plist, "rb") as f:
        info = plistlib.load(f)
    if info.get("CFBundlePackageType") != "XFWK" or "AvailableLibraries" not in info:
        raise McpmError(f"{plist} is not an XCFramework Info.plist", "export it again with --target ios")
    out = []
    for lib in info["AvailableLibraries"]:
        ident = str(lib["LibraryIdentifier"])
        out.append(Slice(ident, str(lib["SupportedPlatform"]), lib.get("SupportedPlatformVariant"),
                         tuple(lib["SupportedArchitectures"]), Path(path) / ident / str(lib["LibraryPath"])))
    return out


def check_xcframework(path: Path, required_symbols: Mapping[str, set[str]] | None = None) -> list[str]:
    """Every way the XCFramework at path is inconsistent: a slice's library missing, its architectures not the
    declared ones, a member whose LC_BUILD_VERSION platform is not the slice's, an identifier that does not match
    platform/archs/variant, a missing Headers folder; with required_symbols (arch -> Mach-O names), a symbol
    some slice's arch lacks. [] when all is well."""
    from mcpm.export.ios.macho import defined_symbols

    problems: list[str] = []
    slices = read_xcframework(path)
    seen: set[tuple[str, str | None]] = set()
    for s in slices:
        where = f"slice {s.identifier}"
        if (s.platform, s.variant) in seen:
            problems.append(f"{where}: a second slice for {s.platform} {s.variant or 'device'}")
        seen.add((s.platform, s.variant))
        expected_id = f"{s.platform}-{'_'.join(s.archs)}" + (f"-{s.variant}" if s.variant else "")
        if s.identifier != expected_id:
            problems.append(f"{where}: identifier should be {expected_id}")
        if (s.platform, s.variant) not in MACHO_PLATFORM:
            problems.append(f"{where}: unknown platform {s.platform} {s.variant}")
            continue
        if not (Path(path) / s.identifier / "Headers").is_dir():
            problems.append(f"{where}: Headers folder missing")
        if not s.library.is_file():
            problems.append(f"{where}: {s.library.name} missing")
            continue
        facts = inspect_macho(s.library)
        if sorted(facts) != sorted(s.archs):
            problems.append(f"{where}: library holds {', '.join(sorted(facts))}, Info.plist says "
                            f"{', '.join(s.archs)}")
        for arch, f in facts.items():
            if f.platforms != {s.macho_platform}:
                problems.append(f"{where} {arch}: LC_BUILD_VERSION platform {'/'.join(sorted(f.platforms))}, "
                                f"expected {s.macho_platform}")
            if f.filetypes != {"OBJECT"}:
                problems.append(f"{where} {arch}: members are {'/'.join(sorted(f.filetypes))}, not OBJECT")
        if required_symbols:
            syms = defined_symbols(s.library)
            for arch in s.archs:
                missing = sorted(required_symbols.get(arch, set()) - syms.get(arch, set()))
                if missing:
                    problems.append(f"{where} {arch}: {len(missing)} kernel symbols missing, e.g. {missing[0]}")
    return problems
