"""`vltseg_core` has no ROS imports: every one of its modules imports in a process where nothing of ROS loads."""
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
