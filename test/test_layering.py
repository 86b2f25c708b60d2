"""`vltseg_core` has no ROS imports (every one of its modules imports in a process where nothing of ROS loads), and
its inference stack is layered: no module imports one above it."""
import subprocess
import sys

ROS_PACKAGES = {"rclpy", "rosbags", "sensor_msgs", "std_msgs", "diagnostic_msgs", "vision_msgs", "lifecycle_msgs",
                "cv_bridge", "launch", "launch_ros", "vltseg_ros"}

PROBE = """
import importlib, pkgutil, sys
import vltseg_core
for info in pkgutil.walk_packages(vltseg_core.__path__, "vltseg_core."):
    importlib.import_module(info.name)
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_vltseg_core_imports_nothing_of_ros():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(proc.stdout.split())
    assert "vltseg_core" in loaded
    assert not loaded & ROS_PACKAGES, sorted(loaded & ROS_PACKAGES)


# The inference stack, bottom to top (docs/ARCHITECTURE.md): a module imports only modules of its own layer or
# below, at module level or inside a function alike. Following `precision` from load_predictor goes down only.
LAYERS = [
    ["vltseg_core.errors", "vltseg_core.assets", "vltseg_core.classes"],
    ["vltseg_core.gpu"],  # GPU and TensorRT facts
    ["vltseg_core.export.onnx_export", "vltseg_core.export.fp16_graph", "vltseg_core.export.trt_compat",
     "vltseg_core.export.engine_cache", "vltseg_core.export.tensorrt_build"],  # graph work
    ["vltseg_core.backends.base", "vltseg_core.backends.torch_backend", "vltseg_core.backends.onnxruntime_backend",
     "vltseg_core.backends.tensorrt_backend"],
    ["vltseg_core.backends.factory"],
    ["vltseg_core.verify.parity", "vltseg_core.verify.gate_frames", "vltseg_core.verify.engine_gate"],  # backends + frames
    ["vltseg_core.predictor"],
    ["vltseg_core.evaluation", "vltseg_core.verify.fp16"],  # need the predictor
]


def _imports(path):
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_inference_layers_import_downwards_only():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    level = {module: i for i, layer in enumerate(LAYERS) for module in layer}
    upward = []
    for module, i in level.items():
        path = root / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"{module} is listed in LAYERS but {path} does not exist"
        upward += [f"{module} -> {name}" for name in _imports(path) if level.get(name, -1) > i]
    assert not upward, upward
