"""One ament_python package (ROS 2) that is also a plain pip package.

`vltseg_core` has no ROS imports; `vltseg_ros` holds the node and ROS-facing tools.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vltseg_ros"

EXTRAS = {
    "train": ["scipy>=1.10", "tensorboard>=2.14", "cityscapesscripts>=2.2"],
    "export": ["onnxruntime>=1.18", "onnxscript>=0.2", "onnxconverter-common>=1.14"],
    # On a ROS 2 install rclpy and the messages come from the distribution; these wheels are for pip-only machines.
    "ros": [
        "rosbags>=0.10",
        "rosbags-image>=0.10",
        "ros-jazzy-rclpy",
        "ros-jazzy-rmw-fastrtps-cpp",
        "ros-jazzy-sensor-msgs",
        "ros-jazzy-std-msgs",
        "ros-jazzy-diagnostic-msgs",
        "ros-jazzy-lifecycle-msgs",
    ],
    # pytest < 9: the pytest plugin of Jazzy's launch_testing (3.4) does not load on pytest 9
    "test": ["pytest>=8,<9", "consisid-eva-clip==1.0.2", "open_clip_torch>=2.24"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
# TensorRT for the GPU machine, kept out of "all": its -libs/-bindings on PyPI are stubs that fetch the real wheels
# from pypi.nvidia.com at install time (unreachable on offline machines). The supported range
# (vltseg_core.gpu.TENSORRT_SUPPORTED) built for CUDA 13, this torch's CUDA major; an extra cannot follow torch's
# CUDA: cu12 torch builds use `pip install 'tensorrt-cu12>=10.0,<12'`, Jetsons JetPack's own TensorRT (docs/gpu.md;
# `vltseg doctor` prints the command for the installed torch).
EXTRAS["tensorrt"] = ["tensorrt-cu13>=10.0,<12"]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="VLTSeg semantic segmentation: core library (train/eval/export/inference) and ROS 2 node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["vltseg_core", "vltseg_core.*", "vltseg_ros", "vltseg_ros.*"]),
    package_data={"vltseg_core": ["configs/**/*.yaml", "configs/*.yaml", "export/*.yaml", "pretrained/**/*"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py") + glob("launch/*.xml")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=[
        "numpy>=1.24",
        "pillow>=9",
        "pyyaml>=6",
        "tqdm>=4.60",
        "filelock>=3.12",
        # < 5: a ROS 2 install's cv_bridge is built against OpenCV 4 (OpenCV 5 renumbered CV_8UC3 and friends)
        "opencv-python-headless>=4.8,<5",
        "safetensors>=0.4",
        "torch>=2.4",
        "timm>=1.0.15",
        "onnx>=1.16",  # the demo model's backbone is converted from an ONNX file at `vltseg setup`
        "matplotlib>=3.7",  # the charts of `vltseg eval`, `bench` and `replay`
    ],
    extras_require=EXTRAS,
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "vltseg = vltseg_core.cli:main",
            "segmentation_node = vltseg_ros.node:main",
        ],
    },
)
