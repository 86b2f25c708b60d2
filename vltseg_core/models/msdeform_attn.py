"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch: bilinear sampling with
`F.grid_sample`, so the model exports to ONNX / TensorRT without the CUDA op or custom plugins."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_sample(values: list[torch.Tensor], sampling_locations: torch.Tensor,
                          attention_weights: torch.Tensor) -> torch.Tensor:
    """values[l]: (N, M, D, H_l, W_l); sampling_locations: (N, Lq, M, L, P, 2) in [0, 1] (x, y);
    attention_weights: (N, Lq, M, L, P) -> (N, Lq, M * D)."""
    n, lq, m, _, p, _ = sampling_locations.shape
    grids = (2 * sampling_locations - 1).transpose(1, 2).flatten(0, 1)  # (N*M, Lq, L, P, 2)
    weights = attention_weights.transpose(1, 2).flatten(0, 1).unsqueeze(1)  # (N*M, 1, Lq, L, P)
    out = None
    for lvl, value in enumerate(values):
        sampled = F.grid_sample(value.flatten(0, 1), grids[:, :, lvl], mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (N*M, D, Lq, P)
        term = (sampled * weights[:, :, :, lvl]).sum(-1)
        out = term if out is None else out + term
    return out.view(n, -1, lq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on rings around the reference point, one direction per head."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value_flat: torch.Tensor,
                spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        """query (N, Lq, C); reference_points (N, Lq, L, 2) normalised (x, y); value_flat (N, sum H_l*W_l, C)."""
        n, lq, _ = query.shape
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_flat)
        values = [v.transpose(1, 2).reshape(n, m, self.d_model // m, h, w)
                  for v, (h, w) in zip(value.split([h * w for h, w in spatial_shapes], dim=1), spatial_shapes)]
        offsets = self.sampling_offsets(query).view(n, lq, m, lv, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, lv * p).softmax(-1).view(n, lq, m, lv, p)
        # Offsets are in pixels of each level: divide x by W_l and y by H_l.
        scale = torch.stack([torch.stack([query.new_ones(()) / w, query.new_ones(()) / h]) for h, w in spatial_shapes])
        locations = reference_points[:, :, None, :, None, :] + offsets * scale[None, None, None, :, None, :]
        if torch.is_autocast_enabled(query.device.type):
            # Mask2Former runs the sampling in fp32 under mixed precision (its CUDA op is fp32 only): bf16 keeps
            # 8 significant bits, coarse for normalised sampling locations on the large fine levels.
            with torch.autocast(query.device.type, enabled=False):
                sampled = ms_deform_attn_sample([v.float() for v in values], locations.float(), weights.float())
            return self.output_proj(sampled)
        return self.output_proj(ms_deform_attn_sample(values, locations, weights))
