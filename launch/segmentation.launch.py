"""One camera: `ros2 launch vltseg_ros segmentation.launch.py image:=/camera/image_raw model:=demo`.

The node configures and activates itself (`autostart`), so no lifecycle manager is needed; the other launch
files include this one.
"""
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import LifecycleNode

CONFIG = Path(get_package_share_directory("vltseg_ros")) / "config"

ARGUMENTS = {  # name: (default, description)
    "params_file": (str(CONFIG / "segmentation_node.yaml"), "parameter YAML of the node"),
    "model": ("demo", "preset name, checkpoint, .onnx or TensorRT engine path"),
    "backend": ("auto", "auto | torch | onnxruntime | tensorrt"),
    "device": ("cpu", "cpu | cuda | cuda:N"),
    "precision": ("fp32", "fp32 | fp16 | bf16 | int8"),
    "class_table": (str(CONFIG / "cityscapes_classes.yaml"), "class/palette table"),
    "transport": ("raw", "raw (image) | compressed (image/compressed)"),
    "mode": ("live", "live | evaluation"),
    "cameras": ("['']", "camera namespaces sharing one model, e.g. '[front, rear]'"),
    "image": ("image", "input image topic (one camera); /compressed is appended for compressed transport"),
    "camera_info": ("camera_info", "input camera_info topic (one camera)"),
    "use_camera_info": ("false", "republish camera_info with the mask's header and size"),
    "namespace": ("", "node namespace"),
    "node_name": ("segmentation_node", "node name"),
    "use_sim_time": ("false", "use /clock (bag replay with --clock)"),
}


def generate_launch_description() -> LaunchDescription:
    arg = LaunchConfiguration
    node = LifecycleNode(
        package="vltseg_ros",
        executable="segmentation_node",
        name=arg("node_name"),
        namespace=arg("namespace"),
        output="screen",
        parameters=[
            arg("params_file"),
            {
                "model": arg("model"),
                "backend": arg("backend"),
                "device": arg("device"),
                "precision": arg("precision"),
                "class_table": arg("class_table"),
                "transport": arg("transport"),
                "mode": arg("mode"),
                "cameras": arg("cameras"),
                "use_camera_info": arg("use_camera_info"),
                "use_sim_time": arg("use_sim_time"),
                "autostart": True,
            },
        ],
        remappings=[
            ("image", arg("image")),
            ("image/compressed", PythonExpression(["'", arg("image"), "' + '/compressed'"])),
            ("camera_info", arg("camera_info")),
        ],
    )
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in ARGUMENTS.items()] + [node])
