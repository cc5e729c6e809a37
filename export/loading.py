"""Load a Hugging Face checkpoint folder into a family's typed config, reference model and tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mcpm.errors import CheckpointError, TokenizerError
from mcpm.export.checkpoint import TensorReader
from mcpm.export.families import Family, family_for
from mcpm.export.hf_config import parse_config, read_config_json, read_json_object
from mcpm.export.name_map import check_no_extra_tensors, load_weights
from mcpm.export.tokenizer import Tokenizer

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


@dataclass
class LoadedModel:
    model_dir: Path
    family: Family
    config: Any
    model: nn.Module
    tokenizer: Tokenizer | None


def load_config(model_dir: Path) -> tuple[Family, Any]:
    data = read_config_json(model_dir)
    family = family_for(data.get("model_type"))
    try:
        return family, parse_config(family.config_cls, data)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, KeyError, AttributeError, IndexError) as exc:
        # a value of the wrong kind deep in a nested key (rope_scaling, vision_config, ...) that the family's own
        # checks did not name: still one line, with the original complaint
        raise CheckpointError(f"config.json of {model_dir} has a malformed value ({type(exc).__name__}: {exc})"[:400],
                              "fix config.json or take it from the original checkpoint") from None


def load_tokenizer(model_dir: Path, family: Family, config: Any) -> Tokenizer:
    return Tokenizer.from_dir(model_dir, chat_template_name(model_dir, family), bos_id=config.bos_token_id)


def chat_template_name(model_dir: Path, family: Family) -> str:
    """The checkpoint's chat template: mcpm's own record (``mcpm_chat_template``), else the one the checkpoint's
    Jinja ``chat_template`` writes (MiniCPM4 is ``model_type`` minicpm with ChatML), else the family's."""
    tok_config = Path(model_dir) / "tokenizer_config.json"
    if not tok_config.is_file():
        return family.chat_template
    data = read_json_object(tok_config, TokenizerError)
    return str(data.get("mcpm_chat_template") or template_of_jinja(data.get("chat_template")) or family.chat_template)


def template_of_jinja(jinja: Any) -> str | None:
    """The mcpm chat template a transformers chat_template (a Jinja string, or a list of named ones) renders:
    ChatML markers -> "chatml", MiniCPM-2B's <用户>/<AI> -> "minicpm"; None when it is neither."""
    if isinstance(jinja, list):
        jinja = " ".join(str(t.get("template", "")) for t in jinja if isinstance(t, dict))
    if not isinstance(jinja, str):
        return None
    if "<|im_start|>" in jinja:
        return "chatml"
    if "<用户>" in jinja:
        return "minicpm"
    return None


def load_model(
    model_dir: Path, dtype: torch.dtype = torch.float32, progress: bool = False, tokenizer: bool = True,
    allow_unused: bool = False,
) -> LoadedModel:
    """Config + weights (+ tokenizer) of ``model_dir``; every bad input is a one-line McpmError."""
    model_dir = Path(model_dir)
    family, config = load_config(model_dir)
    with torch.device("meta"):
        model = family.model_cls(config)
    model = model.to_empty(device="cpu").to(dtype)
    with TensorReader(model_dir) as reader:
        load_weights(model, reader, family.names, dtype, progress)
        tied_extra = ["lm_head.weight"] if config.tie_word_embeddings else []
        check_no_extra_tensors(reader, family.names, model, ignore=tied_extra, allow_unused=allow_unused)
    model.eval()
    tok = load_tokenizer(model_dir, family, config) if tokenizer else None
    if tok is not None and tok.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {config.vocab_size}",
            "the tokenizer files belong to another model",
        )
    return LoadedModel(model_dir, family, config, model, tok)
