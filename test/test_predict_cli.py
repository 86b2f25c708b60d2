"""`vltseg predict` end to end on real CamVid frames: label PNGs and overlays at each input's size; bad inputs
give one clear error line (exit code 2), not a traceback."""
import subprocess
import sys

import cv2
import numpy as np
import pytest

from vltseg_core.cli import main


@pytest.fixture(scope="module")
def inputs(camvid_root, tmp_path_factory):
    """A folder with two real frames (one at its native 360x480, one cropped to an odd size) and a single file."""
    root = tmp_path_factory.mktemp("inputs")
    names = [line.split()[0] for line in (camvid_root / "val.txt").read_text().splitlines()[:3]]
    frames = [cv2.imread(str(camvid_root / n)) for n in names]
    (root / "folder" / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "folder" / "a.png"), frames[0])
    cv2.imwrite(str(root / "folder" / "sub" / "b.jpg"), frames[1][:201, :333])
    cv2.imwrite(str(root / "single.png"), frames[2][:64, :100])
    return root


def test_predict_writes_labels_and_overlays(inputs, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vltseg_core.cli", "predict", str(inputs / "folder"), str(inputs / "single.png"),
           "--model", "tiny-test", "--out", str(out), "--mode", "slide"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 image(s)" in proc.stdout
    for name, size in (("a", (360, 480)), ("sub/b", (201, 333)), ("single", (64, 100))):
        labels = cv2.imread(str(out / f"{name}_labels.png"), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(out / f"{name}_overlay.png"), cv2.IMREAD_UNCHANGED)
        assert labels.shape == size and labels.dtype == np.uint8 and labels.max() < 19
        assert overlay.shape == (*size, 3)


@pytest.mark.parametrize("case, message", [
    ("missing", "input not found"),
    ("grey", "greyscale image (expected 3-channel RGB)"),
    ("rgba", "4-channel image (expected 3-channel RGB)"),
    ("empty", "empty or not a decodable image"),
    ("no_images", "holds no images"),
    ("preset", "model preset 'nonexistent-preset' not found"),
])
def test_bad_inputs_give_one_error_line(inputs, tmp_path, capsys, case, message):
    target, model = tmp_path / f"{case}.png", "tiny-test"
    if case == "grey":
        cv2.imwrite(str(target), np.zeros((20, 30), np.uint8))
    elif case == "rgba":
        cv2.imwrite(str(target), np.zeros((20, 30, 4), np.uint8))
    elif case == "empty":
        target.write_bytes(b"")
    elif case == "no_images":
        target = tmp_path / "nothing"
        target.mkdir()
    elif case == "preset":
        target, model = inputs / "single.png", "nonexistent-preset"
    assert main(["predict", str(target), "--model", model, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # earlier lines: the preset warning / progress bar
    assert last.startswith("vltseg predict: error:") and message in last and "Traceback" not in err
    if case not in ("missing", "no_images", "preset"):
        assert str(target) in last
