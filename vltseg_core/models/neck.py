"""ViTDet simple feature pyramid: four maps of the one ViT scale (stride p) -> strides p/4, p/2, p, 2p
(= 4, 8, 16, 32 for p = 16) by deconvolution / identity / max-pooling, then 1x1 + 3x3 convs to `out_channels`."""
from __future__ import annotations

from collections import OrderedDict

import torch
from timm.layers import LayerNorm2d
from torch import nn


def _project(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv1=nn.Conv2d(in_ch, out_ch, 1, bias=False), norm1=LayerNorm2d(out_ch),
                                     conv2=nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), norm2=LayerNorm2d(out_ch)))


class SimpleFeaturePyramid(nn.Module):
    """Level i takes the i-th backbone feature map (one per `out_indices` block, as in BEiT/EVA segmentation)."""

    def __init__(self, embed_dim: int, out_channels: int = 256):
        super().__init__()
        d = embed_dim
        self.rescale = nn.ModuleList([
            nn.Sequential(OrderedDict(up1=nn.ConvTranspose2d(d, d // 2, 2, stride=2), norm=LayerNorm2d(d // 2),
                                      act=nn.GELU(), up2=nn.ConvTranspose2d(d // 2, d // 4, 2, stride=2))),
            nn.ConvTranspose2d(d, d // 2, 2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(2, stride=2),
        ])
        self.proj = nn.ModuleList([_project(c, out_channels) for c in (d // 4, d // 2, d, d)])
        self.out_channels = out_channels

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [proj(rescale(f)) for f, rescale, proj in zip(feats, self.rescale, self.proj)]
