"""The CI skip policy (tests/ci_policy.py): under CI=true a skip for a missing tool fails, an allowed one does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SAMPLE = '''
import pytest

def test_needs_a_tool():
    pytest.skip("gcc not found: the C runtime cannot be built")

@pytest.mark.skipif(True, reason="qemu-aarch64 missing")
def test_marked():
    pass

def test_optional():
    pytest.skip("the llama.cpp peer venv is not built (python -m benchmarks.peer --build-peer-only)")

def test_passes():
    assert True
'''


def _run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ci_policy", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_ci_turns_missing_tool_skips_into_failures(tmp_path: Path) -> None:
    res = _run(tmp_path, "true")
    assert res.returncode == 1, res.stdout
    assert "1 failed, 1 passed, 1 skipped, 1 error" in res.stdout, res.stdout  # a marked skip fails in setup
    assert "skipped under CI=true, which counts as a failure: gcc not found" in res.stdout
    assert "qemu-aarch64 missing" in res.stdout
    assert "llama.cpp peer (built only by `make bench-peer`" in res.stdout and ": 1 skipped" in res.stdout


def test_outside_ci_skips_stay_skips(tmp_path: Path) -> None:
    res = _run(tmp_path, "")
    assert res.returncode == 0, res.stdout
    assert "1 passed, 3 skipped" in res.stdout, res.stdout
