"""launch_testing on a real ROS 2 install (CI: .github/workflows/ros2.yml): multi_camera.launch.py starts one node
for two cameras, and a frame published on each camera's topic comes back on that camera's mask topic. Skipped
where `launch_testing` is missing."""
import time
import unittest

import pytest

launch_testing = pytest.importorskip("launch_testing")

import launch_testing.actions  # noqa: E402
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

CAMERAS = ("front", "rear")


@pytest.mark.launch_test
def generate_test_description():
    launch_file = f"{get_package_share_directory('vltseg_ros')}/launch/multi_camera.launch.py"
    arguments = {"model": "tiny-test", "backend": "torch", "cameras": f"[{', '.join(CAMERAS)}]"}
    return LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(launch_file), launch_arguments=arguments.items()),
        launch_testing.actions.ReadyToTest(),
    ])


class TestMultiCameraLaunch(unittest.TestCase):
    def test_each_camera_gets_its_own_masks(self):
        rclpy.init()
        node = rclpy.create_node("multi_camera_launch_probe")
        try:
            masks = {cam: [] for cam in CAMERAS}
            pubs, sent = {}, {}
            for i, cam in enumerate(CAMERAS):
                node.create_subscription(Image, f"{cam}/segmentation/mask", masks[cam].append, 10)
                pubs[cam] = node.create_publisher(Image, f"{cam}/image", 10)
                msg = Image(height=64, width=96, encoding="rgb8", step=96 * 3)
                msg.header.frame_id, msg.header.stamp.sec = f"{cam}_camera", 100 + i
                msg.data = np.random.default_rng(i).integers(0, 256, (64, 96, 3), dtype=np.uint8).tobytes()
                sent[cam] = msg
            deadline = time.monotonic() + 180  # model load on a CI runner
            while not all(masks.values()) and time.monotonic() < deadline:
                for cam in CAMERAS:
                    if not masks[cam] and pubs[cam].get_subscription_count():
                        pubs[cam].publish(sent[cam])
                rclpy.spin_once(node, timeout_sec=0.5)
            for cam in CAMERAS:
                self.assertTrue(masks[cam], f"no {cam}/segmentation/mask within 180 s of multi_camera.launch.py")
                self.assertEqual(masks[cam][0].header, sent[cam].header)
        finally:
            node.destroy_node()
            rclpy.shutdown()
