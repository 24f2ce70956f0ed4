"""Feature backbones for the PatchCore expert: multi-scale CNN feature maps.

``build_backbone(cfg, weights_dir)`` returns a frozen module mapping images (B, 3, H, W),
ImageNet-normalised, to a list of feature maps, one per configured stage, with
``.channels`` and ``.strides`` describing them.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from actors.modeling.weights import load_state_dict
from configs.schema import BackboneConfig, BackboneKind

log = logging.getLogger(__name__)


class TinyCNN(nn.Module):
    """Random-init 4-stage CNN (strides 2/4/8/16) for unit tests of the `tiny` preset."""

    def __init__(self, width: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        chans = [3, width, width * 2, width * 3, width * 4]
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            )
            for i in range(4)
        )
        with torch.no_grad():  # deterministic init independent of the global RNG
            for p in self.parameters():  # every tensor: biases too (the global RNG is not ours)
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / p[0].numel()) ** 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        self.channels_all = chans[1:]
        self.strides_all = [2, 4, 8, 16]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)


def _fold_children(module: nn.Module) -> int:
    folded = 0
    names = list(module._modules)
    for i, name in enumerate(names):
        child = module._modules[name]
        prev = module._modules[names[i - 1]] if i else None
        if (
            type(child) is not nn.BatchNorm2d and not _is_bn_act(child)
            or not isinstance(prev, nn.Conv2d)
            or prev.out_channels != child.num_features
            or not child.track_running_stats
        ):
            folded += _fold_children(child) if child is not None else 0
            continue
        _fold_into(prev, child)
        # timm's BatchNormAct2d = batch norm, then dropout (identity in eval), then activation.
        module._modules[name] = child.act if _is_bn_act(child) else nn.Identity()
        folded += 1
    return folded


def _is_bn_act(m: nn.Module | None) -> bool:
    return isinstance(m, nn.BatchNorm2d) and type(m).__name__ == "BatchNormAct2d" and hasattr(m, "act")


@torch.no_grad()
def fold_batchnorm(net: nn.Module, probe_size: int = 64) -> nn.Module:
    """Frozen conv -> batch-norm pairs merged into the conv: same features, less work.

    On 2 CPU cores the small backbone at 288 px, batch 8, takes 0.074 s instead of 0.185 s:
    eval-mode batch norm (timm's BatchNormAct2d) is a separate memory-bound pass over every
    activation. Pairs are found by module order (conv registered right before its norm, as in
    timm's blocks and ``TinyCNN``); the folded net is checked against the original on a random
    probe, and the original is kept, with a warning, if they differ beyond float rounding.
    """
    net.eval()
    folded = copy.deepcopy(net)
    if _fold_children(folded) == 0:
        return net
    probe = torch.randn(2, 3, probe_size, probe_size, generator=torch.Generator().manual_seed(0))
    for a, b in zip(net(probe), folded(probe)):
        err = ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()
        if not err < 1e-4:
            log.warning("batch-norm folding changed the features (rel. error %.2e); not folded", err)
            return net
    return folded


class Backbone(nn.Module):
    """Selects the configured stages of a feature network; always in eval mode, frozen."""

    def __init__(self, net: nn.Module, layers: tuple[int, ...], channels, strides) -> None:
        super().__init__()
        self.net = fold_batchnorm(net)
        self.layers = layers
        self.channels = [channels[i] for i in layers]
        self.strides = [strides[i] for i in layers]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Backbone":  # BatchNorm stats stay frozen
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.net(x)
        return [feats[i] for i in self.layers]


def build_backbone(cfg: BackboneConfig, weights_dir, seed: int = 0) -> Backbone:
    if cfg.kind is BackboneKind.tiny_cnn:
        net = TinyCNN(cfg.tiny_width, seed=seed)
        if max(cfg.layers) >= 4:
            raise ValueError(f"expert.backbone.layers: tiny_cnn has stages 0-3, got {cfg.layers}")
        return Backbone(net, cfg.layers, net.channels_all, net.strides_all)

    from actors.modeling._timm import import_timm

    timm = import_timm()
    name = cfg.kind.value
    full = timm.create_model(name, pretrained=False)
    full.load_state_dict(load_state_dict(weights_dir, name), strict=True)
    n_stages = len(timm.create_model(name, pretrained=False, features_only=True).feature_info)
    if max(cfg.layers) >= n_stages:
        raise ValueError(f"expert.backbone.layers: {name} has stages 0-{n_stages - 1}")
    net = timm.create_model(name, pretrained=False, features_only=True, out_indices=cfg.layers)
    # features_only keeps a subset of the full model's parameters under the same names.
    own = net.state_dict()
    full_sd = full.state_dict()
    missing = [k for k in own if k not in full_sd]
    if missing:
        raise RuntimeError(f"{name}: feature model keys absent from weights: {missing[:5]}")
    net.load_state_dict({k: full_sd[k] for k in own}, strict=True)
    # timm's EfficientNetFeatures runs every block even when the last stage asked for is an
    # earlier one; the blocks after it only cost time (5% at layers [2, 3]).
    last = max(getattr(net, "_stage_out_idx", None) or [0])
    if getattr(net, "feature_hooks", True) is None and 0 < last < len(net.blocks):
        net.blocks = net.blocks[:last]
    info = net.feature_info
    channels = dict(zip(cfg.layers, info.channels()))
    strides = dict(zip(cfg.layers, info.reduction()))
    return _Selected(net, cfg.layers, channels, strides)


class _Selected(Backbone):
    """timm ``features_only`` already returns just the configured stages."""

    def __init__(self, net, layers, channels: dict, strides: dict) -> None:
        full_channels = [channels.get(i, 0) for i in range(max(layers) + 1)]
        full_strides = [strides.get(i, 0) for i in range(max(layers) + 1)]
        super().__init__(net, layers, full_channels, full_strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(x))
