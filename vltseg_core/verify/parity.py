"""ONNX Runtime against PyTorch on the same inputs: the check every exported graph passes before it is written
or cached (`export_checked`), and the parity-checked graph cache of the graph backends."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vltseg_core.errors import VLTSegError
from vltseg_core.export.onnx_export import default_size, export_checked, graph_code_digest, module_digest

log = logging.getLogger(__name__)


@dataclass
class ParityReport:
    size: tuple[int, int]
    max_abs_diff: float
    argmax_agreement: float

    def line(self) -> str:
        return (f"{self.size[0]}x{self.size[1]}: max |p_ort - p_torch| = {self.max_abs_diff:.2e}, "
                f"argmax agreement = {100 * self.argmax_agreement:.3f}%")


def check_parity(model: torch.nn.Module, onnx_path: Path, sizes: list[tuple[int, int]],
                 images: list[np.ndarray] | None = None, max_abs_diff: float = 1e-3,
                 min_agreement: float = 0.999) -> list[ParityReport]:
    """Run ONNX Runtime (CPU) and PyTorch on the same inputs; raise VLTSegError over the tolerance (the message
    leaves out `onnx_path`, which export_checked names)."""
    from vltseg_core.backends.onnxruntime_backend import OnnxRuntimeBackend
    from vltseg_core.backends.torch_backend import TorchBackend

    ort_backend = OnnxRuntimeBackend(onnx_path)
    torch_backend = TorchBackend(model)
    rng = np.random.default_rng(0)
    reports = []
    for i, size in enumerate(sizes):
        if images:
            import cv2

            img = cv2.resize(images[i % len(images)], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            batch = img.transpose(2, 0, 1)[None].astype(np.float32)
        else:
            batch = rng.integers(0, 256, (1, 3, *size)).astype(np.float32)
        ref, got = torch_backend.infer(batch), ort_backend.infer(batch)
        report = ParityReport(size, float(np.abs(ref - got).max()),
                              float((ref.argmax(1) == got.argmax(1)).mean()))
        log.info("ONNX parity %s", report.line())
        reports.append(report)
        if not np.isfinite(got).all() or report.max_abs_diff > max_abs_diff or report.argmax_agreement < min_agreement:
            raise VLTSegError(f"ONNX parity check failed at {report.line()} (expected max diff <= "
                              f"{max_abs_diff:g} and agreement >= {100 * min_agreement:g}%)")
    return reports


def cached_onnx(model: torch.nn.Module, model_id: str) -> Path:
    """A dynamic-size, parity-checked export of `model` in the asset cache (reused while the weights, the model
    code and torch are unchanged: a new release never runs a graph exported by an older one)."""
    from filelock import FileLock

    from vltseg_core.assets import cache_dir

    key = hashlib.sha256((module_digest(model) + graph_code_digest()).encode()).hexdigest()
    path = cache_dir() / "onnx" / f"{key[:16]}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            log.info("exporting %s to ONNX for a graph backend (once; cached at %s)", model_id, path)
            size = default_size(getattr(model, "preset", {}))
            export_checked(model, path, size, lambda graph: check_parity(model, graph, [size]), dynamic=True)
    return path
