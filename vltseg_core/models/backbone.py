"""ViT backbones by name, all timm models (open_clip's EVA02 towers are timm `Eva` models), giving the
multi-block features that the simple feature pyramid turns into strides 4..32.

Every backbone is built with `dynamic_img_size=True`: any input size works, absolute position embeddings are
resampled to the patch grid on the fly and RoPE (EVA02) is computed for the actual grid. The resampling is
vltseg_core.models.pos_embed's: timm's own numbers (antialiased bicubic) without the antialiased Resize node that
TensorRT's ONNX parser refuses. timm's two ViT families look the function up in their module namespace at call
time, so binding it there is the one place that changes it for every preset."""
from __future__ import annotations

from typing import Any

import timm
import timm.models.eva
import timm.models.vision_transformer
import torch
from torch import nn

from vltseg_core.errors import VLTSegError
from vltseg_core.models.pos_embed import resample_abs_pos_embed

for _family in (timm.models.eva, timm.models.vision_transformer):
    _family.resample_abs_pos_embed = resample_abs_pos_embed

# backbone type -> (timm model name, checkpoint family). The family says which key layout the external
# weights use (see vltseg_core.checkpoint.load_backbone_weights).
BACKBONE_TYPES: dict[str, tuple[str, str]] = {
    "eva02-clip-l14": ("eva02_large_patch14_clip_224", "eva"),
    "eva02-clip-b16": ("eva02_base_patch16_clip_224", "eva"),
    "eva02-tiny": ("eva02_tiny_patch14_224", "eva"),
    "clip-l14": ("vit_large_patch14_clip_quickgelu_224", "vit"),
    "clip-b16": ("vit_base_patch16_clip_quickgelu_224", "vit"),
    "dinov2": ("vit_small_patch14_dinov2", "vit"),
}


class ViTBackbone(nn.Module):
    """A timm ViT at `self.vit`; `forward` returns the token maps (N, D, H/p, W/p) of the `out_indices` blocks."""

    def __init__(self, type: str, out_indices: list[int], img_size: int | list[int] = 224,
                 patch_size: int | None = None, drop_path_rate: float = 0.0, timm_kwargs: dict[str, Any] | None = None):
        super().__init__()
        if type not in BACKBONE_TYPES:
            raise VLTSegError(f"unknown backbone type '{type}' (expected one of {sorted(BACKBONE_TYPES)})")
        self.type = type
        self.timm_name, self.family = BACKBONE_TYPES[type]
        kwargs: dict[str, Any] = dict(timm_kwargs or {})
        if patch_size is not None:
            kwargs["patch_size"] = int(patch_size)
        self.vit = timm.create_model(self.timm_name, pretrained=False, num_classes=0, img_size=img_size,
                                     dynamic_img_size=True, drop_path_rate=drop_path_rate, **kwargs)
        depth = len(self.vit.blocks)
        bad = [i for i in out_indices if not 0 <= int(i) < depth]
        if bad:
            raise VLTSegError(f"backbone.out_indices {bad} out of range for {type} with {depth} blocks (expected 0..{depth - 1})")
        self.out_indices = [int(i) for i in out_indices]
        self.embed_dim = int(self.vit.embed_dim)
        self.patch_size = int(self.vit.patch_embed.patch_size[0])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The maps in `out_indices` order, repeats allowed: [11, 11, 11, 11] feeds the last block to every pyramid
        level (ViTDet's simple feature pyramid), which a frozen backbone needs (MODEL_CARD.md)."""
        blocks = sorted(set(self.out_indices))
        maps = self.vit.forward_intermediates(x, indices=blocks, norm=False, output_fmt="NCHW",
                                              intermediates_only=True)
        by_block = dict(zip(blocks, maps))
        return [by_block[i] for i in self.out_indices]
