"""The docs point at what exists: every relative link of the markdown files resolves, every `make X` they name is a
Makefile target, and docs/c-api.md's file table names every runtime source."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md"))]


def test_relative_links_resolve() -> None:
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_make_targets_named_in_docs_exist() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = {t for doc in DOCS for t in re.findall(r"`make ([a-z][a-z-]*)", doc.read_text())}
    assert named and named <= targets, named - targets


def test_c_api_doc_lists_every_runtime_source() -> None:
    from mcpm.runtime.build import SOURCES

    doc = (ROOT / "docs" / "c-api.md").read_text()
    table = doc[doc.index("## 4. Inside the runtime"):]
    assert [s for s in SOURCES if f"`{s}`" not in table] == []
