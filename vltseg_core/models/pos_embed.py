"""Absolute position embeddings resampled to any patch grid, exactly and in a form TensorRT's parser accepts.

timm resamples with `F.interpolate(mode="bicubic", antialias=True)`, which exports to `Resize(antialias=1)`: the
TensorRT 10 ONNX parser refuses it ("Antialiasing is not supported currently", onnx-tensorrt onnxOpCheckers.cpp),
and dropping the antialias changes the numbers whenever the grid shrinks. Here the same separable filter (PyTorch's
antialiased bicubic: PIL's a = -0.5 kernel, widened by the scale when shrinking, weights renormalised at the borders)
is written as two small weight matrices built from `arange` arithmetic and applied with matmuls. Eager PyTorch and
every exported graph, fixed or dynamic, compute the same values for every grid, growing or shrinking; the graph holds
only Range/Cast/elementwise/ReduceSum/MatMul nodes (no Resize). For a fixed-size export those fold to constants.
"""
from __future__ import annotations

import torch

CUBIC_A = -0.5  # PyTorch's antialiased bicubic (and PIL's) kernel coefficient


def _cubic(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    inner = ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * CUBIC_A
    return torch.where(x < 1, inner, torch.where(x < 2, outer, torch.zeros_like(x)))


def resample_weights(new: int | torch.SymInt, old: int, device=None) -> torch.Tensor:
    """(new, old) float32 matrix M with M @ v = antialiased bicubic resampling of v from `old` to `new` samples."""
    scale = old / new  # > 1 shrinks: the kernel widens by `scale` (antialiasing), weights follow the filter
    stretch = torch.sym_max(scale, 1.0)
    centre = (torch.arange(new, device=device, dtype=torch.float32) + 0.5) * scale
    source = torch.arange(old, device=device, dtype=torch.float32) + 0.5
    weights = _cubic((source[None, :] - centre[:, None]) / stretch)
    return weights / weights.sum(dim=1, keepdim=True)


def resample_abs_pos_embed(posemb: torch.Tensor, new_size: list[int], old_size: list[int] | None = None,
                           num_prefix_tokens: int = 1, interpolation: str = "bicubic", antialias: bool = True,
                           verbose: bool = False, align_corners: bool | None = None) -> torch.Tensor:
    """Drop-in for `timm.layers.resample_abs_pos_embed` (same signature and defaults, bicubic + antialias only)."""
    if interpolation != "bicubic" or not antialias or align_corners:
        raise ValueError("vltseg's position-embedding resampler implements timm's default (bicubic, antialias)")
    if old_size is None:
        side = int(round((posemb.shape[1] - num_prefix_tokens) ** 0.5))
        old_size = [side, side]
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(old_size[0], old_size[1], dim)
    rows = resample_weights(new_size[0], old_size[0], grid.device)
    cols = resample_weights(new_size[1], old_size[1], grid.device)
    # (H, h) x (h, w, D) -> (H, w, D); then every row's (w, D) by (W, w) -> (H, W, D)
    out = torch.matmul(cols, torch.matmul(rows, grid.reshape(old_size[0], -1)).reshape(-1, old_size[1], dim))
    out = out.reshape(1, -1, dim).to(posemb.dtype)
    return torch.cat([prefix, out], dim=1) if num_prefix_tokens else out
