"""The FP16 check of an exported graph, on real frames, before any engine is built.

It runs the float16 graph (vltseg_core.export.fp16_graph: the graph a TensorRT FP16 engine is built from, as a
strongly typed network) and an fp16-storage emulation of the fp32 graph in ONNX Runtime on CPU next to the fp32
graph. Overflow in normalisation/softmax shows up as non-finite outputs, low argmax agreement or an mIoU drop.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vltseg_core.errors import VLTSegError

log = logging.getLogger(__name__)


@dataclass
class FP16Report:
    frames: int
    argmax_agreement: float  # fraction of pixels where fp16 and fp32 labels agree
    max_abs_diff: float  # largest |p_fp16 - p_fp32| over all probabilities
    nonfinite: int  # nan/inf probabilities in the fp16 output (overflow)
    miou_fp32: float | None  # vs ground truth, when labels were given
    miou_fp16: float | None
    storage_agreement: float  # the same with fp16 storage between all layers (fp16_storage_graph)
    storage_nonfinite: int

    @property
    def miou_delta(self) -> float | None:
        if self.miou_fp32 is None or self.miou_fp16 is None:
            return None
        return self.miou_fp16 - self.miou_fp32

    def line(self) -> str:
        text = (f"FP16 vs FP32 on {self.frames} frames: argmax agreement {100 * self.argmax_agreement:.3f}%, "
                f"max |dp| {self.max_abs_diff:.2e}, non-finite {self.nonfinite}; with fp16 storage between layers "
                f"{100 * self.storage_agreement:.3f}%, non-finite {self.storage_nonfinite}")
        if self.miou_delta is not None:
            text += (f", mIoU fp32 {100 * self.miou_fp32:.2f} -> fp16 {100 * self.miou_fp16:.2f} "
                     f"(delta {100 * self.miou_delta:+.2f} points)")
        return text

    def as_dict(self) -> dict:
        return {**asdict(self), "miou_delta": self.miou_delta}


def check_fp16(onnx_path: Path, frames: list[np.ndarray], labels: list[np.ndarray] | None = None,
               class_ids: list[int] | None = None, min_agreement: float = 0.99,
               max_miou_drop: float = 0.01) -> FP16Report:
    """Compare the fp16-converted graph, and the fp16-storage emulation, with the fp32 graph on `frames`
    (RGB uint8); raise over the limits. `labels` (trainIds, 255 = ignore) add the mIoU of the fp32 and the
    converted graph against ground truth over `class_ids`.
    """
    from vltseg_core.backends.onnxruntime_backend import OnnxRuntimeBackend
    from vltseg_core.export.fp16_graph import fp16_storage_graph
    from vltseg_core.classes import load_class_table
    from vltseg_core.evaluation import ConfusionMatrix
    from vltseg_core.export.onnx_export import graph_metadata
    from vltseg_core.predictor import InferenceSettings, Predictor

    if not frames:
        raise VLTSegError("FP16 check needs at least one frame (expected real RGB images)")
    meta = graph_metadata(onnx_path)
    table = load_class_table(meta.get("class_table", "cityscapes"))
    settings = InferenceSettings(mode="whole")  # one full-frame pass each: the comparison is per graph
    fp32 = Predictor(OnnxRuntimeBackend(onnx_path, precision="fp32"), table, settings)
    fp16 = Predictor(OnnxRuntimeBackend(onnx_path, precision="fp16"), table, settings)
    storage_graph = fp16_storage_graph(onnx_path).SerializeToString()
    storage = Predictor(OnnxRuntimeBackend(onnx_path, graph=storage_graph, optimize=False), table, settings)
    num_classes = fp32.backend.num_classes or table.num_classes
    cm32, cm16 = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)
    agree = storage_agree = total = nonfinite = storage_nonfinite = 0
    max_diff = 0.0
    for i, rgb in enumerate(tqdm(frames, desc="FP16 check", unit="frame")):
        p32, p16, ps = fp32.predict_probs(rgb), fp16.predict_probs(rgb), storage.predict_probs(rgb)
        finite = np.isfinite(p16)
        nonfinite += int((~finite).sum())
        storage_nonfinite += int((~np.isfinite(ps)).sum())
        max_diff = max(max_diff, float(np.abs(np.where(finite, p16, 0) - p32).max()))
        l32, l16 = p32.argmax(0).astype(np.uint8), np.where(finite, p16, -1).argmax(0).astype(np.uint8)
        agree += int((l32 == l16).sum())
        storage_agree += int((l32 == np.nan_to_num(ps, nan=-1.0).argmax(0)).sum())
        total += l32.size
        if labels is not None:
            cm32.update(l32, labels[i])
            cm16.update(l16, labels[i])
    report = FP16Report(len(frames), agree / total, max_diff, nonfinite,
                        cm32.miou(class_ids) if labels is not None else None,
                        cm16.miou(class_ids) if labels is not None else None,
                        storage_agree / total, storage_nonfinite)
    log.info("%s", report.line())
    drop = -(report.miou_delta or 0.0)
    if (report.nonfinite or report.storage_nonfinite or drop > max_miou_drop
            or min(report.argmax_agreement, report.storage_agreement) < min_agreement):
        raise VLTSegError(f"FP16 check failed: {report.line()} (expected no non-finite values, "
                          f"agreement >= {100 * min_agreement:g}% and mIoU drop <= {100 * max_miou_drop:g} points; "
                          "keep this model in fp32 or find the overflowing layer)")
    return report


def load_frames(kind: str, root: Path, split: str | None,
                count: int) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """`count` evenly spaced real frames + trainId labels of a dataset (native layout) and its evaluated ids."""
    from vltseg_core.data.datasets import build_dataset

    dataset = build_dataset(kind, root, split)
    if count <= 0:
        raise VLTSegError(f"--fp16-frames {count} must be positive")
    indices = np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int)
    samples = [dataset[int(i)] for i in indices]
    return [s.image for s in samples], [s.label for s in samples], list(dataset.class_ids)
