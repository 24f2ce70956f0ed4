"""Feature backbones for the PatchCore expert: multi-scale CNN feature maps.

``build_backbone(cfg, weights_dir)`` returns a frozen module mapping images (B, 3, H, W),
ImageNet-normalised, to a list of feature maps, one per configured stage, with
``.channels`` and ``.strides`` describing them.
"""

from __future__ import annotations

import torch
from torch import nn

from actors.modeling.weights import load_state_dict
from configs.schema import BackboneConfig, BackboneKind


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


class Backbone(nn.Module):
    """Selects the configured stages of a feature network; always in eval mode, frozen."""

    def __init__(self, net: nn.Module, layers: tuple[int, ...], channels, strides) -> None:
        super().__init__()
        self.net = net
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
