"""Segmentation datasets read in the layout they are downloaded in (users point at the extracted folder).

`build_dataset(kind, root, split, **opts)` finds the (image, label) pairs of one split, checks that the
download is complete, and yields `Sample`s with labels mapped to the 19 Cityscapes trainIds (255 = ignore).
Which raw ids a dataset uses and how they map is data: configs/datasets/*.yaml (see label_maps.py).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
from PIL import Image

from vltseg_core.data.label_maps import LabelMap, load_label_map
from vltseg_core.errors import VLTSegError

# transform(image, label, rng) -> (image, label); see transforms.TrainTransform
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass
class Sample:
    image: np.ndarray  # HxWx3 uint8 RGB
    label: np.ndarray  # HxW uint8 trainIds, 255 = ignore
    name: str  # path of the image relative to the dataset root, without suffix


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB from any image file cv2 reads."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise VLTSegError(f"cannot read image {path} (expected a PNG/JPEG file)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_index_label(path: Path) -> np.ndarray:
    """Single-channel label PNG (grey or palette) -> the stored indices (a palette PNG keeps its indices)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise VLTSegError(f"label file {path} is a {im.mode} image (expected single-channel class ids, "
                                  "not a colour rendering)")
            return np.array(im)
    except OSError as exc:
        raise VLTSegError(f"cannot read label file {path} ({exc})") from exc


def read_synthia_label(path: Path) -> np.ndarray:
    """SYNTHIA GT/LABELS: 16-bit 3-channel PNG, class id in the first (R) channel, instance id in the second."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise VLTSegError(f"cannot read label file {path} (expected a 16-bit PNG)")
    if raw.ndim != 3 or raw.dtype != np.uint16:
        raise VLTSegError(f"label file {path} is {raw.dtype} with shape {raw.shape} "
                          "(expected SYNTHIA GT/LABELS: 16-bit PNG with the class id in the first channel)")
    return raw[:, :, 2]  # cv2 gives BGR order: index 2 is the first channel on disk


class SegmentationDataset:
    """The (image, label) pairs of one split of one dataset. Indexing gives a `Sample`; with a `transform`
    each item is augmented with a generator seeded by (seed, epoch, index), so runs repeat exactly whatever
    the number of loader workers."""

    def __init__(self, kind: str, root: Path, split: str, pairs: list[tuple[Path, Path]], label_map: LabelMap,
                 read_label: Callable[[Path], np.ndarray] = read_index_label, transform: Transform | None = None,
                 seed: int = 0, resize_image_to_label: bool = False):
        self.kind, self.root, self.split = kind, root, split
        self.pairs = pairs
        self.label_map = label_map
        self.class_ids = list(label_map.class_ids)
        self.read_label = read_label
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.resize_image_to_label = resize_image_to_label

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"{self.kind}:{self.root}:{self.split} ({len(self)} images)"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, index: int) -> Sample:
        """The untransformed sample."""
        index = range(len(self))[index]  # IndexError past the end; negative indices count from the end
        image_path, label_path = self.pairs[index]
        image = read_rgb(image_path)
        label = self.label_map.apply(self.read_label(label_path), label_path)
        if image.shape[:2] != label.shape:
            if not self.resize_image_to_label:
                raise VLTSegError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its label "
                                  f"{label_path} is {label.shape[1]}x{label.shape[0]} (expected equal sizes)")
            image = cv2.resize(image, (label.shape[1], label.shape[0]), interpolation=cv2.INTER_LINEAR)
        name = str(image_path.relative_to(self.root).with_suffix(""))
        return Sample(image=image, label=label, name=name)

    def __getitem__(self, index: int) -> Sample:
        index = range(len(self))[index]
        sample = self.load(index)
        if self.transform is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            sample.image, sample.label = self.transform(sample.image, sample.label, rng)
        return sample


# ---------------------------------------------------------------------------------------------- layout helpers


def _require_dir(path: Path, kind: str, expected: str) -> Path:
    if not path.is_dir():
        raise VLTSegError(f"{kind}: folder not found: {path} (expected {expected})")
    return path


def _pair_folders(kind: str, image_dir: Path, image_suffix: str, label_dir: Path, label_suffix: str,
                  image_exts: tuple[str, ...] = (".png",)) -> list[tuple[Path, Path]]:
    """Pair every `<rel>/<stem><image_suffix><ext>` under image_dir with `<rel>/<stem><label_suffix>` under
    label_dir; images without labels or labels without images mean a half-extracted download."""
    images = sorted(p for ext in image_exts for p in image_dir.rglob(f"*{image_suffix}{ext}"))
    if not images:
        raise VLTSegError(f"{kind}: no images found in {image_dir} "
                          f"(expected files named *{image_suffix}{'|'.join(image_exts)})")
    pairs = []
    for image in images:
        rel = image.relative_to(image_dir)
        stem = rel.name[: len(rel.name) - len(image_suffix) - len(image.suffix)]
        pairs.append((image, label_dir / rel.parent / f"{stem}{label_suffix}"))
    missing = [label for _, label in pairs if not label.is_file()]
    if missing:
        raise VLTSegError(f"{kind}: {len(missing)} of {len(pairs)} images have no label, e.g. {missing[0]} is "
                          f"missing (half-extracted download? expected one label per image in {label_dir})")
    expected = {label for _, label in pairs}
    orphans = sorted(set(label_dir.rglob(f"*{label_suffix}")) - expected)
    if orphans:
        raise VLTSegError(f"{kind}: {len(orphans)} labels have no image, e.g. {orphans[0]} (half-extracted "
                          f"download? expected one image per label in {image_dir})")
    return pairs


def _check_files(kind: str, pairs: list[tuple[Path, Path]], listed_in: Path) -> list[tuple[Path, Path]]:
    for image, label in pairs:
        for path in (image, label):
            if not path.is_file():
                raise VLTSegError(f"{kind}: {path} listed in {listed_in} does not exist (half-extracted download?)")
    return pairs


def _read_name_list(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- the layouts


def _cityscapes(root: Path, split: str) -> list[tuple[Path, Path]]:
    images = _require_dir(root / "leftImg8bit" / split, "cityscapes", "leftImg8bit/<split>/<city>/*_leftImg8bit.png")
    labels = _require_dir(root / "gtFine" / split, "cityscapes", "gtFine/<split>/<city>/*_gtFine_labelIds.png")
    return _pair_folders("cityscapes", images, "_leftImg8bit", labels, "_gtFine_labelIds.png")


def _gta5(root: Path, split: str) -> list[tuple[Path, Path]]:
    images = _require_dir(root / "images", "gta5", "images/<5-digit id>.png")
    labels = _require_dir(root / "labels", "gta5", "labels/<5-digit id>.png with Cityscapes label ids")
    if split == "all":
        return _pair_folders("gta5", images, "", labels, ".png")
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        names = [Path(n).stem for n in _read_name_list(list_file)]
        source = list_file
    elif (root / "split.mat").is_file():  # the split file of the GTA5 download: trainIds / valIds / testIds
        from scipy.io import loadmat

        source = root / "split.mat"
        mat = loadmat(source)
        if f"{split}Ids" not in mat:
            raise VLTSegError(f"gta5: {source} has no {split}Ids (expected split train, val, test or all)")
        names = [f"{int(i):05d}" for i in np.ravel(mat[f"{split}Ids"])]
    else:
        raise VLTSegError(f"gta5: no split file for split '{split}' in {root} "
                          f"(expected {split}.txt or split.mat, or split 'all')")
    return _check_files("gta5", [(images / f"{n}.png", labels / f"{n}.png") for n in names], source)


def _synthia(root: Path, split: str) -> list[tuple[Path, Path]]:
    images = _require_dir(root / "RGB", "synthia", "RGB/<id>.png")
    labels = _require_dir(root / "GT" / "LABELS", "synthia", "GT/LABELS/<id>.png (16-bit)")
    if split == "all":
        return _pair_folders("synthia", images, "", labels, ".png")
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise VLTSegError(f"synthia: no split file {list_file} (expected a list of image names, or split 'all')")
    names = [Path(n).stem for n in _read_name_list(list_file)]
    return _check_files("synthia", [(images / f"{n}.png", labels / f"{n}.png") for n in names], list_file)


def _bdd100k(root: Path, split: str) -> list[tuple[Path, Path]]:
    """images/10k/<split>/*.jpg with labels/sem_seg/masks/<split>/*.png (current release), or the older seg
    release: images/<split>/*.jpg with labels/<split>/*_train_id.png. Both store trainIds."""
    if (root / "images" / "10k").is_dir():
        images = _require_dir(root / "images" / "10k" / split, "bdd100k", "images/10k/<split>/*.jpg")
        labels = _require_dir(root / "labels" / "sem_seg" / "masks" / split, "bdd100k",
                              "labels/sem_seg/masks/<split>/*.png")
        return _pair_folders("bdd100k", images, "", labels, ".png", image_exts=(".jpg",))
    images = _require_dir(root / "images" / split, "bdd100k",
                          "images/10k/<split>/*.jpg (or images/<split>/*.jpg of the seg release)")
    labels = _require_dir(root / "labels" / split, "bdd100k", "labels/<split>/*_train_id.png")
    return _pair_folders("bdd100k", images, "", labels, "_train_id.png", image_exts=(".jpg",))


def _mapillary(root: Path, split: str) -> list[tuple[Path, Path]]:
    folder = {"train": "training", "val": "validation"}.get(split, split)
    base = _require_dir(root / folder, "mapillary", "training/ and validation/ folders")
    images = _require_dir(base / "images", "mapillary", f"{folder}/images/*.jpg")
    # the v1.2 download has <split>/labels; the v2.0 download keeps the v1.2 labels in <split>/v1.2/labels
    labels = base / "v1.2" / "labels" if (base / "v1.2" / "labels").is_dir() else base / "labels"
    _require_dir(labels, "mapillary", f"{folder}/labels/*.png or {folder}/v1.2/labels/*.png (v1.2 class indices)")
    return _pair_folders("mapillary", images, "", labels, ".png", image_exts=(".jpg",))


ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


def _acdc(root: Path, split: str, conditions: tuple[str, ...] = ACDC_CONDITIONS) -> list[tuple[Path, Path]]:
    pairs = []
    for cond in conditions:
        images = _require_dir(root / "rgb_anon" / cond / split, "acdc", f"rgb_anon/{cond}/{split}/<seq>/*_rgb_anon.png")
        labels = _require_dir(root / "gt" / cond / split, "acdc", f"gt/{cond}/{split}/<seq>/*_gt_labelTrainIds.png")
        pairs += _pair_folders("acdc", images, "_rgb_anon", labels, "_gt_labelTrainIds.png")
    return pairs


def _camvid(root: Path, split: str) -> list[tuple[Path, Path]]:
    """SegNet layout: <split>.txt lines 'image label' relative to root (the original absolute /SegNet/CamVid/
    paths are resolved by their last two components)."""
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise VLTSegError(f"camvid: split file not found: {list_file} (expected {split}.txt with 'image label' "
                          "lines, e.g. 'train/0001TP_006690.png trainannot/0001TP_006690.png')")
    pairs = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise VLTSegError(f"camvid: line {n} of {list_file} is '{line}' (expected 'image label')")
        pairs.append(tuple(root / p if (root / p).exists() else root / Path(p).parent.name / Path(p).name
                           for p in parts))
    return _check_files("camvid", pairs, list_file)


@dataclass(frozen=True)
class DatasetKind:
    find_pairs: Callable[[Path, str], list[tuple[Path, Path]]]
    default_split: str
    label_map: str
    read_label: Callable[[Path], np.ndarray] = read_index_label
    resize_image_to_label: bool = False  # GTA5: a few frames ship with a label of another size


DATASETS: dict[str, DatasetKind] = {
    "cityscapes": DatasetKind(_cityscapes, "val", "cityscapes_ids"),
    "gta5": DatasetKind(_gta5, "all", "cityscapes_ids", resize_image_to_label=True),
    "synthia": DatasetKind(_synthia, "all", "synthia", read_label=read_synthia_label),
    "bdd100k": DatasetKind(_bdd100k, "val", "train_ids"),
    "mapillary": DatasetKind(_mapillary, "val", "mapillary_v1.2"),
    "acdc": DatasetKind(_acdc, "val", "train_ids"),
    **{f"acdc-{c}": DatasetKind(partial(_acdc, conditions=(c,)), "val", "train_ids") for c in ACDC_CONDITIONS},
    "camvid": DatasetKind(_camvid, "val", "camvid11"),
}


def build_dataset(kind: str, root: str | Path, split: str | None = None, *, transform: Transform | None = None,
                  seed: int = 0, label_map: str | None = None, include: list[str] | None = None,
                  exclude: list[str] | None = None) -> SegmentationDataset:
    """The `split` of the dataset `kind` (see DATASETS) downloaded to `root`; split None = the kind's usual
    evaluation split (all images for the synthetic GTA5 / SYNTHIA). `include` / `exclude` keep only the images
    whose file name matches one of / none of the glob patterns (e.g. a development split carved out of train by
    sequence: `include: ["0006R0_*"]`). The first label is read at once, so a mislabeled dataset fails here
    rather than mid-run."""
    if kind not in DATASETS:
        raise VLTSegError(f"unknown dataset kind '{kind}' (expected one of {', '.join(DATASETS)})")
    spec = DATASETS[kind]
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise VLTSegError(f"{kind}: dataset root not found: {root} (expected the extracted {kind} download)")
    split = split or spec.default_split
    pairs = select_pairs(spec.find_pairs(root, split), include, exclude, f"{kind}:{root}:{split}")
    dataset = SegmentationDataset(kind, root, split, pairs,
                                  load_label_map(label_map or spec.label_map), read_label=spec.read_label,
                                  transform=transform, seed=seed, resize_image_to_label=spec.resize_image_to_label)
    dataset.load(0)
    return dataset


def select_pairs(pairs: list[tuple[Path, Path]], include: list[str] | None, exclude: list[str] | None,
                 where: str) -> list[tuple[Path, Path]]:
    """The pairs whose image file name matches an `include` pattern (all when None) and no `exclude` pattern."""
    for name, patterns in (("include", include), ("exclude", exclude)):
        if patterns is not None and (isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns)):
            raise VLTSegError(f"{where}: {name} is {patterns!r} (expected a list of file-name glob patterns)")
    kept = [pair for pair in pairs
            if (include is None or any(fnmatch.fnmatchcase(pair[0].name, p) for p in include))
            and not any(fnmatch.fnmatchcase(pair[0].name, p) for p in exclude or ())]
    if not kept:
        raise VLTSegError(f"{where}: no image of {len(pairs)} is left by include {include} / exclude {exclude} "
                          "(expected glob patterns of image file names, e.g. '0006R0_*')")
    return kept


def parse_dataset_spec(spec: str) -> tuple[str, Path, str | None]:
    """'KIND:ROOT[:SPLIT]' (the `--data` argument) -> (kind, root, split or None)."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest or kind not in DATASETS:
        raise VLTSegError(f"--data '{spec}' (expected KIND:ROOT[:SPLIT] with KIND one of {', '.join(DATASETS)})")
    root, split = rest, None
    head, sep, tail = rest.rpartition(":")
    if sep and head and tail and "/" not in tail:
        root, split = head, tail
    return kind, Path(root), split
