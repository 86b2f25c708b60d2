"""`vltseg predict`: image files / folders -> trainId label PNGs and colour overlays."""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vltseg_core.errors import VLTSegError
from vltseg_core.visualize import overlay

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders of images")
    parser.add_argument("--model", default="demo", help="preset, checkpoint, .onnx/.engine file or 'demo' (default)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--backend", default="auto", help="auto, torch, onnxruntime or tensorrt")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16, bf16 (backend permitting)")
    parser.add_argument("--mode", choices=("whole", "slide"), default=None, help="inference mode (default: preset's)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colour mask (0..1)")


def collect_images(inputs: list[Path]) -> list[tuple[Path, Path]]:
    """(image path, output name without suffix) for every input; folders are searched recursively."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise VLTSegError(f"folder {item} holds no images (expected files ending in {sorted(IMAGE_SUFFIXES)})")
            found += [(p, p.relative_to(item).with_suffix("")) for p in files]
        elif item.is_file():
            found.append((item, Path(item.stem)))
        else:
            raise VLTSegError(f"input not found: {item} (expected an image file or a folder of images)")
    return found


def read_rgb(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB; grey, alpha, 16-bit, empty or undecodable files are refused."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.stat().st_size else None
    if image is None or image.size == 0:
        raise VLTSegError(f"{path}: empty or not a decodable image (expected an RGB PNG/JPEG)")
    if image.ndim != 3 or image.shape[2] != 3:
        kind = "greyscale" if image.ndim == 2 else f"{image.shape[2]}-channel"
        raise VLTSegError(f"{path}: {kind} image (expected 3-channel RGB)")
    if image.dtype != np.uint8:
        raise VLTSegError(f"{path}: {image.dtype} pixels (expected 8-bit RGB)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def run(args: argparse.Namespace) -> int:
    from vltseg_core.predictor import load_predictor

    if not 0.0 <= args.alpha <= 1.0:
        raise VLTSegError(f"--alpha {args.alpha} (expected a value in 0..1)")
    images = collect_images(args.inputs)  # fail fast on missing inputs and an unusable --out, before the model loads
    args.out.mkdir(parents=True, exist_ok=True)
    predictor = load_predictor(args.model, backend=args.backend, device=args.device, precision=args.precision,
                               mode=args.mode)
    identity = predictor.identity()
    print(f"[predict] {len(images)} image(s) with {args.model} on {identity['backend']} ({identity['selection']}), "
          f"{identity['mode']} mode -> {args.out}")
    for path, name in tqdm(images, desc="predict", unit="img"):
        rgb = read_rgb(path)
        prediction = predictor.predict(rgb)
        colour = predictor.class_table.colorize(prediction.labels)
        blended = overlay(rgb, colour, args.alpha)
        target = args.out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write_png(Path(str(target) + "_labels.png"), prediction.labels)
        write_png(Path(str(target) + "_overlay.png"), cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
    return 0


def write_png(path: Path, image: np.ndarray) -> None:
    """cv2.imwrite, which reports a failed write only by returning False."""
    if not cv2.imwrite(str(path), image):
        raise VLTSegError(f"cannot write {path} (expected a writable --out folder with free space)")
