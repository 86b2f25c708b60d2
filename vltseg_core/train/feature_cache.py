"""Frozen-backbone feature cache: with the backbone frozen, its multi-block features of every training image (and of
its horizontal flip) are computed once and stored as float16 memmaps, so each epoch only runs the neck and head.
This is what makes training the demo model on a CPU practical. Only flips are possible as augmentation here
(a random crop or rescale would need new backbone features), and all images must share one size."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vltseg_core.errors import VLTSegError

FORMAT_VERSION = 1


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


class FeatureCache(torch.utils.data.Dataset):
    """Items are (list of backbone feature maps (C, h, w) float32, padded label (H, W) int64)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        n, shapes = self.meta["count"], self.meta["feature_shapes"]
        self.levels = [np.lib.format.open_memmap(self.folder / f"level{i}.npy", mode="r") for i in range(len(shapes))]
        self.labels = np.lib.format.open_memmap(self.folder / "labels.npy", mode="r")
        if any(len(level) != n for level in self.levels) or len(self.labels) != n:
            raise VLTSegError(f"feature cache {self.folder} is incomplete (expected {n} entries per file); delete it")

    def __len__(self) -> int:
        return self.meta["count"]

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        feats = [torch.from_numpy(np.array(level[index], dtype=np.float32)) for level in self.levels]
        return feats, torch.from_numpy(np.array(self.labels[index], dtype=np.int64))


def _padded_input(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    return model._normalise_and_pad(x)


@torch.inference_mode()
def build_feature_cache(model: torch.nn.Module, dataset, folder: str | Path, flips: bool = True,
                        desc: str = "caching backbone features") -> FeatureCache:
    """Compute (or reuse, when the fingerprint matches) the backbone features of every sample of `dataset`
    (a `build_dataset` dataset without transform), plus their horizontal flips when `flips`."""
    folder = Path(folder)
    key = {"version": FORMAT_VERSION, "backbone": backbone_fingerprint(model), "flips": bool(flips),
           "samples": [str(p) for pair in dataset.pairs for p in pair]}
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    meta_path = folder / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key_hash:
        return FeatureCache(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # an interrupted or stale cache is rebuilt from scratch

    first = dataset.load(0)
    height, width = first.label.shape
    variants = [False, True] if flips else [False]
    count = len(dataset) * len(variants)
    was_training = model.training
    model.eval()
    feats = model.backbone(_padded_input(model, first.image))
    shapes = [list(f.shape[1:]) for f in feats]
    levels = [np.lib.format.open_memmap(folder / f"level{i}.npy", mode="w+", dtype=np.float16, shape=(count, *s))
              for i, s in enumerate(shapes)]
    padded = pad_label(torch.from_numpy(first.label), model.size_divisor)
    labels = np.lib.format.open_memmap(folder / "labels.npy", mode="w+", dtype=np.uint8,
                                       shape=(count, *padded.shape))
    for index in tqdm(range(len(dataset)), desc=desc, unit="img", dynamic_ncols=True):
        sample = dataset.load(index)
        if sample.label.shape != (height, width):
            raise VLTSegError(f"{dataset.pairs[index][0]} is {sample.label.shape[1]}x{sample.label.shape[0]} but the "
                              f"feature cache needs every image at {width}x{height} (train without feature_cache)")
        for v, flip in enumerate(variants):
            image, label = (sample.image[:, ::-1], sample.label[:, ::-1]) if flip else (sample.image, sample.label)
            row = index * len(variants) + v
            for level, f in zip(levels, model.backbone(_padded_input(model, image))):
                level[row] = f[0].to(torch.float16).numpy()
            labels[row] = pad_label(torch.from_numpy(np.ascontiguousarray(label)), model.size_divisor).numpy()
    for array in (*levels, labels):
        array.flush()
    model.train(was_training)
    meta_path.write_text(json.dumps({"key": key_hash, "count": count, "feature_shapes": shapes,
                                     "image_size": [height, width], "flips": bool(flips)}, indent=1))
    return FeatureCache(folder)
