"""Native TensorRT backend (strongly typed engines, TensorRT 10.0 to 11.x): one engine, one execution context, its own CUDA stream, pinned host buffers.

Images travel to the GPU as uint8 (a quarter of the float bytes) and become float there; the probabilities stay
there for the predictor's resize and argmax (only the label and confidence maps come back). CUDA memory and the
stream come from torch, which is installed anyway, so no pycuda/cuda-python is needed. TensorRT works on the
current CUDA device, so deserialisation and every execution run with the requested cuda:N made current.
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vltseg_core.backends.base import check_batch
from vltseg_core.errors import VLTSegError
from vltseg_core.export.engine_cache import InputProfile, runtime_mismatch, verify_engine_file
from vltseg_core.export.tensorrt_build import engine_for_onnx, tensorrt_logger
from vltseg_core.gpu import cuda_index, current_gpu, tensorrt_version

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def _usable_engine(engine: Path, device: str) -> tuple[Path, dict]:
    """Check the engine against this TensorRT and GPU; rebuild it from its ONNX (logged) when they differ."""
    manifest = verify_engine_file(engine)
    version = tensorrt_version()
    gpu_name, capability = current_gpu(device)
    reason = runtime_mismatch(manifest, version, gpu_name, capability)
    if reason is None:
        return engine, manifest
    onnx = Path(manifest.get("metadata", {}).get("onnx", ""))
    if not onnx.is_file():
        raise VLTSegError(f"TensorRT engine {engine} does not fit this machine ({reason}) and its ONNX source "
                          f"{onnx} is not here to rebuild it (expected an engine built on this GPU and TensorRT)")
    log.warning("TensorRT engine %s does not fit this machine (%s); rebuilding from %s", engine, reason, onnx)
    spec = manifest["spec"]
    profile = spec["profile"]
    engine = engine_for_onnx(onnx, precision=spec["precision"], device=device, engine_path=engine,
                             size=tuple(profile["opt"][2:]), min_size=tuple(profile["min"][2:]),
                             max_size=tuple(profile["max"][2:]),
                             batch=(profile["min"][0], profile["opt"][0], profile["max"][0]),
                             allow_tf32="tf32" in spec.get("builder_flags", ()))
    return engine, verify_engine_file(engine)


def execution_context(engine, engine_path: Path, device: str):
    """The engine's execution context; TensorRT returns None (no exception) when activation memory cannot be had."""
    context = engine.create_execution_context()
    if context is None:
        raise VLTSegError(f"TensorRT could not create an execution context for {engine_path} (not enough free memory "
                          f"on {device} for its activations; expected a GPU with room for the engine, or a smaller "
                          "input profile)")
    return context


class HostBuffers:
    """Host staging memory for uploads: one buffer per dtype, grown to the largest batch seen and viewed for
    smaller ones, so memory stays bounded however many frame sizes pass (pinned for CUDA uploads)."""

    def __init__(self, pinned: bool):
        import torch

        self.torch, self.pinned, self.buffers = torch, pinned, {}

    def get(self, shape: tuple, dtype) -> "torch.Tensor":
        numel = math.prod(shape)
        buffer = self.buffers.get(dtype)
        if buffer is None or buffer.numel() < numel:
            buffer = self.buffers[dtype] = self.torch.empty(numel, dtype=dtype, pin_memory=self.pinned)
        return buffer[:numel].view(shape)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())


class CudaStream:
    """What the backend needs of CUDA: cuda:N made current, its own stream, and the hand-over of results to the
    caller's stream (finished, and kept from the allocator while the caller's kernels read them)."""

    pinned = True

    def __init__(self, index: int):
        import torch

        self.torch, self.device = torch, torch.device("cuda", index)
        self.stream = torch.cuda.Stream(self.device)

    def current(self):
        return self.torch.cuda.device(self.device)

    def running(self):
        stack = contextlib.ExitStack()
        stack.enter_context(self.torch.cuda.device(self.device))
        stack.enter_context(self.torch.cuda.stream(self.stream))
        return stack

    @property
    def handle(self) -> int:
        return self.stream.cuda_stream

    def finish(self, tensor) -> None:
        self.stream.synchronize()  # finished when returned: the predictor's timings and other streams see it done
        # allocated on this backend's stream but used next on the caller's: keep the allocator from handing the
        # memory to the next execution while the caller's resize/argmax kernels may still read it
        tensor.record_stream(self.torch.cuda.current_stream(self.device))


class HostStream:
    """The same plumbing on CPU tensors: for checking the backend's side of the contract (buffers, bindings,
    batching, shapes) against a fake `tensorrt` where no GPU exists (tests, scripts/gpu_check.py)."""

    pinned = False
    handle = 0

    def __init__(self):
        import torch

        self.device = torch.device("cpu")

    def current(self):
        return contextlib.nullcontext()

    running = current

    def finish(self, tensor) -> None:
        pass


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, engine_path: Path, device: str = "cuda", host_only: bool = False):
        """`host_only`: keep every tensor on the CPU (HostStream), for plumbing checks with a fake `tensorrt`."""
        # Plain checks first (missing/corrupt file, no TensorRT, no GPU) so each gives its own clear error.
        self.engine_path, self.manifest = _usable_engine(Path(engine_path), device)
        import tensorrt as trt
        import torch

        self.cuda = HostStream() if host_only else CudaStream(cuda_index(device))
        self.device = self.cuda.device
        self.torch = torch
        self.logger = tensorrt_logger()
        with self.cuda.current():
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self.engine is None:
                raise VLTSegError(f"TensorRT could not deserialize {self.engine_path} (corrupt, or built by another "
                                  "TensorRT version; rebuild with `vltseg export trt`)")
            self.context = execution_context(self.engine, self.engine_path, device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise VLTSegError(f"{self.engine_path} has inputs {inputs} (expected one image input)")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n not in inputs]
        self.probs_name = "probs" if "probs" in self.output_names else self.output_names[0]
        self.deploy_outputs = {"labels", "confidence"} <= set(self.output_names)  # argmax computed in the engine
        lo, opt, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
        self.profile = InputProfile(self.input_name, lo, opt, hi)
        self.input_size = tuple(lo[2:]) if lo[2:] == hi[2:] else None
        self.num_classes = int(self.engine.get_tensor_shape(self.probs_name)[1])
        self.dtypes = {n: torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype
                       for n in names}
        self.host = HostBuffers(pinned=self.cuda.pinned)
        self.executions = 0  # engine calls so far (one per profile-sized batch)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.infer_device(batch).cpu().numpy()

    def infer_device(self, batch: np.ndarray) -> "torch.Tensor":
        return self._run(batch)[self.probs_name].float()

    def infer_labels(self, batch: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(N,H,W) labels and confidence that a deploy-output engine computed itself, left on the device: only
        these two maps come back, never the C class maps (the predictor uses this where no resize is needed)."""
        outputs = self._run(batch)
        return outputs["labels"], outputs["confidence"]

    def _run(self, batch: np.ndarray) -> dict[str, "torch.Tensor"]:
        """Every output of one engine execution (or of profile-sized chunks, concatenated), finished."""
        torch = self.torch
        batch = check_batch(batch, self.input_size, f"backend tensorrt ({self.engine_path.name})")
        step = self.profile.max[0]
        if batch.shape[0] > step:  # more images than the profile's batch: run in chunks the engine takes
            chunks = [self._run(batch[i:i + step]) for i in range(0, batch.shape[0], step)]
            return {name: torch.cat([c[name] for c in chunks]) for name in self.output_names}
        if not self.profile.contains(batch.shape):
            raise VLTSegError(f"input {'x'.join(map(str, batch.shape))} is outside the engine's profile "
                              f"({self.profile.describe()}; expected a shape inside it, or rebuild with other sizes)")
        host_in = self.host.get(batch.shape, torch.from_numpy(batch[:0]).dtype)
        host_in.numpy()[...] = batch
        with self.cuda.running():
            images = host_in.to(self.device, non_blocking=True).to(self.dtypes[self.input_name])
            if not self.context.set_input_shape(self.input_name, tuple(batch.shape)):
                raise VLTSegError(f"TensorRT refused input shape {tuple(batch.shape)} for {self.engine_path} "
                                  f"(expected a shape inside {self.profile.describe()})")
            self._bind(self.input_name, images)
            outputs = {}
            for name in self.output_names:
                outputs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                            device=self.device)
                self._bind(name, outputs[name])
            if not self.context.execute_async_v3(self.cuda.handle):
                raise VLTSegError(f"TensorRT execution failed for {self.engine_path} (see the TensorRT log)")
            self.executions += 1
        for tensor in outputs.values():
            self.cuda.finish(tensor)
        return outputs

    def _bind(self, name: str, tensor) -> None:
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise VLTSegError(f"TensorRT refused the address of tensor '{name}' of {self.engine_path} "
                              "(expected a CUDA buffer on the engine's device)")

    def identity(self) -> dict:
        spec = self.manifest.get("spec", {})
        return {"backend": self.name, "device": str(self.device), "precision": spec.get("precision"),
                "engine": str(self.engine_path), "engine_sha256": self.manifest.get("engine_sha256"),
                "onnx_sha256": spec.get("onnx_sha256"), "tensorrt": spec.get("tensorrt_version"),
                "gpu": spec.get("gpu_name"), "profile": spec.get("profile")}
