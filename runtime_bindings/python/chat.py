"""Multi-turn chat over a C-runtime model: the KV cache is kept between turns, only new tokens are fed."""

from __future__ import annotations

from collections.abc import Callable

from mcpm.errors import ContextOverflowError
from mcpm.export.tokenizer import Tokenizer
from mcpm.runtime.binding import Model, Sampling


class ChatSession:
    def __init__(self, model: Model, tok: Tokenizer, sampling: Sampling | None = None, max_new_tokens: int = 256):
        self.model, self.tok = model, tok
        self.sampling = sampling or Sampling()
        self.max_new_tokens = max_new_tokens
        self.pending: list[int] = []  # generated but not yet fed to the model (the reply's last token)
        self.fed: list[int] = []  # every token of the conversation so far, in order (for inspection and tests)
        self.last_tokens: list[int] = []  # the last reply's tokens (a stop token included)

    def reset(self) -> None:
        self.model.reset()
        self.pending, self.fed = [], []

    def turn(self, message: str, on_text: Callable[[str], None]) -> str:
        """Answer one user message, streaming text through ``on_text``; returns the reply."""
        first = self.model.position == 0 and not self.pending
        text = self.tok.template.render([{"role": "user", "content": message}])
        turn_ids = self.tok.encode(text, add_bos=first and self.tok.template.add_bos)
        ids = self.pending + turn_ids
        used, context = self.model.position, self.model.context_length
        if used + len(ids) >= context:
            raise ContextOverflowError(
                f"the conversation is full ({used} of {context} tokens used, this message needs {len(ids)})",
                "type /reset to start a new conversation",
            )
        stream = self.tok.stream_decoder(ids)
        pieces: list[str] = []

        def on_token(token: int) -> None:
            if token not in self.tok.stop_ids:
                piece = stream.push(token)
                pieces.append(piece)
                on_text(piece)

        tokens = self.model.generate(ids, self.max_new_tokens, self.sampling, self.tok.stop_ids, on_token)
        self.pending = tokens[-1:]  # the C runtime does not feed the last sampled token: it opens the next turn
        self.fed += turn_ids + tokens
        self.last_tokens = tokens
        return "".join(pieces)
