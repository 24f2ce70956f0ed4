"""TPG (textual prompt generator, DESIGN.md 2.5): the map to 9 tokens + 9 learned tokens.

The same kind of conv stack as the VPG turns the expert map into a 3x3 = 9-token layout,
projected to the LLM width, followed by 9 learned tokens: 18 "VE tokens" placed in the LLM
input after the projected Q-Former tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from actors.modeling.vpg import MapConvStack
from configs.model_schema import TPGConfig


class TextualPromptGenerator(nn.Module):
    def __init__(self, config: TPGConfig, llm_width: int) -> None:
        super().__init__()
        self.convs = MapConvStack(config)
        self.proj = nn.Linear(self.convs.out_channels, llm_width)
        self.learned = nn.Parameter(torch.randn(1, config.num_learned, llm_width) * 0.02)
        self.num_tokens = config.grid**2 + config.num_learned

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, grid**2 + num_learned, D_llm) VE tokens (18 by default)."""
        tokens = self.proj(self.convs(maps))  # (B, 9, D)
        return torch.cat([tokens, self.learned.expand(tokens.shape[0], -1, -1)], dim=1)
