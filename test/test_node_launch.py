"""launch_testing on a real ROS 2 install (CI: .github/workflows/ros2.yml): segmentation.launch.py starts the
node, which activates itself and segments a frame published here. Skipped where `launch_testing` is missing."""
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


@pytest.mark.launch_test
def generate_test_description():
    launch_file = f"{get_package_share_directory('vltseg_ros')}/launch/segmentation.launch.py"
    return LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(launch_file),
                                 launch_arguments={"model": "tiny-test", "backend": "torch"}.items()),
        launch_testing.actions.ReadyToTest(),
    ])


class TestSegmentationLaunch(unittest.TestCase):
    def test_a_frame_comes_back_as_a_mask_with_its_header(self):
        rclpy.init()
        node = rclpy.create_node("launch_probe")
        try:
            masks = []
            node.create_subscription(Image, "segmentation/mask", masks.append, 10)
            pub = node.create_publisher(Image, "image", 10)
            msg = Image(height=64, width=96, encoding="rgb8", step=96 * 3)
            msg.header.frame_id, msg.header.stamp.sec = "launch_test", 42
            msg.data = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8).tobytes()
            deadline = time.monotonic() + 180  # model load on a CI runner
            while not masks and time.monotonic() < deadline:
                if pub.get_subscription_count():
                    pub.publish(msg)
                rclpy.spin_once(node, timeout_sec=0.5)
            self.assertTrue(masks, "no segmentation/mask within 180 s of launching segmentation.launch.py")
            self.assertEqual(masks[0].header, msg.header)
            self.assertEqual((masks[0].encoding, masks[0].width, masks[0].height), ("mono8", 96, 64))
        finally:
            node.destroy_node()
            rclpy.shutdown()
