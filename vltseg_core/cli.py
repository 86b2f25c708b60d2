"""The `vltseg` command. Subcommands are data: name -> (module, one-line help); each module defines
`add_arguments(parser)` and `run(args) -> int | None`, and is imported only when its subcommand runs."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from vltseg_core.errors import VLTSegError

COMMANDS: dict[str, tuple[str, str]] = {
    "setup": ("vltseg_core.commands.setup", "fetch and convert the pinned assets (demo backbone, demo bag)"),
    "predict": ("vltseg_core.commands.predict", "segment image files or folders; write label PNGs and overlays"),
    "train": ("vltseg_core.commands.train", "train a model from an experiment config (torchrun for multi-GPU)"),
    "eval": ("vltseg_core.commands.eval", "mIoU / per-class IoU on one or more datasets"),
    "export": ("vltseg_core.commands.export", "export ONNX / build TensorRT engines"),
    "bench": ("vltseg_core.commands.bench", "latency and throughput benchmarks"),
    "domain-shift": ("vltseg_core.commands.domain_shift", "measure a model's domain-shift references on its "
                     "validation data (stored next to the model)"),
    "replay": ("vltseg_ros.commands.replay", "run a model over ROS 1 / rosbag2 bags (many, sharded) and write masks, report and plots"),
    "demo": ("vltseg_ros.commands.demo", "the one-command demo: the real node on real dashcam footage"),
    "doctor": ("vltseg_ros.commands.doctor", "what this machine can run: torch/CUDA, GPUs, ONNX Runtime providers "
               "that load, TensorRT, ROS 2, cv_bridge/OpenCV, what backend=auto picks"),
}
# Import name -> the setup.py extra that installs it (what a missing-package error tells the user to install).
EXTRA_OF: dict[str, str] = {
    **dict.fromkeys(("scipy", "tensorboard", "cityscapesscripts"), "train"),
    **dict.fromkeys(("onnxruntime", "onnxscript", "onnxconverter_common"), "export"),
    **dict.fromkeys(("rosbags", "rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "lifecycle_msgs"), "ros"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="vltseg", description="VLTSeg semantic segmentation")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    try:
        module = importlib.import_module(COMMANDS[name][0])
        cmd_parser = argparse.ArgumentParser(prog=f"vltseg {name}", description=COMMANDS[name][1])
        module.add_arguments(cmd_parser)
        args = cmd_parser.parse_args(argv[1:])
        return int(module.run(args) or 0)
    except ModuleNotFoundError as exc:
        package = (exc.name or "").partition(".")[0]
        if package in ("vltseg_core", "vltseg_ros"):
            raise  # our own module missing is a broken install, not user input
        extra = EXTRA_OF.get(package, "all")
        print(f"vltseg {name}: error: the Python package '{package}' is not installed (expected with the "
              f"'{extra}' extra: pip install 'vltseg_ros[{extra}]')", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`vltseg doctor --json | head`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush must not fail again
        return 141  # 128 + SIGPIPE, the shell's status for a writer whose pipe closed
    except (VLTSegError, OSError) as exc:  # OSError: unreadable / unwritable files and folders the user named
        print(f"vltseg {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vltseg {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
