"""`vltseg eval` end to end on a tiny CamVid-layout download with a tiny-test checkpoint (random weights): the
report files exist and their numbers equal a ConfusionMatrix computed here from the same checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vltseg_core.cli import main
from vltseg_core.data.label_maps import load_label_map
from vltseg_core.evaluation import ConfusionMatrix


@pytest.fixture()
def camvid_tiny(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "camvid"
    for split, n in (("val", 3), ("train", 2)):
        lines = []
        for i in range(n):
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
            Image.fromarray(rng.integers(0, 12, (36, 48), dtype=np.uint8)).save(root / f"{split}annot" / f"{i}.png")
            lines.append(f"{split}/{i}.png {split}annot/{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_eval_cli_two_targets_report_matches_independent_confusion(tmp_path, camvid_tiny, capsys):
    from vltseg_core.checkpoint import save_checkpoint
    from vltseg_core.models import build_model
    from vltseg_core.predictor import load_predictor

    out = tmp_path / "report"
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model("tiny-test"), tmp_path / "tiny.safetensors")  # random weights, saved
    rc = main(["eval", "--model", str(ckpt), "--data", f"camvid:{camvid_tiny}",
               "--data", f"camvid:{camvid_tiny}:train", "--out", str(out)])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"eval.json", "eval.md", "eval_iou.png"}
    report = json.loads((out / "eval.json").read_text())
    assert report["model"] == str(ckpt) and report["command"].startswith(f"vltseg eval --model {ckpt}")

    predictor = load_predictor(str(ckpt))
    class_ids = list(load_label_map("camvid11").class_ids)
    lut = load_label_map("camvid11").lut
    mious = []
    for target, split in zip(report["targets"], ("val", "train")):
        cm = ConfusionMatrix()
        for line in (camvid_tiny / f"{split}.txt").read_text().split("\n"):
            if line:
                image_file, label_file = line.split()
                rgb = np.array(Image.open(camvid_tiny / image_file).convert("RGB"))
                cm.update(predictor.predict(rgb).labels, lut[np.array(Image.open(camvid_tiny / label_file))])
        assert target["name"] == f"camvid:{split}"
        assert target["confusion_matrix"] == cm.mat.tolist()
        assert target["miou"] == pytest.approx(100 * cm.miou(class_ids))
        iou = cm.iou()
        names = predictor.class_table.names
        for c in class_ids:
            got = target["iou"][names[c]]
            assert (got is None and np.isnan(iou[c])) or got == pytest.approx(100 * iou[c])
        mious.append(100 * cm.miou(class_ids))
    assert report["mean_miou"] == pytest.approx(np.mean(mious))
    assert f"| {ckpt} | {mious[0]:.2f} | {mious[1]:.2f} | {np.mean(mious):.2f} |" in (out / "eval.md").read_text()
    assert "[eval] json:" in capsys.readouterr().out


def test_eval_cli_bad_data_is_one_clear_line(tmp_path, capsys):
    assert main(["eval", "--model", "tiny-test", "--data", f"camvid:{tmp_path}/missing", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "camvid: dataset root not found" in err and "missing" in err
    assert main(["eval", "--data", "kitti:/data", "--out", str(tmp_path / "o")]) == 2
    assert "expected KIND:ROOT[:SPLIT]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_cli_unusable_out_fails_before_evaluating(tmp_path, camvid_tiny, capsys):
    out = tmp_path / "taken"
    out.write_text("")  # a file where the report folder should go (a permission error reads the same)
    assert main(["eval", "--model", "tiny-test", "--data", f"camvid:{camvid_tiny}", "--out", str(out)]) == 2
    # the only line: no model was loaded (its warning) and no evaluation ran (its progress bar)
    assert capsys.readouterr().err.strip() == f"vltseg eval: error: [Errno 17] File exists: '{out}'"


def test_experiment_test_protocol_travels_in_the_sidecar_and_eval_overrides_it(tmp_path, camvid_tiny):
    """An experiment's `test:` block is in its model's preset, so in the checkpoint's sidecar, so it is what
    `vltseg eval` runs; --size/--crop/--stride override it and appear in the reproduce-this-report command."""
    import yaml

    from vltseg_core.checkpoint import save_checkpoint
    from vltseg_core.models import build_model
    from vltseg_core.predictor import load_predictor
    from vltseg_core.train.trainer import load_experiment, resolved_preset

    experiment = tmp_path / "exp.yaml"
    experiment.write_text(yaml.safe_dump({
        "model": "tiny-test", "data": {"train": {"kind": "camvid", "root": str(camvid_tiny), "split": "train"}},
        "test": {"mode": "slide", "size": [30, 40], "crop_size": [24, 24], "stride": [16, 16]}}))
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(resolved_preset(load_experiment(experiment))), tmp_path / "exp.safetensors")
    settings = load_predictor(str(ckpt)).settings
    assert (settings.mode, settings.size, settings.crop_size, settings.stride) == ("slide", (30, 40), (24, 24), (16, 16))

    out = tmp_path / "report"
    assert main(["eval", "--model", str(ckpt), "--data", f"camvid:{camvid_tiny}", "--crop", "20x20",
                 "--stride", "10x12", "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    protocol = {k: report["predictor"][k] for k in ("mode", "size", "crop_size", "stride")}
    assert protocol == {"mode": "slide", "size": [30, 40], "crop_size": [20, 20], "stride": [10, 12]}
    assert "--crop 20x20 --stride 10x12" in report["command"]
    assert main(["eval", "--model", str(ckpt), "--data", f"camvid:{camvid_tiny}", "--size", "big",
                 "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
