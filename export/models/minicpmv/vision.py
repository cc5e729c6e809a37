"""The SigLIP vision tower of MiniCPM-V 2.0 (timm ``vit_so400m_patch14_siglip_384``), written from the math.

    x      = conv14x14/14(pixels) + pos(h, w)          pixels [B, 3, H, W], h = ceil(H/14), w = ceil(W/14)
    x      = x + attn(norm1(x));  x = x + mlp(norm2(x))   for the blocks used (the published 27 minus the last)
    out    = norm(x)                                     [B, h*w, vision_hidden]

LayerNorms with bias (eps 1e-6), one fused qkv projection with bias, non-causal softmax attention, GELU-tanh MLP.
There is no class token and no attention-pool head (MiniCPM-V replaces it by its resampler).

Dynamic image size: the learned position table is a G x G grid (G = 384 // 14 = 27); an image of h x w patches
gets the table resized to h x w by separable bicubic interpolation (a = -0.5) with antialiasing when shrinking,
half-pixel centres, as timm's ``resample_abs_pos_embed`` does (``F.interpolate(mode="bicubic", antialias=True)``).
Sizes that are not multiples of 14 are zero-padded on the right and bottom (timm's ``dynamic_img_pad``); the
slicer never produces them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mcpm.export.models.minicpmv.config import MiniCPMVConfig


def resize_position_table(table: torch.Tensor, grid: int, h: int, w: int) -> torch.Tensor:
    """table [1, grid*grid, d] (row-major) -> [1, h*w, d] for an image of h x w patches."""
    if (h, w) == (grid, grid):
        return table
    d = table.shape[-1]
    x = table.float().reshape(1, grid, grid, d).permute(0, 3, 1, 2)  # [1, d, G, G]
    x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)  # [1, d, h, w]
    return x.permute(0, 2, 3, 1).reshape(1, h * w, d).to(table.dtype)


class VisionAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)  # rows: q (dim), k (dim), v (dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, n, hd]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=1.0 / math.sqrt(self.head_dim))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class VisionMLP(nn.Module):
    def __init__(self, dim: int, inter: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, inter)
        self.fc2 = nn.Linear(inter, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class VisionBlock(nn.Module):
    def __init__(self, cfg: MiniCPMVConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.vision_hidden, eps=cfg.vision_eps)
        self.attn = VisionAttention(cfg.vision_hidden, cfg.vision_heads)
        self.norm2 = nn.LayerNorm(cfg.vision_hidden, eps=cfg.vision_eps)
        self.mlp = VisionMLP(cfg.vision_hidden, cfg.vision_inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTower(nn.Module):
    def __init__(self, cfg: MiniCPMVConfig) -> None:
        super().__init__()
        self.patch = cfg.patch_size
        self.grid = cfg.vision_pos_grid
        self.patch_embed = nn.Conv2d(3, cfg.vision_hidden, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, cfg.vision_hidden))
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.vision_layers_used))
        self.norm = nn.LayerNorm(cfg.vision_hidden, eps=cfg.vision_eps)

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of patches for an image of height x width pixels."""
        return math.ceil(height / self.patch), math.ceil(width / self.patch)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] (normalized) -> features [B, h*w, vision_hidden], patches row-major."""
        h, w = self.patch_grid(pixels.shape[-2], pixels.shape[-1])
        pad_h, pad_w = h * self.patch - pixels.shape[-2], w * self.patch - pixels.shape[-1]
        if pad_h or pad_w:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)  # [B, h*w, d]
        x = x + resize_position_table(self.pos_embed, self.grid, h, w)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
