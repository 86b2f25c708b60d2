"""The paper's training augmentation (the mmsegmentation pipeline VLTSeg trains with), in numpy + OpenCV.

Resize (fixed, as the reimplementation's `Resize(scale=(1280, 720))`, or random within a ratio range keeping the
aspect ratio, as mmseg's `RandomResize`) -> random crop (at most `cat_max_ratio` of one class) -> horizontal
flip -> photometric distortion. Every random draw comes from the generator passed in, so a (seed, epoch, index)
triple (see SegmentationDataset) gives the same sample on every run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vltseg_core.errors import VLTSegError

IGNORE = 255


def resize_to_scale(image: np.ndarray, label: np.ndarray, scale: tuple[int, int], keep_ratio: bool,
                    ratio: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """mmcv's Resize: to exactly `scale` (width, height) times `ratio`, or with keep_ratio to fit it (long edge
    <= the larger, short edge <= the smaller value). Image bilinear, label nearest."""
    tw, th = int(scale[0] * ratio), int(scale[1] * ratio)
    h, w = label.shape
    if keep_ratio:
        factor = min(max(tw, th) / max(h, w), min(tw, th) / min(h, w))
        tw, th = int(w * factor + 0.5), int(h * factor + 0.5)
    if (th, tw) == (h, w):
        return image, label
    return (cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, (tw, th), interpolation=cv2.INTER_NEAREST))


def random_resize(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, scale: tuple[int, int],
                  ratio_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Rescale so the image fits `scale` times a ratio drawn from ratio_range, keeping the aspect ratio (mmseg
    RandomResize keep_ratio=True)."""
    return resize_to_scale(image, label, scale, keep_ratio=True, ratio=rng.uniform(*ratio_range))


def random_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop_size: tuple[int, int],
                cat_max_ratio: float = 0.75, tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Crop (height, width); up to `tries` draws to find a crop where no single class covers more than
    cat_max_ratio of the labelled pixels. Smaller images are padded (image 0, label 255) to crop_size."""
    ch, cw = crop_size
    h, w = label.shape

    def draw() -> tuple[int, int]:
        return int(rng.integers(0, max(h - ch, 0) + 1)), int(rng.integers(0, max(w - cw, 0) + 1))

    y, x = draw()
    if cat_max_ratio < 1.0:
        for _ in range(tries):
            ids, counts = np.unique(label[y: y + ch, x: x + cw], return_counts=True)
            counts = counts[ids != IGNORE]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y, x = draw()
    image, label = image[y: y + ch, x: x + cw], label[y: y + ch, x: x + cw]
    pad_h, pad_w = ch - label.shape[0], cw - label.shape[1]
    if pad_h > 0 or pad_w > 0:
        image = np.pad(image, ((0, max(pad_h, 0)), (0, max(pad_w, 0)), (0, 0)), constant_values=0)
        label = np.pad(label, ((0, max(pad_h, 0)), (0, max(pad_w, 0))), constant_values=IGNORE)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def random_flip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, prob: float = 0.5
                ) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() < prob:
        return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
    return image, label


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                           contrast_range: tuple[float, float] = (0.5, 1.5),
                           saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> np.ndarray:
    """mmseg PhotoMetricDistortion: brightness, then contrast before or after saturation and hue; each step
    applied with probability 1/2."""
    def scale_shift(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    img = image
    if rng.integers(2):
        img = scale_shift(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        img = scale_shift(img, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = scale_shift(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(-hue_delta, hue_delta))) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not contrast_first and rng.integers(2):
        img = scale_shift(img, alpha=rng.uniform(*contrast_range))
    return img


@dataclass(frozen=True)
class TrainTransform:
    """The training pipeline as one callable `(image, label, rng) -> (image, label)`; pass it to
    build_dataset(..., transform=...). Defaults: mmseg's random-rescale Cityscapes recipe (2048x1024 x 0.5..2.0,
    crop 1024); the paper experiments set the reimplementation's fixed resize (ratio_range null, keep_ratio false)."""
    scale: tuple[int, int] = (2048, 1024)  # (width, height) as mmseg's scale; with keep_ratio: (long, short) bounds
    ratio_range: tuple[float, float] | None = (0.5, 2.0)  # None: no random ratio (a fixed resize)
    keep_ratio: bool = True
    crop_size: tuple[int, int] = (1024, 1024)  # (height, width)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "TrainTransform":
        """From the `transform:` mapping of an experiment config (keys = field names)."""
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise VLTSegError(f"unknown transform keys {sorted(unknown)} "
                              f"(expected some of {sorted(cls.__dataclass_fields__)})")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
        return cls(**fields)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        if self.ratio_range is None:
            image, label = resize_to_scale(image, label, self.scale, self.keep_ratio)
        elif not self.keep_ratio:
            raise VLTSegError("transform: a random ratio_range needs keep_ratio: true (mmseg RandomResize)")
        else:
            image, label = random_resize(image, label, rng, self.scale, self.ratio_range)
        image, label = random_crop(image, label, rng, self.crop_size, self.cat_max_ratio)
        image, label = random_flip(image, label, rng, self.flip_prob)
        if self.photometric:
            image = photometric_distortion(image, rng)
        return image, label
