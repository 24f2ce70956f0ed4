"""Anomaly-map conv stacks: the VPG (visual prompt generator, DESIGN.md 2.3).

``MapConvStack``: per block a 3x3 conv, ReLU and 2x2 max-pool, then an adaptive max-pool to a
``grid x grid`` layout, flattened to ``grid**2`` tokens. The VPG turns the expert map into
7x7 = 49 "expert query" tokens at the Q-Former width; they are joined with the Q-Former's
learned queries so the Q-Former attends where the expert points. Each of the 49 tokens adds a
learned position embedding: the Q-Former's queries carry no positions of their own, so without
it a hot cell's query would not say where it is.
"""

from __future__ import annotations

import torch
from torch import nn

from configs.model_schema import MapConvConfig, VPGConfig


class MapConvStack(nn.Module):
    def __init__(self, config: MapConvConfig) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_ch = 1
        for out_ch in config.channels:
            blocks += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool2d(config.grid)
        self.out_channels = in_ch
        self.grid = config.grid

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) maps in [0, 1] -> (B, grid*grid, C) tokens, row-major."""
        x = self.pool(self.blocks(maps))  # (B, C, g, g)
        return x.flatten(2).transpose(1, 2)


class VisualPromptGenerator(nn.Module):
    """Map -> (B, grid**2, qformer_width) expert query tokens (49 for grid 7)."""

    def __init__(self, config: VPGConfig, width: int) -> None:
        super().__init__()
        self.convs = MapConvStack(config)
        self.proj = nn.Linear(self.convs.out_channels, width)
        self.pos = nn.Parameter(torch.randn(1, config.grid**2, width) * 0.02)
        self.num_tokens = config.grid**2

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(maps)) + self.pos  # (B, 49, Hq)
