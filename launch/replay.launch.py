"""Bag replay on the simulated clock: `ros2 launch vltseg_ros replay.launch.py bag:=/path/to/bag
image:=/camera/image transport:=compressed`.

`ros2 bag play --clock` publishes /clock and the node runs with use_sim_time, so stamps, ages and diagnostics
follow the bag's time; evaluation mode (reliable, every frame) is the default here. Playback starts when the node
reports the transition to 'active' (model loaded, inputs subscribed), however long loading takes, plus
`start_delay` seconds for the bag player's publishers to be discovered. For offline scoring without ROS see
`vltseg replay`.
"""
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, RegisterEventHandler,
                            TimerAction)
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.event_handlers import OnStateTransition

LAUNCH = Path(get_package_share_directory("vltseg_ros")) / "launch"

ARGUMENTS = {  # name: (default, description)
    "bag": ("", "rosbag2 folder to play"),
    "rate": ("1.0", "playback rate"),
    "image": ("/camera/image", "image topic in the bag (without /compressed)"),
    "transport": ("raw", "raw | compressed (what the bag holds)"),
    "model": ("demo", "preset name, checkpoint, .onnx or TensorRT engine path"),
    "backend": ("auto", "auto | torch | onnxruntime | tensorrt"),
    "device": ("cpu", "cpu | cuda | cuda:N"),
    "mode": ("evaluation", "evaluation (every frame) | live"),
    "start_delay": ("1.0", "seconds between the node becoming active and playback (publisher discovery)"),
}


def generate_launch_description() -> LaunchDescription:
    arg = LaunchConfiguration
    node = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH / "segmentation.launch.py")),
        launch_arguments={**{name: arg(name) for name in ("image", "transport", "model", "backend", "device",
                                                          "mode")},
                          "use_sim_time": "true"}.items(),
    )
    # The included file starts the only lifecycle node here, so any node's 'active' is ours; once: a later
    # deactivate / activate must not play the bag again.
    play = RegisterEventHandler(OnStateTransition(goal_state="active", handle_once=True, entities=[
        TimerAction(period=arg("start_delay"), actions=[
            ExecuteProcess(cmd=["ros2", "bag", "play", arg("bag"), "--clock", "--rate", arg("rate")],
                           output="screen")])]))
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in ARGUMENTS.items()] + [play, node])
