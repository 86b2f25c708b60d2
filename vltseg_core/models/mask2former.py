"""Mask2Former head (pixel decoder + masked-attention transformer decoder) and its semantic inference."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vltseg_core.models.pixel_decoder import MSDeformAttnPixelDecoder
from vltseg_core.models.transformer_decoder import MaskedTransformerDecoder


class Mask2FormerHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, hidden_dim: int = 256, num_queries: int = 100,
                 dec_layers: int = 9, dec_heads: int = 8, dec_ffn_dim: int = 2048, enc_layers: int = 6,
                 enc_heads: int = 8, enc_points: int = 4, enc_ffn_dim: int = 1024):
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(in_channels, conv_dim=hidden_dim, mask_dim=hidden_dim,
                                                      num_layers=enc_layers, num_heads=enc_heads,
                                                      num_points=enc_points, ffn_dim=enc_ffn_dim)
        self.predictor = MaskedTransformerDecoder(hidden_dim, num_classes, hidden_dim=hidden_dim, num_queries=num_queries,
                                                  nheads=dec_heads, dim_feedforward=dec_ffn_dim, dec_layers=dec_layers,
                                                  mask_dim=hidden_dim)

    def forward(self, feats: list[torch.Tensor]) -> dict:
        """-> pred_logits (N,Q,C+1), pred_masks (N,Q,H/4,W/4), aux_outputs (one dict per earlier decoder stage)."""
        mask_features, multi_scale = self.pixel_decoder(feats)
        return self.predictor(multi_scale, mask_features)

    @staticmethod
    def semantic_scores(outputs: dict, size: tuple[int, int]) -> torch.Tensor:
        """Mask2Former semantic inference, softmax(class)[..., :-1] x sigmoid(mask) with the masks upsampled to the
        input first, left unnormalised (each pixel sums to anything in [0, Q]) as Mask2Former and mmseg return it:
        sliding windows and TTA views are averaged on these scores and the predictor normalises once at the end
        (normalising each window first can flip the argmax where windows overlap)."""
        masks = F.interpolate(outputs["pred_masks"], size=size, mode="bilinear", align_corners=False).sigmoid()
        cls = outputs["pred_logits"].softmax(-1)[..., :-1]
        return torch.einsum("bqc,bqhw->bchw", cls, masks)
