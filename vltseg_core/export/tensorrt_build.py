"""Build TensorRT 10 engines from ONNX (Python API), through the engine cache.

Only `build_serialized_engine` and `current_gpu`/`tensorrt_version` touch TensorRT or CUDA; flag selection,
the version gate, profiles, paths, the engine-vs-ONNX Runtime verdict and the cache logic are plain code (tested
without a GPU).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vltseg_core.assets import sha256_file
from vltseg_core.backends.base import cuda_index
from vltseg_core.errors import VLTSegError
from vltseg_core.export.engine_cache import EngineSpec, InputProfile, atomic_write, ensure_engine, profile_for_input

log = logging.getLogger(__name__)

# precision -> TensorRT BuilderFlag names. FP16/BF16 let TensorRT choose half precision per layer (it keeps
# normalisation/softmax in fp32 where needed); INT8 needs a Q/DQ (explicitly quantized) graph and keeps FP16 as
# fallback for the unquantized layers.
PRECISION_FLAGS = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",), "int8": ("INT8", "FP16")}
DEFAULT_WORKSPACE_MIB = 4096
# Lowest argmax agreement of a fresh engine with the fp32 graph in ONNX Runtime: the ONNX parity bar for fp32, the
# FP16 check's bar for fp16; bf16 (8-bit mantissa) and int8 get the bar of the torch bf16 test.
MIN_ENGINE_AGREEMENT = {"fp32": 0.999, "fp16": 0.99, "bf16": 0.98, "int8": 0.98}


def builder_flags(precision: str, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                  extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The builder settings that change the engine, as stable strings for the cache key."""
    if precision not in PRECISION_FLAGS:
        raise VLTSegError(f"unknown TensorRT precision '{precision}' (expected one of {', '.join(PRECISION_FLAGS)})")
    if workspace_mib <= 0:
        raise VLTSegError(f"workspace limit {workspace_mib} MiB must be positive")
    return tuple(sorted({*PRECISION_FLAGS[precision], *extra, f"workspace_mib={workspace_mib}"}))


def check_tensorrt_version(version: str) -> str:
    """TensorRT 10.x only: 11 removed the FP16/BF16/INT8 builder flags this builder sets (it needs strongly typed
    networks instead), and 9 and older lack the tensor-name API the backend uses."""
    if version.split(".")[0] != "10":
        raise VLTSegError(f"TensorRT {version} is installed (expected TensorRT 10.x: 11 removed the FP16/BF16/INT8 "
                          "builder flags used here, older versions lack the API)")
    return version


def tensorrt_version() -> str:
    try:
        import tensorrt as trt
    except ImportError:
        raise VLTSegError("TensorRT was requested but the `tensorrt` Python package is not installed (expected "
                          "TensorRT 10 on the GPU machine; use backend onnxruntime or torch elsewhere)") from None
    return check_tensorrt_version(trt.__version__)


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


def default_engine_path(onnx_path: Path, spec: EngineSpec) -> Path:
    """Named by precision, GPU and a key prefix: nodes with other profiles or flags get their own engine instead
    of rebuilding each other's (old engines stay until deleted)."""
    return onnx_path.with_name(f"{onnx_path.stem}.{spec.precision}.{_gpu_tag(spec)}.{spec.key()[:8]}.engine")


def timing_cache_path(engine: Path, spec: EngineSpec) -> Path:
    """Timing caches are valid per TensorRT version and GPU; shared by all engines in the folder."""
    return engine.with_name(f"timing-trt{spec.tensorrt_version}-{_gpu_tag(spec)}.cache")


def _gpu_tag(spec: EngineSpec) -> str:
    """'NVIDIA Jetson AGX Orin', '8.7' -> 'nvidia-jetson-agx-orin-sm87'."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", spec.gpu_name).strip("-").lower()
    return f"{gpu}-sm{spec.compute_capability.replace('.', '')}"


def onnx_input(onnx_path: Path) -> tuple[str, list]:
    """Name and shape (ints for static dims, names for dynamic ones) of the graph's image input."""
    import onnx

    if not onnx_path.is_file():
        raise VLTSegError(f"ONNX file not found: {onnx_path} (expected a graph from `vltseg export onnx`)")
    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as exc:
        raise VLTSegError(f"{onnx_path} is not a readable ONNX file ({type(exc).__name__})") from exc
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise VLTSegError(f"{onnx_path} has {len(inputs)} inputs (expected one image input)")
    shape = inputs[0].type.tensor_type.shape.dim
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape]
    return inputs[0].name, dims


def build_serialized_engine(onnx_path: Path, spec: EngineSpec, timing_cache: Path, device: str = "cuda") -> bytes:
    """TensorRT 10: parse ONNX, set flags/profile/workspace/timing cache, build on `device` (the builder uses the
    current CUDA device, so cuda:N is made current for the build); progress goes to the log."""
    import tensorrt as trt
    import torch

    class ProgressLog(trt.IProgressMonitor):
        """Logs each top-level build phase and its step count (ViT-L builds take minutes)."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = num_steps
            if parent_phase is None:
                log.info("TensorRT build: %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name, step):
            total = self.steps.get(phase_name, 0)
            if total >= 10 and step % (total // 10) == 0:  # about ten lines per long phase
                log.info("TensorRT build: %s %d/%d", phase_name, step + 1, total)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self.steps.pop(phase_name, None)

    with torch.cuda.device(cuda_index(device)):
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise VLTSegError(f"TensorRT could not parse {onnx_path}: {errors or 'unknown error'}")
        config = builder.create_builder_config()
        for flag in spec.builder_flags:
            if flag.startswith("workspace_mib="):
                config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(flag.split("=")[1]) << 20)
            else:
                config.set_flag(getattr(trt.BuilderFlag, flag))
        profile = builder.create_optimization_profile()
        p = spec.profile
        profile.set_shape(p.name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        monitor = ProgressLog()  # keep a Python reference alive for the whole build
        config.progress_monitor = monitor
        log.info("building TensorRT %s engine for %s (%s); this takes minutes for large models",
                 spec.precision, onnx_path.name, p.describe())
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise VLTSegError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
        return bytes(serialized)


def engine_spec(onnx_path: Path, precision: str, device: str = "cuda", size: tuple[int, int] | None = None,
                min_size: tuple[int, int] | None = None, max_size: tuple[int, int] | None = None,
                batch: tuple[int, int, int] = (1, 1, 1), workspace_mib: int = DEFAULT_WORKSPACE_MIB) -> EngineSpec:
    name, shape = onnx_input(onnx_path)
    profile: InputProfile = profile_for_input(name, shape, size, min_size, max_size, batch)
    flags = builder_flags(precision, workspace_mib)
    version = tensorrt_version()
    gpu_name, capability = current_gpu(device)
    return EngineSpec(sha256_file(onnx_path), version, gpu_name, capability, precision, profile, flags)


def engine_for_onnx(onnx_path: Path, precision: str = "fp16", device: str = "cuda", engine_path: Path | None = None,
                    size: tuple[int, int] | None = None, min_size: tuple[int, int] | None = None,
                    max_size: tuple[int, int] | None = None, batch: tuple[int, int, int] = (1, 1, 1),
                    workspace_mib: int = DEFAULT_WORKSPACE_MIB, force: bool = False) -> Path:
    """The engine for `onnx_path` on this GPU: reused when its manifest matches, else (re)built under the lock."""
    from vltseg_core.export.onnx_export import default_size, graph_metadata

    meta = graph_metadata(onnx_path)
    if size is None and meta.get("dynamic"):  # fixed graphs take their own size
        size = default_size(meta.get("preset", {}), traced=meta.get("export_size"))
    spec = engine_spec(onnx_path, precision, device, size, min_size, max_size, batch, workspace_mib)
    engine = engine_path or default_engine_path(onnx_path, spec)
    return ensure_engine(engine, spec,
                         lambda s: build_serialized_engine(onnx_path, s, timing_cache_path(engine, s), device),
                         metadata={**meta, "onnx": str(onnx_path.resolve())}, force=force)


@dataclass
class EngineAgreement:
    """A fresh engine against the fp32 graph in ONNX Runtime on the same batch."""

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
