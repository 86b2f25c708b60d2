"""The node's parameters as data: name, default, range, whether it may change at run time, and why it exists.

The node declares exactly these (with ParameterDescriptors); config/segmentation_node.yaml sets the same names and
the README table documents them; test/test_params.py keeps the three in agreement.
"""
from __future__ import annotations

from dataclasses import dataclass

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

MODES = ("live", "evaluation")
TRANSPORTS = ("raw", "compressed")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: bool | int | float | str | list[str]
    description: str
    read_only: bool = True  # most change what is loaded or subscribed: only safe before configure
    low: float | None = None
    high: float | None = None


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model", "demo", "preset name, checkpoint, ONNX or TensorRT engine path (load_predictor)"),
    ParamSpec("backend", "auto", "auto, torch, onnxruntime or tensorrt"),
    ParamSpec("device", "cpu", "cpu, cuda or cuda:N"),
    ParamSpec("precision", "fp32", "fp32, fp16, bf16 or int8 (what the backend supports)"),
    ParamSpec("inference_mode", "", "whole or slide; empty = the model's default"),
    ParamSpec("class_table", "", "class/palette YAML (name or path); empty = the model's own table"),
    ParamSpec("cameras", [""], "camera namespaces sharing one model; [''] = one camera on the node's own topics"),
    ParamSpec("transport", "raw", "raw (sensor_msgs/Image on image) or compressed (CompressedImage on "
              "image/compressed)"),
    ParamSpec("use_camera_info", False, "subscribe to camera_info and republish it on segmentation/camera_info, "
              "with the input header and the mask size"),
    ParamSpec("mode", "live", "live: best-effort depth 1, latest frame wins; evaluation: reliable, every frame "
              "processed"),
    ParamSpec("max_batch_size", 4, "frames from different cameras waiting together are inferred as one batch",
              read_only=False, low=1, high=64),
    ParamSpec("overlay_alpha", 0.5, "weight of the colour mask in segmentation/overlay", read_only=False,
              low=0.0, high=1.0),
    ParamSpec("max_image_pixels", 16_777_216, "larger frames are skipped (protects memory)", read_only=False,
              low=1, high=1 << 30),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", low=0.05, high=60.0),
    ParamSpec("warn_throttle", 5.0, "seconds between repeated warnings about skipped frames", read_only=False,
              low=0.0, high=3600.0),
    ParamSpec("autostart", False, "configure and activate at start-up (no lifecycle manager needed)"),
)

# Set by the node in configure (not by users), so consumers without vision_msgs still find the class table.
OUTPUT_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("class_names", [""], "class names by class id of the loaded model (output: set at each configure, "
              "so not read-only; setting it changes nothing)", read_only=False),
)

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          list: ParameterType.PARAMETER_STRING_ARRAY}


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """Type, range and read-only flag, visible to `ros2 param describe` and enforced by rclpy."""
    desc = ParameterDescriptor(name=spec.name, type=_TYPES[type(spec.default)], description=spec.description,
                               read_only=spec.read_only)
    if isinstance(spec.default, float):
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high))]
    elif isinstance(spec.default, int) and not isinstance(spec.default, bool):
        desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    return desc
