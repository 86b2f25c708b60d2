"""TensorRT engines from ONNX (Python API), through the engine cache: strongly typed networks only.

An engine's precision is its graph's: fp32 engines parse the fp32 graph (TF32 off unless asked), fp16 engines the
float16 graph of vltseg_core.export.fp16_graph (the one the FP16 check ran in ONNX Runtime), int8 engines an
explicitly quantized (Q/DQ) graph. TensorRT never picks a precision per layer (no FP16/BF16/INT8 builder flags,
deprecated in 10.12 and gone in 11), so what was checked is what runs.

Only `build_serialized_engine` and `tensorrt_logger` touch TensorRT; flags, graphs, profiles, paths, the
timing-cache recovery and the cache logic are plain code (tested with a fake `tensorrt` module).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from vltseg_core.assets import cache_dir, sha256_file
from vltseg_core.errors import VLTSegError
from vltseg_core.export.engine_cache import EngineSpec, InputProfile, atomic_write, ensure_engine, profile_for_input
from vltseg_core.gpu import cuda_index, current_gpu, tensorrt_version

log = logging.getLogger(__name__)

ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_MIB = 4096
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def builder_flags(precision: str, workspace_mib: int = DEFAULT_WORKSPACE_MIB, allow_tf32: bool = False) -> tuple[str, ...]:
    """The builder settings that change the engine, as stable strings for the cache key. Every engine is a
    strongly typed network; TF32 (on by default in TensorRT) only when asked, so fp32 engines compute in fp32."""
    if precision not in ENGINE_PRECISIONS:
        raise VLTSegError(f"unknown TensorRT precision '{precision}' (expected one of {', '.join(ENGINE_PRECISIONS)}; "
                          "bf16 engines are not built: ONNX Runtime cannot run a bf16 graph on CPU to check it)")
    if workspace_mib <= 0:
        raise VLTSegError(f"workspace limit {workspace_mib} MiB must be positive")
    return tuple(sorted({"strongly_typed", "tf32" if allow_tf32 else "no_tf32", f"workspace_mib={workspace_mib}"}))


def network_graph(onnx_path: Path, precision: str) -> Path:
    """The graph TensorRT parses for `precision`: the fp32 graph itself, its float16 graph (written once to the
    asset cache, named by its sha256), or for int8 the graph itself, which must be explicitly quantized."""
    import onnx

    if precision == "fp16":
        from vltseg_core.export.fp16_graph import fp16_graph_bytes

        data, sha = fp16_graph_bytes(onnx_path)
        path = cache_dir() / "fp16" / f"{sha[:16]}.onnx"
        if not path.is_file() or sha256_file(path) != sha:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        return path
    if precision == "int8":
        ops = {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
        if not QDQ_OPS <= ops:
            raise VLTSegError(f"TensorRT int8 needs an explicitly quantized graph, but {onnx_path} has no "
                              "QuantizeLinear/DequantizeLinear nodes (expected a Q/DQ graph, e.g. from NVIDIA ModelOpt; "
                              "calibration is not supported: use precision fp16)")
    return onnx_path


def default_engine_path(onnx_path: Path, spec: EngineSpec) -> Path:
    """Named by precision, GPU and a key prefix: nodes with other profiles or flags get their own engine instead
    of rebuilding each other's (old engines stay until deleted)."""
    return onnx_path.with_name(f"{onnx_path.stem}.{spec.precision}.{_gpu_tag(spec)}.{spec.key()[:8]}.engine")


def timing_cache_path(engine: Path, spec: EngineSpec) -> Path:
    """One timing cache per engine spec, beside its engine: builds of different engines (which may run at once)
    never write each other's, and builds of the same one are serialised by its lock."""
    return engine.with_name(f"timing-{_gpu_tag(spec)}-{spec.key()[:16]}.cache")


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


def tensorrt_logger():
    """A trt.ILogger that forwards TensorRT's messages to Python logging (and so into a ROS node's log), instead
    of the stderr of trt.Logger that a launch file may never show."""
    import tensorrt as trt

    levels = {trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL, trt.ILogger.Severity.ERROR: logging.ERROR,
              trt.ILogger.Severity.WARNING: logging.WARNING, trt.ILogger.Severity.INFO: logging.DEBUG,
              trt.ILogger.Severity.VERBOSE: logging.DEBUG}
    trt_log = logging.getLogger("vltseg_core.tensorrt")

    class ToLogging(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            trt_log.log(levels.get(severity, logging.WARNING), "TensorRT: %s", msg)

    return ToLogging()


def load_timing_cache(config, path: Path) -> None:
    """Give the builder the timing cache at `path`; a missing, damaged or refused one falls back to an empty cache
    (a slower build, never a failed one)."""
    data = b""
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("timing cache %s unreadable (%s); starting from an empty one", path, exc)
    if data:
        cache = config.create_timing_cache(data)
        if cache is None:
            log.warning("timing cache %s is unreadable (damaged?); starting from an empty one", path)
        elif _set_timing_cache(config, cache):
            return
        else:
            log.warning("TensorRT refused timing cache %s (another GPU or TensorRT version); starting from an "
                        "empty one", path)
    cache = config.create_timing_cache(b"")
    if cache is None or not _set_timing_cache(config, cache):
        log.warning("TensorRT gave no empty timing cache; building without one (slower builds)")


def _set_timing_cache(config, cache) -> bool:
    try:
        return bool(config.set_timing_cache(cache, ignore_mismatch=False))
    except (TypeError, RuntimeError) as exc:
        log.warning("TensorRT rejected a timing cache (%s)", exc)
        return False


def save_timing_cache(config, path: Path) -> None:
    """Save the builder's timing cache, best effort: a cache that cannot be saved never loses the engine."""
    try:
        cache = config.get_timing_cache()
        if cache is None:
            log.warning("TensorRT has no timing cache to save to %s (the engine is kept)", path)
            return
        atomic_write(path, bytes(cache.serialize()))
    except (OSError, RuntimeError, TypeError, AttributeError) as exc:
        log.warning("timing cache not saved to %s (%s); the engine is kept", path, exc)


def build_serialized_engine(network_path: Path, spec: EngineSpec, timing_cache: Path, device: str = "cuda") -> bytes:
    """Parse `network_path` as a strongly typed network, set flags/profile/workspace/timing cache, build on `device`
    (the builder uses the current CUDA device, so cuda:N is made current); progress goes to the log."""
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
        logger = tensorrt_logger()
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(network_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise VLTSegError(f"TensorRT could not parse {network_path}: {errors or 'unknown error'}")
        config = builder.create_builder_config()
        for flag in spec.builder_flags:
            if flag.startswith("workspace_mib="):
                config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(flag.split("=")[1]) << 20)
            elif flag == "no_tf32":
                config.clear_flag(trt.BuilderFlag.TF32)
            elif flag == "tf32":
                config.set_flag(trt.BuilderFlag.TF32)
        profile = builder.create_optimization_profile()
        p = spec.profile
        profile.set_shape(p.name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
        load_timing_cache(config, timing_cache)
        monitor = ProgressLog()  # keep a Python reference alive for the whole build
        config.progress_monitor = monitor
        log.info("building TensorRT %s engine (strongly typed) from %s (%s); this takes minutes for large models",
                 spec.precision, network_path.name, p.describe())
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise VLTSegError(f"TensorRT failed to build an engine from {network_path} (see the TensorRT log lines "
                              "above, logger vltseg_core.tensorrt)")
        data = bytes(serialized)
        save_timing_cache(config, timing_cache)
        return data


def engine_spec(onnx_path: Path, precision: str, device: str = "cuda", size: tuple[int, int] | None = None,
                min_size: tuple[int, int] | None = None, max_size: tuple[int, int] | None = None,
                batch: tuple[int, int, int] = (1, 1, 1), workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                allow_tf32: bool = False) -> tuple[EngineSpec, Path]:
    """The spec of the engine for `onnx_path` on `device`, and the graph TensorRT will parse for it."""
    name, shape = onnx_input(onnx_path)
    profile: InputProfile = profile_for_input(name, shape, size, min_size, max_size, batch)
    flags = builder_flags(precision, workspace_mib, allow_tf32)
    version = tensorrt_version()
    gpu_name, capability = current_gpu(device)
    network = network_graph(onnx_path, precision)
    return EngineSpec(sha256_file(onnx_path), version, gpu_name, capability, precision, profile, flags,
                      sha256_file(network)), network


def engine_for_onnx(onnx_path: Path, precision: str = "fp16", device: str = "cuda", engine_path: Path | None = None,
                    size: tuple[int, int] | None = None, min_size: tuple[int, int] | None = None,
                    max_size: tuple[int, int] | None = None, batch: tuple[int, int, int] = (1, 1, 1),
                    workspace_mib: int = DEFAULT_WORKSPACE_MIB, allow_tf32: bool = False, force: bool = False) -> Path:
    """The engine for `onnx_path` on this GPU: reused when its manifest matches, else (re)built under the lock
    after the TensorRT pre-flight check of the graph it parses."""
    from vltseg_core.export.onnx_export import default_size, graph_metadata

    meta = graph_metadata(onnx_path)
    if size is None and meta.get("dynamic"):  # fixed graphs take their own size
        size = default_size(meta.get("preset", {}), traced=meta.get("export_size"))
    spec, network = engine_spec(onnx_path, precision, device, size, min_size, max_size, batch, workspace_mib,
                                allow_tf32)
    engine = engine_path or default_engine_path(onnx_path, spec)

    def build(s: EngineSpec) -> bytes:
        from vltseg_core.export.trt_compat import require_trt_compatible

        require_trt_compatible(network, where=f"{precision} graph of {onnx_path}")
        return build_serialized_engine(network, s, timing_cache_path(engine, s), device)

    return ensure_engine(engine, spec, build, metadata={**meta, "onnx": str(onnx_path.resolve()),
                                                         "network_onnx": str(network)}, force=force)
