"""Build TensorRT 10 engines from ONNX (Python API), through the engine cache.

Only `build_serialized_engine` and `current_gpu`/`tensorrt_version` touch TensorRT or CUDA; flag selection,
profiles, paths and the cache logic are plain code (tested without a GPU).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from vltseg_core.assets import sha256_file
from vltseg_core.errors import VLTSegError
from vltseg_core.export.engine_cache import EngineSpec, InputProfile, atomic_write, ensure_engine, profile_for_input

log = logging.getLogger(__name__)

# precision -> TensorRT BuilderFlag names. FP16/BF16 let TensorRT choose half precision per layer (it keeps
# normalisation/softmax in fp32 where needed); INT8 needs a Q/DQ (explicitly quantized) graph and keeps FP16 as
# fallback for the unquantized layers.
PRECISION_FLAGS = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",), "int8": ("INT8", "FP16")}
DEFAULT_WORKSPACE_MIB = 4096


def builder_flags(precision: str, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                  extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The builder settings that change the engine, as stable strings for the cache key."""
    if precision not in PRECISION_FLAGS:
        raise VLTSegError(f"unknown TensorRT precision '{precision}' (expected one of {', '.join(PRECISION_FLAGS)})")
    if workspace_mib <= 0:
        raise VLTSegError(f"workspace limit {workspace_mib} MiB must be positive")
    return tuple(sorted({*PRECISION_FLAGS[precision], *extra, f"workspace_mib={workspace_mib}"}))


def tensorrt_version() -> str:
    try:
        import tensorrt as trt
    except ImportError:
        raise VLTSegError("TensorRT was requested but the `tensorrt` Python package is not installed (expected "
                          "TensorRT 10 on the GPU machine; use backend onnxruntime or torch elsewhere)") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise VLTSegError(f"TensorRT {trt.__version__} is installed (expected TensorRT 10 or newer)")
    return trt.__version__


def current_gpu(device: str = "cuda") -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of `device`; a clear error when there is no GPU."""
    import torch

    if not device.startswith("cuda"):
        raise VLTSegError(f"TensorRT needs a CUDA device, got device '{device}' (expected cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise VLTSegError("TensorRT was requested but no CUDA GPU is visible (expected an NVIDIA GPU and driver; "
                          "use backend onnxruntime or torch on CPU)")
    index = int(device.split(":")[1]) if ":" in device else 0
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def default_engine_path(onnx_path: Path, spec: EngineSpec) -> Path:
    """One engine slot per ONNX file, precision and GPU model; other changes rebuild the slot (logged)."""
    return onnx_path.with_name(f"{onnx_path.stem}.{spec.precision}.{_gpu_tag(spec)}.engine")


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


def build_serialized_engine(onnx_path: Path, spec: EngineSpec, timing_cache: Path) -> bytes:
    """TensorRT 10: parse ONNX, set flags/profile/workspace/timing cache, build; progress goes to the log."""
    import tensorrt as trt

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
    from vltseg_core.export.onnx_export import graph_metadata

    if size is None:  # a dynamic graph without a size: the preset's crop / test size, else the traced size
        meta = graph_metadata(onnx_path)
        test = meta.get("preset", {}).get("test", {})
        size = tuple(test.get("crop_size") or test.get("size") or meta.get("export_size") or ()) or None
    spec = engine_spec(onnx_path, precision, device, size, min_size, max_size, batch, workspace_mib)
    engine = engine_path or default_engine_path(onnx_path, spec)
    metadata = {**graph_metadata(onnx_path), "onnx": str(onnx_path.resolve())}
    return ensure_engine(engine, spec, lambda s: build_serialized_engine(onnx_path, s, timing_cache_path(engine, s)),
                         metadata=metadata, force=force)
