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


def test_one_stats_buffer_rule() -> None:
    """Every binding sizes its mcpm_stats_json buffer with mcpm.h's MCPM_STATS_JSON_MAX (issue: Swift used 1024 bytes,
    the JNI 1 KiB then 64 KiB, Python 8 KiB, mcpm_run grew it): the Python copy of the value equals the header's,
    and the JNI layer, the Swift package, mcpm_run and the example name the constant."""
    import re

    from mcpm.runtime.binding import STATS_JSON_MAX

    root = C_DIR.parents[1]
    header = (C_DIR / "mcpm.h").read_text()
    assert int(re.search(r"#define MCPM_STATS_JSON_MAX (\d+)", header).group(1)) == STATS_JSON_MAX
    swift = root / "ios_app" / "MCPM" / "Sources" / "MCPM" / "MCPMModel.swift"
    for path in (root / "runtime_bindings" / "jni" / "mcpm_jni.c", C_DIR / "tools" / "mcpm_run.c",
                 root / "examples" / "c" / "chat.c", swift):
        text = path.read_text()
        assert "MCPM_STATS_JSON_MAX" in text, path
        assert not re.search(r"mcpm_stats_json\([^)]*\b\d{3,}\b", text), path  # no literal size at a call
