"""`vltseg predict` end to end: label PNGs and overlays at each input's size (synthetic frames always, real CamVid
frames where they are present); bad inputs give one clear error line (exit code 2), not a traceback."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from vltseg_core.cli import main
from vltseg_core.config_files import CONFIG_DIR


def synthetic_frames() -> list[np.ndarray]:
    """Three smooth BGR frames (structure, not noise), 360x480 like CamVid."""
    rng = np.random.default_rng(3)
    return [cv2.resize(rng.integers(0, 256, (6, 8, 3), np.uint8), (480, 360), interpolation=cv2.INTER_CUBIC)
            for _ in range(3)]


def camvid_frames(camvid_root) -> list[np.ndarray]:
    names = [line.split()[0] for line in (camvid_root / "val.txt").read_text().splitlines()[:3]]
    return [cv2.imread(str(camvid_root / n)) for n in names]


def write_inputs(root, frames):
    """A folder with two frames (one at its full 360x480, one cropped to an odd size) and a single file."""
    (root / "folder" / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "folder" / "a.png"), frames[0])
    cv2.imwrite(str(root / "folder" / "sub" / "b.jpg"), frames[1][:201, :333])
    cv2.imwrite(str(root / "single.png"), frames[2][:64, :100])
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"), synthetic_frames())


@pytest.mark.parametrize("source", ["synthetic", "camvid"])
def test_predict_writes_labels_and_overlays(request, tmp_path, source):
    if source == "camvid":
        root = write_inputs(tmp_path / "in", camvid_frames(request.getfixturevalue("camvid_root")))
    else:
        root = request.getfixturevalue("inputs")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vltseg_core.cli", "predict", str(root / "folder"), str(root / "single.png"),
           "--model", "tiny-test", "--out", str(out), "--mode", "slide"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 image(s)" in proc.stdout
    for name, size in (("a", (360, 480)), ("sub/b", (201, 333)), ("single", (64, 100))):
        labels = cv2.imread(str(out / f"{name}_labels.png"), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(out / f"{name}_overlay.png"), cv2.IMREAD_UNCHANGED)
        assert labels.shape == size and labels.dtype == np.uint8 and labels.max() < 19
        assert overlay.shape == (*size, 3)


def test_preset_yaml_path_is_a_preset(inputs, tmp_path):
    """`--model path/to/preset.yaml` builds that preset (presets by path), it is not taken for a checkpoint."""
    preset = tmp_path / "my-tiny.yaml"
    preset.write_text((CONFIG_DIR / "models" / "tiny-test.yaml").read_text())
    assert main(["predict", str(inputs / "single.png"), "--model", str(preset), "--out", str(tmp_path / "out")]) == 0
    assert cv2.imread(str(tmp_path / "out" / "single_labels.png"), cv2.IMREAD_UNCHANGED).shape == (64, 100)


def other_architecture_checkpoint(tmp_path):
    """A tiny-test checkpoint whose sidecar claims an 11-class model: weights of another architecture."""
    from vltseg_core.checkpoint import save_checkpoint
    from vltseg_core.models import build_model

    torch.manual_seed(0)
    path = save_checkpoint(build_model("tiny-test"), tmp_path / "other.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["num_classes"] = 11
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "input not found"),
    ("grey", "greyscale image (expected 3-channel RGB)"),
    ("rgba", "4-channel image (expected 3-channel RGB)"),
    ("empty", "empty or not a decodable image"),
    ("no_images", "holds no images"),
    ("preset", "model preset 'nonexistent-preset' not found"),
    ("not_a_checkpoint", "is not a checkpoint (expected a .safetensors checkpoint"),
    ("other_architecture", "does not match the model architecture: 2 mis-shaped keys"),
    ("out_is_a_file", "File exists"),
    ("unwritable_png", "cannot write"),
])
def test_bad_inputs_give_one_error_line(inputs, tmp_path, capsys, case, message):
    target, model, out = tmp_path / f"{case}.png", "tiny-test", tmp_path / "out"
    if case == "grey":
        cv2.imwrite(str(target), np.zeros((20, 30), np.uint8))
    elif case == "rgba":
        cv2.imwrite(str(target), np.zeros((20, 30, 4), np.uint8))
    elif case == "empty":
        target.write_bytes(b"")
    elif case == "no_images":
        target = tmp_path / "nothing"
        target.mkdir()
    elif case in ("preset", "not_a_checkpoint", "other_architecture", "out_is_a_file", "unwritable_png"):
        target = inputs / "single.png"
        if case == "preset":
            model = "nonexistent-preset"
        elif case == "not_a_checkpoint":
            model = str(tmp_path / "model.pt")
            torch.save({}, model)
        elif case == "other_architecture":
            model = str(other_architecture_checkpoint(tmp_path))
        elif case == "out_is_a_file":  # a folder that cannot be created (a permission error reads the same)
            out.write_text("")
        else:  # the label PNG's path is taken by a folder, so the image write itself fails
            (out / "single_labels.png").mkdir(parents=True)
    assert main(["predict", str(target), "--model", model, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # earlier lines: the preset warning / progress bar
    assert last.startswith("vltseg predict: error:") and message in last and "Traceback" not in err
    if case in ("grey", "rgba", "empty"):
        assert str(target) in last
    elif case in ("not_a_checkpoint", "other_architecture"):
        assert model in last
    elif case in ("out_is_a_file", "unwritable_png"):
        assert str(out) in last
