"""Which backend runs a model here, and building it: the backend factory (above the backends it creates)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from vltseg_core.backends.base import BACKENDS, Backend
from vltseg_core.errors import VLTSegError
from vltseg_core.gpu import cuda_available, current_gpu, supported_tensorrt_range, tensorrt_installed, tensorrt_version

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def available_backends() -> dict[str, str]:
    """Backend name -> why it is (not) usable here; used for `auto` and for error messages."""
    status = {"torch": "available (CPU" + (" and CUDA)" if cuda_available() else " only)")}
    if importlib.util.find_spec("onnxruntime") is None:
        status["onnxruntime"] = "not installed (pip install '.[export]')"
    else:
        import onnxruntime as ort

        status["onnxruntime"] = "available, providers: " + ", ".join(ort.get_available_providers())
    if not tensorrt_installed():
        status["tensorrt"] = f"not installed ({supported_tensorrt_range()} Python API, on the GPU machine only)"
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
        tensorrt_version()
        current_gpu(device)




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
