"""Prompt ids of a MiniCPM-V chat turn with images (docs/minicpmv.md, "Prompt layout of a chat turn with images").

    [BOS if the conversation is new] + encode(user format before {content})
      + placeholder_ids(image 1) + placeholder_ids(image 2) + ...
      + encode("\\n" + stripped message + user format after {content} + generation prompt)

Each ``encode`` is a separate call of the tokenizer (added tokens matched first, then SentencePiece). The image
features replace the embeddings of the tokens strictly inside each ``<image> ... </image>`` pair
(``preprocess.image_positions``). A turn without images is the plain chat template (``Tokenizer.encode_chat``).
The C session builds the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcpm.export.models.minicpmv.preprocess import ImageTokens, PreparedImage, SlicePlan, placeholder_ids

Grid = tuple[int, int] | None


def _grid(image: Any) -> Grid:
    """The slice grid (cols, rows) of a PreparedImage, a SlicePlan or a grid itself (None: not sliced)."""
    if isinstance(image, PreparedImage):
        return image.plan.grid
    if isinstance(image, SlicePlan):
        return image.grid
    if image is None:
        return None
    cols, rows = image
    return int(cols), int(rows)


def chat_prompt_ids(tokenizer: Any, message: str, images: Sequence[PreparedImage | SlicePlan | Grid],
                    query_num: int, tokens: ImageTokens | None = None, new_conversation: bool = True) -> list[int]:
    """Ids of one user turn (with the generation prompt) whose images come in attach order.

    ``tokenizer`` is an mcpm Tokenizer (its chat template must have a ``user`` role); ``tokens`` defaults to the
    tokenizer's image markers (``ImageTokens.from_tokenizer``)."""
    template = tokenizer.template
    bos = [tokenizer.bos_id] if new_conversation and template.add_bos else []
    if not images:
        return bos + tokenizer.encode(template.render([{"role": "user", "content": message}]))
    tokens = tokens or ImageTokens.from_tokenizer(tokenizer)
    before, after = template.roles["user"].split("{content}")
    ids = bos + tokenizer.encode(before)
    for image in images:
        ids += placeholder_ids(_grid(image), query_num, tokens)
    return ids + tokenizer.encode("\n" + message.strip() + after + template.generation_prompt)
