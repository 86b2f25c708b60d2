"""ConfusionMatrix / IoU against the official Cityscapes pixel-level evaluator, the report writers, and
evaluate() (plain and TTA) with a real (tiny, random-weight) predictor."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vltseg_core.data.datasets import build_dataset
from vltseg_core.errors import VLTSegError
from vltseg_core.evaluation import (TTA, ConfusionMatrix, TargetResult, evaluate, make_report, tta_probs,
                                    write_reports)


def test_confusion_matrix_counts_unknown_predictions_as_misses_and_skips_ignore():
    cm = ConfusionMatrix(num_classes=3)
    cm.update(np.array([[0, 1, 255], [2, 1, 0]], np.uint8), np.array([[0, 1, 1], [255, 2, 2]], np.uint8))
    # gt 0: 1 tp. gt 1: 1 tp + 1 unknown. gt 2: predicted 1 and 0. gt 255 ignored (whatever was predicted).
    assert cm.mat.tolist() == [[1, 0, 0, 0], [0, 1, 0, 1], [1, 1, 0, 0]]
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == pytest.approx(1 / 3) and iou[2] == 0.0
    assert cm.miou() == pytest.approx((1 / 2 + 1 / 3) / 3)
    assert cm.miou([0, 1]) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert np.isnan(ConfusionMatrix(3).iou()).all() and np.isnan(ConfusionMatrix(3).miou())


def test_confusion_matrix_merge_and_bad_input():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 19, (5, 7)) for _ in range(4)]
    labels = [np.where(rng.random((5, 7)) < 0.2, 255, rng.integers(0, 19, (5, 7))) for _ in range(4)]
    whole, a, b = ConfusionMatrix(), ConfusionMatrix(), ConfusionMatrix()
    for i, (p, l) in enumerate(zip(preds, labels)):
        whole.update(p, l)
        (a if i % 2 else b).update(p, l)
    assert (a.merge(b).mat == whole.mat).all() and whole.mat.sum() == sum((l != 255).sum() for l in labels)
    with pytest.raises(VLTSegError, match="prediction shape"):
        whole.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(VLTSegError, match=r"label ids \[19\] are not classes"):
        whole.update(np.zeros((1, 1)), np.full((1, 1), 19))


def test_agrees_with_the_official_cityscapes_evaluator(tmp_path):
    """Same predictions, same ground truth: our per-class IoU and mIoU equal those of
    cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    from cityscapesscripts.helpers.labels import labels, trainId2label

    rng = np.random.default_rng(42)
    ids = [l.id for l in labels if l.id >= 0 and l.id != 31]  # no 'train' anywhere: a nan class in both
    gt_files, pred_files = [], []
    cm = ConfusionMatrix()
    for i in range(3):
        frame = f"frankfurt_000000_{i:06d}"
        gt = rng.choice(ids, size=(12, 16)).repeat(4, 0).repeat(4, 1)  # 48x64, blocky like real labels
        gt_path = tmp_path / "gtFine" / "val" / "frankfurt" / f"{frame}_gtFine_labelIds.png"
        gt_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt.astype(np.uint8)).save(gt_path)
        img_path = tmp_path / "leftImg8bit" / "val" / "frankfurt" / f"{frame}_leftImg8bit.png"
        img_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(img_path)
        gt_files.append(str(gt_path))
    dataset = build_dataset("cityscapes", tmp_path, "val")
    for i, sample in enumerate(dataset):
        pred = sample.label.copy()
        noise = rng.random(pred.shape)
        pred[noise < 0.35] = rng.choice([c for c in range(19) if c != 16], size=int((noise < 0.35).sum()))
        pred[(noise > 0.35) & (noise < 0.4)] = 255  # unknown: must count as a miss in both
        pred[pred == 16] = 13
        cm.update(pred, sample.label)
        label_ids = np.zeros(256, np.uint8)  # trainId -> labelId; 255 (unknown) -> 0 'unlabeled'
        label_ids[:19] = [trainId2label[t].id for t in range(19)]
        pred_path = tmp_path / "pred" / f"{i}.png"
        pred_path.parent.mkdir(exist_ok=True)
        Image.fromarray(label_ids[pred]).save(pred_path)
        pred_files.append(str(pred_path))

    args = official.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet, args.evalPixelAccuracy = False, False, True, False
    result = official.evaluateImgLists(pred_files, gt_files, args)

    ours = cm.iou()
    for train_id in range(19):
        theirs = result["classScores"][trainId2label[train_id].name]
        if np.isnan(theirs):
            assert np.isnan(ours[train_id]), train_id
        else:
            assert ours[train_id] == pytest.approx(theirs, abs=1e-12), train_id
    assert np.isnan(ours[16])
    assert cm.miou(dataset.class_ids) == pytest.approx(result["averageScoreClasses"], abs=1e-12)


def _result(name: str, seed: int, class_ids: list[int]) -> TargetResult:
    rng = np.random.default_rng(seed)
    cm = ConfusionMatrix()
    label = rng.integers(0, 19, (20, 30))
    cm.update(np.where(rng.random((20, 30)) < 0.7, label, rng.integers(0, 19, (20, 30))), label)
    return TargetResult(name=name, confusion=cm, class_ids=class_ids, num_images=2)


def test_report_writers_json_markdown_chart(tmp_path):
    results = [_result("cityscapes:val", 0, list(range(19))), _result("camvid:val", 1, [0, 1, 2, 4, 5, 7, 8, 10, 11, 12, 13])]
    report = make_report(results, {"model": "m1", "tta": None})
    paths = write_reports(report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert [t["name"] for t in data["targets"]] == ["cityscapes:val", "camvid:val"]
    camvid = data["targets"][1]
    assert list(camvid["iou"]) == ["road", "sidewalk", "building", "fence", "pole", "traffic sign", "vegetation",
                                   "sky", "person", "rider", "car"]
    assert camvid["miou"] == pytest.approx(100 * results[1].confusion.miou(results[1].class_ids))
    assert np.array(camvid["confusion_matrix"]).tolist() == results[1].confusion.mat.tolist()
    assert data["mean_miou"] == pytest.approx((data["targets"][0]["miou"] + camvid["miou"]) / 2)
    md = paths["markdown"].read_text()
    assert "| model | cityscapes:val | camvid:val | mean |" in md
    assert f"| m1 | {data['targets'][0]['miou']:.2f} | {camvid['miou']:.2f} | {data['mean_miou']:.2f} |" in md
    assert "## camvid:val (2 images)" in md and "| rider |" in md
    with Image.open(paths["chart"]) as chart:
        assert chart.format == "PNG" and chart.size[0] > 300


@pytest.fixture(scope="module")
def tiny_predictor():
    from vltseg_core.predictor import load_predictor

    torch.manual_seed(0)
    return load_predictor("tiny-test")


def _camvid_fixture(root: Path, n: int = 2) -> None:
    rng = np.random.default_rng(3)
    lines = []
    for i in range(n):
        for folder, arr in (("val", rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)),
                            ("valannot", rng.integers(0, 12, (24, 32), dtype=np.uint8))):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / folder / f"f{i}.png")
        lines.append(f"val/f{i}.png valannot/f{i}.png")
    (root / "val.txt").write_text("\n".join(lines) + "\n")


def test_evaluate_with_a_real_predictor_and_tta(tmp_path, tiny_predictor):
    _camvid_fixture(tmp_path)
    ds = build_dataset("camvid", tmp_path, "val")
    report = evaluate(tiny_predictor, ds, model="tiny")
    cm = ConfusionMatrix()
    for s in ds:
        cm.update(tiny_predictor.predict(s.image).labels, s.label)
    target = report["targets"][0]
    assert target["name"] == "camvid:val" and target["num_images"] == 2
    assert target["confusion_matrix"] == cm.mat.tolist()
    assert target["miou"] == pytest.approx(100 * cm.miou(ds.class_ids))

    # TTA: one scale without flip is the plain prediction; flip averages the mirrored view back in
    assert evaluate(tiny_predictor, ds, tta=TTA(scales=(1.0,), flip=False))["targets"][0]["confusion_matrix"] \
        == cm.mat.tolist()
    image = ds[0].image
    flipped = tta_probs(tiny_predictor, image, TTA(scales=(1.0,), flip=True))
    manual = (tiny_predictor.predict_probs(image) + tiny_predictor.predict_probs(image[:, ::-1].copy())[:, :, ::-1]) / 2
    assert np.allclose(flipped, manual, atol=1e-5)
    multi = tta_probs(tiny_predictor, image, TTA(scales=(0.5, 1.0, 1.5), flip=True))
    assert multi.shape == (19, 24, 32) and np.allclose(multi.sum(0), 1.0, atol=1e-4)
    assert not np.allclose(multi, flipped, atol=1e-4)
    assert evaluate(tiny_predictor, ds, tta=True, limit=1)["tta"]["scales"] == list(TTA().scales)
