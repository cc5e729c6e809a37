"""Random-weight Hugging Face checkpoints of the real MiniCPM shapes (for benchmarks and shape tests).

Tensors are generated and written one at a time into <=2 GiB safetensors shards, so MiniCPM-2B needs only a
shard's worth of memory. The default model's tokenizer is copied so the checkpoint runs end to end (its
vocabulary is smaller than the preset's: ids stay valid, the text is meaningless). MiniCPM-V checkpoints get
the image markers ``<image>``, ``</image>``, ``<slice>``, ``</slice>`` as added tokens; ChatML checkpoints (MiniCPM3,
MiniCPM4) get ``<|im_end|>`` and ``<|im_start|>`` where the vocabulary has room for them. A config's
``mcpm_chat_template`` key (not written to config.json) picks the chat template when it is not the family's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mcpm.errors import McpmError
from mcpm.export.checkpoint import CheckpointWriter
from mcpm.export.families import Family, all_presets
from mcpm.export.hf_config import parse_config
from mcpm.export.loading import DEFAULT_MODEL_DIR
from mcpm.export.models.minicpmv.preprocess import IMAGE_END, IMAGE_START, SLICE_END, SLICE_START
from mcpm.export.tokenizer import write_tokenizer_files

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _init_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator, init_std: float) -> torch.Tensor:
    if len(shape) == 1:  # norm weights: around one, never exactly one (a test must notice a dropped norm)
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    std = init_std if "embed" in name else init_std / shape[1] ** 0.5
    return torch.randn(shape, generator=gen) * std


def write_random_checkpoint(
    family: Family,
    config_dict: dict[str, Any],
    out: Path,
    seed: int = 0,
    dtype: str = "bf16",
    init_std: float = 1.0,
    progress: bool = True,
    shard_bytes: int = 2 * 2**30,
) -> None:
    """Write config.json, random safetensors weights and a tokenizer for ``config_dict`` to ``out``."""
    if dtype not in DTYPES:
        raise McpmError(f"unknown dtype {dtype!r}", f"use one of {sorted(DTYPES)}")
    config = parse_config(family.config_cls, config_dict)
    with torch.device("meta"):
        model = family.model_cls(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    writer = CheckpointWriter(out, shard_bytes=shard_bytes)
    for name, shape in tqdm(shapes.items(), desc=f"writing {out.name}", unit="tensor", disable=not progress):
        writer.add(family.names.to_hf(name), _init_tensor(name, shape, gen, init_std).to(DTYPES[dtype]))
    writer.close()
    data = {k: v for k, v in config_dict.items() if k != TEMPLATE_KEY}
    data["torch_dtype"] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
    data["mcpm_random_weights"] = True
    (out / "config.json").write_text(json.dumps(data, indent=2) + "\n")
    shutil.copy(DEFAULT_MODEL_DIR / "tokenizer.model", out / "tokenizer.model")
    template = str(config_dict.get(TEMPLATE_KEY, family.chat_template))
    write_tokenizer_files(out, chat_template=template, added=_added_tokens(family, config, template))


TEMPLATE_KEY = "mcpm_chat_template"
CHATML_MARKERS = ("<|im_end|>", "<|im_start|>")


def _added_tokens(family: Family, config: Any, template: str) -> dict[str, int] | None:
    """Added tokens just past the default SentencePiece model's pieces: MiniCPM-V's image markers (pieces of the real
    tokenizer; ``<unk>`` and the newline byte piece are already pieces), or the ChatML markers when the vocabulary
    has room (else ChatML text is encoded as ordinary pieces)."""
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=str(DEFAULT_MODEL_DIR / "tokenizer.model")).get_piece_size()
    if template == "chatml" and family.model_type != "minicpmv":
        fits = pieces + len(CHATML_MARKERS) <= config.vocab_size
        return {m: pieces + i for i, m in enumerate(CHATML_MARKERS)} if fits else None
    if family.model_type != "minicpmv":
        return None
    markers = (IMAGE_START, IMAGE_END, SLICE_START, SLICE_END)
    if pieces + len(markers) > config.vocab_size:
        raise McpmError(f"vocab_size {config.vocab_size} leaves no room for the image tokens (the tokenizer has "
                        f"{pieces} pieces)", f"use vocab_size >= {pieces + len(markers)}")
    return {m: pieces + i for i, m in enumerate(markers)}


def make_preset_checkpoint(preset: str, out: Path, seed: int = 0, dtype: str = "bf16", progress: bool = True) -> None:
    presets = all_presets()
    if preset not in presets:
        raise McpmError(f"unknown preset {preset!r}", f"use one of {', '.join(sorted(presets))}")
    if out.exists() and not out.is_dir():
        raise McpmError(f"--out {out} is a file, not a folder", "give --out a new folder (it is created)")
    if out.exists() and any(out.iterdir()):
        raise McpmError(f"output folder {out} is not empty", "choose a new folder or empty it")
    family, config = presets[preset]
    write_random_checkpoint(family, config, out, seed=seed, dtype=dtype, init_std=1.0, progress=progress)
