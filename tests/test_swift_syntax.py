"""Swift is parsed, not only read as text: every .swift file of ios_app/ goes through tree-sitter's Swift grammar
(no Swift compiler on these machines), so a syntax error fails CI. What only Xcode can check (types, the C module
import) stays with the structural tests of test_ios_swift.py and the Mac steps of ios_app/README.md."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWIFT_FILES = sorted((ROOT / "ios_app").rglob("*.swift"))


def syntax_errors(source: bytes) -> list[str]:
    """'line:column: text' of every ERROR or MISSING node of source."""
    import tree_sitter_swift
    from tree_sitter import Language, Parser

    tree = Parser(Language(tree_sitter_swift.language())).parse(source)
    found: list[str] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            line, col = node.start_point
            text = (node.text or b"").decode(errors="replace")[:60]
            found.append(f"{line + 1}:{col + 1}: {'missing ' + node.type if node.is_missing else repr(text)}")
        stack.extend(node.children)
    return found


def test_the_parser_catches_syntax_errors() -> None:
    good = b"struct S { var x: Int = 1 }\nfunc f(_ a: [Int]) -> Int { a.map { $0 + 1 }.reduce(0, +) }\n"
    assert syntax_errors(good) == []
    for bad in (b"func f( { let x = }", b"let a = [1, 2", b"class A { func b() { if x { } }",
                b"let x = y.map { $0 + }"):
        assert syntax_errors(bad), bad


@pytest.mark.parametrize("path", SWIFT_FILES, ids=[str(p.relative_to(ROOT)) for p in SWIFT_FILES])
def test_swift_file_parses(path: Path) -> None:
    assert syntax_errors(path.read_bytes()) == []


def test_every_app_and_package_file_is_checked() -> None:
    names = {p.name for p in SWIFT_FILES}
    assert {"ChatViewModel.swift", "MCPMSession.swift", "MCPMModel.swift", "Package.swift"} <= names
