"""The images made from a prediction, one formula each, so `vltseg predict`, the node and replay agree pixel for
pixel (the colour mask itself is `ClassTable.colorize`). `render` makes a node's outputs with numpy (CPU backends);
`render_device` makes the same pixels with torch on the tensors' device (GPU backends) and copies them to the host
in one transfer. Every formula is exact integer or single IEEE float32 operations, so both give identical bytes."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from vltseg_core.classes import ClassTable

OVERLAY_ALPHA = 0.5
# What render / render_device can make: the mask, the colour mask, confidence as mono8, the overlay, and the float
# confidence itself ("probability", for the domain-shift statistics).
IMAGES = ("mask", "color", "confidence", "overlay", "probability")


def confidence_mono8(confidence: np.ndarray) -> np.ndarray:
    """[0, 1] float confidence -> uint8 0..255, rounded to nearest."""
    return np.clip(confidence * np.float32(255.0) + np.float32(0.5), 0, 255).astype(np.uint8)


def overlay_weight(alpha: float) -> int:
    """alpha in 1/256 steps: the blend is integer arithmetic, which numpy and torch (CPU or GPU) compute alike
    (cv2.addWeighted's float rounding has no exact torch equivalent)."""
    return int(round(min(max(alpha, 0.0), 1.0) * 256))


def overlay(rgb: np.ndarray, color: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The colour mask blended over the camera image (both HxWx3 uint8): alpha x colour + (1 - alpha) x image,
    rounded to nearest."""
    w = overlay_weight(alpha)
    # (colour x w + image x (256 - w) + 128) >> 8; OpenCV's float32 sum of these integers is exact (< 2^24), and 2.5x
    # faster than the same in numpy uint16 (4 vs 10 ms at 1080x1920 here)
    blended = cv2.addWeighted(color, float(w), rgb, float(256 - w), 128.0, dtype=cv2.CV_16U)
    return (blended >> 8).astype(np.uint8)


def render(labels: np.ndarray, confidence: np.ndarray, rgb: np.ndarray, table: ClassTable, alpha: float,
           wanted: set[str]) -> dict[str, np.ndarray]:
    """The `wanted` images (names in IMAGES) of one prediction, coloured by `table`."""
    out: dict[str, np.ndarray] = {}
    if "mask" in wanted:
        out["mask"] = labels
    if "probability" in wanted:
        out["probability"] = confidence
    if "confidence" in wanted:
        out["confidence"] = confidence_mono8(confidence)
    if wanted & {"color", "overlay"}:
        color = table.colorize(labels)
        if "color" in wanted:
            out["color"] = color
        if "overlay" in wanted:
            out["overlay"] = overlay(rgb, color, alpha)
    return out


def render_device(labels: torch.Tensor, confidence: torch.Tensor, rgb: np.ndarray, table: ClassTable,
                  alpha: float, wanted: set[str]) -> dict[str, np.ndarray]:
    """`render` on the device of `labels` (HxW uint8) and `confidence` (HxW float32). The wanted images are packed
    into one byte buffer there, so one host copy brings them all."""
    device = labels.device
    parts: dict[str, torch.Tensor] = {}
    if "probability" in wanted:  # first: its float32 view of the host buffer is then aligned
        parts["probability"] = confidence.contiguous().view(torch.uint8)  # the float32 bytes, unchanged
    if "mask" in wanted:
        parts["mask"] = labels
    if "confidence" in wanted:
        parts["confidence"] = (confidence * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
    if wanted & {"color", "overlay"}:
        color = torch.from_numpy(table.palette().copy()).to(device)[labels.long()]
        if "color" in wanted:
            parts["color"] = color
        if "overlay" in wanted:
            w = overlay_weight(alpha)
            image = torch.from_numpy(np.ascontiguousarray(rgb)).to(device, non_blocking=True).to(torch.int32)
            parts["overlay"] = ((color.to(torch.int32) * w + image * (256 - w) + 128) >> 8).to(torch.uint8)
    if not parts:
        return {}
    host = torch.cat([p.reshape(-1) for p in parts.values()]).cpu().numpy()  # the one device -> host copy
    out, offset = {}, 0
    for name, part in parts.items():
        size = part.numel()
        data = host[offset:offset + size].reshape(part.shape)
        out[name] = data.view(np.float32).reshape(labels.shape) if name == "probability" else data
        offset += size
    return out
