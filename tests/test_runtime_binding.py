"""mcpm.runtime: the C runtime's ctypes binding against the Python plan interpreter, and `mcpm generate BUNDLE`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcpm.errors import McpmError

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built")

TOKENS = np.random.default_rng(1).integers(3, 4096, 19).astype(np.int32)  # 2 chunks of 16 ... 1 chunk + 3
DECODE = [5, 1000, 4095]
PROMPT = "The Congress of the United States"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcpm-cache")


@pytest.fixture(scope="module")
def bundle(default_q4_bundle: Path) -> Path:
    return default_q4_bundle


@pytest.fixture(scope="module")
def library(bundle: Path, cache: Path) -> Path:
    from mcpm.runtime.build import build_library

    return build_library(bundle, cache_dir=cache)


def run_steps(model) -> np.ndarray:
    """[1 + len(DECODE), vocab]: the logits of prefill(TOKENS), then of each decode."""
    return np.stack([model.prefill(TOKENS)] + [model.decode(t) for t in DECODE])


def test_logits_equal_python_plan_model(bundle: Path, library: Path) -> None:
    from mcpm.export.bundle.host_runner import load_bundle
    from mcpm.runtime import Model

    _, pm, _ = load_bundle(bundle)
    ref = np.stack([pm.prefill(TOKENS)[-1]] + [pm.decode(t)[-1] for t in DECODE])
    with Model.load(bundle, threads=2, library=library) as model:
        assert (model.vocab_size, model.context_length, model.position) == (ref.shape[1], 128, 0)
        got = run_steps(model)
        assert got.dtype == np.float32 and got.shape == ref.shape
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel <= 1e-6, rel
        assert model.position == len(TOKENS) + len(DECODE)
        model.reset()
        assert model.position == 0
        np.testing.assert_array_equal(run_steps(model), got)
    assert model.closed
    with pytest.raises(McpmError, match="closed"):
        model.decode(1)


def test_threads_1_and_2_identical(bundle: Path, library: Path) -> None:
    from mcpm.runtime import Model

    one, two = Model.load(bundle, threads=1, library=library), Model.load(bundle, threads=2, library=library)
    np.testing.assert_array_equal(run_steps(one), run_steps(two))
    one.close()
    two.close()


def test_runtime_errors_raise_mcpm_error(bundle: Path, library: Path) -> None:
    from mcpm.runtime import Model

    model = Model.load(bundle, threads=1, library=library)
    with pytest.raises(McpmError, match="out of range 0..4095"):
        model.prefill([1, 4096])
    with pytest.raises(McpmError, match="context full: 0 \\+ 129 tokens > max_ctx 128"):
        model.prefill(np.ones(129, np.int32))
    del model  # __del__ frees the handle


def test_library_is_cached(bundle: Path, library: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcpm.runtime import build

    assert library.is_file() and library.name == "libmcpm_bundle.so" and cache in library.parents
    assert library.parent.name == build.library_digest(bundle / "kernels.o")
    assert not (bundle / "libmcpm_bundle.so").exists()

    def no_compile(*args, **kwargs):
        raise AssertionError("recompiled a cached library")

    monkeypatch.setattr(build.subprocess, "run", no_compile)
    assert build.build_library(bundle, cache_dir=cache) == library


def test_compiler_failure_is_a_clear_error(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcpm.runtime import build

    monkeypatch.setenv("CC", "no-such-compiler-mcpm")
    with pytest.raises(McpmError, match="'no-such-compiler-mcpm' not found"):
        build.build_library(bundle, cache_dir=tmp_path)
    broken = Path(shutil.copytree(bundle, tmp_path / "broken"))
    (broken / "kernels.o").write_bytes(b"not an object file")
    monkeypatch.delenv("CC")
    with pytest.raises(McpmError, match="kernels.o is not a valid object file"):  # checked before gcc runs
        build.build_library(broken, cache_dir=tmp_path)
    # a real object that does not link (it defines a symbol of the runtime again): gcc's last line, one line
    (tmp_path / "dup.c").write_text("int mcpm_vocab_size(void) { return 0; }\n")
    subprocess.run(["gcc", "-c", "-fPIC", "-o", str(broken / "kernels.o"), str(tmp_path / "dup.c")], check=True)
    with pytest.raises(McpmError, match="building the C runtime failed: .+") as err:
        build.build_library(broken, cache_dir=tmp_path)
    assert "\n" not in str(err.value)
    assert not any(p.name == "libmcpm_bundle.so" for p in tmp_path.rglob("*.so"))


def test_damaged_bundle_raises_the_runtime_message(bundle: Path, library: Path, tmp_path: Path) -> None:
    from mcpm.runtime import Model

    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    (copy / "weights.bin").write_bytes((copy / "weights.bin").read_bytes()[:1000])
    with pytest.raises(McpmError, match="weights.bin is truncated"):
        Model.load(copy, library=library)


def test_cli_generate_matches_python_interpreter(bundle: Path) -> None:
    from mcpm.export.bundle.host_runner import BundleStepper, load_bundle
    from mcpm.export.reference_generate import generate

    _, pm, tok = load_bundle(bundle)
    ids = tok.encode(PROMPT, add_bos=True)
    result = generate(BundleStepper(pm), ids, 24, 128, tok.stop_ids)
    stream = tok.stream_decoder(ids)
    expected = PROMPT + "".join(stream.push(t) for t in result.tokens if t not in tok.stop_ids)

    proc = subprocess.run([sys.executable, "-m", "mcpm.cli", "generate", str(bundle), "-p", PROMPT, "-n", "24",
                           "--json", "--threads", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")  # the streamed text, "\n", the JSON line, ""
    stats = json.loads(lines[-2])
    assert stats["engine"] == "bundle (q4g32, C runtime)" and stats["threads"] == 2
    assert stats["generated_tokens"] == len(result.tokens)
    assert "C runtime" in proc.stderr  # the human-readable stats line
    text = "\n".join(lines[:-2])
    assert text == expected
    assert len(set(result.tokens)) > 3
