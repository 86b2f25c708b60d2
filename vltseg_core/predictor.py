"""The one inference API: RGB uint8 image in, trainId labels + confidence out, at the input resolution.

Backends only map float batches to probabilities; resizing, sliding windows, overlap averaging and argmax live
here so that every backend is post-processed identically (and backend parity is a like-for-like comparison).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vltseg_core.backends.base import Backend, check_precision
from vltseg_core.backends.factory import choose_backend, create_backend, source_kind
from vltseg_core.classes import ClassTable, load_class_table
from vltseg_core.errors import VLTSegError

log = logging.getLogger(__name__)

MODES = ("whole", "slide")


@dataclass
class Prediction:
    labels: np.ndarray  # HxW uint8 trainIds, 255 = unknown
    confidence: np.ndarray  # HxW float32 in [0, 1]


@dataclass
class InferenceSettings:
    """How an image is fed to the network; presets carry these under `test:` (mode, size, crop_size, stride)."""

    mode: str = "whole"
    # whole: resize so the image fits this (H, W) keeping its aspect ratio (mmseg's rule); None = input size.
    # slide: the same resize happens first, then crops slide over the result.
    size: tuple[int, int] | None = None
    crop_size: tuple[int, int] = (1024, 1024)
    stride: tuple[int, int] = (768, 768)
    crops_per_batch: int = 4
    min_confidence: float = 0.0  # pixels below this become 255 (unknown)

    @classmethod
    def from_preset(cls, preset: dict | None, mode: str | None = None) -> "InferenceSettings":
        cfg = dict((preset or {}).get("test") or {})
        if mode is not None:
            cfg["mode"] = mode
        s = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in cls.__dataclass_fields__})
        if s.mode not in MODES:
            raise VLTSegError(f"unknown inference mode '{s.mode}' (expected one of {', '.join(MODES)})")
        for name in ("crop_size", "stride"):
            value = getattr(s, name)
            if len(value) != 2 or min(value) <= 0:
                raise VLTSegError(f"preset test.{name} is {value} (expected two positive ints [h, w])")
        return s


def validate_image(rgb: np.ndarray) -> np.ndarray:
    """One clear error for anything that is not an HxWx3 uint8 RGB image."""
    if not isinstance(rgb, np.ndarray):
        raise VLTSegError(f"image is a {type(rgb).__name__} (expected an HxWx3 uint8 RGB numpy array)")
    if rgb.dtype != np.uint8:
        raise VLTSegError(f"image has dtype {rgb.dtype} (expected uint8 RGB 0..255)")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise VLTSegError(f"image has shape {rgb.shape} (expected HxWx3 RGB; convert grey/RGBA/BGR first)")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise VLTSegError(f"image is empty ({rgb.shape[0]}x{rgb.shape[1]}; expected at least 1x1 pixels)")
    return rgb


def fit_size(hw: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Resize (h, w) to fit `target` keeping the aspect ratio (long side <= max(target), short <= min(target))."""
    h, w = hw
    scale = min(max(target) / max(h, w), min(target) / min(h, w))
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def fit_within(hw: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """(h, w) scaled by one factor (up or down) to fit inside `box` (H, W): the aspect ratio is kept."""
    scale = min(box[0] / hw[0], box[1] / hw[1])
    return min(box[0], max(1, int(hw[0] * scale + 0.5))), min(box[1], max(1, int(hw[1] * scale + 0.5)))


def input_range(backend: Backend) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(smallest, largest) (H, W) a backend takes: a fixed graph's size, a TensorRT profile's range, or None."""
    if backend.input_size is not None:
        return tuple(backend.input_size), tuple(backend.input_size)
    profile = getattr(backend, "profile", None)
    return (tuple(profile.min[2:]), tuple(profile.max[2:])) if profile is not None else None


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of sliding windows covering [0, length); the last window is aligned to the end (mmseg)."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({min(i * stride, max(length - crop, 0)) for i in range(count)})


class Predictor:
    def __init__(self, backend: Backend, class_table: ClassTable, settings: InferenceSettings | None = None,
                 selection: str = ""):
        self.backend = backend
        self.selection = selection  # why this backend was chosen (for logs, diagnostics and reports)
        self.class_table = class_table
        self.settings = settings or InferenceSettings()
        self.last_timings: dict[str, float] = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}

    @property
    def mode(self) -> str:
        return self.settings.mode

    def identity(self) -> dict:
        s = self.settings
        return {**self.backend.identity(), "selection": self.selection, "mode": s.mode, "size": s.size,
                "crop_size": s.crop_size, "stride": s.stride, "class_table": self.class_table.name}

    # -- public API ---------------------------------------------------------------------------------------
    def predict(self, rgb: np.ndarray) -> Prediction:
        return self.predict_batch([rgb])[0]

    @torch.inference_mode()
    def predict_probs(self, rgb: np.ndarray) -> np.ndarray:
        """(C, H, W) float32 probabilities at the input resolution (the building block for TTA)."""
        rgb = validate_image(rgb)
        timings = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
        scores = self._scores_at_input([rgb], timings)[0]
        t0 = time.perf_counter()
        probs = scores / scores.sum(0, keepdim=True).clamp_min(1e-12)
        timings["postprocess"] += time.perf_counter() - t0
        self.last_timings = timings
        return probs.cpu().numpy()

    @torch.inference_mode()
    def predict_batch(self, images: list[np.ndarray]) -> list[Prediction]:
        """predict_batch_device, then the two HxW maps of each image copied to the host."""
        maps = self.predict_batch_device(images)
        t0 = time.perf_counter()
        results = [Prediction(labels=labels.cpu().numpy(), confidence=confidence.cpu().numpy())
                   for labels, confidence in maps]
        self.last_timings["postprocess"] += time.perf_counter() - t0
        return results

    @torch.inference_mode()
    def predict_batch_device(self, images: list[np.ndarray]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(labels HxW uint8, confidence HxW float32 in [0, 1]) per image, left on the backend's device: resize
        back and argmax happen there (see Backend.infer_device), and a GPU caller renders its outputs there too
        (visualize.render_device) before one copy to the host."""
        images = [validate_image(rgb) for rgb in images]
        timings = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
        if self._uses_deploy_outputs(images):
            t0 = time.perf_counter()
            batch = np.stack([np.ascontiguousarray(rgb.transpose(2, 0, 1)) for rgb in images])
            timings["preprocess"] += time.perf_counter() - t0
            t1 = time.perf_counter()
            labels, confidence = self.backend.infer_labels(batch)
            timings["inference"] += time.perf_counter() - t1
            maps = list(zip(labels, confidence))
        else:
            maps = []
            for scores in self._scores_at_input(images, timings):
                t0 = time.perf_counter()
                # argmax and best / sum: what the normalised probabilities' max gives (division by the pixel's
                # positive sum is monotonic), without dividing all C maps (at 1080x1920: 269 instead of 359 ms)
                best, labels = scores.max(dim=0)
                maps.append((labels, best / scores.sum(0).clamp_min(1e-12)))
                timings["postprocess"] += time.perf_counter() - t0
        results = []
        for labels, confidence in maps:
            t0 = time.perf_counter()
            labels, confidence = labels.to(torch.uint8), confidence.to(torch.float32)
            if self.settings.min_confidence > 0:
                labels = labels.masked_fill(confidence < self.settings.min_confidence, 255)
            results.append((labels, confidence.clamp(0.0, 1.0)))
            timings["postprocess"] += time.perf_counter() - t0
        self.last_timings = timings
        return results

    def _uses_deploy_outputs(self, images: list[np.ndarray]) -> bool:
        """A graph/engine with deploy outputs computes labels and confidence itself; they are the predictor's own
        (argmax, best score / sum) wherever the network runs at the frames' size in one whole pass."""
        if not getattr(self.backend, "deploy_outputs", False) or self.settings.mode != "whole":
            return False
        shapes = {rgb.shape[:2] for rgb in images}
        return len(shapes) == 1 and self._network_shape(next(iter(shapes))) == (next(iter(shapes)),) * 2

    # -- internals ----------------------------------------------------------------------------------------
    def _network_shape(self, hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(size the image is resized to, size it is zero-padded to for the backend). Graphs and engines that
        take only some sizes never change a frame's aspect ratio. In whole mode a fixed size is fitted (the rest
        zero-padded), a frame larger than an engine profile's maximum is shrunk to fit it, one smaller than its
        minimum is padded; the padding is cropped off the scores before they are resized back. In slide mode the
        windows take the graph's size (see _slide)."""
        size = fit_size(hw, self.settings.size) if self.settings.size else tuple(hw)
        limits = input_range(self.backend)
        if limits is None or self.settings.mode != "whole":
            return size, size  # slide: the windows are the graph's size, _slide pads them
        lo, hi = limits
        if lo == hi or size[0] > hi[0] or size[1] > hi[1]:
            size = fit_within(size, hi)
        return size, (max(size[0], lo[0]), max(size[1], lo[1]))

    def _scores_at_input(self, images: list[np.ndarray], timings: dict) -> list[torch.Tensor]:
        """Class scores (C,H,W) per image at its own resolution; same-size images share backend calls. Backends
        give unnormalised class scores (Mask2Former's): windows are averaged and resized back on those, and each
        pixel is divided by its sum once, last, by the caller (mmseg's order; normalising per window can flip
        overlaps)."""
        out: list[torch.Tensor | None] = [None] * len(images)
        t0 = time.perf_counter()
        groups: dict[tuple[tuple[int, int], tuple[int, int]], list[int]] = {}
        resized = []
        for i, rgb in enumerate(images):
            size, padded = self._network_shape(rgb.shape[:2])
            img = rgb if size == rgb.shape[:2] else cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            chw = img.transpose(2, 0, 1)  # uint8: backends convert
            if padded != size:
                chw = np.pad(chw, ((0, 0), (0, padded[0] - size[0]), (0, padded[1] - size[1])))
            resized.append(np.ascontiguousarray(chw))
            groups.setdefault((size, padded), []).append(i)
        timings["preprocess"] += time.perf_counter() - t0
        for (size, _), indices in groups.items():
            batch = np.stack([resized[i] for i in indices])
            if self.settings.mode == "slide":
                probs = self._slide(batch, timings)
            else:
                t1 = time.perf_counter()
                probs = self.backend.infer_device(batch)
                timings["inference"] += time.perf_counter() - t1
            t2 = time.perf_counter()
            for j, i in enumerate(indices):
                out[i] = self._to_input_size(probs[j, :, :size[0], :size[1]], images[i].shape[:2])
            timings["postprocess"] += time.perf_counter() - t2
        return out

    def _to_input_size(self, probs: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if tuple(probs.shape[1:]) == tuple(hw):
            return probs
        return F.interpolate(probs[None], size=hw, mode="bilinear", align_corners=False)[0]

    def _slide(self, batch: np.ndarray, timings: dict) -> torch.Tensor:
        """Sliding-window inference: the backend's unnormalised scores averaged where crops overlap."""
        s = self.settings
        crop = tuple(self.backend.input_size) if self.backend.input_size is not None else s.crop_size
        n, _, h, w = batch.shape
        t0 = time.perf_counter()
        pad_h, pad_w = max(crop[0] - h, 0), max(crop[1] - w, 0)
        if (pad_h or pad_w) and self.backend.input_size is not None:  # a fixed-size graph needs full crops
            batch = np.pad(batch, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)))
        else:
            pad_h = pad_w = 0
        H, W = batch.shape[2:]
        ys, xs = window_starts(H, crop[0], s.stride[0]), window_starts(W, crop[1], s.stride[1])
        windows = [(y, x) for y in ys for x in xs]
        crops = [(k, y, x) for k in range(n) for (y, x) in windows]
        timings["preprocess"] += time.perf_counter() - t0
        total = count = None
        for start in range(0, len(crops), s.crops_per_batch):
            chunk = crops[start:start + s.crops_per_batch]
            t1 = time.perf_counter()
            tiles = np.stack([batch[k, :, y:y + crop[0], x:x + crop[1]] for k, y, x in chunk])
            probs = self.backend.infer_device(tiles)
            timings["inference"] += time.perf_counter() - t1
            t2 = time.perf_counter()
            if total is None:
                total = torch.zeros((n, probs.shape[1], H, W), dtype=torch.float32, device=probs.device)
                count = torch.zeros((n, 1, H, W), dtype=torch.float32, device=probs.device)
            for (k, y, x), p in zip(chunk, probs):
                th, tw = p.shape[1:]
                total[k, :, y:y + th, x:x + tw] += p
                count[k, :, y:y + th, x:x + tw] += 1
            timings["postprocess"] += time.perf_counter() - t2
        return (total / count)[:, :, : H - pad_h, : W - pad_w]


# -- the factory ------------------------------------------------------------------------------------------
def load_module(model: str) -> tuple[torch.nn.Module, str]:
    """A VLTSeg module for a preset name, a checkpoint path or `demo`, and a string that identifies it."""
    if model == "demo":
        from vltseg_core.pretrained import load_demo_model

        return load_demo_model(), "demo"
    path = Path(model)
    if path.suffix and path.suffix not in (".yaml", ".yml"):  # a file: our checkpoint format (a YAML is a preset)
        if not path.is_file():
            raise VLTSegError(f"model file not found: {path} (expected a checkpoint, .onnx or .engine file)")
        if path.suffix != ".safetensors":
            raise VLTSegError(f"model file {path} is not a checkpoint (expected a .safetensors checkpoint with its "
                              f".json sidecar, a preset name or .yaml, an .onnx or engine file)")
        from vltseg_core.checkpoint import load_checkpoint

        from vltseg_core.assets import sha256_file

        return load_checkpoint(path), f"checkpoint:{path} sha256:{sha256_file(path)[:16]}"
    from vltseg_core.models import build_model

    module = build_model(model)
    log.warning("model '%s' is a bare preset: weights are randomly initialised (give a checkpoint for real use)",
                model)
    return module, f"preset:{model}"


def load_predictor(model: str, backend: str = "auto", device: str = "cpu", precision: str = "fp32",
                   mode: str | None = None, settings: InferenceSettings | None = None,
                   gate_frames: Path | None = None) -> Predictor:
    """The one factory. `model`: preset name, checkpoint path, `demo`, an .onnx file or a TensorRT engine.

    `backend` is a name or `auto` (the choice and its reason are logged); `mode` overrides the preset's
    whole/slide mode; `settings` overrides all inference settings. A TensorRT engine is used only after its gate
    (vltseg_core.verify.engine_gate) on real frames: `gate_frames` (a folder) or the dashcam frames of `vltseg setup`.
    """
    kind = source_kind(str(model))
    chosen, reason = choose_backend(backend, kind, device)
    check_precision(chosen, precision)  # before the minutes an export or engine build may take
    log.info("backend %s for %s (%s)", chosen, model, reason)
    if kind == "model":
        module, model_id = load_module(str(model))
        preset, table = getattr(module, "preset", {}), load_class_table(getattr(module, "class_table", "cityscapes"))
        settings = settings or InferenceSettings.from_preset(preset, mode)
        if chosen == "torch":
            from vltseg_core.backends.torch_backend import TorchBackend

            impl = TorchBackend(module, device=device, precision=precision, model_id=model_id)
        else:
            from vltseg_core.verify.parity import cached_onnx

            impl = _graph_backend(chosen, cached_onnx(module, model_id), device, precision, settings, gate_frames)
    else:
        path = Path(model)
        if not path.is_file():
            raise VLTSegError(f"model file not found: {path} (expected an existing .onnx or engine file)")
        from vltseg_core.export.onnx_export import graph_metadata

        meta = graph_metadata(path)
        preset, table = meta.get("preset", {}), load_class_table(meta.get("class_table", "cityscapes"))
        settings = settings or InferenceSettings.from_preset(preset, mode)
        impl = _graph_backend(chosen, path, device, precision, settings, gate_frames)
    return Predictor(impl, table, settings, selection=reason)


# Frames the node batches together by default (its max_batch_size): the batch an engine's profile is optimised for
# in whole mode; slide mode sends crops_per_batch crops per call.
DEFAULT_BATCH = 4


def engine_batch(settings: InferenceSettings) -> tuple[int, int, int]:
    """(min, opt, max) batch of the engine profile for what the predictor sends: slide crops per call, or camera
    frames per batch, so one call runs them all instead of one engine call per image."""
    n = settings.crops_per_batch if settings.mode == "slide" else DEFAULT_BATCH
    return 1, n, n


def _graph_backend(name: str, path: Path, device: str, precision: str, settings: InferenceSettings,
                   gate_frames: Path | None) -> Backend:
    if name == "tensorrt" and path.suffix == ".onnx":
        from vltseg_core.export.tensorrt_build import engine_for_onnx

        path = engine_for_onnx(path, precision=precision, device=device, batch=engine_batch(settings))
    impl = create_backend(name, path, device=device, precision=precision)
    if name == "tensorrt":
        from vltseg_core.verify.engine_gate import gate_engine

        gate_engine(impl.engine_path, impl, gate_frames)
    return impl
