"""Tokenizer loading, added tokens, streaming decode and chat templates (on the shipped default tokenizer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jinja2
import pytest
import sentencepiece as spm

from mcpm.export.chat_templates import TEMPLATES, get_template
from mcpm.export.loading import DEFAULT_MODEL_DIR
from mcpm.export.tokenizer import Tokenizer, write_tokenizer_files

CORPUS = [
    "The State of the Union is sound.",
    "  runs   of    spaces\n\nand\tnewlines\n",
    "中文字符和 emoji 😀🚀 and rare bytes \x07\x1f ü é ß",
    "<用户>What is the weather like?<AI>Sunny.",
    "1234567890 3.14159 $2,000",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_dir(DEFAULT_MODEL_DIR, "minicpm")


@pytest.mark.parametrize("text", CORPUS)
def test_matches_sentencepiece_and_round_trips(tok: Tokenizer, text: str) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(DEFAULT_MODEL_DIR / "tokenizer.model"))
    assert tok.encode(text) == sp.encode(text)
    assert tok.decode(tok.encode(text)) == text


def test_byte_fallback_and_chat_markers(tok: Tokenizer) -> None:
    ids = tok.encode("😀")
    pieces = [tok._backend.id_to_piece(i) for i in ids]
    assert [p for p in pieces if p.startswith("<0x")] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert len(tok.encode("<用户>")) <= 2 and tok.token_id("<用户>") is not None and tok.token_id("<AI>") is not None
    assert tok.stop_ids == (2,)


def test_added_tokens_outside_the_sentencepiece_model(tmp_path: Path) -> None:
    shutil.copy(DEFAULT_MODEL_DIR / "tokenizer.model", tmp_path)
    write_tokenizer_files(tmp_path, "chatml", added={"<|im_end|>": 4096, "<|im_start|>": 4097})
    tok = Tokenizer.from_dir(tmp_path, "chatml")
    ids = tok.encode("<|im_start|>user\nhello<|im_end|>")
    assert ids[0] == 4097 and ids[-1] == 4096 and 4096 not in ids[1:-1]
    assert tok.decode(ids) == "<|im_start|>user\nhello<|im_end|>"
    assert tok.stop_ids == (4096, 2)
    assert tok.vocab_size == 4098


def test_stream_decoder_keeps_spaces_and_whole_characters(tok: Tokenizer) -> None:
    prompt = tok.encode("The people of the", add_bos=True)
    continuation = tok.encode(" United States 😀 and 中文 too")[1:]  # drop the dummy-prefix piece
    stream = tok.stream_decoder(prompt)
    pieces = [stream.push(t) for t in continuation]
    assert "".join(pieces) == tok.decode(prompt[-1:] + continuation)[len(tok.decode(prompt[-1:])) :]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces).startswith(" ")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_chat_template_matches_its_jinja_form(name: str) -> None:
    template = get_template(name)
    messages = [
        {"role": "user", "content": "Hi there "},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Line one\nline two"},
    ]
    jinja = jinja2.Environment().from_string(template.jinja())
    assert template.render(messages) == jinja.render(messages=messages, add_generation_prompt=True)
    assert json.loads(json.dumps(template.to_json()))["stop"] == list(template.stop)


def test_minicpm_template_layout() -> None:
    text = get_template("minicpm").render([{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                          {"role": "user", "content": "q2"}])
    assert text == "<用户>q1<AI>a1<用户>q2<AI>"
    chatml = get_template("chatml").render([{"role": "user", "content": "q"}])
    assert chatml == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_json_backend(tmp_path: Path) -> None:
    """A checkpoint with only tokenizer.json loads through the tokenizers library (ids and text preserved)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    hf.train_from_iterator(CORPUS * 20, trainer=trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_dir(tmp_path, "minicpm")
    text = "The State of the Union is sound."
    assert tok.kind == "tokenizers"
    assert tok.encode(text, add_bos=True) == [1, *hf.encode(text, add_special_tokens=False).ids]
    assert tok.decode(tok.encode(text)) == text
    assert tok.stop_ids == (2,)
