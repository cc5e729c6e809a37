"""User-facing errors: each one is a single line that names the problem and the fix.

The CLIs catch :class:`McpmError` and print ``error: <message>`` with exit code 2 instead of a traceback.
"""

from __future__ import annotations


class McpmError(Exception):
    """Base class of errors caused by bad input; the message is shown to the user as one line."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} ({fix})" if fix else problem)


class CheckpointError(McpmError):
    """A checkpoint folder is missing files, has a garbled config or mis-shaped tensors."""


class UnsupportedModelError(McpmError):
    """The checkpoint's model_type is not a family mcpm knows."""


class TokenizerError(McpmError):
    """The tokenizer files are missing or unreadable."""


class ContextOverflowError(McpmError):
    """A prompt (plus generation) does not fit the model's context."""
