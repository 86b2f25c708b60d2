"""ONNX Runtime backend: CPU everywhere; CUDA and TensorRT execution providers where that build of ORT has them."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from vltseg_core.assets import sha256_file
from vltseg_core.backends.base import check_batch, check_precision, cuda_index
from vltseg_core.errors import VLTSegError

log = logging.getLogger(__name__)


def check_gpu_providers(device: str, available: list[str]) -> None:
    """A CUDA device needs an onnxruntime build with the CUDA or TensorRT execution provider."""
    if not {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(available):
        raise VLTSegError(f"backend onnxruntime: device '{device}' requested but this onnxruntime has no CUDA or "
                          f"TensorRT execution provider (has {', '.join(available)}; install onnxruntime-gpu)")


def providers_for(device: str, precision: str, available: list[str], cache_dir: Path) -> list:
    """Execution providers in preference order for `device` (the TensorRT EP caches its engines in `cache_dir`)."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    check_gpu_providers(device, available)
    index = cuda_index(device)
    chosen: list = []
    if "TensorrtExecutionProvider" in available:
        chosen.append(("TensorrtExecutionProvider", {
            "device_id": index, "trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir), "trt_timing_cache_enable": True}))
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    return chosen + ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, device: str = "cpu", precision: str = "fp32", graph: bytes | None = None,
                 optimize: bool = True):
        """`graph`: an in-memory variant of `onnx_path`'s graph to run instead (the FP16 checks use this);
        `optimize=False` keeps the graph exactly as written (no fusions, no cast elimination)."""
        import onnxruntime as ort

        if not onnx_path.is_file():
            raise VLTSegError(f"ONNX file not found: {onnx_path} (expected a graph from `vltseg export onnx`)")
        check_precision(self.name, precision)
        self.onnx_path = onnx_path
        self.device = device
        self.precision = precision
        self.onnx_sha256 = sha256_file(onnx_path)
        providers = providers_for(device, precision, ort.get_available_providers(), onnx_path.parent)
        graph = graph or str(onnx_path)
        trt_ep = any(isinstance(p, tuple) and p[0] == "TensorrtExecutionProvider" for p in providers)
        if precision == "fp16" and not trt_ep:
            # fp16 = the fp16-converted graph (what the FP16 check runs); the TensorRT EP converts by itself.
            from vltseg_core.export.fp16_check import convert_to_fp16

            graph = convert_to_fp16(onnx_path).SerializeToString()
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        options.log_severity_level = 3
        # ORT's pool threads otherwise spin after each run and take the cores from the resize/argmax that follows
        # (tiny-test at 512x1024 on 2 cores: postprocess 31 -> 14 ms, docs/benchmarks.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(graph, sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own pybind exception types for corrupt/unsupported graphs
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VLTSegError(f"onnxruntime cannot load {onnx_path}: {first} (expected a valid ONNX graph)") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        h, w = inp.shape[2], inp.shape[3]
        self.input_size = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.num_classes = int(out.shape[1]) if isinstance(out.shape[1], int) else 0
        log.info("onnxruntime session on %s", self.session.get_providers())

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(batch, self.input_size, f"backend onnxruntime ({self.onnx_path.name})")
        if self.fixed_batch == 1 and batch.shape[0] > 1:  # fixed-size exports take one image at a time
            return np.concatenate([self.infer(batch[i:i + 1]) for i in range(batch.shape[0])])
        probs = self.session.run([self.output_name], {self.input_name: batch.astype(np.float32, copy=False)})[0]
        return probs.astype(np.float32, copy=False)

    def infer_device(self, batch: np.ndarray) -> torch.Tensor:
        """ONNX Runtime hands back host memory whatever its provider: the tensor lives on the CPU."""
        return torch.from_numpy(self.infer(batch))

    def identity(self) -> dict:
        import onnxruntime as ort

        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "providers": self.session.get_providers(), "onnx": str(self.onnx_path),
                "onnx_sha256": self.onnx_sha256, "onnxruntime": ort.__version__}
