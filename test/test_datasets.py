"""Every dataset layout, built as a tiny real download (PNG/JPEG files in the native folders, native id
encodings), read back through build_dataset; the label maps; the bad-download errors; real CamVid."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vltseg_core.classes import load_class_table
from vltseg_core.data.datasets import DATASETS, build_dataset
from vltseg_core.data.label_maps import load_label_map
from vltseg_core.data.transforms import TrainTransform, random_crop, random_flip, random_resize
from vltseg_core.errors import VLTSegError

H, W = 6, 8
RNG = np.random.default_rng(0)


def write_rgb(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


def write_ids(path: Path, ids: np.ndarray, palette: bool = False) -> None:
    """Single-channel id PNG; palette=True writes a 'P' image as GTA5 and Mapillary ship them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette(list(np.random.default_rng(1).integers(0, 256, 768, dtype=np.uint8)))
    im.save(path)


def id_grid(values: list[int], size: tuple[int, int] = (H, W)) -> np.ndarray:
    """An HxW label using every value in `values` (cycled)."""
    return np.resize(np.array(values, np.int64), size[0] * size[1]).reshape(size)


def cityscapes_ids_to_train() -> dict[int, int]:
    from cityscapesscripts.helpers.labels import labels

    return {l.id: (l.trainId if 0 <= l.trainId < 255 else 255) for l in labels if l.id >= 0}


# ---------------------------------------------------------------------------------------------- layouts


def test_cityscapes_layout_maps_label_ids_with_the_official_table(tmp_path):
    ids = id_grid(list(range(34)))
    for city, frame in (("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000001_000019")):
        write_rgb(tmp_path / "leftImg8bit" / "val" / city / f"{frame}_leftImg8bit.png", 0)
        gt = tmp_path / "gtFine" / "val" / city
        write_ids(gt / f"{frame}_gtFine_labelIds.png", ids)
        write_ids(gt / f"{frame}_gtFine_instanceIds.png", ids)  # siblings of the real download are skipped
        write_rgb(gt / f"{frame}_gtFine_color.png", 1)
    ds = build_dataset("cityscapes", tmp_path, "val")
    assert len(ds) == 2 and ds.class_ids == list(range(19))
    official = cityscapes_ids_to_train()
    expected = np.vectorize(official.get)(ids)
    sample = ds[0]
    assert sample.name == "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit"
    assert sample.image.shape == (H, W, 3) and sample.image.dtype == np.uint8
    assert sample.label.dtype == np.uint8 and (sample.label == expected).all()


def test_cityscapes_label_map_equals_cityscapesscripts():
    lm = load_label_map("cityscapes_ids")
    official = cityscapes_ids_to_train()
    assert {i: int(lm.lut[i]) for i in range(34)} == official
    assert lm.valid.nonzero()[0].tolist() == sorted(official)


def test_gta5_layout_palette_labels_split_mat_and_size_fix(tmp_path):
    from scipy.io import savemat

    ids = id_grid([7, 26, 0, 24, 33, 10])
    for n in (1, 2, 3):
        # frame 3 ships with a label of another size, as a few real GTA5 frames do: the image is resized to it
        write_rgb(tmp_path / "images" / f"{n:05d}.png", n, size=(H + 2, W + 4) if n == 3 else (H, W))
        write_ids(tmp_path / "labels" / f"{n:05d}.png", ids, palette=True)
    savemat(tmp_path / "split.mat", {"trainIds": np.array([[1], [3]]), "valIds": np.array([[2]]),
                                     "testIds": np.array([[2]])})
    assert len(build_dataset("gta5", tmp_path)) == 3  # default split: every frame, as used for DG training
    train = build_dataset("gta5", tmp_path, "train")
    assert [p[0].name for p in train.pairs] == ["00001.png", "00003.png"]
    assert len(build_dataset("gta5", tmp_path, "val")) == 1
    official = cityscapes_ids_to_train()
    for sample in train:
        assert sample.image.shape == (H, W, 3)
        assert (sample.label == np.vectorize(official.get)(ids)).all()


SYNTHIA_TO_TRAIN = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13,
                    18: 14, 19: 15, 20: 16, 12: 17, 11: 18}


def test_synthia_layout_16bit_first_channel_and_16_classes(tmp_path):
    ids = id_grid(list(range(23)))
    raw = np.zeros((H, W, 3), np.uint16)
    raw[..., 0] = ids  # class id: first channel on disk
    raw[..., 1] = 1000 + ids  # instance ids: must not leak into the labels
    raw[..., 2] = 7
    for name in ("0000000", "0000001"):
        write_rgb(tmp_path / "RGB" / f"{name}.png", 3)
        path = tmp_path / "GT" / "LABELS" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), raw[..., ::-1].copy())  # cv2 writes BGR arrays as RGB files
    (tmp_path / "val.txt").write_text("0000001.png\n")
    ds = build_dataset("synthia", tmp_path)
    assert len(ds) == 2 and len(build_dataset("synthia", tmp_path, "val")) == 1
    assert ds.class_ids == [c for c in range(19) if c not in (9, 14, 16)]
    assert (ds[0].label == np.vectorize(lambda i: SYNTHIA_TO_TRAIN.get(i, 255))(ids)).all()


@pytest.mark.parametrize("release", ["10k", "seg"])
def test_bdd100k_both_releases(tmp_path, release):
    ids = id_grid(list(range(19)) + [255])
    names = ["7d2f7975-e0c1c5a7", "7d4a9094-0455564b"]
    for i, n in enumerate(names):
        if release == "10k":
            write_rgb(tmp_path / "images" / "10k" / "val" / f"{n}.jpg", i)
            write_ids(tmp_path / "labels" / "sem_seg" / "masks" / "val" / f"{n}.png", ids)
        else:
            write_rgb(tmp_path / "images" / "val" / f"{n}.jpg", i)
            write_ids(tmp_path / "labels" / "val" / f"{n}_train_id.png", ids)
    ds = build_dataset("bdd100k", tmp_path, "val")
    assert len(ds) == 2 and ds.class_ids == list(range(19))
    assert (ds[1].label == ids).all()


@pytest.mark.parametrize("v2_download", [False, True])
def test_mapillary_layout_maps_66_classes(tmp_path, v2_download):
    ids = id_grid(list(range(66)))
    labels = tmp_path / "validation" / ("v1.2/labels" if v2_download else "labels")
    write_rgb(tmp_path / "validation" / "images" / "--0a1b2c.jpg", 0)
    write_ids(labels / "--0a1b2c.png", ids, palette=True)
    ds = build_dataset("mapillary", tmp_path, "val")
    lut = load_label_map("mapillary_v1.2").lut
    assert (ds[0].label == lut[ids]).all()
    # spot checks by Vistas v1.2 index
    for vistas, train in {13: 0, 2: 1, 15: 1, 17: 2, 6: 3, 3: 4, 45: 5, 48: 6, 50: 7, 49: 255, 30: 8, 29: 9,
                          27: 10, 19: 11, 20: 12, 55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18, 10: 255,
                          56: 255, 65: 255}.items():
        assert lut[vistas] == train, vistas
    assert sorted(set(lut[:66].tolist()) - {255}) == list(range(19))


def test_acdc_layout_per_condition(tmp_path):
    ids = id_grid(list(range(19)) + [255])
    for i, cond in enumerate(("fog", "night", "rain", "snow")):
        frame = f"GOPR04{i}5_frame_000041"
        write_rgb(tmp_path / "rgb_anon" / cond / "val" / f"GOPR04{i}5" / f"{frame}_rgb_anon.png", i)
        write_ids(tmp_path / "gt" / cond / "val" / f"GOPR04{i}5" / f"{frame}_gt_labelTrainIds.png", ids)
        write_ids(tmp_path / "gt" / cond / "val" / f"GOPR04{i}5" / f"{frame}_gt_labelIds.png", id_grid([7]))
        write_rgb(tmp_path / "rgb_anon" / cond / "val_ref" / f"GOPR04{i}5" / f"{frame}_ref_rgb_anon.png", i)
    assert len(build_dataset("acdc", tmp_path, "val")) == 4
    night = build_dataset("acdc-night", tmp_path)
    assert len(night) == 1 and night[0].name.startswith("rgb_anon/night/val/")
    assert (night[0].label == ids).all()


def test_camvid_segnet_layout_with_original_absolute_paths(tmp_path):
    ids = id_grid(list(range(12)))
    lines = []
    for i in range(2):
        write_rgb(tmp_path / "val" / f"0016E5_0{i}.png", i)
        write_ids(tmp_path / "valannot" / f"0016E5_0{i}.png", ids)
        lines.append(f"/SegNet/CamVid/val/0016E5_0{i}.png /SegNet/CamVid/valannot/0016E5_0{i}.png")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    ds = build_dataset("camvid", tmp_path, "val")
    table = load_class_table("cityscapes")
    camvid = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
              "Bicyclist"]
    cityscapes = ["sky", "building", "pole", "road", "sidewalk", "vegetation", "traffic sign", "fence", "car",
                  "person", "rider"]
    expected = [table.names.index(c) for c in cityscapes] + [255]
    assert (ds[0].label == np.array(expected)[ids]).all(), dict(zip(camvid, cityscapes))
    assert ds.class_ids == sorted(expected[:11])


def test_every_kind_is_covered_by_a_layout_test():
    assert set(DATASETS) == {"cityscapes", "gta5", "synthia", "bdd100k", "mapillary", "acdc", "acdc-fog",
                             "acdc-night", "acdc-rain", "acdc-snow", "camvid"}


# ---------------------------------------------------------------------------------------------- bad downloads


def _cityscapes_two_frames(root: Path, label_ids: np.ndarray | None = None) -> None:
    for frame in ("aachen_000000_000019", "aachen_000001_000019"):
        write_rgb(root / "leftImg8bit" / "train" / "aachen" / f"{frame}_leftImg8bit.png", 0)
        write_ids(root / "gtFine" / "train" / "aachen" / f"{frame}_gtFine_labelIds.png",
                  id_grid([7, 26]) if label_ids is None else label_ids)


def test_missing_root_and_unknown_kind(tmp_path):
    with pytest.raises(VLTSegError, match=r"cityscapes: dataset root not found: .*nowhere"):
        build_dataset("cityscapes", tmp_path / "nowhere", "val")
    with pytest.raises(VLTSegError, match="unknown dataset kind 'kitti'.*cityscapes"):
        build_dataset("kitti", tmp_path)


def test_images_without_labels_folder(tmp_path):
    write_rgb(tmp_path / "leftImg8bit" / "val" / "a" / "a_0_0_leftImg8bit.png", 0)
    with pytest.raises(VLTSegError, match=r"folder not found: .*gtFine/val \(expected gtFine/<split>"):
        build_dataset("cityscapes", tmp_path, "val")


def test_half_extracted_labels_and_images(tmp_path):
    _cityscapes_two_frames(tmp_path)
    label = tmp_path / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"
    label.unlink()
    with pytest.raises(VLTSegError, match=r"1 of 2 images have no label, e.g. .*aachen_000001_000019_gtFine_labelIds"):
        build_dataset("cityscapes", tmp_path, "train")
    write_ids(label, id_grid([7]))
    (tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png").unlink()
    with pytest.raises(VLTSegError, match=r"1 labels have no image, e.g. .*aachen_000000_000019_gtFine_labelIds"):
        build_dataset("cityscapes", tmp_path, "train")


def test_mislabeled_ids_name_the_file_and_the_expected_ids(tmp_path):
    _cityscapes_two_frames(tmp_path, label_ids=id_grid([7, 200, 255]))  # trainId-style 255 in a labelIds file
    with pytest.raises(VLTSegError, match=r"unexpected label ids \[200, 255\] in .*aachen_000000_000019_gtFine_"
                                          r"labelIds.png \(expected Cityscapes label ids 0..33\)"):
        build_dataset("cityscapes", tmp_path, "train")


def test_colour_label_images_are_rejected(tmp_path):
    _cityscapes_two_frames(tmp_path)
    write_rgb(tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", 5)
    with pytest.raises(VLTSegError, match="is a RGB image .*expected single-channel class ids"):
        build_dataset("cityscapes", tmp_path, "train")


def test_camvid_missing_split_file_and_listed_file(tmp_path):
    with pytest.raises(VLTSegError, match=r"camvid: split file not found: .*val.txt"):
        build_dataset("camvid", tmp_path, "val")
    (tmp_path / "val.txt").write_text("val/a.png valannot/a.png\n")
    with pytest.raises(VLTSegError, match=r"camvid: .*val/a.png listed in .*val.txt does not exist"):
        build_dataset("camvid", tmp_path, "val")


def test_synthia_labels_that_are_not_16bit(tmp_path):
    write_rgb(tmp_path / "RGB" / "0000000.png", 0)
    write_ids(tmp_path / "GT" / "LABELS" / "0000000.png", id_grid([3]))
    with pytest.raises(VLTSegError, match="expected SYNTHIA GT/LABELS: 16-bit PNG"):
        build_dataset("synthia", tmp_path)


# ---------------------------------------------------------------------------------------------- real CamVid


def test_real_camvid_train_and_val(camvid_root):
    train, val = build_dataset("camvid", camvid_root, "train"), build_dataset("camvid", camvid_root, "val")
    assert (len(train), len(val)) == (367, 101)
    lut = load_label_map("camvid11").lut
    for ds in (train, val):
        sample = ds[len(ds) // 2]
        assert sample.image.shape == (360, 480, 3) and sample.label.shape == (360, 480)
        raw = np.array(Image.open(ds.pairs[len(ds) // 2][1]))
        assert (sample.label == lut[raw]).all()
        assert set(np.unique(sample.label).tolist()) <= set(ds.class_ids) | {255}


def test_development_split_carved_out_of_camvid_train_by_sequence(camvid_root):
    """include / exclude globs on the image file names split train by sequence, disjointly and completely."""
    full = build_dataset("camvid", camvid_root, "train")
    dev = build_dataset("camvid", camvid_root, "train", include=["0006R0_*"])
    rest = build_dataset("camvid", camvid_root, "train", exclude=["0006R0_*"])
    assert (len(dev), len(rest)) == (101, 266)
    assert {p for p, _ in dev.pairs} | {p for p, _ in rest.pairs} == {p for p, _ in full.pairs}
    assert all(p.name.startswith("0006R0_") for p, _ in dev.pairs)
    assert not any(p.name.startswith("0006R0_") for p, _ in rest.pairs)
    with pytest.raises(VLTSegError, match=r"no image of 367 is left by include \['0007\*'\]"):
        build_dataset("camvid", camvid_root, "train", include=["0007*"])
    with pytest.raises(VLTSegError, match="expected a list of file-name glob patterns"):
        build_dataset("camvid", camvid_root, "train", exclude="0006R0_*")


# ---------------------------------------------------------------------------------------------- transforms


def _coded_pair(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel encodes the label, so geometric transforms can be checked for
    alignment (bilinear image resizing only blends at block edges); 20x20 blocks."""
    yy, xx = np.mgrid[:h, :w]
    label = ((yy // 20) * 7 + (xx // 20) * 3).astype(np.uint8) % 19
    return np.stack([label * 10, np.zeros_like(label), np.full_like(label, 99)], -1), label


def test_train_transform_is_deterministic_under_a_seed(tmp_path):
    image, label = _coded_pair()
    t = TrainTransform(scale=(160, 120), ratio_range=(0.5, 2.0), crop_size=(48, 64))
    a = t(image, label, np.random.default_rng(7))
    b = t(image, label, np.random.default_rng(7))
    c = t(image, label, np.random.default_rng(8))
    assert a[0].shape == (48, 64, 3) and a[1].shape == (48, 64)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not ((a[0] == c[0]).all() and (a[1] == c[1]).all())


def test_geometric_transforms_keep_image_and_label_aligned():
    image, label = _coded_pair()
    for seed in range(8):
        rng = np.random.default_rng(seed)
        img, lab = random_resize(image, label, rng, (160, 120), (0.5, 2.0))
        img, lab = random_crop(img, lab, rng, (40, 50), 0.75)
        img, lab = random_flip(img, lab, rng, 0.5)
        valid = lab != 255
        assert (img[..., 0][valid] == lab[valid] * 10).mean() > 0.8  # misaligned crops/flips score <= 0.75


def test_resize_ratio_range_and_keep_ratio():
    image, label = _coded_pair(60, 80)
    sizes = {random_resize(image, label, np.random.default_rng(s), (160, 120), (0.5, 2.0))[1].shape
             for s in range(20)}
    for h, w in sizes:
        assert 60 <= h <= 240 and abs(w / h - 80 / 60) < 0.05
    assert len(sizes) > 5


def test_crop_pads_small_images_and_respects_cat_max_ratio():
    label = np.zeros((100, 100), np.uint8)
    label[:, 90:] = 1  # one class dominates everywhere except near the right edge
    image = np.zeros((100, 100, 3), np.uint8)
    ratios = []
    for seed in range(10):
        _, lab = random_crop(image, label, np.random.default_rng(seed), (20, 20), 0.75)
        counts = np.bincount(lab.ravel(), minlength=2)
        ratios.append(counts.max() / counts.sum())
    plain = [np.bincount(random_crop(image, label, np.random.default_rng(s), (20, 20), 1.0)[1].ravel(),
                         minlength=2).max() / 400 for s in range(10)]
    assert np.mean(ratios) < np.mean(plain)  # the re-draws find mixed crops far more often
    img, lab = random_crop(np.ones((10, 12, 3), np.uint8), np.zeros((10, 12), np.uint8),
                           np.random.default_rng(0), (16, 16))
    assert img.shape == (16, 16, 3) and (lab[10:] == 255).all() and (lab[:, 12:] == 255).all()
    assert (img[10:] == 0).all()


def test_dataset_transform_seeded_by_seed_epoch_index(camvid_root):
    t = TrainTransform(scale=(480, 360), crop_size=(64, 64))
    ds = build_dataset("camvid", camvid_root, "val", transform=t, seed=1)
    a, b = ds[3], ds[3]
    assert a.image.shape == (64, 64, 3) and (a.image == b.image).all() and (a.label == b.label).all()
    ds.set_epoch(1)
    assert not (ds[3].image == a.image).all()


def test_transform_config_rejects_unknown_keys():
    assert TrainTransform.from_config({"crop_size": [512, 512]}).crop_size == (512, 512)
    with pytest.raises(VLTSegError, match="unknown transform keys \\['crop'\\]"):
        TrainTransform.from_config({"crop": [512, 512]})
