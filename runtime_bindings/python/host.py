"""Host bundles through the C runtime: open + validate a bundle and load it (with its tokenizer)."""

from __future__ import annotations

from pathlib import Path

from mcpm.export.bundle.reader import Bundle, open_bundle
from mcpm.export.bundle.target import check_runs_here
from mcpm.export.tokenizer import Tokenizer
from mcpm.runtime.binding import Model
from mcpm.runtime.build import build_library


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
