"""Run a host bundle from Python: the plan interpreted over TVM's runtime (until the C runtime exists).

The kernels' object file is linked into a shared library in a cache folder (the bundle stays read-only).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import torch

from mcpm.export.bundle.reader import Bundle, open_bundle
from mcpm.export.bundle.target import check_runs_here
from mcpm.export.compiler.plan_runner import PlanModel, link_shared
from mcpm.export.tokenizer import Tokenizer

CACHE = Path(tempfile.gettempdir()) / "mcpm-kernels"


class BundleStepper:
    """A Stepper (see reference_generate) over a bundle's plan: prefill/decode return logits [vocab]."""

    def __init__(self, model: PlanModel) -> None:
        self.model = model

    def prefill(self, ids: list[int]) -> torch.Tensor:
        return torch.from_numpy(self.model.prefill(np.asarray(ids, np.int32))[-1])

    def decode(self, token: int) -> torch.Tensor:
        return torch.from_numpy(self.model.decode(token)[-1])


def _kernels(bundle: Bundle):
    import tvm

    obj = bundle.path / bundle.plan.object_file
    digest = hashlib.sha256(obj.read_bytes()).hexdigest()[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    lib = CACHE / f"kernels-{digest}.so"
    if not lib.is_file():
        tmp = CACHE / f"kernels-{digest}.{id(bundle)}.tmp.so"
        link_shared(obj, tmp)
        tmp.replace(lib)
    return tvm.runtime.load_module(str(lib))


def load_bundle(bundle_dir: Path, verify: bool = False) -> tuple[Bundle, PlanModel, Tokenizer]:
    """Open, validate and load a host bundle; refuses bundles for other CPUs."""
    bundle = open_bundle(bundle_dir, verify=verify)
    check_runs_here(bundle.config["target"])
    weights = [bundle.weights.tensor(w.name) for w in bundle.plan.weights]
    model = PlanModel(bundle.plan, _kernels(bundle), weights)
    cfg = bundle.config
    tok = Tokenizer.from_bundle(bundle.path, cfg["tokenizer"], cfg["chat_template"], cfg["bos_token_id"])
    return bundle, model, tok
