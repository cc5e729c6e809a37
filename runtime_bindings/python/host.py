"""Host bundles through the C runtime: open + validate a bundle, load it, and a Stepper for generation."""

from __future__ import annotations

from pathlib import Path

import torch

from mcpm.export.bundle.reader import Bundle, open_bundle
from mcpm.export.bundle.target import check_runs_here
from mcpm.export.tokenizer import Tokenizer
from mcpm.runtime.binding import Model
from mcpm.runtime.build import build_library


class RuntimeStepper:
    """A Stepper (see mcpm.export.reference_generate) over a C-runtime Model: logits [vocab] float32."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def prefill(self, ids: list[int]) -> torch.Tensor:
        return torch.from_numpy(self.model.prefill(ids))

    def decode(self, token: int) -> torch.Tensor:
        return torch.from_numpy(self.model.decode(token))


def load_host_bundle(bundle_dir: Path, threads: int = 0, verify: bool | None = None) -> tuple[Bundle, Model, Tokenizer]:
    """Open and validate a host bundle, refuse it on a CPU that lacks its features, load it in the C runtime.

    verify: True checks every file's SHA-256 and every tensor's CRC-32; None (default) does so on a bundle's first
    load only (see open_bundle); False never."""
    bundle = open_bundle(Path(bundle_dir), verify=verify)
    check_runs_here(bundle.config["target"])
    model = Model.load(bundle.path, threads=threads, library=build_library(bundle.path, bundle.plan.object_file))
    cfg = bundle.config
    tok = Tokenizer.from_bundle(bundle.path, cfg["tokenizer"], cfg["chat_template"], cfg["bos_token_id"])
    model.set_sampleable(tok.decodable_mask(model.vocab_size))  # padded vocabularies: ids with no text
    return bundle, model, tok
