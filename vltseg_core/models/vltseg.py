"""The VLTSeg module: raw RGB pixels -> normalise -> pad -> ViT -> simple feature pyramid -> head ->
per-pixel class scores (docs/ARCHITECTURE.md, "Model contract")."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vltseg_core.errors import VLTSegError
from vltseg_core.models.backbone import ViTBackbone
from vltseg_core.models.light_head import LightHead
from vltseg_core.models.mask2former import Mask2FormerHead
from vltseg_core.models.neck import SimpleFeaturePyramid

HEADS: dict[str, type[nn.Module]] = {"light": LightHead, "mask2former": Mask2FormerHead}


class VLTSeg(nn.Module):
    def __init__(self, preset: dict[str, Any], num_classes: int):
        super().__init__()
        self.preset = preset
        self.num_classes = int(num_classes)
        self.class_table = str(preset.get("class_table", "cityscapes"))
        self.backbone = ViTBackbone(**preset["backbone"])
        self.neck = SimpleFeaturePyramid(self.backbone.embed_dim, **preset.get("neck", {}))
        head_cfg = dict(preset["head"])
        head_type = head_cfg.pop("type")
        if head_type not in HEADS:
            raise VLTSegError(f"unknown head type '{head_type}' in preset '{preset.get('name')}' (expected one of {sorted(HEADS)})")
        self.head = HEADS[head_type](in_channels=self.neck.out_channels, num_classes=self.num_classes, **head_cfg)
        # Stride-2p level (max-pooled) needs an even patch grid: pad inputs to a multiple of 2 * patch.
        self.size_divisor = 2 * self.backbone.patch_size
        norm = preset["input"]
        # Normalisation lives in the model so exported graphs take raw 0..255 pixels; not part of the weights.
        self.register_buffer("pixel_mean", torch.tensor(norm["mean"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(norm["std"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def _normalise_and_pad(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        d = self.size_divisor
        return F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N,3,H,W) RGB 0..255 -> pyramid features at strides 4, 8, 16, 32 (of the padded input)."""
        return self.neck(self.backbone(self._normalise_and_pad(images)))

    def forward_head(self, features: list[torch.Tensor]) -> dict[str, Any]:
        return self.head(features)

    def forward_train(self, images: torch.Tensor) -> dict[str, Any]:
        return self.forward_head(self.forward_features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) float RGB 0..255 -> (N,C,H,W) non-negative class scores, argmax = class. Not normalised
        (Mask2Former's semantic scores; the light head's are a softmax): the predictor averages windows / views
        on them and divides each pixel by its sum once at the end, as mmseg does."""
        h, w = images.shape[-2:]
        x = self._normalise_and_pad(images)
        outputs = self.head(self.neck(self.backbone(x)))
        scores = self.head.semantic_scores(outputs, (x.shape[-2], x.shape[-1]))
        return scores[:, :, :h, :w]
