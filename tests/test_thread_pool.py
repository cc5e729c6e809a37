"""The C runtime's thread pool (mcpm_backend.c): tasks are claimed from a shared counter, so a slow core (a
phone's LITTLE core, or one another process keeps busy) takes fewer of them and the launch follows the fast ones.
Counts tasks per thread (tests/native/pool_balance.c), not time; the timing is `mcpm bench` under load."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mcpm.runtime.build import C_DIR

NATIVE = Path(__file__).parent / "native"
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found")


@pytest.fixture(scope="module")
def pool_balance(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("pool") / "pool_balance"
    res = subprocess.run(["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(C_DIR), "-o", str(exe),
                          str(NATIVE / "pool_balance.c"), str(C_DIR / "mcpm_backend.c"),
                          str(C_DIR / "mcpm_kernel_abi.c"), "-lpthread"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return exe


def launches(exe: Path, threads: int, n: int, slow_us: int, fast_us: int) -> list[dict[str, int]]:
    res = subprocess.run([str(exe), str(threads), str(n), str(slow_us), str(fast_us)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_a_slow_worker_takes_fewer_tasks(pool_balance: Path) -> None:
    """Workers 20x slower than the caller: a static split would give every thread 4 of its tasks; here the caller
    takes most, and after a few launches that waited long for the slow worker it runs them alone (one task)."""
    runs = launches(pool_balance, 2, 6, 20000, 1000)
    first = runs[0]
    assert first["tasks"] == 8 and first["caller"] >= 6, first
    assert all(r["tasks"] in (1, 8) and r["caller"] >= (r["tasks"] + 1) // 2 for r in runs), runs
    assert runs[-1]["tasks"] == 1, runs  # the caller alone: faster than waiting for the slow core


def test_equal_cores_share_the_work(pool_balance: Path) -> None:
    """Equal task times: every launch runs all 4 x threads tasks, spread over the threads (the pool never
    falls back to the caller alone)."""
    runs = launches(pool_balance, 3, 5, 2000, 2000)
    assert all(r["tasks"] == 12 for r in runs), runs
    assert sum(r["caller"] for r in runs) < 5 * 12, runs  # the workers took some
