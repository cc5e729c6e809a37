"""One sampler: `mcpm generate BUNDLE`, `mcpm chat` and the Python binding's C `Session` are the same C session
(its tokenizer, template and sampler), so one seed gives one text in all three (temperature 0.9, top-k 40,
top-p 0.95); the Python sampler is left to the PyTorch reference (`--reference`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MESSAGE = "What is the Constitution of the United States?"
PROMPT = "The Congress shall have power"
ARGS = ["--temperature", "0.9", "--top-k", "40", "--top-p", "0.95", "-n", "24", "-t", "2"]


def _mcpm(*args: str, stdin: str | None = None) -> str:
    res = subprocess.run([sys.executable, "-m", "mcpm.cli", *args], input=stdin, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _session(bundle: Path, seed: int, text: str, chat: bool) -> str:
    from mcpm.runtime.binding import Model, Sampling, Session

    with Model.load(bundle, threads=2) as model:
        session = Session(model)
        sampling = Sampling(temperature=0.9, top_k=40, top_p=0.95, seed=seed)
        _, reply = (session.chat if chat else session.complete)(text, 24, sampling)
        session.close()
    return reply


def test_generate_chat_and_session_give_one_text(default_q4_bundle: Path) -> None:
    b = str(default_q4_bundle)
    generated = _mcpm("generate", b, "--chat", "-p", MESSAGE, "--seed", "7", *ARGS)
    chatted = _mcpm("chat", b, "--seed", "7", *ARGS, stdin=MESSAGE + "\n")
    direct = _session(default_q4_bundle, 7, MESSAGE, chat=True)
    assert generated == chatted == direct + "\n"
    assert len(set(direct.split())) > 3
    assert _session(default_q4_bundle, 8, MESSAGE, chat=True) != direct  # the seed is used


def test_plain_generate_is_the_session_continuation(default_q4_bundle: Path) -> None:
    out = _mcpm("generate", str(default_q4_bundle), "-p", PROMPT, "--seed", "3", *ARGS)
    assert out == PROMPT + _session(default_q4_bundle, 3, PROMPT, chat=False) + "\n"
