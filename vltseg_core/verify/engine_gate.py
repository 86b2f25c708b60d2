"""The gate every TensorRT engine passes before it is used: agreement with the fp32 graph in ONNX Runtime on real
frames, wherever the engine was built or loaded (`vltseg export trt`, `load_predictor`, the node's configure).

The verdict is recorded in the engine's manifest with the frames it was measured on and re-used from there, so a
node starting on a gated engine pays nothing; an engine under the bar is never used, with one line saying why.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from vltseg_core.errors import VLTSegError
from vltseg_core.export.engine_cache import read_manifest, record_in_manifest

log = logging.getLogger(__name__)

# Lowest argmax agreement with the fp32 graph: the ONNX parity bar for fp32, the FP16 check's bar for fp16, and
# the torch bf16 test's bar for int8.
MIN_ENGINE_AGREEMENT = {"fp32": 0.999, "fp16": 0.99, "int8": 0.98}
GATE_KEY = "gate"


class EngineGateFailed(VLTSegError):
    """The engine ran and disagrees with the fp32 graph: the one gate outcome that condemns the engine file."""


@dataclass
class EngineAgreement:
    """An engine against the fp32 graph in ONNX Runtime on the same batches."""

    precision: str
    argmax_agreement: float
    max_abs_diff: float
    nonfinite: int

    @property
    def min_agreement(self) -> float:
        return MIN_ENGINE_AGREEMENT[self.precision]

    @property
    def ok(self) -> bool:
        return self.nonfinite == 0 and self.argmax_agreement >= self.min_agreement

    def line(self) -> str:
        return (f"{self.precision} engine vs ONNX Runtime: argmax agreement {100 * self.argmax_agreement:.3f}% "
                f"(expected >= {100 * self.min_agreement:g}%), max |dp| {self.max_abs_diff:.2e}, "
                f"non-finite {self.nonfinite}")


def engine_agreement(ref: np.ndarray, got: np.ndarray, precision: str) -> EngineAgreement:
    """Verdict on engine probabilities `got` against ONNX Runtime's `ref` (both (N,C,H,W))."""
    if precision not in MIN_ENGINE_AGREEMENT:
        raise VLTSegError(f"unknown TensorRT precision '{precision}' "
                          f"(expected one of {', '.join(MIN_ENGINE_AGREEMENT)})")
    if ref.shape != got.shape:
        raise VLTSegError(f"engine output {got.shape} differs in shape from ONNX Runtime's {ref.shape} "
                          "(expected the engine of this graph)")
    finite = np.isfinite(got)
    labels = np.where(finite, got, -1).argmax(1)
    return EngineAgreement(precision, float((ref.argmax(1) == labels).mean()),
                           float(np.abs(np.where(finite, got, 0) - ref).max()), int((~finite).sum()))


def measure(engine, reference, frames: list[np.ndarray], shape: tuple[int, int, int, int],
            precision: str) -> EngineAgreement:
    """Run `engine` and `reference` (backends) on `frames` resized to `shape` (the engine profile's opt shape),
    in batches of its batch size; one verdict over all pixels."""
    n, _, h, w = shape
    batches = [np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
                         for f in frames[i:i + n]]) for i in range(0, len(frames), n)]
    agree = pixels = nonfinite = 0
    max_diff = 0.0
    for batch in batches:
        verdict = engine_agreement(reference.infer(batch), engine.infer(batch), precision)
        count = batch.shape[0] * h * w
        agree += verdict.argmax_agreement * count
        pixels += count
        nonfinite += verdict.nonfinite
        max_diff = max(max_diff, verdict.max_abs_diff)
    return EngineAgreement(precision, agree / pixels, max_diff, nonfinite)


def gate_engine(engine_path: Path, backend, frames_folder: Path | None = None) -> EngineAgreement | None:
    """Gate `backend` (the TensorRT backend of `engine_path`) before use; raises VLTSegError when it fails.

    Returns None when the manifest already records a pass of this very engine file on the same frames."""
    from vltseg_core.backends.onnxruntime_backend import OnnxRuntimeBackend
    from vltseg_core.verify.gate_frames import load_gate_frames

    manifest = read_manifest(engine_path) or {}
    precision = manifest.get("spec", {}).get("precision", "fp32")
    frames, frames_id = load_gate_frames(frames_folder)
    record = manifest.get(GATE_KEY) or {}
    if record.get("engine_sha256") == manifest.get("engine_sha256") and record.get("frames") == frames_id:
        if record.get("passed"):
            log.info("TensorRT engine %s passed its gate on %s (%s)", engine_path.name, record.get("at"),
                     record.get("line"))
            return None
        raise EngineGateFailed(f"TensorRT engine {engine_path} failed its gate on {record.get('at')}: {record.get('line')} "
                          "(not used; rebuild it, try precision fp32, or check `vltseg export onnx`'s FP16 report)")
    onnx_path = Path(manifest.get("metadata", {}).get("onnx", ""))
    if not onnx_path.is_file():
        raise VLTSegError(f"TensorRT engine {engine_path} has not been gated and its ONNX source {onnx_path} is not "
                          "here to gate it against (expected the .onnx it was built from beside the manifest's path)")
    shape = tuple(backend.profile.opt)
    verdict = measure(backend, OnnxRuntimeBackend(onnx_path), frames, shape, precision)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    where = f"on {len(frames)} real frames ({frames_id}) at {'x'.join(map(str, shape))}"
    record_in_manifest(engine_path, GATE_KEY, {"passed": verdict.ok, "engine_sha256": manifest.get("engine_sha256"),
                                               "frames": frames_id, "shape": list(shape), "at": at,
                                               "line": f"{verdict.line()} {where}", **asdict(verdict)})
    if not verdict.ok:
        raise EngineGateFailed(f"TensorRT engine {engine_path} failed its gate: {verdict.line()} {where} (not used; "
                          "try precision fp32, or check `vltseg export onnx`'s FP16 report)")
    log.info("TensorRT engine %s gated: %s %s", engine_path.name, verdict.line(), where)
    return verdict


def record_gate_skipped(engine_path: Path, reason: str) -> None:
    """`export trt --build-only`: say in the manifest that no gate ran, so the next load runs it."""
    record_in_manifest(engine_path, GATE_KEY, {"passed": False, "skipped": reason, "engine_sha256": None,
                                               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
