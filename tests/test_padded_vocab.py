"""Padded vocabularies: a checkpoint's vocab_size past its tokenizer. Ids with no text are never sampled (C sampler,
Python sampler), and a failing chat turn does not end the chat."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mcpm.cli import cli
from mcpm.errors import McpmError
from mcpm.export.loading import load_model
from mcpm.export_cli import export
from mcpm.runtime.binding import Sampling, Session
from mcpm.runtime.host import load_host_bundle
from tests.conftest import tiny_minicpm, write_tiny

PIECES = 4096  # the default tokenizer's pieces; the checkpoint has 6000 ids


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, host bundle) whose padded ids 4096..5999 win greedy decoding unless masked."""
    root = tmp_path_factory.mktemp("padded")
    ckpt = write_tiny(root / "ckpt", tiny_minicpm(vocab_size=6000))
    weights = load_file(ckpt / "model.safetensors")
    weights["model.embed_tokens.weight"][PIECES:] *= 8.0  # tied head: large rows -> large logits
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    out = root / "bundle"
    res = CliRunner().invoke(export, [str(ckpt), "--quant", "f32", "--context-length", "64", "--prefill-chunk", "16",
                                      "-o", str(out)])
    assert res.exit_code == 0, res.output
    return ckpt, out


def masked_greedy_reference(ckpt: Path, prompt: list[int], n: int) -> tuple[list[int], bool]:
    """PyTorch reference greedy with the padded ids masked; also whether unmasked greedy would pick one."""
    model = load_model(ckpt, progress=False).model
    ids, padded_would_win = list(prompt), False
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids]))[0, -1]
            padded_would_win |= int(torch.argmax(logits)) >= PIECES
            ids.append(int(torch.argmax(logits[:PIECES])))
    return ids[len(prompt):], padded_would_win


def test_c_greedy_never_draws_padded_ids_and_equals_the_masked_reference(padded: tuple[Path, Path]) -> None:
    ckpt, bundle = padded
    _, model, tok = load_host_bundle(bundle)
    prompt = tok.encode("The people of the", add_bos=True)
    want, would_win = masked_greedy_reference(ckpt, prompt, 12)
    assert would_win, "the test checkpoint must make padded ids win without the mask"
    got = model.generate(prompt, 12, None)
    assert got == want
    model.reset()
    sampled = model.generate(prompt, 40, Sampling(temperature=1.5, seed=3))
    assert all(t < PIECES for t in sampled)
    model.close()


def test_c_session_masks_from_the_bundles_tokenizer(padded: tuple[Path, Path]) -> None:
    from mcpm.runtime.binding import Model

    _, bundle = padded
    model = Model.load(bundle)  # no Python tokenizer: the C session alone must mask
    session = Session(model)
    n, text = session.complete("The people of the", 24, Sampling(temperature=2.0, seed=1), lambda piece: None)
    assert n == 24 and text  # before: a padded id had no piece, and the stream stopped or failed
    session.close()
    model.close()


def test_set_sampleable_rejects_bad_masks(padded: tuple[Path, Path]) -> None:
    _, model, _ = load_host_bundle(padded[1])
    with pytest.raises(McpmError, match="5 flags for a vocabulary of 6000"):
        model.set_sampleable(np.ones(5, bool))
    with pytest.raises(McpmError, match="no id is allowed"):
        model.set_sampleable(np.zeros(6000, bool))
    only = np.zeros(6000, bool)
    only[77] = True
    model.set_sampleable(only)
    assert model.generate([1, 2, 3], 4, Sampling(temperature=1.0)) == [77] * 4
    model.close()


def test_cli_generate_on_padded_vocab(padded: tuple[Path, Path]) -> None:
    ckpt, bundle = padded
    for args in ([str(bundle)], [str(ckpt), "--reference"], [str(bundle), "--temperature", "1.5", "--seed", "2"]):
        res = CliRunner().invoke(cli, ["generate", *args, "-p", "The people of the", "-n", "12"])
        assert res.exit_code == 0 and "tok/s decode" in res.output, (args, res.output, res.exception)


def test_chat_survives_bad_lines(padded: tuple[Path, Path]) -> None:
    """Invalid UTF-8 on stdin and a message longer than the context are one error line each; the chat goes on."""
    _, bundle = padded
    lines = b"hello\n\xff\xfe broken\n" + b"word " * 200 + b"\nagain\n/quit\n"
    res = subprocess.run([sys.executable, "-m", "mcpm.cli", "chat", str(bundle), "-n", "4"], input=lines,
                         capture_output=True, timeout=300)
    err = res.stderr.decode()
    assert res.returncode == 0, err
    assert "error: that line is not valid UTF-8 text" in err and "error: the message is longer than the context" in err
    assert "Traceback" not in err


def test_generate_refuses_a_prompt_that_is_not_utf8(padded: tuple[Path, Path]) -> None:
    res = subprocess.run([sys.executable, "-m", "mcpm.cli", "generate", str(padded[1]), "-p", b"\xff abc"],
                         capture_output=True, timeout=300)
    assert res.returncode == 2 and res.stderr.decode().strip() == \
        "error: the prompt is not valid UTF-8 text (pass -p in UTF-8)"
    res = subprocess.run([sys.executable, "-m", "mcpm.cli", "generate", str(padded[1]) + "-missing", "-p", "x"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "does not exist" in res.stderr and "checkpoint folder, not" not in res.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--temperature", "nan"], "--temperature nan must be a finite number >= 0"),
    (["--temperature", "-1"], "--temperature -1.0 must be a finite number >= 0"),
    (["--top-p", "-1", "--temperature", "1"], "--top-p -1.0 must be in (0, 1]"),
    (["--top-p", "0"], "--top-p 0.0 must be in (0, 1]"),
    (["--top-k", "-3"], "--top-k -3 must be >= 0"),
])
def test_bad_sampling_options_are_one_line(args: list[str], message: str, padded: tuple[Path, Path]) -> None:
    """They were tracebacks from deep inside the samplers (torch.multinomial on NaN / empty distributions)."""
    for command in (["generate", str(padded[1]), "-p", "x"], ["chat", str(padded[1])]):
        res = subprocess.run([sys.executable, "-m", "mcpm.cli", *command, *args], input=b"", capture_output=True,
                             timeout=300)
        err = res.stderr.decode().strip()
        assert res.returncode == 2 and err.startswith(f"error: {message}") and "\n" not in err, (command, err)
