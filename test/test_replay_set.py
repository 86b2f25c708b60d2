"""`vltseg replay` over several bags (ROS 1 and rosbag2 together) in one report, and `--shard K/N` + `--merge`:
three shards merged give exactly the report of the unsharded run (summed confusion matrices, not averages)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_replay import write_bag
from test_replay_ros1 import DEPTH, LABELS, RGB, frame, write_ros1_bag

from vltseg_core.cli import main as cli_main
from vltseg_core.errors import VLTSegError
from vltseg_core.predictor import load_predictor
from vltseg_ros.replay_set import merge, output_names, parse_shard, plan, replay_set


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    """The tiny-test model saved once, so that every `vltseg replay` call (each shard) runs the same weights."""
    from vltseg_core.checkpoint import save_checkpoint
    from vltseg_core.models import build_model

    return str(save_checkpoint(build_model("tiny-test"), tmp_path_factory.mktemp("model") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def predictor(model_file):
    return load_predictor(model_file)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory, predictor):
    """A folder of three recordings: two ROS 1 bags with labelled rgb8 frames and depth (of different lengths
    and label errors, so each bag has its own IoU) and one rosbag2 (mcap) without labels."""
    root = tmp_path_factory.mktemp("fleet") / "drives"
    for k, n in enumerate((1, 2)):
        labels = {}
        for i in range(n):
            lab = predictor.predict(frame(100 * k + 10 * i)).labels.copy()
            lab[: 4 * (k + 1)] = 13  # a different share of wrong "car" rows per bag
            lab[-2:] = 255
            labels[i] = lab
        (root / f"day{k}").mkdir(parents=True)
        write_ros1_bag(root / f"day{k}" / "run.bag", n=n, seed=100 * k, labels=labels, streams=(RGB, DEPTH))
    write_bag(root / "parking_mcap", "mcap", n=2)
    return root


def comparable(report: dict) -> dict:
    """What must not depend on how the run was split (timings and output paths do)."""
    labels = report["labels"]
    return {"inputs": report["inputs"], "frames": report["frames"], "domain_shift": report["domain_shift"],
            "bags": [{k: b[k] for k in ("index", "bag", "name", "error", "frames", "miou")} for b in report["bags"]],
            "labels": {k: labels[k] for k in ("miou", "iou", "confusion_matrix", "label_matching", "num_images")}}


def test_several_bags_one_report_and_three_shards_merge_to_it(tmp_path, recordings, model_file, capsys):
    rc = cli_main(["replay", str(recordings), "--model", model_file, "--out", str(tmp_path / "all"),
                   "--labels", LABELS])
    assert rc == 0, capsys.readouterr().err
    whole = json.loads((tmp_path / "all" / "report.json").read_text())
    names = [b["name"] for b in whole["bags"]]
    assert names == ["day0__run", "day1__run", "parking_mcap"]
    for b in whole["bags"]:  # one output rosbag2 per input
        assert (tmp_path / "all" / b["name"] / "bag" / "metadata.yaml").is_file() and b["error"] is None
    per_bag = [json.loads((tmp_path / "all" / n / "report.json").read_text()) for n in names]
    assert whole["frames"]["read"] == sum(r["frames"]["read"] for r in per_bag) == 2 * 3 + 4
    assert whole["frames"]["processed"] == 3 + 4 and whole["frames"]["skipped_reasons"] == {
        f"16UC1 image (depth or disparity), not a camera frame on {DEPTH}": 3}
    assert whole["latency_ms"]["total"]["n"] == 7
    # the total mIoU is that of the summed confusion matrices, not the mean of the bags' mIoUs
    from vltseg_core.evaluation import ConfusionMatrix

    total = ConfusionMatrix()
    for r in per_bag[:2]:
        total.mat += np.asarray(r["labels"]["confusion_matrix"])
    assert whole["labels"]["miou"] == pytest.approx(100 * total.miou(), abs=1e-9)
    bag_mious = [b["miou"] for b in whole["bags"][:2]]
    assert len(set(bag_mious)) == 2 and whole["labels"]["miou"] != pytest.approx(np.mean(bag_mious), abs=1e-3)
    assert whole["bags"][2]["miou"] is None and whole["labels"]["label_matching"] == {"evaluated": 3}
    # every processed frame's domain-shift record, from its bag's report, its topic prefixed by the bag
    shift = whole["domain_shift"]
    assert shift["frames"] == [{**r, "topic": f"{name}:{r['topic']}"}
                               for name, rep in zip(names, per_bag) for r in rep["domain_shift"]["frames"]]
    assert len(shift["frames"]) == 7 and sum(shift["levels"].values()) == 7
    assert (tmp_path / "all" / "domain_shift.png").stat().st_size > 0
    md = (tmp_path / "all" / "report.md").read_text()
    assert "## Domain shift" in md and "`day1__run:" in md
    assert md.startswith("# Replay of 3 bags") and "| `parking_mcap` | 4 | 4 | 0 |" in md and "| **total** | 10 |" in md

    shard_dirs = [tmp_path / f"shard{k}" for k in range(3)]
    for k, shard_dir in enumerate(shard_dirs):
        assert cli_main(["replay", str(recordings), "--model", model_file, "--out", str(shard_dir),
                         "--labels", LABELS, "--shard", f"{k}/3"]) == 0
    shards = [json.loads((d / "report.json").read_text()) for d in shard_dirs]
    assert sorted(b["index"] for s in shards for b in s["bags"]) == [0, 1, 2]  # each bag in exactly one shard
    assert all(len(s["bags"]) == 1 for s in shards)
    moved = tmp_path / "collected"  # shard folders copied off the cluster nodes still merge
    shutil.copytree(shard_dirs[2], moved)
    assert cli_main(["replay", "--merge", str(shard_dirs[0]), str(moved), str(shard_dirs[1]),
                     "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert comparable(merged) == comparable(whole)
    assert merged["latency_ms"]["total"]["n"] == 7
    assert "merged" in capsys.readouterr().out


def test_merge_refuses_an_incomplete_or_mixed_set(tmp_path, recordings, predictor):
    inputs = sorted(recordings.glob("*/*.bag"))[:2]
    for k in range(2):
        replay_set(plan(inputs, (k, 2)), inputs, predictor, tmp_path / f"s{k}", shard=(k, 2))
    with pytest.raises(VLTSegError, match=r"needs each shard 0/2 \.\. 1/2 exactly once \(given .*s0: 0/2\)"):
        merge([tmp_path / "s0"], tmp_path / "m1")
    with pytest.raises(VLTSegError, match="exactly once"):
        merge([tmp_path / "s0", tmp_path / "s0"], tmp_path / "m2")
    replay_set(plan(inputs[:1], (1, 2)), inputs[:1], predictor, tmp_path / "other", shard=(1, 2))
    with pytest.raises(VLTSegError, match="was run with other inputs"):
        merge([tmp_path / "s0", tmp_path / "other"], tmp_path / "m3")
    with pytest.raises(VLTSegError, match="not the report of a shard"):
        merge([tmp_path / "s0" / "day1__run"], tmp_path / "m4")  # one bag's own report
    merged = merge([tmp_path / "s1", tmp_path / "s0"], tmp_path / "m5")  # without --labels, labels are images too
    assert [b["name"] for b in merged["bags"]] == ["day0__run", "day1__run"]
    assert merged["frames"]["processed"] == 2 * (1 + 2)


def test_a_bad_bag_among_several_keeps_the_others(tmp_path, recordings, capsys):
    """A truncated ROS 1 bag in the list: the other bags are replayed and reported, the report names the bad one,
    and the command ends with one error line."""
    cut = tmp_path / "cut.bag"
    good = recordings / "day1" / "run.bag"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    rc = cli_main(["replay", str(good), str(cut), "--model", "tiny-test", "--out", str(tmp_path / "out")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the progress bars
    assert rc == 2 and len(errors) == 1 and errors[0].startswith("vltseg replay: error: ")
    err = errors[0]
    assert f"1 of 2 bags did not replay completely ({cut}: bag {cut} is corrupt or truncated" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["errors"] == 1 and report["frames"]["processed"] == 2 + 2  # frames and (unused) labels
    assert report["bags"][0]["error"] is None and report["bags"][1]["frames"] is None


def test_shard_plan_is_deterministic_balanced_and_complete(tmp_path):
    sizes = [50, 10, 10, 10, 10, 5, 5]
    bags = []
    for i, size in enumerate(sizes):
        bags.append(tmp_path / f"b{i}.bag")
        bags[-1].write_bytes(bytes(size * 1000))
    shards = [[e.index for e in plan(bags, (k, 3))] for k in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))
    assert shards == [[0], [1, 3, 5], [2, 4, 6]]  # the 50 kB bag alone; the rest balanced by bytes
    assert shards == [[e.index for e in plan(bags, (k, 3))] for k in range(3)]
    assert output_names([tmp_path / "a" / "x.bag", tmp_path / "b" / "x.bag"]) == ["a__x", "b__x"]
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b"):
        with pytest.raises(VLTSegError, match="expected K/N with 0 <= K < N"):
            parse_shard(bad)


def test_an_empty_shard_writes_an_empty_report(tmp_path, recordings, capsys):
    bag = str(next(recordings.glob("*/*.bag")))
    assert cli_main(["replay", bag, "--model", "no-such-model", "--out", str(tmp_path / "s1"), "--shard", "1/2"]) == 0
    report = json.loads((tmp_path / "s1" / "report.json").read_text())
    assert report["bags"] == [] and report["frames"]["read"] == 0 and report["model"] is None
    assert "shard 1/2: 0 of 1 bags" in capsys.readouterr().out
