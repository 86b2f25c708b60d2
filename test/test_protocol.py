"""Each paper experiment resolves to the reimplementation's protocol (test/data/vltseg_reimpl_protocol.yaml, values
transcribed with file:line), deviating only where docs/training.md documents a choice; `--print-config` shows it;
the fixed resize and the protocol overrides of the command line do what they say."""
import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vltseg_core.commands.protocol_args import add_protocol_args, apply_protocol_args
from vltseg_core.config_files import known_configs
from vltseg_core.data.transforms import TrainTransform
from vltseg_core.errors import VLTSegError
from vltseg_core.predictor import InferenceSettings
from vltseg_core.train.trainer import load_experiment, resolved_config

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = yaml.safe_load((ROOT / "test" / "data" / "vltseg_reimpl_protocol.yaml").read_text())
DEVIATIONS = (ROOT / "docs" / "training.md").read_text().split("## Deviations from the reimplementation")[-1]
PAPER_EXPERIMENTS = sorted(PROTOCOL["experiments"])


def _lookup(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{key}: '{part}' missing in the resolved config"
        node = node[part]
    return node


def _same(got, want) -> bool:
    """Numbers (and lists of numbers) within float rounding, everything else exactly."""
    numeric = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if numeric(want) or (isinstance(want, list) and want and all(numeric(v) for v in want)):
        return got == pytest.approx(want)
    return got == want


def _entries(name: str) -> list[dict]:
    flat = []
    for item in PROTOCOL["experiments"][name]["entries"]:
        flat.extend(item if isinstance(item, list) else [item])
    return flat


def test_every_paper_experiment_is_transcribed():
    demo = {"demo_camvid", "demo_camvid_lora", "demo_camvid_views"}
    assert set(PAPER_EXPERIMENTS) == set(known_configs("experiments")) - demo


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_resolved_experiment_matches_the_reimplementation(name):
    resolved = resolved_config(load_experiment(name))
    entries = _entries(name)
    assert len(entries) > 40 and all(e["source"] for e in entries)
    for entry in entries:
        got = _lookup(resolved, entry["key"])
        if "deviation" in entry:
            assert f"**{entry['deviation']}**" in DEVIATIONS, f"{entry['key']}: deviation not in docs/training.md"
            assert _same(got, entry["ours"]), entry["key"]
            assert not _same(got, entry["value"]), f"{entry['key']}: documented as a deviation but equal"
        else:
            assert _same(got, entry["value"]), \
                f"{name}: {entry['key']} is {got}, the reimplementation has {entry['value']} ({entry['source']})"
    # training-time validation, eval, replay and export read the test protocol from the model's preset
    assert resolved["model"]["test"]["stride"] == resolved["test"]["stride"]
    neck = {g["name"]: g for g in resolved["optimizer"]["groups"]}
    assert neck["neck"]["lr"] == pytest.approx(neck["backbone"]["lr"]) == pytest.approx(1e-5)


def test_print_config_of_gta5_shows_the_synthetic_protocol():
    proc = subprocess.run([sys.executable, "-m", "vltseg_core.cli", "train", "gta5_to_cityscapes", "--print-config"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["test"]["size"] == [512, 1024] and cfg["test"]["crop_size"] == [512, 512]
    assert cfg["test"]["stride"] == [426, 426] and cfg["test"]["mode"] == "slide"
    transform = cfg["data"]["transform"]
    assert transform["scale"] == [1280, 720] and transform["ratio_range"] is None and transform["keep_ratio"] is False
    assert cfg["model"]["backbone"]["drop_path_rate"] == 0.2 and cfg["model"]["backbone"]["patch_size"] == 14
    assert {g["name"] for g in cfg["optimizer"]["groups"]} >= {"backbone", "neck", "head"}


def test_fixed_resize_ignores_the_aspect_ratio_as_mmcv_resize():
    """GTA5's 1914x1052 frames become exactly 1280x720 before the crop; no random rescale, no padding."""
    image = np.zeros((1052, 1914, 3), np.uint8)
    label = np.zeros((1052, 1914), np.uint8)
    label[:, 957:] = 1
    t = TrainTransform(scale=(1280, 720), ratio_range=None, keep_ratio=False, crop_size=(720, 1280),
                       flip_prob=0.0, photometric=False)
    for seed in range(3):
        img, lab = t(image, label, np.random.default_rng(seed))
        assert img.shape == (720, 1280, 3) and (lab != 255).all()  # never a padded crop
        assert (lab[:, :638] == 0).all() and (lab[:, 642:] == 1).all()  # resized, not cropped
    with pytest.raises(VLTSegError, match="keep_ratio"):
        TrainTransform(ratio_range=(0.5, 2.0), keep_ratio=False)(image, label, np.random.default_rng(0))


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_protocol_args(parser)
    return parser.parse_args(list(argv))


def test_protocol_args_override_only_what_is_given():
    base = InferenceSettings(mode="slide", size=(1024, 2048), crop_size=(1024, 1024), stride=(768, 768))
    assert apply_protocol_args(base, _parse()) == base
    got = apply_protocol_args(base, _parse("--size", "512x1024", "--crop", "512x512", "--stride", "426x426"))
    assert (got.size, got.crop_size, got.stride, got.mode) == ((512, 1024), (512, 512), (426, 426), "slide")
    with pytest.raises(VLTSegError, match="--crop: size '512' is not HEIGHTxWIDTH"):
        apply_protocol_args(base, _parse("--crop", "512"))
    with pytest.raises(VLTSegError, match="--stride 800x800 is larger than the crop 512x512"):
        apply_protocol_args(base, _parse("--crop", "512x512", "--stride", "800x800"))
