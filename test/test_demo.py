"""`vltseg demo` end to end on a short clip of the real demo bag: the real node in its own process (the demo
model, as the README's first command runs it), real rclpy, its answers recorded and turned into the video, PNGs and report a person looks at."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from vltseg_core.cli import main as cli_main
from vltseg_ros.demo import DemoOptions, run_demo, select_frames
from vltseg_ros.demo_bag import IMAGE_TOPIC, prepare_demo_bag
from vltseg_ros.replay import TYPESTORE


@pytest.fixture(scope="module")
def demo_bag() -> Path:
    return prepare_demo_bag()  # `vltseg setup` made it already; idempotent


def test_select_frames_subsamples_the_clip(demo_bag):
    topic, msgtype, frames = select_frames(demo_bag, seconds=2.0, fps=5.0, start=1.0)
    assert topic == IMAGE_TOPIC and msgtype == "sensor_msgs/msg/CompressedImage"
    assert len(frames) == 10  # 25 fps video, every 5th frame
    assert np.diff([f.timestamp for f in frames]).tolist() == [200_000_000] * 9
    assert all(f.info is not None for f in frames)  # the CameraInfo with the same stamp rides along


def test_demo_end_to_end_on_a_short_clip(tmp_path, demo_bag, capsys):
    rc = cli_main(["demo", "--seconds", "0.6", "--fps", "5", "--pngs", "2",
                   "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    (out,) = tmp_path.iterdir()
    report = json.loads((out / "report.json").read_text())
    f = report["frames"]
    assert (f["played"], f["segmented"], f["skipped_by_node"], f["lost"]) == (3, 3, 0, 0)
    assert f["outputs_with_input_header"] == 3 and f["unexpected_outputs"] == {}
    assert {k: f["per_output"][k] for k in ("mask", "color", "confidence", "overlay")} == dict.fromkeys(
        ("mask", "color", "confidence", "overlay"), 3)
    node = report["node"]
    assert node["exit_code"] == 0 and node["identity"]["model"] == "demo"
    warm = node["warm_up_frames"]
    assert warm >= 1 and node["counters"] == {"received": 3 + warm, "processed": 3 + warm, "dropped": 0,
                                              "skipped_bad_input": 0, "skipped_error": 0}
    assert "-p mode:=evaluation" in node["command"] and "-p use_sim_time:=true" in node["command"]
    lat = report["latency_ms"]["end_to_end"]
    assert lat["n"] == 3 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    share = report["class_pixel_share_percent"]
    assert sum(share.values()) == pytest.approx(100.0, abs=0.1)
    assert share["road"] > 15 and share["car"] > 1  # a front camera on a road among cars: the model sees them

    (video,) = report["files"]["video"]
    cap = cv2.VideoCapture(video)
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    ok, frame = cap.read()
    assert ok and frame.shape == (540, 960, 3)
    cap.release()
    pngs = report["files"]["overlay_pngs"]
    assert len(pngs) == 2 and all(cv2.imread(p).shape == (540 + 28, 960, 3) for p in pngs)  # + class legend
    assert cv2.imread(report["files"]["latency_histogram"]) is not None
    md = (out / "report.md").read_text()
    assert "3 played, 3 segmented, 0 skipped by the node (bad input or a failed batch), 0 lost" in md
    for path in [video, *pngs, report["files"]["report_md"]]:
        assert path in printed  # the person is told where everything is

    with Reader(out / "bag") as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        masks = [(t, TYPESTORE.deserialize_cdr(d, c.msgtype)) for c, t, d in reader.messages(reader.connections)
                 if c.topic == "/camera/segmentation/mask"]
        inputs = [(t, TYPESTORE.deserialize_cdr(d, c.msgtype)) for c, t, d in reader.messages(reader.connections)
                  if c.topic == IMAGE_TOPIC]
    assert counts[IMAGE_TOPIC] == counts["/camera/segmentation/mask"] == counts["/camera/segmentation/overlay"] == 3
    for (t_in, image), (t_mask, mask) in zip(inputs, masks):
        assert t_in == t_mask and image.header == mask.header
        labels = np.asarray(mask.data).reshape(mask.height, mask.step)[:, : mask.width]
        assert labels.shape == (540, 960) and labels.max() < 19


def test_demo_bad_bag_is_one_clear_error(tmp_path, capsys):
    rc = cli_main(["demo", "--bag", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "bag not found" in err


def test_demo_node_that_cannot_load_its_model_is_reported(tmp_path, demo_bag):
    from vltseg_core.errors import VLTSegError

    opts = DemoOptions(model=str(tmp_path / "no_such_model.safetensors"), seconds=0.2, out=tmp_path,
                       node_timeout=120)
    with pytest.raises(VLTSegError, match="segmentation node exited with code"):
        run_demo(opts)


def test_demo_accounts_for_a_frame_the_node_cannot_decode(tmp_path):
    """A bag of another camera (namespace /front, no CameraInfo) with one truncated jpeg: the node skips it, the
    demo does not wait for an answer that never comes, and every frame is accounted for."""
    from rosbags.rosbag2 import Writer

    T = TYPESTORE.types
    bag = tmp_path / "bag"
    with Writer(bag, version=9) as writer:
        conn = writer.add_connection("/front/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                                     typestore=TYPESTORE)
        for i in range(3):
            stamp = 1_000_000_000 + i * 200_000_000
            data = cv2.imencode(".jpg", np.full((48, 64, 3), 60 * i, np.uint8))[1].ravel()
            if i == 1:
                data = data[: len(data) // 4]  # truncated jpeg
            header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=i * 200_000_000),
                                              frame_id="front")
            msg = T["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=data)
            writer.write(conn, stamp, TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))
    report = run_demo(DemoOptions(bag=bag, out=tmp_path / "out", model="tiny-test", seconds=1.0, fps=5.0,
                                  frame_timeout=60))
    f = report["frames"]
    assert (f["played"], f["segmented"], f["skipped_by_node"], f["lost"]) == (3, 2, 1, 0)
    assert report["node"]["counters"]["skipped_bad_input"] == 1
    assert "-r __ns:=/front" in report["node"]["command"] and "use_camera_info:=false" in report["node"]["command"]
