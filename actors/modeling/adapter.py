"""Adapter on the ViT tokens (Myriad, DESIGN.md 2.2): F' = Adapter(F).

A low-rank residual two-layer MLP: ``F' = F + W_up GELU(W_down LN(F))``. With ``zero_init``
``W_up`` starts at zero, so F' = F at step 0 and the pretrained features pass unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from configs.model_schema import AdapterConfig


class TokenAdapter(nn.Module):
    def __init__(self, dim: int, config: AdapterConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, config.bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(config.bottleneck, dim)
        if config.zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        return tokens + self.up(self.act(self.down(self.norm(tokens))))
