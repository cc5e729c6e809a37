"""mcpm chat: the KV cache kept between turns gives the same reply as feeding the whole conversation afresh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mcpm.errors import ContextOverflowError

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built")


@pytest.fixture(scope="module")
def loaded(default_q4_bundle: Path):
    from mcpm.runtime.host import load_host_bundle

    _, model, tok = load_host_bundle(default_q4_bundle, threads=2)
    yield model, tok
    model.close()


def test_second_turn_reuses_the_cache(loaded) -> None:
    from mcpm.runtime.chat import ChatSession

    model, tok = loaded
    session = ChatSession(model, tok, max_new_tokens=12)
    session.turn("What is the state of the Union?", lambda _: None)
    position_after_first = model.position
    assert position_after_first > 0
    streamed: list[str] = []
    second = session.turn("And the economy?", streamed.append)
    reply_two = session.last_tokens
    assert second == "".join(streamed) and len(reply_two) > 3
    # afresh: the whole conversation up to reply 2 (turn 1, reply 1, turn 2) as one prompt, greedy
    model.reset()
    prompt = session.fed[: len(session.fed) - len(reply_two)]
    assert model.generate(prompt, 12, None, tok.stop_ids) == reply_two


def test_full_context_is_a_clear_error(loaded) -> None:
    from mcpm.runtime.chat import ChatSession

    model, tok = loaded
    model.reset()
    session = ChatSession(model, tok, max_new_tokens=8)
    longer = r"message is longer than the context \(\d+ tokens; the bundle holds 128\)"
    with pytest.raises(ContextOverflowError, match=longer):
        session.turn("word " * 200, lambda _: None)
    assert model.position == 0  # nothing was fed


def test_cli_chat_two_turns_and_overflow(default_q4_bundle: Path) -> None:
    lines = "What is the state of the Union?\n" + "word " * 200 + "\n/reset\nAnd the economy?\n"
    proc = subprocess.run([sys.executable, "-m", "mcpm.cli", "chat", str(default_q4_bundle), "-n", "6", "-t", "2"],
                          input=lines, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "error: the message is longer than the context" in proc.stderr
    assert "(new conversation)" in proc.stdout
    replies = [line for line in proc.stdout.splitlines() if line and line != "(new conversation)"]
    assert len(replies) == 2
