"""The C text session (mcpm_session_*): chat template, tokenizer and streamed text in C equal the Python path."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from mcpm.errors import ContextOverflowError, McpmError
from tests.conftest import StopAtCall, abort_callback

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built")

QUESTIONS = ("What is the state of the Union?", "And the economy?")


@pytest.fixture(scope="module")
def loaded(default_q4_bundle: Path):
    from mcpm.export.bundle.reader import open_bundle
    from mcpm.export.tokenizer import Tokenizer
    from mcpm.runtime.binding import Model, Session
    from mcpm.runtime.build import build_library

    cfg = open_bundle(default_q4_bundle).config
    tok = Tokenizer.from_bundle(default_q4_bundle, cfg["tokenizer"], cfg["chat_template"], cfg["bos_token_id"])
    model = Model.load(default_q4_bundle, threads=2, library=build_library(default_q4_bundle))
    session = Session(model)
    yield model, tok, session
    session.close()
    model.close()


def python_stream(tok, prompt_ids: list[int], tokens: list[int]) -> str:
    """What mcpm.runtime.chat streams for tokens generated after prompt_ids (stop tokens left out)."""
    stream = tok.stream_decoder(prompt_ids)
    return "".join(stream.push(t) for t in tokens if t not in tok.stop_ids)


def test_chat_two_turns_equal_the_python_chat_session(loaded) -> None:
    from mcpm.runtime.chat import ChatSession

    model, tok, session = loaded
    model.reset()
    py = ChatSession(model, tok, max_new_tokens=12)
    expected = []
    for q in QUESTIONS:
        reply = py.turn(q, lambda _: None)
        expected.append((len(py.last_tokens), reply))
    py_position = model.position
    session.reset()
    assert model.position == 0
    got = []
    for q in QUESTIONS:
        pieces: list[bytes] = []
        n, reply = session.chat(q, 12, on_piece=pieces.append)
        assert b"".join(pieces).decode() == reply
        got.append((n, reply))
    assert got == expected and all(len(reply) > 5 for _, reply in got)
    assert model.position == py_position  # the same tokens were fed (the pending last token is not)


def test_complete_equals_python_generate_and_decode(loaded) -> None:
    model, tok, session = loaded
    for prompt in ("Once upon a time", "The President of the United States", "café 日本"):
        n, text = session.complete(prompt, 20)
        ids = tok.encode(prompt, add_bos=True)
        model.reset()
        tokens = model.generate(ids, 20, None, tok.stop_ids)
        plain = [t for t in tokens if t not in tok.stop_ids]
        assert n == len(tokens)
        # the reply keeps its leading space: decoded after the prompt, not on its own
        assert text == tok.decode(ids + plain)[len(tok.decode(ids)):] == python_stream(tok, ids, tokens)
        assert text.lstrip() == tok.decode(plain).lstrip()


def test_streamed_pieces_are_whole_utf8_characters(loaded) -> None:
    from mcpm.runtime.binding import Sampling

    model, tok, session = loaded
    byte_ids = {i for i in range(tok.vocab_size) if tok._backend.is_byte(i)}
    prompt = "café 日本 naïve"
    ids = tok.encode(prompt, add_bos=True)
    seen_bytes = 0
    for seed in range(6):  # near-uniform sampling: byte-fallback tokens, complete and broken characters
        sampling = Sampling(temperature=25.0, seed=seed)
        pieces: list[bytes] = []
        n, text = session.complete(prompt, 40, sampling, on_piece=pieces.append)
        for piece in pieces:
            assert piece, "empty piece"
            piece.decode("utf-8")  # strict: never half a character
        assert b"".join(pieces).decode() == text
        model.reset()
        tokens = model.generate(ids, 40, sampling, tok.stop_ids)
        assert n == len(tokens) and text == python_stream(tok, ids, tokens)
        seen_bytes += sum(t in byte_ids for t in tokens)
    assert seen_bytes > 0


def test_cancel_from_the_text_callback(loaded) -> None:
    model, tok, session = loaded
    session.reset()
    pieces: list[bytes] = []

    def on_piece(piece: bytes) -> bool:
        pieces.append(piece)
        return len(pieces) == 3

    n, text = session.chat(QUESTIONS[0], 30, on_piece=on_piece)
    assert len(pieces) == 3 and text == b"".join(pieces).decode()
    assert 3 <= n < 30
    # the conversation goes on after a cancel: the cancelled reply's last token opens the next turn
    n2, text2 = session.chat(QUESTIONS[1], 5)
    assert n2 == 5 and text2


def test_full_context_is_a_clear_error(loaded) -> None:
    from mcpm.runtime.chat import ChatSession

    model, tok, session = loaded
    model.reset()
    with pytest.raises(ContextOverflowError) as py_err:
        ChatSession(model, tok, max_new_tokens=8).turn("word " * 200, lambda _: None)
    session.reset()
    full = r"^the message is longer than the context \(\d+ tokens; the bundle holds 128\): shorten it"
    with pytest.raises(McpmError, match=full) as c_err:
        session.chat("word " * 200, 8)
    assert model.position == 0  # nothing was fed
    needs = [re.findall(r"\(\d+ tokens", str(e.value.args[0])) for e in (c_err, py_err)]
    assert needs[0] == needs[1] and len(needs[0]) == 1
    # after a first turn the used tokens count
    n, _ = session.chat(QUESTIONS[0], 4)
    used = model.position
    with pytest.raises(McpmError, match=rf"the conversation is full \({used} of 128 tokens used"):
        session.chat("word " * 55, 8)  # ~112 tokens: fits an empty context, not this one
    assert model.position == used
    with pytest.raises(McpmError, match="the message is longer than the context"):
        session.complete("word " * 200, 8)


def test_session_needs_the_bundle_tokenizer(default_q4_bundle: Path, tmp_path: Path) -> None:
    from mcpm.runtime.binding import Model, Session
    from mcpm.runtime.build import build_library

    bundle = tmp_path / "bundle"
    shutil.copytree(default_q4_bundle, bundle)
    (bundle / "tokenizer.model").unlink()
    with Model.load(bundle, threads=1, library=build_library(default_q4_bundle)) as model:
        with pytest.raises(McpmError, match="cannot load the tokenizer"):
            Session(model)
        (bundle / "mcpm-config.json").unlink()
        with pytest.raises(McpmError, match="cannot read .*mcpm-config.json"):
            Session(model)


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "..", "sub/tokenizer.model", ""])
def test_tokenizer_file_stays_inside_the_bundle(name: str, default_q4_bundle: Path, tmp_path: Path) -> None:
    """mcpm-config.json's tokenizer.file is a file name inside the bundle: the C session never opens another path,
    and the Python reader refuses the config the same way."""
    import json

    from mcpm.export.bundle.reader import open_bundle
    from mcpm.runtime.binding import Model, Session
    from mcpm.runtime.build import build_library

    bundle = tmp_path / "bundle"
    shutil.copytree(default_q4_bundle, bundle)
    config = json.loads((bundle / "mcpm-config.json").read_text())
    config["tokenizer"]["file"] = name
    (bundle / "mcpm-config.json").write_text(json.dumps(config))
    with Model.load(bundle, threads=1, library=build_library(default_q4_bundle)) as model, \
            pytest.raises(McpmError, match="is not a file name inside the bundle"):
        Session(model)
    with pytest.raises(McpmError, match="is not a file of the bundle"):
        open_bundle(bundle)


# ---------------------------------------------------------------- Stop: the cancel points of mcpm_set_abort_callback


def test_stop_during_prefill_forgets_the_prompt(loaded) -> None:
    """The abort callback is asked before every prefill chunk; a stop before the third chunk of a 4-chunk prompt
    returns "cancelled" with the position back where the call started, and the rows the cancelled chunks wrote do
    not matter: the same prompt then gives exactly the logits of a model that never saw them."""
    import numpy as np

    model, _, _ = loaded
    prompt = list(range(5, 55))  # 50 tokens: chunks 16 + 16 + 16 + 2
    model.reset()
    model.prefill([1, 2, 3])
    stop = StopAtCall(3)
    with abort_callback(model, stop), pytest.raises(McpmError, match=r"^cancelled: the prompt was not fed"):
        model.prefill(prompt)
    assert stop.calls == 3 and model.position == 3
    got = model.prefill(prompt)
    model.reset()
    model.prefill([1, 2, 3])
    np.testing.assert_array_equal(got, model.prefill(prompt))


def test_stop_during_a_chat_turn_keeps_the_conversation(loaded) -> None:
    """A turn stopped during its prompt is not part of the conversation (the previous reply's pending last token is
    kept): the next turn replies exactly as if the stopped one had never been sent."""
    model, _, session = loaded
    session.reset()
    first = session.chat(QUESTIONS[0], 8)
    position = model.position
    with abort_callback(model, lambda: True), pytest.raises(McpmError, match=r"^cancelled"):
        session.chat("Tell me everything about the Union " * 4, 8)
    assert model.position == position
    second = session.chat(QUESTIONS[1], 8)
    session.reset()
    assert session.chat(QUESTIONS[0], 8) == first and session.chat(QUESTIONS[1], 8) == second


def test_stop_during_generation_keeps_the_tokens_made(loaded) -> None:
    """Between tokens a stop ends the generation without an error: the tokens made so far are returned."""
    model, _, _ = loaded
    model.reset()
    made: list[int] = []
    with abort_callback(model, lambda: len(made) >= 3):
        tokens = model.generate([1, 5, 6, 7], 20, on_token=made.append)
    assert tokens == made and len(tokens) == 3
