"""Mask2Former set criterion, Hungarian matcher and the light head's pixel cross-entropy on small real tensors."""
import pytest
import torch
import torch.nn.functional as F

try:  # the train extra's scipy: without it these tests are skipped, while the module still imports (launch_testing's
    # pytest plugin, i.e. colcon test on a ROS 2 install, imports every test module of the folder: one failing import
    # would stop them all)
    from vltseg_core.train.losses import Mask2FormerLoss, PixelCrossEntropy, semantic_targets
    from vltseg_core.train.matcher import HungarianMatcher
except ModuleNotFoundError as missing:
    if missing.name != "scipy":
        raise
    pytestmark = pytest.mark.skip(reason="scipy (train extra) not installed")

NUM_CLASSES = 5


def _labels() -> torch.Tensor:
    label = torch.full((1, 16, 16), 255, dtype=torch.uint8)
    label[0, :8, :] = 1
    label[0, 8:, :8] = 3
    label[0, 8:, 12:] = 4
    return label


def test_semantic_targets_one_mask_per_class_ignore_left_out():
    (t,) = semantic_targets(_labels())
    assert t["labels"].tolist() == [1, 3, 4]
    assert t["masks"].shape == (3, 16, 16)
    assert t["masks"].sum().item() == 16 * 8 + 8 * 8 + 8 * 4  # the 255 pixels belong to no mask
    assert t["masks"].sum(0).max().item() == 1


def _perfect_outputs(order: list[int], num_queries: int = 6) -> dict:
    """Queries whose class scores and masks equal the targets, in the given query slots."""
    (t,) = semantic_targets(_labels())
    logits = torch.full((1, num_queries, NUM_CLASSES + 1), -10.0)
    logits[0, :, NUM_CLASSES] = 10.0  # unmatched queries say 'no object'
    masks = torch.full((1, num_queries, 16, 16), -10.0)
    for target_idx, query in enumerate(order):
        logits[0, query] = -10.0
        logits[0, query, t["labels"][target_idx]] = 10.0
        masks[0, query] = t["masks"][target_idx] * 20.0 - 10.0
    return {"pred_logits": logits, "pred_masks": masks}


def test_matcher_finds_the_permutation():
    out = _perfect_outputs([4, 0, 2])
    (rows, cols), = HungarianMatcher(num_points=512)(out["pred_logits"], out["pred_masks"], semantic_targets(_labels()))
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 4, 1: 0, 2: 2}


def test_loss_is_small_for_perfect_and_large_for_wrong_predictions():
    torch.manual_seed(0)
    crit = Mask2FormerLoss(NUM_CLASSES, num_points=1024)
    good = crit(_perfect_outputs([4, 0, 2]), _labels().long())
    wrong = _perfect_outputs([4, 0, 2])
    wrong["pred_masks"] = -wrong["pred_masks"]  # every mask inverted
    bad = crit(wrong, _labels().long())
    assert good["loss_ce"].item() < 0.01
    # the sampled points concentrate on mask boundaries (importance sampling), where even a perfect +-10 logit
    # map is interpolated towards 0: the mask terms stay moderate there, far below the inverted masks'
    assert bad["loss_mask"].item() > 5 * good["loss_mask"].item()
    assert bad["loss"].item() > 10 * good["loss"].item()
    # weights of the recipe: CE x2 (no-object class x0.1), BCE x5, dice x5
    assert crit.weights == {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    assert crit.empty_weight.tolist() == [1.0] * NUM_CLASSES + [pytest.approx(0.1)]


def test_deep_supervision_and_gradients():
    torch.manual_seed(0)
    crit = Mask2FormerLoss(NUM_CLASSES, num_points=256)
    stage = lambda: {"pred_logits": torch.randn(1, 6, NUM_CLASSES + 1, requires_grad=True),  # noqa: E731
                     "pred_masks": torch.randn(1, 6, 4, 4, requires_grad=True)}
    outputs = stage()
    outputs["aux_outputs"] = [stage(), stage()]
    losses = crit(outputs, _labels().long())
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_1"} <= set(losses)
    parts = sum(v for k, v in losses.items() if k != "loss")
    assert torch.allclose(losses["loss"], parts)
    losses["loss"].backward()
    assert outputs["aux_outputs"][1]["pred_masks"].grad.abs().sum() > 0
    assert outputs["pred_logits"].grad.abs().sum() > 0


def test_importance_sampling_prefers_uncertain_points():
    from vltseg_core.train.losses import uncertain_point_coords

    torch.manual_seed(0)
    logits = torch.full((1, 1, 32, 32), 10.0)
    logits[..., :, 16:] = 0.0  # right half uncertain
    coords = uncertain_point_coords(logits, 400)
    assert coords.shape == (1, 400, 2)
    right = (coords[0, :, 0] > 0.5).float().mean().item()
    assert right > 0.8  # 75 % importance-sampled + half of the 25 % uniform


def test_pixel_cross_entropy_upsamples_and_ignores():
    torch.manual_seed(0)
    logits = torch.randn(1, NUM_CLASSES, 4, 4)
    labels = _labels().long()
    got = PixelCrossEntropy()({"seg_logits": logits}, labels)["loss"]
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(got, F.cross_entropy(up, labels, ignore_index=255))
