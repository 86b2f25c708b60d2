"""The real-time decoder: SegFormer-style all-MLP fusion of the four pyramid levels (docs/model.md has the
speed comparison with Mask2Former that justifies it)."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32 if channels % 32 == 0 else 1, channels)


class LightHead(nn.Module):
    """Per-level 1x1 projection, upsample to stride 4, concatenate, 1x1 fuse, 1x1 classify."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1, num_levels: int = 4):
        super().__init__()
        self.proj = nn.ModuleList([nn.Conv2d(in_channels, channels, 1) for _ in range(num_levels)])
        self.fuse = nn.Sequential(OrderedDict(conv=nn.Conv2d(channels * num_levels, channels, 1, bias=False),
                                              norm=group_norm(channels), relu=nn.ReLU(inplace=True)))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        size = feats[0].shape[-2:]
        ups = [F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) if i else p(f)
               for i, (f, p) in enumerate(zip(feats, self.proj))]
        return {"seg_logits": self.classifier(self.dropout(self.fuse(torch.cat(ups, dim=1))))}

    @staticmethod
    def semantic_scores(outputs: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Raw outputs -> (N, C, *size) per-pixel class scores: a softmax, so they already sum to 1 and the
        predictor's one normalisation at the end (needed for Mask2Former's scores) changes nothing."""
        logits = F.interpolate(outputs["seg_logits"], size=size, mode="bilinear", align_corners=False)
        return channel_softmax(logits)


def channel_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 spelled out: ONNX Runtime's CPU Softmax on a non-last axis transposes the full-resolution
    tensor (51 ms vs 7 ms at 19x384x480, docs/benchmarks.md); torch pays about 1 ms more than `softmax(dim=1)`."""
    e = (logits - logits.amax(dim=1, keepdim=True)).exp()
    return e / e.sum(dim=1, keepdim=True)
