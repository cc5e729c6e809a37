"""The C runtime sources build warning-free with every C compiler on the machine (gcc and clang)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

C_DIR = Path(__file__).resolve().parents[1] / "runtime_bindings" / "c"
FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-fPIC", "-c"]


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
@pytest.mark.parametrize("source", sorted(p.name for p in C_DIR.glob("*.c")))
def test_compiles_without_warnings(compiler: str, source: str, tmp_path: Path) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed (make setup installs it)")
    proc = subprocess.run([compiler, *FLAGS, str(C_DIR / source), "-o", str(tmp_path / "out.o")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_header_build_line_lists_every_source() -> None:
    """mcpm.h tells app developers how to build the library: its source list is build.py's, word for word."""
    import re

    from mcpm.runtime.build import C_DIR, SOURCES

    header = (C_DIR / "mcpm.h").read_text()
    usage = header[:header.index("*/")]
    assert re.findall(r"\bmcpm_\w+\.c\b", usage) == list(SOURCES)
    assert sorted(p.name for p in C_DIR.glob("*.c")) == sorted(SOURCES)
