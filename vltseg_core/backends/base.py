"""The backend interface and the one place that chooses a backend.

A backend turns a float32 (N,3,H,W) RGB 0..255 batch into float32 (N,C,H,W) class probabilities. Everything
else (resizing, sliding windows, argmax) lives in the predictor, so all backends give comparable results.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from vltseg_core.errors import VLTSegError

if TYPE_CHECKING:
    import torch

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# What each backend can run (torch: autocast; onnxruntime: fp32 graph or its fp16 conversion; tensorrt: builder flags).
BACKEND_PRECISIONS = {"torch": ("fp32", "fp16", "bf16"), "onnxruntime": ("fp32", "fp16"), "tensorrt": PRECISIONS}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


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


def cuda_index(device: str) -> int:
    """'cuda' -> 0, 'cuda:N' -> N: the one parser of CUDA device strings (builder, runtime, providers, cache key)."""
    if device == "cuda":
        return 0
    kind, _, index = device.partition(":")
    if kind != "cuda" or not index.isdigit():
        raise VLTSegError(f"device '{device}' is not a CUDA device (expected cuda or cuda:N)")
    return int(index)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def tensorrt_installed() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def available_backends() -> dict[str, str]:
    """Backend name -> why it is (not) usable here; used for `auto` and for error messages."""
    status = {"torch": "available (CPU" + (" and CUDA)" if cuda_available() else " only)")}
    if importlib.util.find_spec("onnxruntime") is None:
        status["onnxruntime"] = "not installed (pip install '.[export]')"
    else:
        import onnxruntime as ort

        status["onnxruntime"] = "available, providers: " + ", ".join(ort.get_available_providers())
    if not tensorrt_installed():
        status["tensorrt"] = "not installed (TensorRT 10 Python API, on the GPU machine only)"
    elif not cuda_available():
        status["tensorrt"] = "installed but no CUDA GPU is visible"
    else:
        status["tensorrt"] = "available"
    return status


def choose_backend(requested: str, source_kind: str, device: str) -> tuple[str, str]:
    """(backend name, reason). `source_kind` is 'model' (PyTorch weights), 'onnx' or 'engine'."""
    if requested != "auto":
        if requested not in BACKENDS:
            raise VLTSegError(f"unknown backend '{requested}' (expected one of auto, {', '.join(BACKENDS)})")
        if source_kind == "engine" and requested != "tensorrt":
            raise VLTSegError(f"a TensorRT engine only runs on backend 'tensorrt', not '{requested}'")
        if source_kind == "onnx" and requested == "torch":
            raise VLTSegError("an ONNX file runs on 'onnxruntime' or 'tensorrt', not 'torch' (give a preset or "
                              "checkpoint for torch)")
        check_usable(requested, device)
        return requested, "requested by name"
    status = available_backends()
    if source_kind == "engine":
        return "tensorrt", "a serialized TensorRT engine was given"
    gpu = device.startswith("cuda")
    if gpu and status["tensorrt"] == "available":
        return "tensorrt", "TensorRT and a CUDA GPU are available (fastest on NVIDIA GPUs)"
    if source_kind == "onnx":
        if status["onnxruntime"].startswith("available"):
            return "onnxruntime", f"ONNX graph given; tensorrt {status['tensorrt']}"
        raise VLTSegError(f"cannot run an ONNX graph: onnxruntime {status['onnxruntime']}")
    if gpu:
        return "torch", f"device {device}; tensorrt {status['tensorrt']}"
    return "torch", "PyTorch weights on CPU (no export step needed; onnxruntime is an explicit choice)"


def check_usable(name: str, device: str) -> None:
    """One clear error, in milliseconds, when a backend named explicitly cannot run here: before the minutes
    of ONNX export or engine build that would otherwise come first."""
    if name == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            raise VLTSegError("backend onnxruntime was requested but the `onnxruntime` Python package is not "
                              "installed (pip install '.[export]', or use backend torch)")
        if device.startswith("cuda"):
            import onnxruntime as ort

            from vltseg_core.backends.onnxruntime_backend import check_gpu_providers

            check_gpu_providers(device, ort.get_available_providers())
    elif name == "tensorrt":
        from vltseg_core.export.tensorrt_build import current_gpu, tensorrt_version

        tensorrt_version()
        current_gpu(device)


def check_precision(name: str, precision: str) -> None:
    """One clear error for a precision the chosen backend cannot run (checked before any export or build)."""
    if precision not in PRECISIONS:
        raise VLTSegError(f"unknown precision '{precision}' (expected one of {', '.join(PRECISIONS)})")
    if precision not in BACKEND_PRECISIONS[name]:
        raise VLTSegError(f"backend {name}: precision '{precision}' is not supported (expected one of "
                          f"{', '.join(BACKEND_PRECISIONS[name])})")


def source_kind(path_or_name: str) -> str:
    suffix = Path(path_or_name).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    return "model"


def create_backend(name: str, source, device: str = "cpu", precision: str = "fp32") -> Backend:
    """Instantiate backend `name` (already chosen, its precision checked) for `source`: an nn.Module (torch), or
    an ONNX / engine path."""
    if name == "torch":
        from vltseg_core.backends.torch_backend import TorchBackend

        return TorchBackend(source, device=device, precision=precision)
    if name == "onnxruntime":
        from vltseg_core.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(Path(source), device=device, precision=precision)
    if name == "tensorrt":
        from vltseg_core.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(Path(source), device=device)
    raise VLTSegError(f"unknown backend '{name}' (expected one of {', '.join(BACKENDS)})")
