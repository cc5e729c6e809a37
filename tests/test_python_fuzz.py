"""The Python validators against mutated inputs: mcpm-config.json and plan.json (open_bundle), a checkpoint's
config.json (load_config) — seeded mutations (tests/test_c_fuzz.mutate), each either accepted or refused with a
one-line McpmError; any other exception (KeyError, TypeError, RecursionError, ...) is a finding."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from mcpm.errors import McpmError
from tests.test_c_fuzz import mutate

ITERS = 300  # per file; ~10 s in all


def _fuzz(files: dict[str, bytes], folder: Path, load, seed: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    stats = {"accepted": 0, "refused": 0}
    findings: list[str] = []
    for it in range(ITERS * len(files)):
        name = rng.choice(sorted(files))
        (folder / name).write_bytes(mutate(rng, name, files[name]))
        try:
            load(folder)
            stats["accepted"] += 1
        except McpmError as exc:
            assert "\n" not in str(exc), str(exc)
            stats["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - every other exception is what this test looks for
            findings.append(f"{name} mutant {it}: {type(exc).__name__}: {exc}"[:300])
        (folder / name).write_bytes(files[name])
    assert not findings, f"{len(findings)} tracebacks, e.g. {findings[:5]}"
    return stats


def test_bundle_config_and_plan_mutants(default_q4_bundle: Path, tmp_path: Path) -> None:
    from mcpm.export.bundle.reader import read_config, read_plan

    bundle = tmp_path / "b"
    shutil.copytree(default_q4_bundle, bundle)
    files = {n: (bundle / n).read_bytes() for n in ("mcpm-config.json", "plan.json")}

    def load(folder: Path) -> None:  # the validation of open_bundle, without re-hashing weights.bin every time
        read_config(folder)
        read_plan(folder)

    stats = _fuzz(files, bundle, load, seed=7)
    assert stats["refused"] > ITERS // 2 and stats["accepted"] > 10, stats


def test_checkpoint_config_mutants(tmp_path: Path) -> None:
    from conftest import tiny_minicpm

    from mcpm.export.loading import load_config

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(tiny_minicpm(rope_scaling={"type": "dynamic", "factor": 2.0})))
    stats = _fuzz({"config.json": (ckpt / "config.json").read_bytes()}, ckpt, load_config, seed=11)
    assert stats["refused"] > ITERS // 4 and stats["accepted"] > 10, stats


@pytest.mark.parametrize("family_config", ["minicpm3", "minicpmv"])
def test_other_family_config_mutants(family_config: str, tmp_path: Path) -> None:
    from conftest import tiny_minicpm3

    from mcpm.export.families import all_presets
    from mcpm.export.loading import load_config

    data = tiny_minicpm3() if family_config == "minicpm3" else all_presets()["minicpm-v-2"][1]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(data))
    stats = _fuzz({"config.json": (ckpt / "config.json").read_bytes()}, ckpt, load_config, seed=13)
    assert stats["refused"] > ITERS // 4, stats
