"""Low-rank adapters (LoRA, Hu et al. 2021) on a frozen backbone's linear layers, for training only.

Why: on a small dataset, fine-tuning a pretrained ViT's full weights overfits and forgets (the demo's three
fine-tuned blocks lost a point), while a rank-r update W + (alpha/r) B A of every block's linear layers adapts
all of them with few parameters. The update is a parametrization of `weight` (torch.nn.utils.parametrize), so it
also applies where a block reads `layer.weight` itself (timm's EVA attention does). The adapters never reach
inference: the trainer folds them into the weights (`merged_state_dict`) when it writes the final checkpoint, so
the result is a plain model of the preset, with the same cost and export path as before.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize


class LowRankUpdate(nn.Module):
    """weight -> weight + (alpha/r) B A, with B = 0 at the start (the layer starts as it was)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float):
        super().__init__()
        out_features, in_features = weight.shape
        kw = {"device": weight.device, "dtype": weight.dtype}
        self.lora_a = nn.Parameter(torch.randn(rank, in_features, **kw) / math.sqrt(in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, **kw))
        self.scaling = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scaling * self.lora_b @ self.lora_a


def add_lora(blocks: nn.Module, rank: int, alpha: float) -> int:
    """A trainable rank-`rank` update on every nn.Linear inside `blocks` (a ViT's attention and MLP
    projections); the layers' own weights keep their requires_grad. Returns how many layers."""
    layers = [m for m in blocks.modules() if isinstance(m, nn.Linear)]
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", LowRankUpdate(layer.weight, rank, alpha))
    return len(layers)


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s state dict with every low-rank update folded in (`X.weight` = W + (alpha/r) B A), i.e. that of
    the plain module; `module` itself is not changed (removing a parametrization edits a class that copies of
    the module share)."""
    state = {k: v for k, v in module.state_dict().items() if ".parametrizations.weight." not in k}
    for name, layer in module.named_modules():
        if parametrize.is_parametrized(layer, "weight"):
            with torch.no_grad():
                state[f"{name}.weight" if name else "weight"] = layer.weight.detach().clone()
    return state
