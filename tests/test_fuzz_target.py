"""The libFuzzer target over the bundle loader (tests/native/fuzz_bundle.c, `make fuzz` for minutes) runs briefly
here (10 s) from the checked-in seed corpus: plan.json and mcpm-config.json mutated together, loaded by the C runtime
and its session under ASan/UBSan; a crash, sanitizer report, leak or empty error message fails."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fuzz import SEED_CORPUS, run

pytestmark = pytest.mark.skipif(shutil.which("clang") is None, reason="clang not found (make setup installs it)")


def test_fuzz_bundle_loader_briefly(default_q4_bundle: Path, tmp_path: Path) -> None:
    assert len(list(SEED_CORPUS.iterdir())) >= 5
    report = run(10, tmp_path / "fuzz", bundle=default_q4_bundle)
    assert report["exit_status"] == 0, report.get("log_tail")
    assert isinstance(report["runs"], int) and report["runs"] > 1000, report  # ~1,500 loads/s on 2 cores
