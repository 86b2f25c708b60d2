"""Hungarian matching of Mask2Former queries to ground-truth segments (one segment per class present), with the
mask costs computed on randomly sampled points as in the original implementation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Values of (N, C, H, W) maps at (N, P, 2) points in [0, 1] (x, y) -> (N, C, P), bilinear."""
    grid = 2.0 * coords.unsqueeze(2) - 1.0
    return F.grid_sample(inputs, grid, align_corners=False).squeeze(3)


def batch_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits x (T, P) binary -> (Q, T) dice cost."""
    inputs = inputs.sigmoid()
    numerator = 2 * inputs @ targets.T
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_bce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits x (T, P) binary -> (Q, T) mean sigmoid cross-entropy."""
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / inputs.shape[1]


class HungarianMatcher:
    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544):
        self.cost_class, self.cost_mask, self.cost_dice, self.num_points = cost_class, cost_mask, cost_dice, num_points

    @torch.no_grad()
    def __call__(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                 targets: list[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each image, (query indices, target indices) of the minimum-cost assignment."""
        indices = []
        for b, target in enumerate(targets):
            if len(target["labels"]) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            prob = pred_logits[b].float().softmax(-1)
            cost_class = -prob[:, target["labels"]]
            coords = torch.rand(1, self.num_points, 2, device=pred_masks.device)
            tgt = point_sample(target["masks"][:, None].float(), coords.repeat(len(target["masks"]), 1, 1))[:, 0]
            out = point_sample(pred_masks[b][:, None].float(), coords.repeat(len(pred_masks[b]), 1, 1))[:, 0]
            cost = (self.cost_mask * batch_bce_cost(out, tgt) + self.cost_class * cost_class
                    + self.cost_dice * batch_dice_cost(out, tgt))
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
