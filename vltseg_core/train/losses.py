"""Training losses: the Mask2Former set criterion (class CE with a down-weighted no-object class, mask BCE and
dice on importance-sampled points, deep supervision) and plain pixel cross-entropy for the light head."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vltseg_core.train.matcher import HungarianMatcher, point_sample

IGNORE_INDEX = 255


def semantic_targets(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> list[dict[str, torch.Tensor]]:
    """(N, H, W) trainId maps -> per image {labels: (K,), masks: (K, H, W)}, one binary mask per class present;
    ignored pixels belong to no mask."""
    out = []
    for label in labels:
        classes = torch.unique(label)
        classes = classes[classes != ignore_index]
        out.append({"labels": classes.long(), "masks": (label[None] == classes[:, None, None]).float()})
    return out


def uncertain_point_coords(logits: torch.Tensor, num_points: int, oversample_ratio: float = 3.0,
                           importance_sample_ratio: float = 0.75) -> torch.Tensor:
    """(M, 1, h, w) mask logits -> (M, P, 2) points: mostly where the prediction is least certain (|logit| small),
    the rest uniform (PointRend importance sampling as used by Mask2Former)."""
    m = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(m, num_sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits, coords).abs()[:, 0]
    num_uncertain = int(importance_sample_ratio * num_points)
    idx = torch.topk(uncertainty, k=num_uncertain, dim=1)[1]
    picked = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    return torch.cat([picked, torch.rand(m, num_points - num_uncertain, 2, device=logits.device)], dim=1)


class Mask2FormerLoss(nn.Module):
    """Set criterion over the final and every auxiliary decoder output (deep supervision)."""

    def __init__(self, num_classes: int, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75):
        super().__init__()
        self.num_classes = num_classes
        self.weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.matcher = HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
        self.num_points, self.oversample_ratio, self.importance_sample_ratio = (
            num_points, oversample_ratio, importance_sample_ratio)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight)

    def _single(self, logits: torch.Tensor, masks: torch.Tensor, targets: list[dict], num_masks: float) -> dict:
        indices = self.matcher(logits, masks, targets)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src] = targets[b]["labels"][tgt]
        loss_ce = F.cross_entropy(logits.float().transpose(1, 2), target_classes, self.empty_weight)

        src_masks = torch.cat([masks[b][src] for b, (src, _) in enumerate(indices)])[:, None].float()
        tgt_masks = torch.cat([targets[b]["masks"][tgt] for b, (_, tgt) in enumerate(indices)])[:, None]
        if len(src_masks) == 0:
            zero = masks.sum() * 0.0
            return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero}
        with torch.no_grad():
            coords = uncertain_point_coords(src_masks, self.num_points, self.oversample_ratio,
                                            self.importance_sample_ratio)
            point_labels = point_sample(tgt_masks, coords)[:, 0]
        point_logits = point_sample(src_masks, coords)[:, 0]
        loss_mask = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1)
        prob = point_logits.sigmoid()
        dice = 1 - (2 * (prob * point_labels).sum(-1) + 1) / (prob.sum(-1) + point_labels.sum(-1) + 1)
        return {"loss_ce": loss_ce, "loss_mask": loss_mask.sum() / num_masks, "loss_dice": dice.sum() / num_masks}

    def forward(self, outputs: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted losses (`loss` = their sum) for raw Mask2Former outputs and (N, H, W) trainId labels."""
        targets = semantic_targets(labels)
        num_masks = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=labels.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
            num_masks = num_masks / dist.get_world_size()
        num_masks = max(float(num_masks), 1.0)
        losses: dict[str, torch.Tensor] = {}
        stages = [outputs] + list(outputs.get("aux_outputs", []))
        for i, stage in enumerate(stages):
            suffix = "" if i == 0 else f"_{i - 1}"
            for name, value in self._single(stage["pred_logits"], stage["pred_masks"], targets, num_masks).items():
                losses[name + suffix] = value * self.weights[name]
        losses["loss"] = sum(losses.values())
        return losses


class PixelCrossEntropy(nn.Module):
    """Cross-entropy for dense logits (the light head), upsampled bilinearly to the label size."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, class_weight: list[float] | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weight", torch.tensor(class_weight) if class_weight else None)

    def forward(self, outputs: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = F.interpolate(outputs["seg_logits"].float(), size=labels.shape[-2:], mode="bilinear",
                               align_corners=False)
        loss = F.cross_entropy(logits, labels.long(), weight=self.class_weight, ignore_index=self.ignore_index)
        return {"loss_ce": loss, "loss": loss}


def build_loss(head_type: str, num_classes: int, cfg: dict | None = None) -> nn.Module:
    """The loss that fits the model's head (`mask2former` or `light`), options from the experiment config."""
    cfg = dict(cfg or {})
    return Mask2FormerLoss(num_classes, **cfg) if head_type == "mask2former" else PixelCrossEntropy(**cfg)
