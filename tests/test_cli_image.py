"""Image input from Python and the CLI (MiniCPM-V bundles): `Session.encode_image`, `mcpm chat --image`,
`mcpm bench --image`. Refusals (a plain LM bundle, unreadable files, bad arrays) use the shipped default bundle;
the end-to-end checks export a tiny MiniCPM-V checkpoint once per module."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mcpm.cli import cli
from mcpm.errors import McpmError
from tests.conftest import StopAtCall, abort_callback

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built")

V_CTX, V_CHUNK = 256, 16


def _png(path: Path, width: int, height: int, seed: int = 0) -> Path:
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)  # [h, w, 3]
    Image.fromarray(rgb).save(path)
    return path


def _mcpm(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real entry point in a subprocess (McpmError -> `error: ...` on stderr, exit 2)."""
    return subprocess.run([sys.executable, "-m", "mcpm.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=600)


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """112 x 56 pixels: with the tiny model's 56-pixel slices, an overview and slices."""
    return _png(tmp_path_factory.mktemp("pictures") / "photo.png", 112, 56)


def export_tiny_v_bundle(base: Path) -> Path:
    """A tiny MiniCPM-V checkpoint (tests/test_minicpmv.py's config) exported for the host into base/bundle."""
    from mcpm.export.exporter import ExportOptions, run_export
    from tests.conftest import write_tiny
    from tests.test_minicpmv import tiny_minicpmv

    ckpt = write_tiny(base / "ckpt", tiny_minicpmv(), seed=11)
    out = base / "bundle"
    run_export(ExportOptions(ckpt, out, "host", "q4g32", (), V_CTX, V_CHUNK, progress=False))
    return out


@pytest.fixture(scope="module")
def v_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_v_bundle(tmp_path_factory.mktemp("v-bundle"))


# ---------------------------------------------------------------- refusals (plain LM bundle)


def test_plain_bundle_has_no_vision_and_encode_fails_in_c(default_q4_bundle: Path) -> None:
    from mcpm.runtime.binding import Model, Session

    with Model.load(default_q4_bundle, threads=1) as model, Session(model) as session:
        assert model.has_vision is False
        assert hasattr(model._lib, "mcpm_encode_image"), "the C runtime has no mcpm_encode_image yet"
        with pytest.raises(McpmError) as e:
            session.encode_image(np.zeros((20, 30, 3), np.uint8))
        message = str(e.value)
        assert message and "\n" not in message and "(mcpm_encode_image)" not in message  # the runtime's own line
        session.clear_images()  # nothing attached: a no-op
        n, _ = session.chat("Hello", 2)  # the session still works
        assert n >= 1


@pytest.mark.parametrize(("array", "match"), [
    (np.zeros((4, 4, 3), np.float32), "uint8"),
    (np.zeros((4, 4), np.uint8), r"not \[height, width, 3\]"),
    (np.zeros((4, 4, 4), np.uint8), r"not \[height, width, 3\]"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    ([[1, 2, 3]], "numpy array"),
])
def test_encode_image_checks_the_array(default_q4_bundle: Path, array: object, match: str) -> None:
    from mcpm.runtime.binding import Model, Session

    with Model.load(default_q4_bundle, threads=1) as model, Session(model) as session, \
            pytest.raises(McpmError, match=match):
        session.encode_image(array)  # type: ignore[arg-type]


def test_chat_and_bench_refuse_images_for_a_plain_bundle(default_q4_bundle: Path, picture: Path) -> None:
    for args in (["chat", str(default_q4_bundle), "--image", str(picture), "-t", "1"],
                 ["bench", str(default_q4_bundle), "--image", str(picture), "-p", "4", "-n", "2", "-r", "1"]):
        line = _one_error_line(_mcpm(*args, stdin="Hello\n"))
        assert "has no vision encoder" in line and "MiniCPM-V" in line and "drop --image" in line, line


def test_unreadable_images_are_one_line_errors(default_q4_bundle: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    missing = tmp_path / "missing.png"
    for image, expected in ((garbage, "cannot read image"), (missing, "does not exist")):
        for command in ("chat", "bench"):
            line = _one_error_line(_mcpm(command, str(default_q4_bundle), "--image", str(image), stdin="Hi\n"))
            assert expected in line and str(image) in line, line


def test_help_explains_image(default_q4_bundle: Path) -> None:
    for command in ("chat", "bench"):
        res = CliRunner().invoke(cli, [command, "--help"])
        assert res.exit_code == 0 and "--image PATH" in res.output and "MiniCPM-V" in res.output, res.output


def test_image_command_in_a_plain_chat_is_an_error_that_keeps_the_chat(default_q4_bundle: Path,
                                                                       picture: Path) -> None:
    proc = _mcpm("chat", str(default_q4_bundle), "-n", "3", "-t", "1", stdin=f"/image {picture}\nHello\n")
    assert proc.returncode == 0, proc.stderr
    assert "has no vision encoder" in proc.stderr and "/image" in proc.stderr
    assert proc.stdout.strip()  # the message after it was answered


# ---------------------------------------------------------------- a MiniCPM-V bundle end to end


def test_python_session_encodes_and_chats(v_bundle: Path) -> None:
    from mcpm.runtime.binding import Model, Session

    rgb = np.random.default_rng(2).integers(0, 256, (56, 112, 3), dtype=np.uint8)  # [h, w, 3]
    with Model.load(v_bundle, threads=2) as model, Session(model) as session:
        assert model.has_vision is True
        assert session.chat("Hello", 1)[0] == 1
        text_only = model.position  # the prompt of the turn (the one sampled token is not fed)
        session.reset()
        runs = session.encode_image(rgb)
        assert runs >= 2  # an overview and at least one slice
        stats = model.stats()
        assert stats["image_encode_ms"] > 0 and stats["image_slices"] == runs and stats["image_patches"] > 0
        assert session.chat("Hello", 1)[0] == 1
        assert model.position >= text_only + 16 * runs  # 16 query tokens per vision run in the tiny model
        session.reset()
        # a strided view (mirrored) is accepted; clear_images drops it again
        assert session.encode_image(rgb[:, ::-1]) == runs
        session.clear_images()
        assert session.chat("Hello", 1)[0] == 1
        assert model.position == text_only
        n, _ = session.chat("What is in the picture?", 4)  # a second turn after an image turn
        assert n >= 1


def test_cli_chat_with_an_image(v_bundle: Path, picture: Path) -> None:
    proc = _mcpm("chat", str(v_bundle), "--image", str(picture), "-n", "4", "-t", "2",
                 stdin="What is in the picture?\nAnd now?\n" + "word " * 400 + f"\n/image {picture}\nAgain?\n")
    assert proc.returncode == 0, proc.stderr
    info = [line for line in proc.stderr.splitlines() if line.startswith("[image ")]
    assert len(info) == 2 and "112x56" in info[0] and "vision runs" in info[0] and "encoded in" in info[0], \
        proc.stderr  # --image, then /image
    assert "message is longer than the context" in proc.stderr  # the C session's overflow, kept going
    assert len(proc.stdout.splitlines()) == 3  # one reply line per answered message


def test_cli_bench_with_an_image(v_bundle: Path, picture: Path) -> None:
    res = CliRunner().invoke(cli, ["bench", str(v_bundle), "--image", str(picture), "-p", "8", "-n", "4", "-r", "2",
                                   "-t", "2", "--json"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(r["runs"]) == 2
    for run in r["runs"]:
        assert run["image_encode_ms"] > 0 and run["image_slices"] >= 2 and run["image_patches"] > 0
        assert run["prefill_tokens"] == 8  # the text part stays text-only
    assert r["summary"]["image_encode_ms"]["mean"] > 0
    assert r["image"]["width"] == 112 and r["image"]["height"] == 56 and r["image"]["slices"] >= 2
    table = CliRunner().invoke(cli, ["bench", str(v_bundle), "--image", str(picture), "-p", "8", "-n", "4", "-r",
                                     "1", "-t", "2"])
    assert table.exit_code == 0, table.output
    row = [line for line in table.output.splitlines() if line.startswith("image ")]
    assert len(row) == 1 and " ms " in row[0] and "112x56" in row[0], table.output


def test_stop_during_an_image_encode_attaches_nothing(v_bundle: Path) -> None:
    """A 10-run image (overview + 9 slices) stopped at its second cancel point: exactly one vision run was done (the
    callback is asked before each run, so the call returns within one run's time), the error says "cancelled", and
    the next turn is a text-only turn (nothing was attached)."""
    from mcpm.runtime.binding import Model, Session

    rgb = np.random.default_rng(3).integers(0, 256, (168, 168, 3), dtype=np.uint8)
    with Model.load(v_bundle, threads=2) as model, Session(model) as session:
        assert session.encode_image(rgb) == 10  # the image's vision runs without a stop
        session.clear_images()
        stop = StopAtCall(2)
        with abort_callback(model, stop), pytest.raises(
                McpmError, match=r"^cancelled: the image was not attached \(stopped after 1 of 10"):
            session.encode_image(rgb)
        assert stop.calls == 2
        reply = session.chat("Describe.", 6)
        session.reset()
    with Model.load(v_bundle, threads=2) as model, Session(model) as session:
        assert session.chat("Describe.", 6) == reply
