"""Cross builds of the C runtime for ARM64 Linux and runs under qemu-user (how ARM64 kernels are tested here).

    lib, exe = build_linux_arm64(kernel_object_files(bundle), out_dir)   # libmcpm.so + mcpm_run (rpath $ORIGIN)
    res = run_qemu(exe, [str(bundle), "-p", "Hello", "-n", "8"], cpu="cortex-a53")   # CompletedProcess (text)
    lib, exe = build_host_tool(kernel_object_files(host_bundle), out_dir)           # the same, native (gcc)

The library is the runtime's SOURCES (mcpm.runtime.build) with the kernel objects linked in, compiled with the same
CFLAGS: the runtime finds kernels with dlsym in its own library, so they cannot go into the executable. mcpm_run
(runtime_bindings/c/tools/mcpm_run.c) uses the public C API only. qemu's default CPU has dotprod and i8mm;
``cpu="cortex-a53"`` has neither (plain ARMv8-A NEON).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mcpm.errors import McpmError
from mcpm.runtime.build import C_DIR, CFLAGS, HEADERS, LIBS, SOURCES

CROSS_CC = "aarch64-linux-gnu-gcc"
SYSROOT = Path("/usr/aarch64-linux-gnu")  # libc6-dev-arm64-cross: the loader and libc qemu runs with
QEMU = "qemu-aarch64"
TOOL_SOURCE = C_DIR / "tools" / "mcpm_run.c"
LIB_NAME = "libmcpm.so"
TOOL_NAME = "mcpm_run"
TOOL_CFLAGS = ("-std=c11", "-Wall", "-Wextra", "-Werror", "-O2")
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g")
SETUP_FIX = "run make setup (it installs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user)"


def missing_cross_tools() -> list[str]:
    """What of the ARM64 cross toolchain and qemu-user this machine lacks (empty: all there)."""
    missing = [tool for tool in (CROSS_CC, QEMU) if shutil.which(tool) is None]
    if not (SYSROOT / "lib").is_dir():
        missing.append(f"the ARM64 C library ({SYSROOT})")
    return missing


def check_cross_tools() -> None:
    missing = missing_cross_tools()
    if missing:
        raise McpmError(f"cannot build or run for ARM64 Linux here: missing {', '.join(missing)}", SETUP_FIX)


def _run_cc(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        lines = [line for line in (res.stderr or res.stdout).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit status {res.returncode}"
        raise McpmError(f"building the C runtime failed: {last}", f"run by hand: {' '.join(cmd)}")


def build_tool(cc: str, kernel_objects: Sequence[Path], out_dir: Path, sanitize: bool = False) -> tuple[Path, Path]:
    """<out_dir>/libmcpm.so (runtime + kernel objects) and <out_dir>/mcpm_run linked to it, compiled with cc."""
    if shutil.which(cc) is None:
        raise McpmError(f"C compiler {cc!r} not found", SETUP_FIX if cc == CROSS_CC else "install gcc or set CC")
    objects = [Path(o) for o in kernel_objects]
    if not objects:
        raise McpmError("no kernel objects to link", "pass the bundle's objects (plan.kernel_object_files)")
    absent = [str(o) for o in objects if not o.is_file()]
    absent += [str(C_DIR / s) for s in (*SOURCES, *HEADERS) if not (C_DIR / s).is_file()]
    absent += [] if TOOL_SOURCE.is_file() else [str(TOOL_SOURCE)]
    if absent:
        raise McpmError(f"missing build inputs: {', '.join(absent)}", "re-export the bundle or reinstall mcpm")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lib, exe = out_dir / LIB_NAME, out_dir / TOOL_NAME
    san = list(SANITIZE_FLAGS) if sanitize else []
    _run_cc([cc, *CFLAGS, *san, "-Wl,-soname," + LIB_NAME, "-o", str(lib),
             *[str(C_DIR / s) for s in SOURCES], *[str(o) for o in objects], *LIBS])
    _run_cc([cc, *TOOL_CFLAGS, *san, "-I", str(C_DIR), "-o", str(exe), str(TOOL_SOURCE),
             "-L", str(out_dir), "-lmcpm", "-Wl,-rpath,$ORIGIN"])
    return lib, exe


def build_linux_arm64(kernel_objects: list[Path], out_dir: Path, sanitize: bool = False) -> tuple[Path, Path]:
    """libmcpm.so and mcpm_run for aarch64-linux-gnu (run them with run_qemu), with the given kernel objects."""
    check_cross_tools()
    return build_tool(CROSS_CC, kernel_objects, out_dir, sanitize)


def build_host_tool(kernel_objects: list[Path], out_dir: Path, sanitize: bool = False) -> tuple[Path, Path]:
    """The same for this machine (a host bundle's objects), with $CC or gcc."""
    return build_tool(os.environ.get("CC") or "gcc", kernel_objects, out_dir, sanitize)


def qemu_command(exe: Path, args: Sequence[str], cpu: str | None = None) -> list[str]:
    return [QEMU, "-L", str(SYSROOT), *(["-cpu", cpu] if cpu else []), str(exe), *[str(a) for a in args]]


def run_qemu(exe: Path, args: Sequence[str], cpu: str | None = None, timeout: float = 600.0,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs an aarch64 executable under qemu-user (cpu: a qemu CPU model, None = qemu's default, which has
    dotprod/i8mm); stdout and stderr captured as text (UTF-8, undecodable bytes replaced). Never raises on the
    program's exit status; McpmError when qemu is missing or the run exceeds timeout seconds. LeakSanitizer
    cannot run under qemu-user, so ASAN_OPTIONS gets detect_leaks=0 unless it sets detect_leaks itself."""
    check_cross_tools()
    cmd = qemu_command(exe, args, cpu)
    full_env = {**os.environ, **(env or {})}
    asan = full_env.get("ASAN_OPTIONS", "")
    if "detect_leaks" not in asan:
        full_env["ASAN_OPTIONS"] = f"{asan}:detect_leaks=0" if asan else "detect_leaks=0"
    try:
        return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout, env=full_env)
    except subprocess.TimeoutExpired as e:
        raise McpmError(f"{' '.join(cmd)} ran longer than {timeout:g} s", "use a smaller model or fewer tokens") from e
