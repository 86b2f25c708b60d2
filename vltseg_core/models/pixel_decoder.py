"""Mask2Former's MSDeformAttnPixelDecoder: a 6-layer deformable-attention encoder over strides 8/16/32, then an
FPN step to stride 4 that gives the per-pixel mask features."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from vltseg_core.models.msdeform_attn import MSDeformAttn
from vltseg_core.models.position_encoding import PositionEmbeddingSine


def conv_gn(in_ch: int, out_ch: int, kernel: int, relu: bool = False, bias: bool = False) -> nn.Sequential:
    layers = OrderedDict(conv=nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias), norm=nn.GroupNorm(32, out_ch))
    if relu:
        layers["relu"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


class DeformableEncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference_points, src, spatial_shapes)))
        return self.norm2(src + self.dropout3(self.linear2(self.dropout2(F.relu(self.linear1(src))))))


def reference_points(spatial_shapes: list[tuple[int, int]], num_levels: int, like: torch.Tensor) -> torch.Tensor:
    """Pixel centres of every level, normalised to [0, 1], as (1, sum H*W, L, 2) (x, y)."""
    refs = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, device=like.device, dtype=like.dtype) + 0.5) / h
        xs = (torch.arange(w, device=like.device, dtype=like.dtype) + 0.5) / w
        refs.append(torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], -1).reshape(-1, 2))
    return torch.cat(refs, 0)[None, :, None, :].expand(-1, -1, num_levels, -1)


class MSDeformAttnPixelDecoder(nn.Module):
    """Inputs: features at strides 4, 8, 16, 32. Outputs: mask features (stride 4) and the three multi-scale
    maps (strides 32, 16, 8, coarse first) that the transformer decoder attends to in turn."""

    def __init__(self, in_channels: int, conv_dim: int = 256, mask_dim: int = 256, num_layers: int = 6,
                 num_heads: int = 8, num_points: int = 4, ffn_dim: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.num_levels = 3
        # Initialisation as Mask2Former's: input projections (with bias) xavier, bias 0; encoder weight matrices
        # xavier, then Deformable DETR's MSDeformAttn init; lateral / output / mask convs c2_xavier_fill.
        self.input_proj = nn.ModuleList([conv_gn(in_channels, conv_dim, 1, bias=True) for _ in range(self.num_levels)])
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, conv_dim))
        self.layers = nn.ModuleList([DeformableEncoderLayer(conv_dim, ffn_dim, self.num_levels, num_heads, num_points, dropout)
                                     for _ in range(num_layers)])
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for layer in self.layers:
            layer.self_attn._reset_parameters()
        nn.init.normal_(self.level_embed)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.lateral_conv = conv_gn(in_channels, conv_dim, 1)
        self.output_conv = conv_gn(conv_dim, conv_dim, 3, relu=True)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj.conv.weight, gain=1)
            nn.init.constant_(proj.conv.bias, 0)
        for conv in (self.lateral_conv.conv, self.output_conv.conv, self.mask_features):  # detectron2 c2_xavier_fill
            nn.init.kaiming_uniform_(conv.weight, a=1)
        nn.init.constant_(self.mask_features.bias, 0)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        res2, *deep = feats
        srcs = [proj(f) for proj, f in zip(self.input_proj, deep[::-1])]  # strides 32, 16, 8
        shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat([(self.pe_layer(s).flatten(2).transpose(1, 2) + self.level_embed[i])
                              for i, s in enumerate(srcs)], 1)
        refs = reference_points(shapes, self.num_levels, src_flat)
        x = src_flat
        for layer in self.layers:
            x = layer(x, pos_flat, refs, shapes)
        n, _, c = x.shape
        outs = [y.transpose(1, 2).reshape(n, c, h, w) for y, (h, w) in zip(x.split([h * w for h, w in shapes], 1), shapes)]
        y = self.lateral_conv(res2) + F.interpolate(outs[-1], size=res2.shape[-2:], mode="bilinear", align_corners=False)
        y = self.output_conv(y)
        return self.mask_features(y), outs
