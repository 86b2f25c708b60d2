"""The backend interface: what every backend takes, returns and runs (precisions); nothing here imports a backend.

A backend turns a float32 (N,3,H,W) RGB 0..255 batch into float32 (N,C,H,W) class probabilities. Everything
else (resizing, sliding windows, argmax) lives in the predictor, so all backends give comparable results.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from vltseg_core.errors import VLTSegError

if TYPE_CHECKING:
    import torch

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# What each backend can run (torch: autocast; onnxruntime: the fp32 graph or the float16 graph; tensorrt: strongly
# typed engines of the fp32 graph, the float16 graph, or an explicitly quantized (Q/DQ) graph for int8).
BACKEND_PRECISIONS = {"torch": ("fp32", "fp16", "bf16"), "onnxruntime": ("fp32", "fp16"),
                      "tensorrt": ("fp32", "fp16", "int8")}


@runtime_checkable
class Backend(Protocol):
    name: str
    num_classes: int
    # (H, W) when the graph only takes one input size (fixed ONNX / static engine), None when any size works.
    input_size: tuple[int, int] | None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 (or uint8) (N,3,H,W) RGB 0..255 -> float32 (N,C,H,W) probabilities. The predictor sends
        uint8 so GPU backends upload a quarter of the bytes and convert on the device."""

    def infer_device(self, batch: np.ndarray) -> "torch.Tensor":
        """The same probabilities as a float32 torch tensor left on the backend's device (finished, not queued),
        so the predictor resizes them to the image and takes the argmax there: a GPU backend then copies back
        two HxW maps instead of C class maps."""

    def identity(self) -> dict:
        """What exactly runs (backend, device, precision, model/engine sha...), for logs and reports."""


def check_batch(batch: np.ndarray, input_size: tuple[int, int] | None, where: str) -> np.ndarray:
    """Validate a backend input once, with one clear error line."""
    if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.shape[1] != 3 or 0 in batch.shape:
        shape = getattr(batch, "shape", type(batch).__name__)
        raise VLTSegError(f"{where}: input batch has shape {shape} (expected float32 (N,3,H,W) RGB 0..255)")
    if batch.dtype not in (np.float32, np.uint8):
        raise VLTSegError(f"{where}: input batch has dtype {batch.dtype} (expected float32 or uint8 RGB 0..255)")
    if input_size is not None and tuple(batch.shape[2:]) != tuple(input_size):
        raise VLTSegError(f"{where}: input is {batch.shape[2]}x{batch.shape[3]} but the graph was built for "
                          f"{input_size[0]}x{input_size[1]} (expected that size; export a dynamic graph for others)")
    return np.ascontiguousarray(batch)


def check_precision(name: str, precision: str) -> None:
    """One clear error for a precision the chosen backend cannot run (checked before any export or build)."""
    if precision not in PRECISIONS:
        raise VLTSegError(f"unknown precision '{precision}' (expected one of {', '.join(PRECISIONS)})")
    if precision not in BACKEND_PRECISIONS[name]:
        raise VLTSegError(f"backend {name}: precision '{precision}' is not supported (expected one of "
                          f"{', '.join(BACKEND_PRECISIONS[name])})")
