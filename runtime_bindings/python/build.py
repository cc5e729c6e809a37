"""Build the host shared library of a bundle: the C runtime (runtime_bindings/c) + the bundle's kernels.o.

The library goes to a cache folder outside the bundle (the bundle stays read-only), keyed by the SHA-256 of the
runtime sources, the compiler flags and kernels.o: ``<cache>/lib/<digest>/libmcpm_bundle.so``. It is compiled
into a temporary name in the same folder and renamed into place, so concurrent builds never see a partial file.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from mcpm.errors import McpmError

C_DIR = Path(__file__).resolve().parents[1] / "c"
SOURCES_LIST = C_DIR / "sources.txt"  # the one list of the runtime's files, read by CMakeLists.txt too


def _source_list() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(sources, headers) named in runtime_bindings/c/sources.txt (empty when the file is missing: the builds then
    name the missing runtime files)."""
    try:
        lines = SOURCES_LIST.read_text().splitlines()
    except OSError:
        return (), ()
    names = [line.split("#", 1)[0].strip() for line in lines]
    names = [n for n in names if n]
    return tuple(n for n in names if n.endswith(".c")), tuple(n for n in names if n.endswith(".h"))


SOURCES, HEADERS = _source_list()
CFLAGS = ("-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden", "-O2", "-shared")
LIBS = ("-lm", "-lpthread", "-ldl")
LIB_NAME = "libmcpm_bundle.so"


def default_cache_dir() -> Path:
    """$MCPM_CACHE_DIR, else $XDG_CACHE_HOME/mcpm, else ~/.cache/mcpm."""
    if os.environ.get("MCPM_CACHE_DIR"):
        return Path(os.environ["MCPM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mcpm"


def _compiler() -> str:
    return os.environ.get("CC") or "gcc"


def library_digest(kernels_o: Path, compiler: str | None = None) -> str:
    """SHA-256 over the runtime's sources and headers, the compile command and the kernels object."""
    h = hashlib.sha256()
    h.update(" ".join([compiler or _compiler(), *CFLAGS, *LIBS]).encode())
    for name in (*SOURCES, *HEADERS):
        h.update(name.encode() + b"\0")
        h.update((C_DIR / name).read_bytes())
    h.update(b"kernels.o\0")
    h.update(kernels_o.read_bytes())
    return h.hexdigest()


ELF_MACHINES = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183}


def check_object_file(path: Path) -> None:
    """A one-line error unless ``path`` is a 64-bit ELF relocatable object for this machine (a damaged kernels.o
    used to surface as "collect2: ld returned 1")."""
    with path.open("rb") as f:
        head = f.read(20)
    want = ELF_MACHINES.get(platform.machine().lower())
    ok = len(head) == 20 and head[:4] == b"\x7fELF" and head[4] == 2 and head[5] == 1
    ok = ok and int.from_bytes(head[16:18], "little") == 1  # ET_REL
    machine = int.from_bytes(head[18:20], "little") if ok else None
    if not ok or (want is not None and machine != want):
        what = "an object file for another CPU" if ok else "not a valid object file"
        raise McpmError(f"{path} is {what} (a damaged or foreign bundle)",
                        "re-copy the whole bundle folder, or re-export it for this machine")


def build_library(bundle_dir: Path, object_file: str = "kernels.o", cache_dir: Path | None = None) -> Path:
    """Path of the runtime library linked with <bundle_dir>/<object_file>, compiled on the first call only."""
    kernels_o = Path(bundle_dir) / object_file
    if not kernels_o.is_file():
        raise McpmError(f"{kernels_o} is missing: the bundle has no kernels", "re-export the bundle")
    check_object_file(kernels_o)
    missing = [s for s in (*SOURCES, *HEADERS) if not (C_DIR / s).is_file()] if SOURCES else [SOURCES_LIST.name]
    if missing:
        raise McpmError(f"the C runtime sources are missing from {C_DIR}: {', '.join(missing)}",
                        "reinstall mcpm from its source tree (pip install -e .)")
    cc = _compiler()
    folder = (cache_dir or default_cache_dir()) / "lib" / library_digest(kernels_o, cc)
    lib = folder / LIB_NAME
    if lib.is_file():
        return lib
    if shutil.which(cc) is None:
        raise McpmError(f"C compiler {cc!r} not found: the C runtime cannot be built for this bundle",
                        "install gcc (e.g. apt-get install gcc) or set CC")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".so", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [cc, *CFLAGS, "-o", str(tmp), *[str(C_DIR / s) for s in SOURCES], str(kernels_o), *LIBS]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            lines = [line for line in (res.stderr or res.stdout).splitlines() if line.strip()]
            last = lines[-1].strip() if lines else f"exit status {res.returncode}"
            raise McpmError(f"building the C runtime failed: {last}", f"run by hand: {' '.join(cmd)}")
        tmp.replace(lib)
    finally:
        tmp.unlink(missing_ok=True)
    return lib
