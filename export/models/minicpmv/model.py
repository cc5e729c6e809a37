"""MiniCPM-V 2.0 written from the math, as the PyTorch reference.

    for each image slice s (pixels [3, H_s, W_s], sides multiples of 14):
        f_s = resampler(vision(s), H_s/14, W_s/14)          [Q, hidden]   (Q = query_num = 64)
    h0 = llm.embed(ids) * scale_emb                         the LM's usual scaled token embeddings
    h0[image positions] = concat(f_s)                       features replace the <unk> placeholders, unscaled
    logits = llm(h0)                                        the MiniCPM-2.4B LM (muP residual and logit scales)

The image positions are the tokens strictly inside each ``<image> ... </image>`` pair of the prompt, in order
(overview first, then the slices row-major); ``preprocess.image_positions`` finds them.
"""

from __future__ import annotations

import torch
from torch import nn

from mcpm.export.models.layers import KVCache
from mcpm.export.models.minicpm.model import MiniCPM
from mcpm.export.models.minicpmv.config import MiniCPMVConfig
from mcpm.export.models.minicpmv.resampler import Resampler
from mcpm.export.models.minicpmv.vision import VisionTower


class MiniCPMV(nn.Module):
    def __init__(self, cfg: MiniCPMVConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.llm = MiniCPM(cfg)
        self.vision = VisionTower(cfg)
        self.resampler = Resampler(cfg)

    def encode_slice(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] -> image features [B, Q, hidden] (B slices of the same size)."""
        rows, cols = self.vision.patch_grid(pixels.shape[-2], pixels.shape[-1])
        return self.resampler(self.vision(pixels), rows, cols)

    def encode_image(self, slices: list[torch.Tensor]) -> torch.Tensor:
        """The slices of one image ([3, H_s, W_s] each, sizes may differ) -> [n_slices * Q, hidden]."""
        return torch.cat([self.encode_slice(s.unsqueeze(0))[0] for s in slices], dim=0)

    def embed(self, ids: torch.Tensor, features: torch.Tensor | None = None,
              positions: torch.Tensor | None = None) -> torch.Tensor:
        """ids [1, n]; features [k, hidden] written at ``positions`` [k] after the embedding scale."""
        h = self.llm.embed_tokens(ids)
        if features is not None:
            assert positions is not None and positions.numel() == features.shape[0], "one position per feature"
            h = h.clone()
            h[0, positions] = features.to(h.dtype)
        return h

    def forward(self, ids: torch.Tensor, slices: list[torch.Tensor] | None = None,
                positions: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """ids [1, n] with the image placeholders at ``positions``; ``slices``: pixels of the image's slices."""
        features = self.encode_image(slices) if slices else None
        return self.llm(embeds=self.embed(ids, features, positions), cache=cache)

    def new_cache(self) -> KVCache:
        return self.llm.new_cache()
