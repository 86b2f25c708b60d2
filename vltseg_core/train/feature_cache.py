"""Frozen-backbone feature cache: with the backbone frozen, its multi-block features are computed once per training
view and stored as float16 arrays, so each iteration only runs the neck and head. This is what makes training the
demo model on a CPU practical.

A view is one draw of the training transform (rescale, crop, flip, photometric) with a generator seeded by (seed,
view, image), so `views` augmented copies of every image stand in for the on-the-fly augmentation a trainable
backbone would see; without a transform the one view is the untransformed image (then all images must share one
size). Each view is one file, written atomically and named by the image's paths and the view's number: an
interrupted caching run resumes where it stopped, a subset of the images (a development split) reuses the files of
the whole set, and more views reuse the ones already there."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vltseg_core.data.transforms import TrainTransform
from vltseg_core.errors import VLTSegError

FORMAT_VERSION = 2


def backbone_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the backbone weights, the input normalisation and the padding (what the features depend on)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"backbone": model.preset["backbone"], "input": model.preset["input"],
                              "size_divisor": model.size_divisor}, sort_keys=True).encode())
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def pad_label(label: torch.Tensor, divisor: int, ignore_index: int = 255) -> torch.Tensor:
    """Pad (..., H, W) labels with `ignore_index` on the bottom/right like the model pads its input."""
    h, w = label.shape[-2:]
    return F.pad(label, (0, (divisor - w % divisor) % divisor, 0, (divisor - h % divisor) % divisor),
                 value=ignore_index)


def _image_key(pair: tuple[Path, Path]) -> str:
    return hashlib.sha256("\0".join(str(p) for p in pair).encode()).hexdigest()[:24]


class FeatureCache(torch.utils.data.Dataset):
    """Items are (list of backbone feature maps (C, h, w) float32, padded label (H, W) int64); item i is view
    i % views of image i // views."""

    def __init__(self, folder: Path, keys: list[str], views: int):
        self.folder, self.keys, self.views = Path(folder), list(keys), int(views)

    def __len__(self) -> int:
        return len(self.keys) * self.views

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        image, view = divmod(index, self.views)
        stem = self.folder / f"{self.keys[image]}_{view}"
        feats = np.load(f"{stem}.npy", mmap_mode="r")
        label = np.load(f"{stem}.labels.npy")
        return ([torch.from_numpy(np.array(level, dtype=np.float32)) for level in feats],
                torch.from_numpy(label.astype(np.int64)))


def _padded_input(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    return model._normalise_and_pad(x)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as f:
        np.save(f, array)
    os.replace(part, path)


@torch.inference_mode()
def build_feature_cache(model: torch.nn.Module, dataset, root: str | Path, views: int = 1,
                        transform: TrainTransform | None = None, seed: int = 0,
                        desc: str = "caching backbone features") -> FeatureCache:
    """The backbone features of `views` views of every sample of `dataset` (a `build_dataset` dataset without
    transform) under `root`/<hash of backbone, transform, seed>/, computing only the views not there yet."""
    if views < 1 or (transform is None and views != 1):
        raise VLTSegError(f"data.cache_views is {views} (expected 1 without data.transform, or >= 1 with one)")
    key = {"version": FORMAT_VERSION, "backbone": backbone_fingerprint(model), "seed": int(seed),
           "transform": dataclasses.asdict(transform) if transform is not None else None}
    folder = Path(root) / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "key.json").is_file():
        (folder / "key.json").write_text(json.dumps(key, indent=1))
    keys = [_image_key(pair) for pair in dataset.pairs]
    todo = [(i, v) for i, k in enumerate(keys) for v in range(views) if not (folder / f"{k}_{v}.labels.npy").is_file()]
    was_training = model.training
    model.eval()
    shape = None
    loaded: tuple[int, object] | None = None
    for index, view in tqdm(todo, desc=desc, unit="view", dynamic_ncols=True, disable=not todo):
        if loaded is None or loaded[0] != index:
            loaded = (index, dataset.load(index))
        sample = loaded[1]
        image, label = sample.image, sample.label
        if transform is not None:
            image, label = transform(image, label, np.random.default_rng((seed, view, int(keys[index][:15], 16))))
        if shape is None:
            shape = label.shape
        elif label.shape != shape:
            raise VLTSegError(f"{dataset.pairs[index][0]} gives a {label.shape[1]}x{label.shape[0]} view but the "
                              f"feature cache needs every view at {shape[1]}x{shape[0]} (set data.transform with a "
                              "crop_size, or train without feature_cache)")
        levels = model.backbone(_padded_input(model, image))
        stem = folder / f"{keys[index]}_{view}"
        _save_atomic(Path(f"{stem}.npy"), torch.stack([f[0] for f in levels]).to(torch.float16).numpy())
        padded = pad_label(torch.from_numpy(np.ascontiguousarray(label)), model.size_divisor)
        _save_atomic(Path(f"{stem}.labels.npy"), padded.numpy().astype(np.uint8))  # written last: the view is done
    model.train(was_training)
    return FeatureCache(folder, keys, views)
