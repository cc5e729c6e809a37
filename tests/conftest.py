"""Tiny MiniCPM-architecture configs where every muP scale differs from 1, and a writer for them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

try:  # pytest puts tests/ on sys.path; a subprocess importing tests.conftest from the repository root does not
    from ci_policy import pytest_configure, pytest_runtest_makereport, pytest_terminal_summary  # noqa: F401
except ImportError:
    from tests.ci_policy import pytest_configure, pytest_runtest_makereport, pytest_terminal_summary  # noqa: F401

from mcpm.export.families import FAMILIES
from mcpm.export.make_checkpoint import write_random_checkpoint


def tiny_minicpm(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model_type": "minicpm",
        "vocab_size": 4096,  # >= the default tokenizer's vocabulary
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,  # GQA
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 5000.0,
        "scale_emb": 3.5,
        "scale_depth": 1.7,
        "dim_model_base": 16,  # logit divisor 4
        "tie_word_embeddings": True,
        "some_unknown_key": {"kept": True},
    }
    cfg.update(overrides)
    return cfg


def tiny_minicpm3(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model_type": "minicpm3",
        "vocab_size": 4096,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 24,
        "kv_lora_rank": 20,
        "qk_nope_head_dim": 12,
        "qk_rope_head_dim": 8,
        "v_head_dim": 10,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 5000.0,
        "rope_scaling": {
            "type": "longrope",
            "short_factor": [1.0, 1.3, 1.9, 2.7],
            "long_factor": [1.5, 2.5, 4.0, 7.0],
            "original_max_position_embeddings": 128,
        },
        "scale_emb": 3.5,
        "scale_depth": 1.7,
        "dim_model_base": 16,
        "tie_word_embeddings": True,
    }
    cfg.update(overrides)
    return cfg


def write_tiny(path: Path, config: dict[str, Any], dtype: str = "fp32", seed: int = 0, **kw: Any) -> Path:
    write_random_checkpoint(
        FAMILIES[config["model_type"]], config, path, seed=seed, dtype=dtype, init_std=1.0, progress=False, **kw
    )
    return path


@contextmanager
def abort_callback(model: Any, should_stop: Callable[[], bool]) -> Iterator[None]:
    """model.set_abort(should_stop) inside the with-block, cleared afterwards (also when the block raises)."""
    model.set_abort(should_stop)
    try:
        yield
    finally:
        model.set_abort(None)


class StopAtCall:
    """An abort callback that asks to stop at its n-th call and counts its calls (``calls``)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls == self.n


def python_chat(bundle: Path, messages: tuple[str, ...], max_new: int) -> list[str]:
    """The greedy replies of a chat through ChatSession (the Python tokenizer and chat template) over the C runtime
    that mcpm.runtime.build makes: the reference the other front ends (CMake example, Android engine) must equal."""
    from mcpm.export.bundle.reader import open_bundle
    from mcpm.export.tokenizer import Tokenizer
    from mcpm.runtime.binding import Model
    from mcpm.runtime.build import build_library
    from mcpm.runtime.chat import ChatSession

    cfg = open_bundle(bundle).config
    tok = Tokenizer.from_bundle(bundle, cfg["tokenizer"], cfg["chat_template"], cfg["bos_token_id"])
    with Model.load(bundle, threads=2, library=build_library(bundle)) as model:
        session = ChatSession(model, tok, max_new_tokens=max_new)
        return [session.turn(m, lambda _: None) for m in messages]


def opencl_unavailable() -> str:
    """'' when an OpenCL platform answers (PoCL here), else the reason (a skip message)."""
    import ctypes

    for name in ("libOpenCL.so.1", "libOpenCL.so"):
        try:
            cl = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return "no OpenCL library (apt-get install ocl-icd-libopencl1 pocl-opencl-icd)"
    n = ctypes.c_uint32(0)
    rc = cl.clGetPlatformIDs(0, None, ctypes.byref(n))
    if rc != 0 or n.value == 0:
        return f"no OpenCL platform (clGetPlatformIDs: {rc}; apt-get install pocl-opencl-icd)"
    return ""


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def default_q4_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped default model exported for the host (q4g32, context 128, chunk 16), once per session.

    Read-only for tests: copy it before damaging it."""
    from mcpm.export.exporter import ExportOptions, run_export
    from mcpm.export.loading import DEFAULT_MODEL_DIR

    out = tmp_path_factory.mktemp("bundle") / "default-q4"
    run_export(ExportOptions(DEFAULT_MODEL_DIR, out, "host", "q4g32", (), 128, 16, progress=False))
    return out


@pytest.fixture(scope="session")
def default_arm64_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped default model exported for linux-arm64 like default_q4_bundle (q4g32, context 128, chunk 16): three
    kernel sets (i8mm, dotprod, neon), once per session. Read-only for tests."""
    from mcpm.export.exporter import ExportOptions, run_export
    from mcpm.export.loading import DEFAULT_MODEL_DIR

    out = tmp_path_factory.mktemp("bundle-arm64") / "default-q4"
    run_export(ExportOptions(DEFAULT_MODEL_DIR, out, "linux-arm64", "q4g32", (), 128, 16, progress=False))
    return out


@pytest.fixture(scope="session")
def default_android_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`mcpm-export default --target android -o OUT --context-length 128 --prefill-chunk 16` once per session (the
    ARM default scheme q4g32-a8, rows4 weights, three kernel sets, libmcpm.so, the signed APK): (OUT, the CLI's
    output). Read-only for tests. Needs the Android build tools (callers skip without them)."""
    from click.testing import CliRunner

    from mcpm.export_cli import export

    out = tmp_path_factory.mktemp("android") / "out"
    res = CliRunner().invoke(export, ["default", "--target", "android", "-o", str(out), "--context-length", "128",
                                      "--prefill-chunk", "16"])
    assert res.exit_code == 0, res.output
    return out, res.output
