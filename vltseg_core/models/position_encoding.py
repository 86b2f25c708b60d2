"""DETR's normalised sine position encoding, computed from the feature shape alone (no padding mask:
inputs are padded by the model, so every position is valid), which keeps ONNX export shape-dynamic."""
from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, 2 * num_pos_feats, H, W)."""
        n, _, h, w = x.shape
        eps, scale = 1e-6, 2 * math.pi
        y_embed = torch.arange(1, h + 1, device=x.device, dtype=x.dtype) / (h + eps) * scale
        x_embed = torch.arange(1, w + 1, device=x.device, dtype=x.dtype) / (w + eps) * scale
        dim_t = torch.arange(self.num_pos_feats, device=x.device, dtype=x.dtype)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, None] / dim_t  # (W, F)
        pos_y = y_embed[:, None] / dim_t  # (H, F)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat((pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)), dim=2)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(n, -1, -1, -1)
