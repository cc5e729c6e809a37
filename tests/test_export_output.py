"""mcpm-export's output folder: written aside and moved into place; nothing mcpm did not write is ever deleted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcpm.errors import McpmError
from mcpm.export.output_dir import MANIFEST, OutputFolder
from mcpm.export_cli import export


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_export(out: Path, kind: str = "bundle", force: bool = False, payload: bytes = b"new") -> OutputFolder:
    with OutputFolder(out, kind, force) as folder:
        root = folder.staging / "bundle" if kind != "bundle" else folder.staging
        root.mkdir(exist_ok=True)
        for name in ("plan.json", "weights.bin", "mcpm-config.json"):
            (root / name).write_bytes(payload)
        if kind == "android":
            (folder.staging / "lib").mkdir()
            (folder.staging / "lib" / "libmcpm.so").write_bytes(payload)
        folder.commit()
    return folder


def test_fresh_and_empty_folders_get_the_export_and_a_manifest(tmp_path: Path) -> None:
    fake_export(tmp_path / "new" / "deeper")
    (tmp_path / "empty").mkdir()
    fake_export(tmp_path / "empty", "android")
    for out in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        manifest = json.loads((out / MANIFEST).read_text())
        assert set(manifest["entries"]) == set(os.listdir(out)) - {MANIFEST}
        assert set(manifest["files"]) == set(tree(out)) - {MANIFEST}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left over


def test_a_folder_with_a_stray_config_is_refused_and_kept(tmp_path: Path) -> None:
    """The reported loss: a folder holding mcpm-config.json ({}) and a user's photos was removed whole."""
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    (photos / "trip" / "a.jpg").write_bytes(b"\xff\xd8 a photo")
    (photos / "mcpm-config.json").write_text("{}")
    before = tree(photos)
    for kind in ("bundle", "android", "ios"):
        with pytest.raises(McpmError, match="not empty and was not written by mcpm-export.*--force"):
            fake_export(photos, kind)
    with pytest.raises(McpmError, match="holds mcpm-config.json, which mcpm-export would overwrite"):
        fake_export(photos, "bundle", force=True)
    assert tree(photos) == before


def test_force_writes_beside_a_users_files_and_replacing_keeps_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    fake_export(out, "android", force=True, payload=b"one")
    assert (out / "notes.txt").read_text() == "mine" and (out / "bundle" / "plan.json").read_bytes() == b"one"
    fake_export(out, "android", force=True, payload=b"two")  # the earlier export is replaced, notes.txt stays
    assert (out / "notes.txt").read_text() == "mine" and (out / "lib" / "libmcpm.so").read_bytes() == b"two"
    assert set(json.loads((out / MANIFEST).read_text())["entries"]) == {"bundle", "lib"}
    with pytest.raises(McpmError, match="not written by mcpm-export"):  # the user's file still needs --force
        fake_export(out, "android", payload=b"three")


def test_replacing_an_export_swaps_it_whole(tmp_path: Path) -> None:
    out = tmp_path / "b"
    fake_export(out, payload=b"one")
    (out / "kernels-old.o").write_bytes(b"x")  # an entry a user added: not the export's
    with pytest.raises(McpmError, match=r"kernels-old\.o, which mcpm-export would overwrite"):
        fake_export(out, force=True)
    (out / "kernels-old.o").unlink()
    fake_export(out, payload=b"two")
    assert tree(out)["plan.json"] == b"two" and sorted(os.listdir(tmp_path)) == ["b"]


def test_a_users_file_inside_an_exports_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "a"
    fake_export(out, "android")
    (out / "bundle" / "my-notes.txt").write_text("mine")
    with pytest.raises(McpmError, match="holds bundle/my-notes.txt, which mcpm-export did not write"):
        fake_export(out, "android")
    assert (out / "bundle" / "my-notes.txt").read_text() == "mine"


def test_a_failed_or_interrupted_export_leaves_the_old_one(tmp_path: Path) -> None:
    out = tmp_path / "b"
    fake_export(out, payload=b"old")
    before = tree(out)
    for exc in (RuntimeError("compile failed"), KeyboardInterrupt(), SystemExit(143)):
        with pytest.raises(type(exc)), OutputFolder(out, "bundle") as folder:
            (folder.staging / "weights.bin").write_bytes(b"partial")
            raise exc
        assert tree(out) == before and sorted(os.listdir(tmp_path)) == ["b"]


def test_bad_output_paths(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(McpmError, match="is a file, not a folder"):
        OutputFolder(tmp_path / "file", "bundle")
    with pytest.raises(McpmError, match="is a file, not a folder"):
        OutputFolder(tmp_path / "file" / "sub", "bundle")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(McpmError, match="broken symbolic link"):
        OutputFolder(tmp_path / "link", "bundle")


def test_stale_staging_of_a_killed_export_is_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".b.mcpm-partial-{dead.stdout.strip()}"
    stale.mkdir()
    (stale / ".mcpm-partial").write_text("")
    (stale / "weights.bin").write_bytes(b"2 GB of it")
    other = tmp_path / ".b.mcpm-partial-1"  # pid 1 is alive: not stale
    other.mkdir()
    (other / ".mcpm-partial").write_text("")
    fake_export(tmp_path / "b")
    assert not stale.exists() and other.exists()


def test_legacy_bundle_is_recognised_only_when_its_config_lists_the_files(tmp_path: Path) -> None:
    out = tmp_path / "legacy"
    out.mkdir()
    (out / "plan.json").write_text("{}")
    config = {"format_version": 1, "files": {"plan.json": {"bytes": 2}}}
    (out / "mcpm-config.json").write_text(json.dumps(config))
    assert OutputFolder(out, "bundle").owned_entries() == {"plan.json", "mcpm-config.json"}
    (out / "photo.jpg").write_text("mine")
    with pytest.raises(McpmError, match="not written by mcpm-export"):
        OutputFolder(out, "bundle")


# ---------------------------------------------------------------- through the CLI, a real export


def test_cli_export_replaces_its_own_and_keeps_the_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo.jpg").write_bytes(b"mine")
    args = ["default", "--target", "host", "--context-length", "64", "--prefill-chunk", "16", "-o", str(out)]
    res = CliRunner().invoke(export, args)
    assert res.exit_code != 0 and "--force" in str(res.exception)
    res = CliRunner().invoke(export, [*args, "--force"])
    assert res.exit_code == 0, res.output
    assert f"bundle written to {out.resolve()}" in res.output and (out / "weights.bin").is_file()
    before = tree(out)

    import mcpm.export.compiler.lower as lower

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(lower, "export_plan", interrupted)  # Ctrl-C in the middle of the compile phase
    res = CliRunner().invoke(export, [*args, "--force"])
    assert res.exit_code != 0  # click turns the KeyboardInterrupt into Abort
    assert tree(out) == before and sorted(os.listdir(tmp_path)) == ["out"]
    res = CliRunner().invoke(export, [*args[:-4], "--context-length", "99999999", "-o", str(out), "--force"])
    assert "exceeds the model's max_position_embeddings" in str(res.exception) and tree(out) == before


def test_sigterm_during_export_removes_the_staging_folder(tmp_path: Path) -> None:
    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "mcpm.export_cli", "default", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".b.mcpm-partial-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
