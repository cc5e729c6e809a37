"""Mach-O objects and static libraries with Debian's LLVM tools (no Apple toolchain): which architectures a file
holds, which platform its LC_BUILD_VERSION names, which symbols it defines, and clang for Apple triples.

Tools (apt: llvm, clang, lld; Debian names them e.g. ``llvm-objdump-14``): llvm-objdump ``--macho
--private-headers`` (what ``otool -l`` prints) for the load commands, llvm-nm for symbols, llvm-libtool-darwin for
static libraries (:mod:`mcpm.export.ios.xcframework`). ``llvm-lipo -info`` is not used: it segfaults on thin
archives (LLVM 14).

    from mcpm.export.ios.macho import inspect_macho, defined_symbols
    facts = inspect_macho(lib)            # {"arm64": ArchFacts(platforms={"ios"}, minos={"14.0"}, members=[...])}
    syms = defined_symbols(lib)           # {"arm64": {"___tvm_ffi_rms_norm", ...}}
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mcpm.errors import McpmError

SETUP_FIX = "run make setup (apt-get install llvm clang lld: llvm-objdump, llvm-nm, llvm-libtool-darwin)"
FAT_MAGIC = 0xCAFEBABE
# Mach-O cputype -> the architecture names Apple's tools and XCFramework Info.plist use
CPU_TYPES = {0x0100000C: "arm64", 0x01000007: "x86_64"}
# llvm-objdump's cputype words (header line "magic cputype ...") -> architecture names
CPU_WORDS = {"ARM64": "arm64", "X86_64": "x86_64"}
MACHO_MAGICS = (b"\xcf\xfa\xed\xfe",)  # MH_MAGIC_64, little-endian (arm64, x86_64)


def tool(name: str) -> str:
    """Absolute path of an LLVM tool, also under Debian's versioned names (llvm-objdump-14, ...)."""
    for candidate in (name, *(f"{name}-{v}" for v in range(20, 13, -1))):
        found = shutil.which(candidate)
        if found:
            return found
    raise McpmError(f"{name} not found: the iOS kernels are packaged with LLVM's Mach-O tools", SETUP_FIX)


def run_tool(cmd: Sequence[str], what: str) -> str:
    """Runs cmd; on failure a one-line McpmError with the first error line."""
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True)
    except OSError as e:
        raise McpmError(f"{what}: cannot run {cmd[0]}: {e}", SETUP_FIX) from e
    if res.returncode != 0:
        lines = [ln.strip() for ln in (res.stderr + "\n" + res.stdout).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else f"exit {res.returncode}")
        shown = " ".join(cmd)
        raise McpmError(f"{what} failed: {first}", f"run by hand: {shown[:500]}")
    return res.stdout


# ---------------------------------------------------------------- architectures and load commands


def fat_archs(path: Path) -> list[str] | None:
    """Architectures of a universal (fat) file from its header, or None for a thin file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8 or struct.unpack(">I", head[:4])[0] != FAT_MAGIC:
            return None
        (n,) = struct.unpack(">I", head[4:8])
        if n > 32:  # Java class files share the magic; a real fat header has a handful of entries
            return None
        out = []
        for _ in range(n):
            cputype = struct.unpack(">5I", f.read(20))[0]
            out.append(CPU_TYPES.get(cputype, f"cputype-{cputype:#x}"))
        return out


@dataclass
class ArchFacts:
    """What the load commands of one architecture of a Mach-O file (object or archive) say."""

    arch: str
    members: list[str] = field(default_factory=list)  # archive members (or the object itself)
    platforms: set[str] = field(default_factory=set)  # LC_BUILD_VERSION platform: ios, iossimulator, macos, ...
    minos: set[str] = field(default_factory=set)
    filetypes: set[str] = field(default_factory=set)  # OBJECT for .o files and archive members


def _parse_private_headers(text: str, path: Path) -> dict[str, ArchFacts]:
    """llvm-objdump --macho --private-headers output -> facts per cputype found (one arch slice of a file)."""
    out: dict[str, ArchFacts] = {}
    member = path.name
    header_next = False
    current: ArchFacts | None = None
    pending_members: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        m = re.match(r"^(.*)\(([^()]+)\):$", line)
        if m:
            member = m.group(2)
            pending_members.append(member)
            continue
        if line.startswith("magic") and "cputype" in line:
            header_next = True
            continue
        if header_next:
            header_next = False
            words = line.split()
            arch = CPU_WORDS.get(words[1], words[1].lower()) if len(words) > 1 else "?"
            current = out.setdefault(arch, ArchFacts(arch))
            current.members.append(member)
            if len(words) > 4:
                current.filetypes.add(words[4])
            continue
        if current is None:
            continue
        if line.startswith("platform "):
            current.platforms.add(line.split()[1].lower())
        elif line.startswith("minos "):
            current.minos.add(line.split()[1])
    return out


def inspect_macho(path: Path) -> dict[str, ArchFacts]:
    """Facts per architecture of a Mach-O object or (thin or fat) static library: platform and minimum OS of every
    member's LC_BUILD_VERSION, member names, file types. Raises McpmError if the file is missing or not Mach-O."""
    path = Path(path)
    if not path.is_file():
        raise McpmError(f"{path} does not exist", "export it again")
    objdump = tool("llvm-objdump")
    archs = fat_archs(path)
    fat: list[str | None] = [None] if archs is None else [*archs]
    out: dict[str, ArchFacts] = {}
    for arch in fat:
        cmd = [objdump, "--macho", "--private-headers", *([f"--arch={arch}"] if arch else []), str(path)]
        facts = _parse_private_headers(run_tool(cmd, f"reading the Mach-O headers of {path.name}"), path)
        for a, f in facts.items():
            if a in out:
                raise McpmError(f"{path}: architecture {a} appears twice", "rebuild the library")
            out[a] = f
    if not out:
        raise McpmError(f"{path} holds no Mach-O object", "it must be a Mach-O object or static library")
    return out


def is_macho_object(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in MACHO_MAGICS


def check_object(path: Path, arch: str, platform: str) -> None:
    """Raises McpmError unless path is a Mach-O object for arch whose LC_BUILD_VERSION names platform."""
    path = Path(path)
    if not path.is_file():
        raise McpmError(f"kernel object {path} is missing", "export the bundle again with --target ios")
    if not is_macho_object(path):
        raise McpmError(f"{path} is not a 64-bit Mach-O object", "export the bundle with --target ios: the kernels "
                        "of other targets (ELF) cannot be linked into an iOS app")
    facts = inspect_macho(path)
    if set(facts) != {arch} or facts[arch].platforms != {platform}:
        found = ", ".join(f"{a} ({'/'.join(sorted(f.platforms)) or 'no platform'})" for a, f in facts.items())
        raise McpmError(f"{path} is {found}, not {arch} for {platform}", "export the bundle again with --target ios")


# ---------------------------------------------------------------- symbols


def defined_symbols(path: Path) -> dict[str, set[str]]:
    """Global defined symbols (Mach-O names, with the leading underscore) per architecture of an object or
    (thin or fat) static library."""
    path = Path(path)
    nm = tool("llvm-nm")
    archs = fat_archs(path)
    if archs is None:
        archs = list(inspect_macho(path))
        if len(archs) != 1:
            raise McpmError(f"{path} mixes architectures {', '.join(archs)} in a thin file", "rebuild it")
        text = run_tool([nm, "-g", "--defined-only", str(path)], f"listing the symbols of {path.name}")
        return {archs[0]: _nm_names(text)}
    return {a: _nm_names(run_tool([nm, "-g", "--defined-only", f"--arch={a}", str(path)],
                                  f"listing the {a} symbols of {path.name}")) for a in archs}


def _nm_names(text: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and len(words[1]) == 1:
            names.add(words[2])
    return names


def c_to_macho(name: str) -> str:
    """The Mach-O symbol of a C name (a leading underscore: __tvm_ffi_x -> ___tvm_ffi_x)."""
    return "_" + name


# ---------------------------------------------------------------- compiling C for Apple triples


def compile_c(source: Path, triple: str, out: Path, extra: Sequence[str] = ()) -> Path:
    """clang --target=triple -c source -o out, freestanding (no Apple SDK here: the source may include only
    clang's own headers such as stddef.h/stdint.h), -Wall -Wextra -Werror."""
    clang = tool("clang")
    out.parent.mkdir(parents=True, exist_ok=True)
    run_tool([clang, f"--target={triple}", "-ffreestanding", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
              *extra, "-c", str(source), "-o", str(out)], f"compiling {source.name} for {triple}")
    return out
