"""Semantic segmentation metrics and the reports shared by `vltseg eval` and `vltseg replay`.

IoU follows the official Cityscapes pixel-level evaluator: a prediction that is not a class (255 = unknown)
is a false negative of the ground-truth class and a false positive of nothing; ground-truth 255 is ignored;
a class with neither ground truth nor predictions has IoU nan and is left out of the mean.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vltseg_core.classes import ClassTable, load_class_table
from vltseg_core.errors import VLTSegError


class ConfusionMatrix:
    """Pixel counts, rows = ground truth class, columns = predicted class (+ one column for 'no class')."""

    def __init__(self, num_classes: int = 19, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes + 1), np.int64)

    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        """Add one prediction (HxW class ids; ids >= num_classes count as 'no class') against its label."""
        pred, label = np.asarray(pred), np.asarray(label)
        if pred.shape != label.shape:
            raise VLTSegError(f"prediction shape {pred.shape} differs from label shape {label.shape} (expected equal)")
        valid = label != self.ignore_index
        gt = label[valid].astype(np.int64)
        if gt.size and gt.max() >= self.num_classes:
            raise VLTSegError(f"label ids {sorted(set(np.unique(gt[gt >= self.num_classes]).tolist()))} are not "
                              f"classes (expected 0..{self.num_classes - 1} or {self.ignore_index})")
        pr = np.minimum(pred[valid].astype(np.int64), self.num_classes)
        k = self.num_classes + 1
        self.mat += np.bincount(gt * k + pr, minlength=self.num_classes * k).reshape(self.num_classes, k)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix (from another worker / process) into this one."""
        self.mat += other.mat
        return self

    def iou(self) -> np.ndarray:
        """(num_classes,) float64 IoU per class; nan where the class has neither ground truth nor predictions."""
        tp = np.diag(self.mat[:, : self.num_classes]).astype(np.float64)
        fn = self.mat.sum(axis=1) - tp
        fp = self.mat[:, : self.num_classes].sum(axis=0) - tp
        denom = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def miou(self, class_ids: Sequence[int] | None = None) -> float:
        """Mean IoU over `class_ids` (default all classes), ignoring nan; nan when no class has any pixel."""
        ious = self.iou()[list(class_ids) if class_ids is not None else slice(None)]
        return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.mat.sum()
        return float(np.trace(self.mat[:, : self.num_classes]) / total) if total else float("nan")


# ---------------------------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation: probabilities averaged over these scales (of the network input size) and,
    with flip, their horizontal mirrors (mmseg's aug_test ratios by default)."""
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    flip: bool = True

    def describe(self) -> dict[str, Any]:
        return {"scales": list(self.scales), "flip": self.flip}


def tta_probs(predictor: Any, rgb: np.ndarray, tta: TTA) -> np.ndarray:
    """(C,H,W) probabilities averaged over the TTA views, each brought back to the input resolution."""
    import cv2
    import torch
    import torch.nn.functional as F
    from vltseg_core.predictor import Predictor, fit_size

    settings = predictor.settings
    if predictor.backend.input_size is not None and settings.mode == "whole" and tuple(tta.scales) != (1.0,):
        raise VLTSegError(f"multi-scale TTA {list(tta.scales)} needs a dynamic-size model: this graph only takes "
                          f"{predictor.backend.input_size} (expected --mode slide, or a dynamic ONNX export)")
    base = fit_size(rgb.shape[:2], settings.size) if settings.size else rgb.shape[:2]
    # the views are resized here, so the inner predictor must not resize them back to the preset size
    inner = Predictor(predictor.backend, predictor.class_table, replace(settings, size=None))
    h, w = rgb.shape[:2]
    total = None
    for scale in tta.scales:
        size = (max(1, int(base[0] * scale + 0.5)), max(1, int(base[1] * scale + 0.5)))
        view = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) if size != (h, w) else rgb
        for flip in ((False, True) if tta.flip else (False,)):
            probs = torch.from_numpy(inner.predict_probs(np.ascontiguousarray(view[:, ::-1]) if flip else view))
            if flip:
                probs = probs.flip(-1)
            if tuple(probs.shape[1:]) != (h, w):
                probs = F.interpolate(probs[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            total = probs if total is None else total + probs
    return (total / (len(tta.scales) * (2 if tta.flip else 1))).numpy()


def _as_tta(tta: bool | TTA | dict | None) -> TTA | None:
    if tta is None or tta is False:
        return None
    if tta is True:
        return TTA()
    if isinstance(tta, dict):
        return TTA(scales=tuple(float(s) for s in tta.get("scales", TTA.scales)), flip=bool(tta.get("flip", True)))
    return tta


def evaluate_dataset(predictor: Any, dataset: Any, tta: bool | TTA | dict | None = False, limit: int | None = None,
                     name: str | None = None) -> TargetResult:
    """Confusion matrix of `predictor` over `dataset` (its first `limit` images), with a progress bar."""
    from tqdm import tqdm

    aug = _as_tta(tta)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    name = name or f"{dataset.kind}:{dataset.split}"
    cm = ConfusionMatrix(predictor.class_table.num_classes)
    for i in tqdm(range(count), desc=f"eval {name}", unit="img", dynamic_ncols=True):
        sample = dataset[i]
        if aug is None:
            pred = predictor.predict(sample.image).labels
        else:
            pred = tta_probs(predictor, sample.image, aug).argmax(axis=0).astype(np.uint8)
        cm.update(pred, sample.label)
    return TargetResult(name=name, confusion=cm, class_ids=list(dataset.class_ids), num_images=count,
                        extra={"root": str(dataset.root)})


def evaluate(predictor: Any, datasets: Any, tta: bool | TTA | dict | None = False, limit: int | None = None,
             model: str | None = None) -> dict[str, Any]:
    """Evaluate on one dataset or a list of them; the report holds one entry per target and the mean mIoU
    over targets (the paper's domain-generalization table)."""
    datasets = datasets if isinstance(datasets, (list, tuple)) else [datasets]
    results = [evaluate_dataset(predictor, d, tta=tta, limit=limit) for d in datasets]
    aug = _as_tta(tta)
    meta = {"model": model or predictor.identity().get("model", "model"), "predictor": predictor.identity(),
            "tta": aug.describe() if aug else None, "limit": limit}
    return make_report(results, meta, predictor.class_table)


# ---------------------------------------------------------------------------------------------- reports


@dataclass
class TargetResult:
    """The metrics of one model on one target (a dataset split or a bag)."""
    name: str  # e.g. "cityscapes:val"
    confusion: ConfusionMatrix
    class_ids: list[int]
    num_images: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, table: ClassTable) -> dict[str, Any]:
        iou = self.confusion.iou()
        return {
            "name": self.name,
            "num_images": self.num_images,
            "miou": _pct(self.confusion.miou(self.class_ids)),
            "pixel_accuracy": _pct(self.confusion.pixel_accuracy()),
            "class_ids": list(self.class_ids),
            "iou": {table.names[c]: _pct(iou[c]) for c in self.class_ids},
            "confusion_matrix": self.confusion.mat.tolist(),  # rows: ground truth; last column: 'no class'
            **self.extra,
        }


def _pct(x: float) -> float | None:
    """Fraction -> percent for reports (full precision; Markdown rounds); nan -> None (JSON null)."""
    return None if x is None or math.isnan(x) else 100.0 * float(x)


def make_report(results: list[TargetResult], meta: dict[str, Any], class_table: str | ClassTable = "cityscapes"
                ) -> dict[str, Any]:
    """Report dict: meta (model, backend, mode, ...), one entry per target and the mean mIoU over targets
    (the paper's domain-generalization table row)."""
    table = class_table if isinstance(class_table, ClassTable) else load_class_table(class_table)
    targets = [r.to_dict(table) for r in results]
    mious = [t["miou"] for t in targets if t["miou"] is not None]
    return {**meta, "class_table": table.name, "targets": targets,
            "mean_miou": sum(mious) / len(mious) if mious else None}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The domain-generalization table (mIoU per target and mean), then per-class IoU per target."""
    targets = report["targets"]
    title = report.get("model", "model")
    lines = [f"# Evaluation of {title}", ""]
    meta = {k: v for k, v in report.items() if k not in ("targets", "mean_miou", "class_table")}
    lines += [f"- {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in meta.items()] + [""]
    lines += ["| model | " + " | ".join(t["name"] for t in targets) + " | mean |",
              "| --- | " + " | ".join("---:" for _ in targets) + " | ---: |",
              f"| {title} | " + " | ".join(_fmt(t["miou"]) for t in targets) + f" | {_fmt(report['mean_miou'])} |",
              ""]
    for t in targets:
        lines += [f"## {t['name']} ({t['num_images']} images): mIoU {_fmt(t['miou'])}", "",
                  "| class | IoU |", "| --- | ---: |"]
        lines += [f"| {name} | {_fmt(v)} |" for name, v in t["iou"].items()] + [""]
    return "\n".join(lines)


def plot_iou_bars(report: dict[str, Any], path: Path) -> Path:
    """Per-class IoU bar chart, one group of bars per class and one colour per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = report["targets"]
    names = list(dict.fromkeys(n for t in targets for n in t["iou"]))
    width = 0.8 / max(len(targets), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) * max(1, len(targets)) ** 0.5), 4.0), dpi=100)
    x = np.arange(len(names))
    for i, t in enumerate(targets):
        vals = [t["iou"].get(n) for n in names]
        ax.bar(x + (i - (len(targets) - 1) / 2) * width, [0.0 if v is None else v for v in vals], width,
               label=f"{t['name']} (mIoU {_fmt(t['miou'])})")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Per-class IoU: {report.get('model', 'model')}")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_reports(report: dict[str, Any], out_dir: str | Path, stem: str = "eval") -> dict[str, Path]:
    """Write <stem>.json, <stem>.md and <stem>_iou.png into out_dir; returns their paths by format."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "chart": out / f"{stem}_iou.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["markdown"].write_text(report_markdown(report) + "\n")
    plot_iou_bars(report, paths["chart"])
    return paths
