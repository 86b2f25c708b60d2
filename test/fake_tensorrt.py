"""A stand-in `tensorrt` module for machines where TensorRT cannot exist (no GPU, no libnvinfer).

It implements the part of the TensorRT Python API that vltseg calls, and records what the code asks for: the
network creation flags, the builder flags set and cleared, the graph the parser read (path, sha256 and the dtype of
every tensor in it), the timing-cache calls. Its failure modes are TensorRT's: `create_timing_cache` returns None
for bytes it cannot read, `set_timing_cache` returns False for a cache of another device, `get_timing_cache` may
return None, `create_execution_context` returns None when activation memory cannot be had. Nothing is computed:
engines are JSON describing their build. test_tensorrt_api.py checks that every class, method (with its parameter
names) and enum member defined here exists in the real bindings of each supported TensorRT version.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

__version__ = "10.16.1.11"

# Knobs a test sets to make TensorRT fail the way it does on real machines.
KNOBS = {"refuse_cache_prefix": b"", "no_timing_cache_after_build": False, "no_context": False,
         "build_fails": False, "serialize_raises": False, "model": None}
RECORD: dict = {}


def reset() -> None:
    KNOBS.update(refuse_cache_prefix=b"", no_timing_cache_after_build=False, no_context=False, build_fails=False,
                 serialize_raises=False, model=None)
    RECORD.clear()


class ILogger:
    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self):
        pass

    def log(self, severity, msg):
        raise NotImplementedError


class NetworkDefinitionCreationFlag:
    STRONGLY_TYPED = 1  # its value in 10.x (0 in 11.x): code must read it, not assume it


class BuilderFlag:
    TF32 = 6


class MemoryPoolType:
    WORKSPACE = 0


class TensorIOMode:
    NONE, INPUT, OUTPUT = range(3)


class DataType:
    FLOAT, HALF, INT8, INT32, BOOL, UINT8 = range(6)


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}


def nptype(trt_type):
    return _NP[trt_type]


class IProgressMonitor:
    def __init__(self):
        pass


class ITimingCache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self):
        if KNOBS["serialize_raises"]:
            raise RuntimeError("timing cache serialization failed")
        return self.data + b"+tuned"


class IOptimizationProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, input, min, opt, max):  # noqa: A002 (TensorRT's parameter names)
        self.shapes[input] = (tuple(min), tuple(opt), tuple(max))


class IBuilderConfig:
    def __init__(self):
        self.flags_set, self.flags_cleared, self.pools, self.profiles = set(), set(), {}, []
        self.cache = None
        self.progress_monitor = None

    def set_flag(self, flag):
        self.flags_set.add(flag)

    def clear_flag(self, flag):
        self.flags_cleared.add(flag)

    def set_memory_pool_limit(self, pool, pool_size):
        self.pools[pool] = pool_size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache):
        data = bytes(serialized_timing_cache)
        RECORD.setdefault("timing_cache_created", []).append(data)
        return None if data.startswith(b"corrupt") else ITimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        if not isinstance(cache, ITimingCache):
            raise TypeError("set_timing_cache(): incompatible function arguments")
        prefix = KNOBS["refuse_cache_prefix"]
        if prefix and cache.data.startswith(prefix):
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return None if KNOBS["no_timing_cache_after_build"] else self.cache


class INetworkDefinition:
    def __init__(self, flags: int):
        self.flags = flags
        self.tensor_types: dict[str, int] = {}
        self.node_output_types: dict[str, list[int]] = {}


class OnnxParser:
    def __init__(self, network, logger):
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, model):
        import onnx

        data = Path(model).read_bytes()
        proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(data))
        g = proto.graph
        types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
        types.update({i.name: i.data_type for i in g.initializer})
        self.network.tensor_types = types
        self.network.node_output_types = {n.name: [types.get(o) for o in n.output] for n in g.node}
        self.network.op_types = {n.name: n.op_type for n in g.node}
        RECORD.update(parsed_path=str(model), parsed_sha256=hashlib.sha256(data).hexdigest(), network=self.network)
        return True

    def get_error(self, index):
        return ""


class Builder:
    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags=0):
        RECORD["network_flags"] = flags
        return INetworkDefinition(flags)

    def create_builder_config(self):
        config = IBuilderConfig()
        RECORD["config"] = config
        return config

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def build_serialized_network(self, network, config):
        if KNOBS["build_fails"]:
            return None
        shapes = config.profiles[0].shapes if config.profiles else {}
        return json.dumps({"fake_engine": RECORD.get("parsed_sha256"), "shapes": {k: list(map(list, v))
                                                                                  for k, v in shapes.items()}}).encode()


class ICudaEngine:
    """An engine of one image input `images` and one output `probs` (19 classes), profile as built."""

    def __init__(self, description: dict):
        self.description = description
        self.names = ["images", "probs"]

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name == "images" else TensorIOMode.OUTPUT

    def get_tensor_profile_shape(self, name, profile_index):
        return [tuple(s) for s in self.description["shapes"][name]]

    def get_tensor_shape(self, name):
        lo = self.description["shapes"]["images"][0]
        return (lo[0], 19, *lo[2:]) if name == "probs" else tuple(lo)

    def get_tensor_dtype(self, name):
        return DataType.FLOAT

    def create_execution_context(self):
        return None if KNOBS["no_context"] else IExecutionContext(self)


def _tensor_at(address: int, shape: tuple, device: str):
    """The float32 tensor at a raw address, as TensorRT sees the buffers it is given (CPU or CUDA memory)."""
    import ctypes

    import torch

    if device == "cuda":
        class CudaArray:
            __cuda_array_interface__ = {"shape": tuple(shape), "typestr": "<f4", "data": (address, False),
                                        "version": 3}

        return torch.as_tensor(CudaArray(), device="cuda")
    count = int(np.prod(shape))
    return torch.from_numpy(np.ctypeslib.as_array((ctypes.c_float * count).from_address(address)).reshape(shape))


class IExecutionContext:
    """Runs KNOBS["model"] (a real torch module), when set, on the buffers bound to it, on the stream it is given:
    the engine's place in the backend's plumbing, with the model's real numbers."""

    def __init__(self, engine=None):
        self.engine = engine
        self.shapes = {}
        self.addresses = {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        shape = self.shapes.get("images")
        return (shape[0], 19, *shape[2:]) if name == "probs" and shape else self.engine.get_tensor_shape(name)

    def set_tensor_address(self, name, memory):
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle):
        model = KNOBS["model"]
        RECORD["executions"] = RECORD.get("executions", 0) + 1
        if model is None:
            return True
        import contextlib

        import torch

        device = "cuda" if stream_handle else "cpu"
        images = _tensor_at(self.addresses["images"], self.shapes["images"], device)
        probs = _tensor_at(self.addresses["probs"], self.get_tensor_shape("probs"), device)
        stream = torch.cuda.ExternalStream(stream_handle) if device == "cuda" else None
        with torch.no_grad(), (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()):
            probs.copy_(model(images))
        return True


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine):
        try:
            return ICudaEngine(json.loads(bytes(serialized_engine)))
        except ValueError:
            return None
