"""Tokenizer of a checkpoint: SentencePiece ``tokenizer.model`` (or ``tokenizer.json``), added tokens, chat template.

Tokens declared in ``tokenizer_config.json`` / ``added_tokens.json`` that the SentencePiece model does not
contain (chat markers of some models) are matched in the text first, longest first, then the pieces between
them go through SentencePiece.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from mcpm.errors import TokenizerError
from mcpm.export.chat_templates import ChatTemplate, get_template
from mcpm.export.hf_config import read_json_object


class Tokenizer:
    def __init__(self, backend: Any, kind: str, added: dict[str, int], template: ChatTemplate, bos_id: int) -> None:
        self._backend = backend
        self.kind = kind  # "sentencepiece" or "tokenizers"
        self.added = added
        self.template = template
        self.bos_id = bos_id
        self._id_to_added = {v: k for k, v in added.items()}
        pattern = "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))
        self._split = re.compile(f"({pattern})") if added else None
        self.stop_ids = tuple(i for s in template.stop if (i := self.token_id(s)) is not None)

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, model_dir: Path, template_name: str, bos_id: int = 1) -> Tokenizer:
        """tokenizer.model (or tokenizer.json) plus the added tokens of tokenizer_config.json / added_tokens.json."""
        backend, kind = _load_backend(model_dir)
        added = _outside(backend, kind, _added_tokens(model_dir))
        return cls(backend, kind, added, get_template(template_name), bos_id)

    @classmethod
    def from_bundle(cls, bundle_dir: Path, record: dict[str, Any], template: dict[str, Any], bos_id: int) -> Tokenizer:
        """The tokenizer of an exported bundle (its mcpm-config.json ``tokenizer`` and ``chat_template`` records)."""
        backend, kind = _load_backend(bundle_dir)
        added = {str(k): int(v) for k, v in record.get("added_tokens", {}).items()}
        chat = ChatTemplate(**{**template, "stop": tuple(template.get("stop", ()))})
        return cls(backend, kind, added, chat, bos_id)

    # -- vocabulary ----------------------------------------------------------------------------------------
    @property
    def piece_count(self) -> int:
        """Ids 0 .. piece_count - 1 are the backend's own pieces (added tokens may lie beyond)."""
        if self.kind == "sentencepiece":
            return int(self._backend.get_piece_size())
        return int(self._backend.get_vocab_size(with_added_tokens=False))

    @property
    def vocab_size(self) -> int:
        return max([self.piece_count - 1, *self.added.values()]) + 1

    def decodable_mask(self, n: int) -> np.ndarray:
        """bool [n]: the ids below n this tokenizer can decode (its pieces and its added tokens). A checkpoint's
        vocabulary is often padded past the tokenizer: those ids have logits but no text, so samplers skip them."""
        mask = np.zeros(n, dtype=bool)
        mask[:self.piece_count] = True
        mask[[i for i in self.added.values() if 0 <= i < n]] = True
        return mask

    def token_id(self, token: str) -> int | None:
        if token in self.added:
            return self.added[token]
        if self.kind == "sentencepiece":
            i = self._backend.piece_to_id(token)
            return None if i == self._backend.unk_id() and token != "<unk>" else int(i)
        return self._backend.token_to_id(token)

    # -- encode / decode -----------------------------------------------------------------------------------
    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        if self.kind == "sentencepiece":
            return list(self._backend.encode(text))
        return list(self._backend.encode(text, add_special_tokens=False).ids)

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        pieces = self._split.split(text) if self._split else [text]
        for piece in pieces:
            ids += [self.added[piece]] if piece in self.added else self._encode_plain(piece)
        return ids

    def decode(self, ids: list[int]) -> str:
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._id_to_added:
                out.append(self._decode_plain(run))
                out.append(self._id_to_added[i])
                run = []
            else:
                run.append(i)
        out.append(self._decode_plain(run))
        return "".join(out)

    def _decode_plain(self, ids: list[int]) -> str:
        if not ids:
            return ""
        if self.kind == "sentencepiece":
            return str(self._backend.decode(ids))
        return str(self._backend.decode(ids, skip_special_tokens=False))

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode(self.template.render(messages), add_bos=self.template.add_bos)

    def stream_decoder(self, context: list[int]) -> StreamDecoder:
        return StreamDecoder(self, context[-1:] if context else [])


class StreamDecoder:
    """Turns generated ids into text increments: no split UTF-8 characters, spaces kept after the prompt."""

    def __init__(self, tokenizer: Tokenizer, anchor: list[int]) -> None:
        self.tok = tokenizer
        self.anchor = anchor  # the last prompt token, so the first piece's leading space survives decoding
        self.ids: list[int] = []
        self.emitted = len(tokenizer.decode(anchor))

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.anchor + self.ids)
        if text.endswith("\ufffd"):
            return ""  # wait for the rest of a multi-byte character
        new, self.emitted = text[self.emitted :], len(text)
        return new


def _load_backend(model_dir: Path) -> tuple[Any, str]:
    sp_path, json_path = model_dir / "tokenizer.model", model_dir / "tokenizer.json"
    if sp_path.is_file():
        import sentencepiece as spm

        try:
            return spm.SentencePieceProcessor(model_file=str(sp_path)), "sentencepiece"
        except (RuntimeError, OSError) as exc:
            problem = f"{sp_path} is not a SentencePiece model ({exc})"
            raise TokenizerError(problem, "restore it from the checkpoint") from None
    if json_path.is_file():
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return HFTokenizer.from_file(str(json_path)), "tokenizers"
        except Exception as exc:  # the tokenizers library raises its own exception type
            raise TokenizerError(f"{json_path} is not a valid tokenizer.json ({exc})") from None
    raise TokenizerError(f"no tokenizer.model or tokenizer.json in {model_dir}", "copy the tokenizer files")


def _outside(backend: Any, kind: str, added: dict[str, int]) -> dict[str, int]:
    """The added tokens the backend does not know itself (tokenizer.json carries its added tokens)."""
    if kind == "tokenizers":
        return {}
    return {t: i for t, i in added.items() if backend.piece_to_id(t) == backend.unk_id() and t != "<unk>"}


def _added_tokens(model_dir: Path) -> dict[str, int]:
    added: dict[str, int] = {}
    path = model_dir / "added_tokens.json"
    if path.is_file():
        added.update({str(k): int(v) for k, v in read_json_object(path, TokenizerError).items()})
    path = model_dir / "tokenizer_config.json"
    if path.is_file():
        for key, entry in read_json_object(path, TokenizerError).get("added_tokens_decoder", {}).items():
            if isinstance(entry, dict) and "content" in entry:
                added[str(entry["content"])] = int(key)
    return added


def write_tokenizer_files(out_dir: Path, chat_template: str, added: dict[str, int] | None = None) -> None:
    """tokenizer_config.json (LlamaTokenizer, template in Jinja) and, if any, added_tokens.json."""
    template = get_template(chat_template)
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "legacy": True,
        "chat_template": template.jinja(),
        "mcpm_chat_template": template.name,
    }
    if added:
        config["added_tokens_decoder"] = {str(i): {"content": t, "special": True} for t, i in added.items()}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
