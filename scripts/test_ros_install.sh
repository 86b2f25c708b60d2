#!/usr/bin/env bash
# `./run.sh test-ros`: the tests of what only a ROS 2 install has (cv_bridge, vision_msgs, launch, launch_testing,
# ros2cli), run on a real colcon install of this package over the ROS 2 Jazzy overlay of ../shared/ros2-overlay
# (its README): the overlay is built into .venv/ros2-overlay (cached: seconds when up to date), the working tree is
# `colcon build`-installed into .venv/ros2-ws, and pytest runs the ROS-facing tests with launch_testing's pytest
# plugin loaded, as `colcon test` does. Without the overlay it says so in one line and exits 0.
# Usage: scripts/test_ros_install.sh VENV [pytest args...]   (run.sh passes its .venv)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(cd "$1" && pwd)"
shift
overlay_src="${VLTSEG_ROS2_OVERLAY:-$root/../shared/ros2-overlay}"
if [ ! -x "$overlay_src/build.sh" ]; then
  echo "[test-ros] skipped: no ROS 2 overlay at $overlay_src (the real-install tests need it, or a ROS 2 install: docs/ros.md)"
  exit 0
fi
prefix="$venv/ros2-overlay"
ws="$venv/ros2-ws"
t0=$SECONDS

echo "[test-ros] ROS 2 Jazzy overlay (launch, launch_testing, ros2cli, vision_msgs, cv_bridge) in $prefix"
"$overlay_src/build.sh" "$venv" "$prefix"
t1=$SECONDS

echo "[test-ros] colcon build of this working tree in $ws"
rm -rf "$ws/src" "$ws/build" "$ws/install"
mkdir -p "$ws/src/vltseg_ros"
(cd "$root" && git ls-files -z --cached --others --exclude-standard) \
  | (cd "$root" && tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$ws/src/vltseg_ros"
set +u  # colcon's setup scripts read unset variables
# shellcheck disable=SC1091
source "$prefix/setup.bash"
(cd "$ws" && colcon --log-base log build --event-handlers console_cohesion- summary+ > build.log 2>&1) \
  || { tail -n 30 "$ws/build.log"; echo "[test-ros] error: colcon build of vltseg_ros failed ($ws/build.log)" >&2; exit 1; }
# shellcheck disable=SC1091
source "$ws/install/setup.bash"
set -u
(cd "$ws" && python - "$ws/install") <<'EOF'
import sys
import cv2, cv_bridge, launch_testing, vision_msgs, vltseg_ros
assert vltseg_ros.__file__.startswith(sys.argv[1]), f"vltseg_ros imported from {vltseg_ros.__file__}, not the install"
print(f"[test-ros] vltseg_ros from {vltseg_ros.__file__}; cv_bridge, vision_msgs, launch_testing importable; "
      f"OpenCV {cv2.__version__}")
EOF
t2=$SECONDS

# `pytest`, not `python -m pytest`: the latter would put the checkout first on sys.path instead of the install.
# launch_testing's plugin loads (it is installed), so the two launch tests run as launch tests, like colcon test.
cd "$root"
status=0
pytest test/test_node_launch.py test/test_multi_camera_launch.py test/test_ros_cli.py \
  test/test_image_conversions.py test/test_node_live.py test/test_node_evaluation.py test/test_node_shutdown.py \
  test/test_params.py test/test_launch_files.py test/test_package_xml.py test/test_launch_testing_collection.py \
  "$@" || status=$?
echo "[test-ros] overlay $((t1 - t0)) s, colcon build $((t2 - t1)) s, tests $((SECONDS - t2)) s"
exit $status
