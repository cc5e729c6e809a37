"""The standalone C runtime build (runtime_bindings/c/CMakeLists.txt) and its example (examples/c/chat.c): built
with CMake against the default model's host bundle, installed, consumed through pkg-config and find_package, and
the example's replies equal the Python chat session's (Python tokenizer and template over the same plan)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mcpm.runtime.build import C_DIR, HEADERS, SOURCES
from tests.conftest import python_chat

MESSAGES = ("What is the state of the Union?", "And the economy?")
MAX_NEW = 12
EXAMPLE = C_DIR.parents[1] / "examples" / "c" / "chat.c"

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("gcc") is None,
                                reason="cmake or gcc not found (make setup installs them)")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def configure_and_build(bundle: Path, build: Path, *extra: str) -> None:
    run(["cmake", "-S", C_DIR, "-B", build, f"-DMCPM_BUNDLE={bundle}", *extra])
    run(["cmake", "--build", build, "-j", "2"])


def chat(exe: Path, bundle: Path, runner: tuple[str, ...] = ()) -> tuple[list[str], dict]:
    """The example's replies to MESSAGES and its stats line."""
    res = run([*runner, exe, bundle, str(MAX_NEW)], input="".join(m + "\n" for m in MESSAGES))
    lines = res.stdout.split("\n")
    stats = json.loads(lines[-2])
    replies = [lines[lines.index(f"> {m}") + 1] for m in MESSAGES]
    return replies, stats


def python_replies(bundle: Path) -> list[str]:
    """The same chat through ChatSession (not built by CMake)."""
    return python_chat(bundle, MESSAGES, MAX_NEW)


@pytest.fixture(scope="module")
def built(default_q4_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cmake")
    build, prefix = root / "build", root / "prefix"
    configure_and_build(default_q4_bundle, build)
    run(["cmake", "--install", build, "--prefix", prefix])
    return {"root": root, "build": build, "prefix": prefix, "expected": python_replies(default_q4_bundle)}


def test_sources_txt_lists_every_runtime_file() -> None:
    """(the .c files: test_c_compilers.test_header_build_line_lists_every_source)"""
    assert SOURCES and sorted(p.name for p in C_DIR.glob("*.h")) == sorted(HEADERS)


@pytest.mark.parametrize("exe", ["mcpm-chat", "mcpm-chat-shared"])
def test_example_replies_equal_the_python_chat(exe: str, built: dict, default_q4_bundle: Path) -> None:
    """mcpm-chat links libmcpm.a (kernels found through the generated table), mcpm-chat-shared libmcpm.so (dlsym)."""
    replies, stats = chat(built["build"] / exe, default_q4_bundle)
    assert replies == built["expected"] and all(len(r) > 5 for r in replies)
    assert stats["decode_tokens"] > 0 and stats["decode_tok_s"] > 0 and stats["device"] == "cpu"


def test_static_example_needs_no_shared_library(built: dict) -> None:
    res = run(["readelf", "-d", built["build"] / "mcpm-chat"])
    assert "libmcpm" not in res.stdout
    assert "libmcpm.so" in run(["readelf", "-d", built["build"] / "mcpm-chat-shared"]).stdout


def test_installed_package_builds_the_example(built: dict, default_q4_bundle: Path) -> None:
    """What an app developer does after `cmake --install`: compile against mcpm.pc, or find_package(mcpm)."""
    prefix, root = built["prefix"], built["root"]
    assert (prefix / "include" / "mcpm.h").is_file()
    assert not (prefix / "include" / "mcpm_internal.h").exists()
    libdir = next(p.parent for p in prefix.rglob("libmcpm.a"))
    env = {"PKG_CONFIG_PATH": str(libdir / "pkgconfig"), "PATH": "/usr/bin:/bin"}
    flags = run(["pkg-config", "--cflags", "--libs", "mcpm"], env=env).stdout.split()
    exe = root / "chat-pc"
    run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-o", exe, EXAMPLE, *flags, f"-Wl,-rpath,{libdir}"])
    assert chat(exe, default_q4_bundle)[0] == built["expected"]
    consumer = root / "consumer"
    consumer.mkdir()
    (consumer / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.19)\nproject(consumer C)\nfind_package(mcpm 0.1 REQUIRED)\n"
        f"add_executable(chat {EXAMPLE})\ntarget_link_libraries(chat PRIVATE mcpm::mcpm_static)\n")
    run(["cmake", "-S", consumer, "-B", consumer / "build", f"-DCMAKE_PREFIX_PATH={prefix}"])
    run(["cmake", "--build", consumer / "build"])
    assert chat(consumer / "build" / "chat", default_q4_bundle)[0] == built["expected"]


def test_configure_errors_name_the_fix(tmp_path: Path) -> None:
    res = subprocess.run(["cmake", "-S", str(C_DIR), "-B", str(tmp_path / "b1")], capture_output=True, text=True)
    assert res.returncode != 0 and "-DMCPM_BUNDLE=" in " ".join(res.stderr.split())
    res = subprocess.run(["cmake", "-S", str(C_DIR), "-B", str(tmp_path / "b2"), f"-DMCPM_BUNDLE={tmp_path}"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and "plan.json is missing" in " ".join(res.stderr.split())
