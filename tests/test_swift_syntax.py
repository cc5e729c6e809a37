"""Swift is parsed, not only read as text: every .swift file of ios_app/ goes through tree-sitter's Swift grammar
(no Swift compiler on these machines), so a syntax error fails CI. What only Xcode can check (types, the C module
import) stays with the structural tests of test_ios_swift.py and the Mac steps of ios_app/README.md."""

from __future__ import annotations

import re
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


# ---- Swift 6 strict concurrency, the part a parser can check: no C pointer crosses into an escaping closure

_POINTER_INIT = re.compile(r"^(?:\w+\.)*handle$")  # `handle`, `self.handle`, `model.handle`


def _walk(node):  # type: ignore[no-untyped-def]
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(n.children)


def _text(node) -> str:  # type: ignore[no-untyped-def]
    return (node.text or b"").decode()


def _pointer_locals(body) -> dict[str, list]:  # type: ignore[no-untyped-def]
    """name -> declaration nodes of the locals in body that hold an OpaquePointer (annotated, or initialized from a
    `handle` property) and of the parameters annotated OpaquePointer."""
    found: dict[str, list] = {}  # type: ignore[type-arg]
    for n in _walk(body):
        if n.type == "property_declaration":
            name = next((c for c in n.children if c.type == "pattern"), None)
            ann = next((c for c in n.children if c.type == "type_annotation"), None)
            value = n.children[-1] if len(n.children) > 1 and n.children[-2].type == "=" else None
            if name is not None and ((ann is not None and "OpaquePointer" in _text(ann))
                                     or (value is not None and _POINTER_INIT.match(_text(value)))):
                found.setdefault(_text(name), []).append(n)
        elif n.type == "parameter" and "OpaquePointer" in _text(n):
            idents = [c for c in n.children if c.type == "simple_identifier"]
            if idents:
                found.setdefault(_text(idents[-1]), []).append(n)  # `_ p: T`: the internal name is the last
    return found


def _is_inside(node, ancestor) -> bool:  # type: ignore[no-untyped-def]
    while node is not None:
        if node == ancestor:
            return True
        node = node.parent
    return False


def _outermost_lambda(lam, top) -> bool:  # type: ignore[no-untyped-def]
    """True when no other lambda lies between lam and top (the closure passed to the call itself)."""
    node = lam.parent
    while node is not None and node != top:
        if node.type == "lambda_literal":
            return False
        node = node.parent
    return True


def sendable_problems(source: bytes) -> list[str]:
    """What Swift 6 mode would refuse and a parser can see: an OpaquePointer local (or parameter) of a function
    captured by a closure passed to `.async` (an escaping @Sendable closure: OpaquePointer is not Sendable), and
    global variables or global closure constants (a C callback must be a global func)."""
    import tree_sitter_swift
    from tree_sitter import Language, Parser

    root = Parser(Language(tree_sitter_swift.language())).parse(source).root_node
    problems: list[str] = []
    for decl in root.children:
        if decl.type == "property_declaration":
            kind = next((_text(c) for c in decl.children if c.type == "value_binding_pattern"), "")
            if kind == "var" or decl.children[-1].type == "lambda_literal":
                problems.append(f"{decl.start_point[0] + 1}: global {kind} {_text(decl)[:40]!r}")
    for fn in _walk(root):
        if fn.type not in ("function_declaration", "deinit_declaration", "init_declaration"):
            continue
        pointers = _pointer_locals(fn)
        for call in _walk(fn):
            if call.type != "call_expression" or not _text(call.children[0]).endswith(".async"):
                continue
            suffix = call.children[-1]
            for lam in (n for n in _walk(suffix) if n.type == "lambda_literal" and _outermost_lambda(n, suffix)):
                for ident in _walk(lam):
                    name = _text(ident)
                    if (ident.type == "simple_identifier" and name in pointers
                            and ident.parent is not None and ident.parent.type != "navigation_suffix"
                            and not any(_is_inside(d, lam) for d in pointers[name])):  # no closer declaration
                        problems.append(f"{ident.start_point[0] + 1}: OpaquePointer {name!r} captured by .async")
    return problems


def test_the_sendable_check_catches_pointer_captures() -> None:
    bad = b"""
let sink: mcpm_text_callback = { t, n, u in 0 }
var counter = 0
final class S {
    let handle: OpaquePointer
    deinit {
        let session = handle
        model.queue.async { mcpm_session_free(session) }
    }
    func f(_ p: OpaquePointer) { DispatchQueue.global().async { use(p) } }
}
"""
    assert sorted(p.split(": ", 1)[1].split(" ")[0:2] for p in sendable_problems(bad)) == [
        ["OpaquePointer", "'p'"], ["OpaquePointer", "'session'"], ["global", "let"], ["global", "var"]]
    good = b"""
func sink(_ t: UnsafePointer<CChar>?, _ n: Int, _ u: UnsafeMutableRawPointer?) -> Int32 { 0 }
final class S {
    let handle: OpaquePointer
    deinit {
        let session = MCPMHandle(handle)
        model.queue.async { mcpm_session_free(session.raw) }
    }
    func f() { model.queue.async { let s = self.handle; use(s) }; let h = handle; model.queue.sync { use(h) } }
}
"""
    assert sendable_problems(good) == []


@pytest.mark.parametrize("path", SWIFT_FILES, ids=[str(p.relative_to(ROOT)) for p in SWIFT_FILES])
def test_swift_is_sendable_clean(path: Path) -> None:
    assert sendable_problems(path.read_bytes()) == []
