"""Several cameras on one node sharing one model:
`ros2 launch vltseg_ros multi_camera.launch.py cameras:='[front, left, right]'`.

Each camera subscribes to `<camera>/image` (or `<camera>/image/compressed`) and publishes `<camera>/segmentation/*`;
frames of different cameras that wait together are inferred as one batch.
"""
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

LAUNCH = Path(get_package_share_directory("vltseg_ros")) / "launch"

ARGUMENTS = {  # name: (default, description)
    "cameras": ("[front, left, right]", "camera namespaces"),
    "model": ("demo", "preset name, checkpoint, .onnx or TensorRT engine path"),
    "backend": ("auto", "auto | torch | onnxruntime | tensorrt"),
    "device": ("cpu", "cpu | cuda | cuda:N"),
    "transport": ("raw", "raw | compressed"),
    "mode": ("live", "live | evaluation"),
}


def generate_launch_description() -> LaunchDescription:
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH / "segmentation.launch.py")),
        launch_arguments={name: LaunchConfiguration(name) for name in ARGUMENTS}.items(),
    )
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in ARGUMENTS.items()] + [include])
