"""ONNX Runtime backend: CPU everywhere; CUDA and TensorRT execution providers where that build of ORT has them.

ONNX Runtime drops a requested provider whose libraries cannot load (and retries a provider whose creation failed
without its options, so `device_id` is lost) with a warning only: after creating a session the backend checks the
providers it really runs and their device, and fails in one line instead of running on the CPU or another GPU.
fp16 is the float16 graph (vltseg_core.export.fp16_graph) on every provider, the graph the FP16 check ran.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from vltseg_core.assets import sha256_file
from vltseg_core.backends.base import check_batch, check_precision
from vltseg_core.errors import VLTSegError
from vltseg_core.gpu import cuda_index

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
ALLOW_FALLBACK = "VLTSEG_ALLOW_PROVIDER_FALLBACK"  # =1: a GPU provider that did not load is a warning, not an error


def check_gpu_providers(device: str, available: list[str]) -> None:
    """A CUDA device needs an onnxruntime build with the CUDA or TensorRT execution provider."""
    if not {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(available):
        raise VLTSegError(f"backend onnxruntime: device '{device}' requested but this onnxruntime has no CUDA or "
                          f"TensorRT execution provider (has {', '.join(available)}; install onnxruntime-gpu)")


def trt_profile_options(input_name: str, profile: tuple[tuple[int, ...], ...] | None) -> dict:
    """Explicit min/opt/max shapes for the TensorRT EP: without them it rebuilds its engine for every new input
    shape (minutes for ViT-L, at run time)."""
    if profile is None:
        return {}
    fmt = lambda shape: f"{input_name}:" + "x".join(map(str, shape))  # noqa: E731
    return {"trt_profile_min_shapes": fmt(profile[0]), "trt_profile_opt_shapes": fmt(profile[1]),
            "trt_profile_max_shapes": fmt(profile[2])}


def providers_for(device: str, available: list[str], cache_dir: Path, input_name: str = "images",
                  profile: tuple[tuple[int, ...], ...] | None = None) -> list:
    """Execution providers in preference order for `device` (the TensorRT EP caches its engines in `cache_dir`;
    `profile` = (min, opt, max) input shapes for it)."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    check_gpu_providers(device, available)
    index = cuda_index(device)
    chosen: list = []
    if "TensorrtExecutionProvider" in available:
        chosen.append(("TensorrtExecutionProvider", {
            "device_id": index, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True, **trt_profile_options(input_name, profile)}))
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    return chosen + ["CPUExecutionProvider"]


def verify_providers(session, device: str, where: str) -> None:
    """The session runs where it was asked: some GPU provider in use, on the requested device id."""
    if not device.startswith("cuda"):
        return
    in_use, options, index = session.get_providers(), session.get_provider_options(), str(cuda_index(device))
    gpu = [p for p in in_use if p in GPU_PROVIDERS]
    if not gpu:
        problem = (f"device '{device}' was requested but the session runs on {', '.join(in_use)} only (the GPU "
                   "providers did not load: CUDA, cuDNN or TensorRT libraries missing or mismatched)")
    else:
        wrong = [p for p in gpu if str(options.get(p, {}).get("device_id", index)) != index]
        if not wrong:
            return
        problem = (f"device '{device}' was requested but {wrong[0]} runs on device "
                   f"{options[wrong[0]].get('device_id')} (its options were dropped when creating it failed)")
    if os.environ.get(ALLOW_FALLBACK) == "1":
        log.warning("backend onnxruntime (%s): %s; running anyway (%s=1)", where, problem, ALLOW_FALLBACK)
        return
    raise VLTSegError(f"backend onnxruntime ({where}): {problem} (expected the GPU providers to load; "
                      f"`vltseg doctor` shows what loads here; {ALLOW_FALLBACK}=1 runs anyway)")


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
        providers = providers_for(device, ort.get_available_providers(), onnx_path.parent,
                                  profile=self._trt_ep_profile(onnx_path) if device.startswith("cuda") else None)
        self.graph_sha256 = hashlib.sha256(graph).hexdigest() if graph else self.onnx_sha256
        if precision == "fp16":
            # the float16 graph on every provider: what the FP16 check runs and fp16 TensorRT engines are built from
            from vltseg_core.export.fp16_graph import fp16_graph_bytes

            graph, self.graph_sha256 = fp16_graph_bytes(onnx_path)
        graph = graph or str(onnx_path)
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
        verify_providers(self.session, device, onnx_path.name)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        h, w = inp.shape[2], inp.shape[3]
        self.input_size = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.deploy_outputs = {"labels", "confidence"} <= {o.name for o in self.session.get_outputs()}
        self.num_classes = int(out.shape[1]) if isinstance(out.shape[1], int) else 0
        log.info("onnxruntime session on %s", self.session.get_providers())

    @staticmethod
    def _trt_ep_profile(onnx_path: Path) -> tuple[tuple[int, ...], ...] | None:
        """min/opt/max shapes for the TensorRT EP: the graph's own size, or for a dynamic graph the preset's
        network size as opt, half of it as min and twice as max, batch 1..4 (crops per call, cameras)."""
        from vltseg_core.export.onnx_export import default_size, graph_metadata

        meta = graph_metadata(onnx_path)
        h, w = default_size(meta.get("preset", {}), traced=meta.get("export_size"))
        if not meta.get("dynamic"):
            return None  # static shapes: the EP builds once
        return (1, 3, max(h // 2, 1), max(w // 2, 1)), (1, 3, h, w), (4, 3, 2 * h, 2 * w)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(batch, self.input_size, f"backend onnxruntime ({self.onnx_path.name})")
        if self.fixed_batch == 1 and batch.shape[0] > 1:  # fixed-size exports take one image at a time
            return np.concatenate([self.infer(batch[i:i + 1]) for i in range(batch.shape[0])])
        probs = self.session.run([self.output_name], {self.input_name: batch.astype(np.float32, copy=False)})[0]
        return probs.astype(np.float32, copy=False)

    def infer_device(self, batch: np.ndarray) -> torch.Tensor:
        """ONNX Runtime hands back host memory whatever its provider: the tensor lives on the CPU."""
        return torch.from_numpy(self.infer(batch))

    def infer_labels(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,H,W) labels and confidence that a deploy-output graph computed itself (only these are fetched)."""
        batch = check_batch(batch, self.input_size, f"backend onnxruntime ({self.onnx_path.name})")
        if self.fixed_batch == 1 and batch.shape[0] > 1:
            parts = [self.infer_labels(batch[i:i + 1]) for i in range(batch.shape[0])]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        labels, confidence = self.session.run(["labels", "confidence"],
                                              {self.input_name: batch.astype(np.float32, copy=False)})
        return torch.from_numpy(labels), torch.from_numpy(confidence.astype(np.float32, copy=False))

    def identity(self) -> dict:
        import onnxruntime as ort

        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "providers": self.session.get_providers(), "onnx": str(self.onnx_path),
                "onnx_sha256": self.onnx_sha256, "graph_sha256": self.graph_sha256, "onnxruntime": ort.__version__}
