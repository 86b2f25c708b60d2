"""The images made from a prediction, one formula each, so `vltseg predict`, the node and replay agree pixel for
pixel (the colour mask itself is `ClassTable.colorize`)."""
from __future__ import annotations

import cv2
import numpy as np

OVERLAY_ALPHA = 0.5


def confidence_mono8(confidence: np.ndarray) -> np.ndarray:
    """[0, 1] float confidence -> uint8 0..255, rounded to nearest."""
    return np.clip(confidence * 255.0 + 0.5, 0, 255).astype(np.uint8)


def overlay(rgb: np.ndarray, color: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The colour mask blended over the camera image (both HxWx3 uint8): alpha x colour + (1 - alpha) x image."""
    return cv2.addWeighted(color, alpha, rgb, 1.0 - alpha, 0.0)
