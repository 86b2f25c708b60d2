"""`--size`, `--crop`, `--stride`: one way for `eval`, `replay` (and any other command that predicts) to override a
model's test protocol (its preset's `test:` settings) explicitly on the command line."""
from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from vltseg_core.errors import VLTSegError

if TYPE_CHECKING:  # importing the predictor pulls in torch; argument parsing should not
    from vltseg_core.predictor import InferenceSettings

# flag -> InferenceSettings field
_FIELDS = {"size": "size", "crop": "crop_size", "stride": "stride"}


def add_protocol_args(parser: argparse.ArgumentParser) -> None:
    """Add the three protocol overrides (each HEIGHTxWIDTH; unset = the model's own `test:` settings)."""
    parser.add_argument("--size", default=None, metavar="HxW",
                        help="resize each image to fit HxW, keeping its aspect ratio (default: the model's test size)")
    parser.add_argument("--crop", default=None, metavar="HxW",
                        help="sliding-window crop size (slide mode; default: the model's test crop)")
    parser.add_argument("--stride", default=None, metavar="HxW",
                        help="sliding-window stride (slide mode; default: the model's test stride)")


def apply_protocol_args(settings: "InferenceSettings", args: argparse.Namespace) -> "InferenceSettings":
    """`settings` with size / crop_size / stride replaced where the command line gave them."""
    from vltseg_core.export.onnx_export import parse_size

    changes = {}
    for flag, field in _FIELDS.items():
        text = getattr(args, flag, None)
        if text is None:
            continue
        try:
            changes[field] = parse_size(text)
        except VLTSegError as e:
            raise VLTSegError(f"--{flag}: {e}") from None
    result = dataclasses.replace(settings, **changes)
    if result.mode == "slide" and any(s > c for s, c in zip(result.stride, result.crop_size)):
        raise VLTSegError(f"--stride {result.stride[0]}x{result.stride[1]} is larger than the crop "
                          f"{result.crop_size[0]}x{result.crop_size[1]} (expected stride <= crop, or pixels between "
                          f"windows are never seen)")
    return result


def protocol_flags(args: argparse.Namespace) -> list[str]:
    """The given overrides as command-line words (for the reproduce-this-report line)."""
    return [word for flag in _FIELDS if getattr(args, flag, None) is not None
            for word in (f"--{flag}", getattr(args, flag))]
