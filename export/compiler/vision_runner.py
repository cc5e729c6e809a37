"""Run a MiniCPM-V plan from Python with images: the reference driver of the C session (docs/minicpmv.md).

    features  = vision(vision_inputs(slice)) for the overview and each slice of each image   [Q, D] each
    prompt    = chat_prompt_ids(...); positions = image_positions(prompt)    (one feature row per position)
    prefill   chunk by chunk from position 0: a chunk with image positions runs ``embed``, gets those rows
              overwritten by the features (unscaled), then ``prefill_embeds``; other chunks run ``prefill``
    decode    greedy, one token at a time
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcpm.errors import McpmError
from mcpm.export.compiler.plan_runner import PlanModel
from mcpm.export.models.minicpmv.preprocess import ImageTokens, PreparedImage, image_positions, prepare_config_image
from mcpm.export.models.minicpmv.prompt import chat_prompt_ids


def encode_slice(model: PlanModel, pixels: np.ndarray, cfg: Any) -> np.ndarray:
    """One slice's normalized pixels [3, H, W] -> features [Q, D] (the plan's ``vision`` entry)."""
    from mcpm.export.models.minicpmv.vision_inputs import vision_inputs

    if "vision" not in model.plan.entries:
        raise McpmError("the bundle has no vision entry", "export a MiniCPM-V 2.0 checkpoint with mcpm-export")
    inputs = vision_inputs(np.asarray(pixels, np.float32), cfg)
    limit = model.plan.entries["vision"].n_max
    n = len(inputs["patches"])
    if n > limit:
        raise McpmError(f"an image slice of {n} patches exceeds the bundle's max_patches ({limit})",
                        "use a less elongated image or re-export with a larger --max-patches")
    return model.run_entry("vision", **inputs)


def encode_images(model: PlanModel, images: Sequence[PreparedImage], cfg: Any) -> np.ndarray:
    """The features of every image's overview and slices, in prompt order: [sum(num_images) * Q, D]."""
    feats = [encode_slice(model, px, cfg) for image in images for px in image.pixels]
    return np.concatenate(feats) if feats else np.zeros((0, cfg.hidden_size), np.float32)


def prefill_with_features(model: PlanModel, ids: Sequence[int], positions: np.ndarray,
                          features: np.ndarray) -> np.ndarray:
    """Prefill ``ids`` (after the model's current pos) with ``features[i]`` replacing the embedding of
    ``ids[positions[i]]``; returns the last chunk's logits [1, V]."""
    ids_np = np.asarray(ids, np.int32).reshape(-1)
    positions = np.asarray(positions, np.int64).reshape(-1)
    if len(ids_np) == 0:
        raise McpmError("prefill needs at least one token")
    if len(positions) != len(features):
        raise McpmError(f"{len(features)} image feature rows for {len(positions)} image positions")
    chunk = model.plan.chunk
    logits = np.zeros((1, model.plan.vocab_size), np.float32)
    for s in range(0, len(ids_np), chunk):
        part = ids_np[s : s + chunk]
        inside = (positions >= s) & (positions < s + len(part))
        if inside.any():
            embeds = model.run("embed", part)  # [n, D] scaled embeddings
            embeds[positions[inside] - s] = features[inside]
            logits = model.run_entry("prefill_embeds", embeds=embeds)
        else:
            logits = model.run("prefill", part)
    return logits


def greedy(model: PlanModel, logits: np.ndarray, max_new: int, stop_ids: Sequence[int] = ()) -> list[int]:
    """Greedy tokens after ``logits`` [1, V] (of the last prefilled position); stops at a stop id or max_ctx."""
    out: list[int] = []
    while len(out) < max_new:
        token = int(np.argmax(logits[-1]))
        out.append(token)
        if token in stop_ids or len(out) == max_new or model.pos >= model.plan.max_ctx:
            break
        logits = model.decode(token)
    return out


@dataclass
class ImageChat:
    """A MiniCPM-V bundle's plan with its tokenizer, model config and image markers (load_image_chat)."""

    model: PlanModel
    tokenizer: Any
    cfg: Any  # MiniCPMVConfig
    tokens: ImageTokens
    stop_ids: tuple[int, ...]
    bundle_dir: Path | None = None

    def prompt(self, message: str, images: Sequence[PreparedImage], new_conversation: bool = True) -> list[int]:
        return chat_prompt_ids(self.tokenizer, message, images, self.cfg.query_num, self.tokens, new_conversation)

    def generate(self, message: str, images: Sequence[Any] = (), max_new: int = 32, stop: bool = True) -> list[int]:
        """A new conversation: one user turn with ``images`` (RGB8 arrays or PreparedImages) -> greedy ids."""
        prepared = [im if isinstance(im, PreparedImage) else prepare_config_image(im, self.cfg) for im in images]
        self.model.reset()
        ids = self.prompt(message, prepared)
        features = encode_images(self.model, prepared, self.cfg)
        logits = prefill_with_features(self.model, ids, image_positions(ids, self.tokens), features)
        return greedy(self.model, logits, max_new, self.stop_ids if stop else ())


def load_image_chat(bundle_dir: Path) -> ImageChat:
    """A host MiniCPM-V bundle, ready to chat with images."""
    from mcpm.export.bundle.host_runner import load_bundle
    from mcpm.export.families import family_for
    from mcpm.export.hf_config import parse_config

    bundle, model, tok = load_bundle(Path(bundle_dir))
    config = bundle.config
    if config.get("family") != "minicpmv" or "vision" not in config:
        raise McpmError(f"{bundle_dir} is not a MiniCPM-V bundle (family {config.get('family')!r})",
                        "export a MiniCPM-V 2.0 checkpoint")
    cfg = parse_config(family_for("minicpmv").config_cls, config["model_config"])
    marks = config["vision"]["image_tokens"]
    tokens = ImageTokens(**{k: int(marks[k]) for k in ("image_start", "image_end", "slice_start", "slice_end",
                                                        "unk", "newline")})
    return ImageChat(model, tok, cfg, tokens, tuple(config.get("stop_token_ids", ())), bundle.path)
