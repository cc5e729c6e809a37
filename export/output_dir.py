"""The output folder of ``mcpm-export``: written aside, moved into place at the end, never losing a user's files.

An export writes into a staging folder beside ``OUT`` (``.OUT.mcpm-partial-<pid>``, same file system) and only
when every phase has finished moves it into place. An interrupted or failed export removes its staging folder and
leaves ``OUT`` as it was. ``OUT`` gets a manifest (``.mcpm-output.json``) naming the entries mcpm wrote; replacing
an export touches only those. A non-empty folder with no manifest is refused unless ``force``: then mcpm writes
beside the files already there and never deletes or overwrites one of them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from mcpm.errors import McpmError

MANIFEST = ".mcpm-output.json"
PARTIAL_MARK = ".mcpm-partial"  # inside a staging folder: it is mcpm's, safe to remove when stale
REPLACED = ".mcpm-replaced"  # inside a staging folder: the earlier export's entries, removed with it
# Top-level names an export may write, per output kind (checked against a user's files before any work).
NAMES = {
    "bundle": ("plan.json", "weights.bin", "mcpm-config.json", "tokenizer.model", "tokenizer.json", "kernels*.o",
               "kernels.cl", "kernels.metal"),
    "android": ("bundle", "lib", "mcpm-demo.apk"),
    "ios": ("bundle", "MCPM", "App", "project.yml", "README-ios.md"),
}


class OutputFolder:
    """Context manager around one export: ``staging`` is where to write; :meth:`commit` moves it to ``final``.

    Leaving the ``with`` block without a commit (an error, Ctrl-C, SIGTERM turned into SystemExit) removes the
    staging folder and nothing else."""

    def __init__(self, final: Path, kind: str, force: bool = False) -> None:
        if kind not in NAMES:
            raise McpmError(f"internal: unknown output kind {kind!r}")
        self.final = Path(os.path.abspath(final))
        self.kind, self.force = kind, force
        self.staging = self.final.parent / f".{self.final.name}.mcpm-partial-{os.getpid()}"
        self.committed = False
        self._check()

    # -- checks before any work -----------------------------------------------------------------------------
    def _check(self) -> None:
        final = self.final
        if final.is_symlink() and not final.exists():
            raise McpmError(f"output folder {final} is a broken symbolic link", "remove it or choose another folder")
        if final.exists() and not final.is_dir():
            raise McpmError(f"output {final} is a file, not a folder", "give -o a folder (it is created)")
        if final.parent.exists() and not final.parent.is_dir():
            raise McpmError(f"output {final}: {final.parent} is a file, not a folder", "give -o a folder")
        foreign = self.foreign_entries()
        if foreign and not self.force:
            shown = ", ".join(sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
            raise McpmError(f"output folder {final} is not empty and was not written by mcpm-export ({shown})",
                            "choose a new or empty folder, or pass --force to export into it beside its files")
        clash = sorted(n for n in foreign if _reserved(n, self.kind))
        if clash:
            raise McpmError(f"output folder {final} holds {', '.join(clash)}, which mcpm-export would overwrite",
                            "move those files away or choose another folder")
        self._check_unlisted()

    def _check_unlisted(self) -> None:
        """Files a user put inside an earlier export's folders (e.g. OUT/bundle/notes.txt) would go with them."""
        listed = self.manifest_files()
        if listed is None:
            return
        for entry in sorted(self.owned_entries()):
            path = self.final / entry
            inside = [path] if not path.is_dir() or path.is_symlink() else [p for p in path.rglob("*")
                                                                            if not p.is_dir() or p.is_symlink()]
            for p in inside:
                rel = p.relative_to(self.final).as_posix()
                if rel not in listed:
                    raise McpmError(f"output folder {self.final} holds {rel}, which mcpm-export did not write",
                                    "move it out of the earlier export's folders, or choose another folder")

    def _manifest(self) -> dict[str, Any] | None:
        try:
            manifest = json.loads((self.final / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict):
            return None
        entries, files = manifest.get("entries"), manifest.get("files")
        if not (isinstance(entries, list) and all(isinstance(e, str) and _plain_name(e) for e in entries)
                and isinstance(files, list) and all(isinstance(f, str) for f in files)):
            return None
        return manifest

    def manifest_files(self) -> set[str] | None:
        """Every file (relative path) the earlier export wrote, from its manifest; None without one."""
        manifest = self._manifest() if self.final.is_dir() else None
        return None if manifest is None else set(manifest["files"])

    def owned_entries(self) -> set[str]:
        """Top-level entries of ``final`` that an earlier export wrote (from its manifest, or a legacy bundle)."""
        if not self.final.is_dir():
            return set()
        manifest = self._manifest()
        if manifest is not None:
            return set(manifest["entries"]) & set(os.listdir(self.final))
        return _legacy_entries(self.final)

    def foreign_entries(self) -> set[str]:
        """Top-level entries of ``final`` that mcpm did not write (never deleted, never overwritten)."""
        if not self.final.is_dir():
            return set()
        return set(os.listdir(self.final)) - self.owned_entries() - {MANIFEST}

    # -- the export -----------------------------------------------------------------------------------------
    def __enter__(self) -> OutputFolder:
        self._remove_stale_staging()
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.staging.mkdir()
            (self.staging / PARTIAL_MARK).write_text(f"{os.getpid()}\n")
        except OSError as exc:
            raise McpmError(f"cannot write the output folder {self.final}: {exc.strerror or exc}",
                            "choose a folder you can write to") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)

    def commit(self) -> None:
        """Move the staging folder's entries into ``final``: the earlier export's entries are replaced, every
        other entry stays. A fresh or empty ``final`` gets the staging folder by one rename."""
        (self.staging / PARTIAL_MARK).unlink()
        new = sorted(os.listdir(self.staging))
        foreign = self.foreign_entries()
        clash = sorted(foreign & set(new))
        if clash:  # a file appeared since the check: keep it, drop this export
            raise McpmError(f"output folder {self.final} now holds {', '.join(clash)} (created during the export)",
                            "move those files away and export again")
        self._check_unlisted()
        _write_manifest(self.staging, new)
        if not self.final.exists() or not os.listdir(self.final):
            if self.final.exists():
                self.final.rmdir()  # empty
            os.rename(self.staging, self.final)
        elif not foreign:  # all of it is an earlier export: swap the folders, then drop the old one
            trash = self.final.parent / f".{self.final.name}.mcpm-old-{os.getpid()}"
            os.rename(self.final, trash)
            os.rename(self.staging, self.final)
            shutil.rmtree(trash, ignore_errors=True)
        else:  # beside a user's files: move the old entries out, the new ones in, one by one
            trash = self.staging / REPLACED
            trash.mkdir()
            for name in self.owned_entries() | ({MANIFEST} if (self.final / MANIFEST).exists() else set()):
                os.rename(self.final / name, trash / name)
            for name in [*new, MANIFEST]:
                os.rename(self.staging / name, self.final / name)
            shutil.rmtree(self.staging, ignore_errors=True)
        self.committed = True

    def _remove_stale_staging(self) -> None:
        """Staging folders of earlier exports to the same OUT whose process is gone (killed hard)."""
        prefix = f".{self.final.name}.mcpm-partial-"
        if not self.final.parent.is_dir():
            return
        for entry in self.final.parent.iterdir():
            pid = entry.name[len(prefix):]
            if entry.name.startswith(prefix) and pid.isdigit() and (entry / PARTIAL_MARK).is_file() \
                    and not _alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)


def _write_manifest(folder: Path, entries: list[str]) -> None:
    from mcpm import __version__

    files = sorted(p.relative_to(folder).as_posix() for e in entries for p in [folder / e, *(folder / e).rglob("*")]
                   if not p.is_dir() or p.is_symlink())
    record: dict[str, Any] = {"written_by": f"mcpm-export {__version__}", "entries": entries, "files": files}
    (folder / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _reserved(name: str, kind: str) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name, pattern) for pattern in NAMES[kind]) or name == MANIFEST


def _legacy_entries(folder: Path) -> set[str]:
    """An export from before the manifest: a bundle whose mcpm-config.json lists every file beside it (or such a
    bundle in ``bundle/`` with only Android/iOS output names around it). Anything less is not recognised."""
    entries = set(os.listdir(folder))
    if _is_legacy_bundle(folder, entries):
        return entries
    if "bundle" in entries and (folder / "bundle").is_dir() \
            and _is_legacy_bundle(folder / "bundle", set(os.listdir(folder / "bundle"))):
        for kind in ("android", "ios"):
            if entries <= set(NAMES[kind]):
                return entries
    return set()


def _is_legacy_bundle(folder: Path, entries: set[str]) -> bool:
    try:
        config = json.loads((folder / "mcpm-config.json").read_text())
    except (OSError, ValueError):
        return False
    files = config.get("files") if isinstance(config, dict) else None
    if not isinstance(files, dict) or not files or "format_version" not in config:
        return False
    return entries <= {*map(str, files), "mcpm-config.json"} and all((folder / str(f)).is_file() for f in files)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
