"""Under CI=true a skipped test is a failed test, unless its reason is on the short allow-list below.

A test skips when a system tool it needs is missing (gcc, qemu, PoCL, the Android build tools ...). On a
developer's machine that is a convenience; in CI it would let a machine that lacks the tools pass having run
little, so there the skip becomes a failure that names the missing tool. Loaded by tests/conftest.py; also
usable alone (`pytest -p ci_policy`), which is how tests/test_ci_policy.py checks it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

# What is truly optional: (what it is, why optional, pattern on the skip reason).
OPTIONAL_SKIPS: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("llama.cpp peer", "built only by `make bench-peer` (minutes, outside the repo)",
     re.compile(r"llama\.cpp peer venv is not built")),
    ("CPU without AVX2", "a property of the machine, not of its setup", re.compile(r"this CPU has no AVX2")),
)

_ALLOWED_KEY = pytest.StashKey[list[tuple[str, str]]]()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _reason(report: pytest.TestReport) -> str:
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def optional_skip(reason: str) -> str | None:
    """The allow-list entry that covers a skip reason, or None when the skip is a missing required tool."""
    for name, _, pattern in OPTIONAL_SKIPS:
        if pattern.search(reason):
            return name
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ALLOWED_KEY] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci():
        return
    reason = _reason(report)
    allowed = optional_skip(reason)
    if allowed is not None:
        item.config.stash[_ALLOWED_KEY].append((item.nodeid, allowed))
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, which counts as a failure: {reason} "
                       "(run `make setup` as root to install the tools; tests/ci_policy.py lists the optional skips)")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not in_ci():
        return
    allowed = config.stash.get(_ALLOWED_KEY, [])
    terminalreporter.write_sep("-", f"CI skip policy: {len(allowed)} allowed optional skip(s)")
    for name, why, _ in OPTIONAL_SKIPS:
        hits = [nodeid for nodeid, n in allowed if n == name]
        terminalreporter.write_line(f"  {name} ({why}): {len(hits)} skipped")
