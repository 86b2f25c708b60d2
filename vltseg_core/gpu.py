"""Facts about this machine's GPUs and TensorRT: the bottom of the inference layers (imports nothing of ours but
errors), so the engine builder, the backends and `vltseg doctor` read the same facts the same way."""
from __future__ import annotations

import importlib.util

from vltseg_core.errors import VLTSegError

# TensorRT versions the builder and backend support: [first, end). Engines are strongly typed networks
# (NetworkDefinitionCreationFlag.STRONGLY_TYPED, present since 10.0, the only mode of 11 where the FP16/BF16/INT8
# builder flags are gone); 9 and older lack the tensor-name API the backend uses. Checked against the real Python
# bindings of 10.0, 10.16 and 11.4 (test/test_tensorrt_api.py).
TENSORRT_SUPPORTED = ((10, 0), (12, 0))


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


def current_gpu(device: str = "cuda") -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of `device`; a clear error when there is no such GPU."""
    import torch

    if not device.startswith("cuda"):
        raise VLTSegError(f"TensorRT needs a CUDA device, got device '{device}' (expected cuda or cuda:N)")
    index = cuda_index(device)
    if not torch.cuda.is_available():
        raise VLTSegError("TensorRT was requested but no CUDA GPU is visible (expected an NVIDIA GPU and driver; "
                          "use backend onnxruntime or torch on CPU)")
    count = torch.cuda.device_count()
    if index >= count:
        raise VLTSegError(f"device '{device}' was requested but {count} CUDA GPU(s) are visible "
                          f"(expected cuda:0 to cuda:{count - 1})")
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def tensorrt_installed() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def supported_tensorrt_range() -> str:
    (lo_major, lo_minor), (hi_major, _) = TENSORRT_SUPPORTED
    return f"TensorRT {lo_major}.{lo_minor} to {hi_major - 1}.x"


def check_tensorrt_version(version: str) -> str:
    """The version gate: `version` inside TENSORRT_SUPPORTED, else one line saying the supported range."""
    try:
        numbers = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        numbers = ()
    if len(numbers) != 2 or not TENSORRT_SUPPORTED[0] <= numbers < TENSORRT_SUPPORTED[1]:
        raise VLTSegError(f"TensorRT {version} is installed (expected {supported_tensorrt_range()}: strongly typed "
                          "engines need 10.0 or newer; newer majors are untested)")
    return version


def tensorrt_version() -> str:
    """The installed TensorRT's version, checked against the supported range."""
    try:
        import tensorrt as trt
    except ImportError:
        raise VLTSegError("TensorRT was requested but the `tensorrt` Python package is not installed (expected "
                          f"{supported_tensorrt_range()} on the GPU machine; use backend onnxruntime or torch "
                          "elsewhere)") from None
    return check_tensorrt_version(trt.__version__)
