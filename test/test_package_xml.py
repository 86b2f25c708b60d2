"""package.xml declares every package the code imports or runs, so `rosdep install` brings all of it: each
top-level import of vltseg_ros/ and launch/ (exec_depend) and of test/ (test_depend or exec_depend) is the Python
standard library, this package, a Python distribution of the table below (with its rosdep key where one exists),
or else a ROS package that must be declared under its own name; `ros2 <verb>` run by a launch file needs the
package of that verb."""
import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OWN = {"vltseg_core", "vltseg_ros"}
# Python distributions (not ROS packages): module -> rosdep key, or None where there is none (pip-installed,
# docs/ros.md) or the module belongs to an optional extra that the node does not need.
PYTHON = {"numpy": "python3-numpy", "cv2": "python3-opencv", "PIL": "python3-pil", "yaml": "python3-yaml",
          "tqdm": "python3-tqdm", "matplotlib": "python3-matplotlib", "filelock": "python3-filelock",
          "timm": "python3-timm-pip", "onnxruntime": "python3-onnxruntime-pip", "pytest": "python3-pytest",
          "torch": None, "safetensors": None, "onnx": None, "rosbags": None,
          "scipy": None, "cityscapesscripts": None, "open_clip": None, "consisid_eva_clip": None,
          "tensorrt": None}
# ros2 CLI verbs a launch file may run -> the packages `ros2 <verb>` needs
VERBS = {"bag": {"ros2bag", "rosbag2_storage_mcap"}, "launch": {"ros2launch"}}


def declared(*tags: str) -> set[str]:
    root = ET.parse(REPO / "package.xml").getroot()
    return {el.text.strip() for tag in tags for el in root.iter(tag)}


def imports(paths: list[Path]) -> dict[str, str]:
    """Top-level module -> the first file importing it (module-level and function-level imports alike)."""
    found: dict[str, str] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return {m: f for m, f in found.items() if m not in sys.stdlib_module_names and m not in OWN}


def undeclared(modules: dict[str, str], keys: set[str], local: set[str] = frozenset()) -> list[str]:
    missing = []
    for module, where in sorted(modules.items()):
        if module in local:
            continue
        key = PYTHON[module] if module in PYTHON else module  # anything else is a ROS package of that name
        if key is not None and key not in keys:
            missing.append(f"{key} (import {module} in {where})")
    return missing


def test_every_import_of_the_package_and_its_launch_files_is_an_exec_depend():
    files = sorted((REPO / "vltseg_ros").rglob("*.py")) + sorted((REPO / "launch").glob("*.py"))
    assert not undeclared(imports(files), declared("exec_depend", "depend")), "not in package.xml"


def test_every_ros_package_the_tests_import_is_declared():
    files = sorted((REPO / "test").glob("*.py"))
    local = {p.stem for p in files} | {"fake_tensorrt"}  # test helpers, and the TensorRT stand-in they write
    keys = declared("exec_depend", "depend", "test_depend")
    assert not undeclared(imports(files), keys, local), "not in package.xml"


@pytest.mark.parametrize("path", sorted((REPO / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_the_ros2_verbs_a_launch_file_runs_are_declared(path):
    """`ros2 bag play` in replay.launch.py needs ros2bag (and the mcap storage plugin); `ros2 launch` itself
    needs ros2launch."""
    needed = set(VERBS["launch"])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.List) and len(node.elts) > 1 and getattr(node.elts[0], "value", None) == "ros2":
            needed |= VERBS[node.elts[1].value]
    assert needed <= declared("exec_depend", "depend"), f"{path.name} needs {needed - declared('exec_depend')}"
