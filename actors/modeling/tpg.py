"""TPG (textual prompt generator, DESIGN.md 2.5): the map to 9 tokens + 9 learned tokens.

The same kind of conv stack as the VPG turns the expert map into a 3x3 = 9-token layout,
projected to the LLM width, followed by 9 learned tokens: 18 "VE tokens" placed in the LLM
input after the projected Q-Former tokens.

Where: a conv token alone says *how* anomalous its cell looks, not *which* cell it is (the
LLM only sees its rank in the sequence). Each cell token therefore also carries a
cell-name vector, gated by the map's peak and by the cell's share of the defect's mass::

    token_c = proj(conv_c) + [max(m) > t] * sigmoid(k * (max(m) - t)) * sigmoid(k_s * (share_c - s)) * name_c
    share_c = sum(relu(m - b) in c) / sum(relu(m - b)),   b = med(m) + a * (max(m) - med(m))

The normalized map puts the expert's threshold at 0.5, so the first factor starts there
(``t = 0.5``, ``k = 12``): on an image whose map passes the threshold, names are on; a map
that stays under it carries no name at all (with the soft factor alone, a normal map peaking
at 0.45 carried a third of its hottest cells' names, and one run called 5 of 60 normal test
images defective). The share factor mirrors the answer's own rule
(``grid.mask_to_positions``: a cell is named when it holds at least 10% of the defect;
``s = 0.1``, ``k_s = 40``), so the blurred rim of a defect that spills into a neighbouring
cell does not name that cell. The mass is counted above a base ``b`` a fraction ``a`` of the
way from the map's background (its median) to its peak, so a faint defect is measured by its
own shape as a strong one is: over a fixed base (the threshold), a defect peaking just above
it kept only its hottest cell and lost the cell holding its tail, and real defects were named
one cell short (closing note, issue 4). ``t``, ``s`` and ``a`` start from ``TPGConfig``
(``gate_threshold``, ``share_threshold``, ``share_base``), which training can refit on its
own maps before step 0 (``training.gate_fit``); all five are learned.
``MyriadModel`` initialises ``name_c`` with the LLM's own embedding of the cell's grid label
("top left", ...), so a suspicious cell reads to the LLM as the word for its position, the
word the answer has to contain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from actors.modeling.vpg import MapConvStack
from configs.model_schema import TPGConfig


def cell_shares(maps: torch.Tensor, base_fraction: float | torch.Tensor, grid: int) -> torch.Tensor:
    """(B, 1, H, W) -> (B, grid**2): each cell's share of ``sum(relu(m - b))``, with the base
    ``b`` a fraction ``base_fraction`` of the way from the map's median to its peak (0
    everywhere for a flat map). The TPG's gate and ``training.gate_fit``'s hard rule."""
    flat = maps.flatten(1)  # (B, H*W)
    background = flat.median(dim=1).values  # (B,)
    base = background + base_fraction * (flat.amax(dim=1) - background)
    excess = F.relu(maps - base[:, None, None, None])
    mass = F.adaptive_avg_pool2d(excess, grid).flatten(1)  # (B, grid**2)
    return mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-6)


class TextualPromptGenerator(nn.Module):
    def __init__(self, config: TPGConfig, llm_width: int) -> None:
        super().__init__()
        self.convs = MapConvStack(config)
        self.proj = nn.Linear(self.convs.out_channels, llm_width)
        self.learned = nn.Parameter(torch.randn(1, config.num_learned, llm_width) * 0.02)
        self.cell_names = nn.Parameter(torch.randn(config.grid**2, llm_width) * 0.02)
        # Starting values from the config (0.5: the expert threshold on the map; 0.1: the
        # answer's 10% rule; the share's base between background and peak), refit on
        # training maps by `train.data.fit_gate`.
        self.gate_threshold = nn.Parameter(torch.tensor([config.gate_threshold]))
        self.gate_sharpness = nn.Parameter(torch.tensor([12.0]))
        self.share_threshold = nn.Parameter(torch.tensor([config.share_threshold]))
        self.share_sharpness = nn.Parameter(torch.tensor([40.0]))
        self.share_base = nn.Parameter(torch.tensor([config.share_base]))
        self.num_tokens = config.grid**2 + config.num_learned

    @torch.no_grad()
    def init_cell_names(self, names: torch.Tensor) -> None:
        """Start the cell-name vectors from (grid**2, D_llm) embeddings of the cell labels."""
        if tuple(names.shape) != tuple(self.cell_names.shape):
            raise ValueError(f"cell names {tuple(names.shape)} != {tuple(self.cell_names.shape)}")
        self.cell_names.copy_(names.to(self.cell_names.dtype))

    def cell_gate(self, peak: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
        """How much of its name a cell carries, in (0, 1), from the map's ``peak`` (broadcast
        against ``share``) and the cell's ``share`` of the defect's mass (``cell_share``)."""
        over = peak - self.gate_threshold
        on = torch.sigmoid(self.gate_sharpness * over) * (over > 0).to(over.dtype)
        return on * torch.sigmoid(self.share_sharpness * (share - self.share_threshold))

    def cell_share(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, grid**2): ``cell_shares`` at the learned ``share_base``."""
        return cell_shares(maps, self.share_base, self.convs.grid)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, grid**2 + num_learned, D_llm) VE tokens (18 by default)."""
        tokens = self.proj(self.convs(maps))  # (B, 9, D)
        peak = maps.flatten(1).amax(dim=1, keepdim=True)  # (B, 1) in [0, 1]
        gate = self.cell_gate(peak, self.cell_share(maps)).unsqueeze(-1).to(tokens.dtype)
        tokens = tokens + gate * self.cell_names
        return torch.cat([tokens, self.learned.expand(tokens.shape[0], -1, -1)], dim=1)
