"""`vltseg replay` on small real rosbag2 files (sqlite3 and mcap) written with rosbags: real serialized
sensor_msgs, a real predictor (tiny-test preset), the shared evaluator for the labels."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from vltseg_core.cli import main as cli_main
from vltseg_core.errors import VLTSegError
from vltseg_core.predictor import load_predictor
from vltseg_ros.replay import TYPESTORE, replay

H, W = 40, 56
FRONT, REAR, OTHER = "/front/image_raw", "/rear/image/compressed", "/vehicle/status"
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
T = TYPESTORE.types


def header(stamp: int, frame_id: str):
    time = T["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9)
    return T["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


def raw_image(rgb: np.ndarray, stamp: int, frame_id: str, encoding: str = "bgr8", pad: int = 8):
    """A bgr8 Image with row padding (step > width * 3), as some drivers publish."""
    rows = np.zeros((rgb.shape[0], rgb.shape[1] * 3 + pad), np.uint8)
    rows[:, : rgb.shape[1] * 3] = rgb[:, :, ::-1].reshape(rgb.shape[0], -1)
    return T["sensor_msgs/msg/Image"](header=header(stamp, frame_id), height=rgb.shape[0], width=rgb.shape[1],
                                      encoding=encoding, is_bigendian=0, step=rows.shape[1], data=rows.ravel())


def label_msg(labels: np.ndarray, stamp: int, frame_id: str, truncated: bool = False):
    data = labels.ravel()[: labels.size // 2 if truncated else labels.size]
    return T["sensor_msgs/msg/Image"](header=header(stamp, frame_id), height=labels.shape[0], width=labels.shape[1],
                                      encoding="mono8", is_bigendian=0, step=labels.shape[1], data=data)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random images (JPEG-friendly) so the predictor sees structure, not noise."""
    rng = np.random.default_rng(seed)
    return [cv2.resize(rng.integers(0, 256, (5, 7, 3), np.uint8), (W, H), interpolation=cv2.INTER_CUBIC)
            for _ in range(n)]


def stamp_of(i: int, camera: int) -> int:
    return 1_700_000_000_000_000_000 + i * 100_000_000 + camera * 1_000_000


def write_bag(path: Path, storage: str, n: int = 3, bad_encoding: set[int] = frozenset(),
              labels: dict[int, np.ndarray] | None = None, truncated_labels: set[int] = frozenset()) -> Path:
    """Two cameras (padded bgr8 Image + jpeg CompressedImage), a non-image topic, optional label topic."""
    with Writer(path, version=9, storage_plugin=STORAGES[storage]) as writer:
        front = writer.add_connection(FRONT, "sensor_msgs/msg/Image", typestore=TYPESTORE)
        rear = writer.add_connection(REAR, "sensor_msgs/msg/CompressedImage", typestore=TYPESTORE)
        other = writer.add_connection(OTHER, "std_msgs/msg/String", typestore=TYPESTORE)
        if labels is not None:
            label_conn = writer.add_connection("/front/labels", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        for i, (a, b) in enumerate(zip(frames(n, 0), frames(n, 1))):
            msg = raw_image(a, stamp_of(i, 0), "front", encoding="yuv9000" if i in bad_encoding else "bgr8")
            writer.write(front, stamp_of(i, 0) + 5, TYPESTORE.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            jpeg = cv2.imencode(".jpg", b[:, :, ::-1])[1].ravel()
            comp = T["sensor_msgs/msg/CompressedImage"](header=header(stamp_of(i, 1), "rear"), format="jpeg", data=jpeg)
            writer.write(rear, stamp_of(i, 1) + 5, TYPESTORE.serialize_cdr(comp, "sensor_msgs/msg/CompressedImage"))
            writer.write(other, stamp_of(i, 0), TYPESTORE.serialize_cdr(T["std_msgs/msg/String"](data=f"s{i}"),
                                                                        "std_msgs/msg/String"))
            if labels is not None and i in labels:
                writer.write(label_conn, stamp_of(i, 0) + 7, TYPESTORE.serialize_cdr(
                    label_msg(labels[i], stamp_of(i, 0), "front", i in truncated_labels), "sensor_msgs/msg/Image"))
    return path


def read_bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for conn, timestamp, data in reader.messages(connections=reader.connections):
            out.setdefault(conn.topic, []).append((timestamp, TYPESTORE.deserialize_cdr(data, conn.msgtype)))
    return out


def pixels(msg) -> np.ndarray:
    channels = {"mono8": 1, "rgb8": 3}[msg.encoding]
    arr = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * channels]
    return arr.reshape(msg.height, msg.width, channels).squeeze(-1) if channels == 1 else \
        arr.reshape(msg.height, msg.width, 3)


def expected_input(msg) -> np.ndarray:
    """The input frame as RGB, decoded independently of the replay code."""
    if hasattr(msg, "format"):
        return cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    rows = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * 3]
    return rows.reshape(msg.height, msg.width, 3)[:, :, ::-1]


@pytest.fixture(scope="module")
def predictor():
    return load_predictor("tiny-test")


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_replay_output_bag_matches_inputs_and_predictor(tmp_path, predictor, storage):
    bag = write_bag(tmp_path / "in", storage, n=3)
    report = replay(bag, predictor, tmp_path / "out", copy_inputs=True, video=True)

    inputs, outputs = read_bag(bag), read_bag(tmp_path / "out" / "bag")
    meta = (tmp_path / "out" / "bag" / "metadata.yaml").read_text()
    assert f"storage_identifier: {storage}" in meta
    expected_topics = {FRONT, REAR, OTHER} | {
        f"/{cam}/segmentation/{name}" for cam in ("front", "rear") for name in ("mask", "color", "confidence")}
    assert set(outputs) == expected_topics
    for topic in (FRONT, REAR, OTHER):  # copied verbatim
        assert [t for t, _ in outputs[topic]] == [t for t, _ in inputs[topic]]
    palette = predictor.class_table.palette()
    for cam, topic in (("front", FRONT), ("rear", REAR)):
        masks = outputs[f"/{cam}/segmentation/mask"]
        colors = outputs[f"/{cam}/segmentation/color"]
        confs = outputs[f"/{cam}/segmentation/confidence"]
        assert len(masks) == len(colors) == len(confs) == len(inputs[topic]) == 3
        for (t_in, m_in), (t_m, mask), (t_c, color), (t_f, conf) in zip(inputs[topic], masks, colors, confs):
            assert t_in == t_m == t_c == t_f  # bag timestamps of the inputs
            for out in (mask, color, conf):
                assert (out.header.stamp.sec, out.header.stamp.nanosec, out.header.frame_id) == \
                    (m_in.header.stamp.sec, m_in.header.stamp.nanosec, m_in.header.frame_id)
            assert (mask.encoding, color.encoding, conf.encoding) == ("mono8", "rgb8", "mono8")
            pred = predictor.predict(np.ascontiguousarray(expected_input(m_in)))
            np.testing.assert_array_equal(pixels(mask), pred.labels)
            np.testing.assert_array_equal(pixels(color), palette[pred.labels])
            np.testing.assert_array_equal(pixels(conf), np.floor(pred.confidence * 255 + 0.5).astype(np.uint8))

    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["frames"] == report["frames"]
    assert saved["frames"]["read"] == saved["frames"]["processed"] == 6 and saved["frames"]["skipped"] == 0
    assert saved["storage"] == storage and saved["model"]["backend"] == "torch"
    for stage in ("decode", "preprocess", "inference", "postprocess", "write", "total"):
        lat = saved["latency_ms"][stage]
        assert lat["n"] == 6 and 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert saved["throughput_fps"] > 0
    assert saved["topics"][FRONT]["outputs"]["mask"] == "/front/segmentation/mask"
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Replay of")
    assert cv2.imread(str(tmp_path / "out" / "latency_histogram.png")) is not None
    for video in saved["files"]["videos"]:
        cap = cv2.VideoCapture(video)
        assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
        assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (W, H)
        cap.release()


def own_labels(predictor, seed: int = 0, n: int = 3) -> dict[int, np.ndarray]:
    return {i: predictor.predict(rgb).labels for i, rgb in enumerate(frames(n, seed))}


def test_replay_labels_topic_own_predictions_score_100(tmp_path, predictor):
    bag = write_bag(tmp_path / "in", "mcap", labels=own_labels(predictor))
    report = replay(bag, predictor, tmp_path / "out", topics=[FRONT], labels="/front/labels")
    assert report["labels"]["miou"] == 100.0
    assert report["labels"]["label_matching"] == {"evaluated": 3}
    assert set(v for v in report["labels"]["iou"].values() if v is not None) == {100.0}
    eval_json = json.loads((tmp_path / "out" / "eval.json").read_text())  # the `vltseg eval` report writers
    assert eval_json["targets"][0]["miou"] == 100.0
    assert cv2.imread(str(tmp_path / "out" / "eval_iou.png")) is not None


def test_replay_truncated_label_image_is_counted_against_its_frame(tmp_path, predictor):
    bag = write_bag(tmp_path / "in", "sqlite3", labels=own_labels(predictor), truncated_labels={1})
    report = replay(bag, predictor, tmp_path / "out", topics=[FRONT], labels="/front/labels")
    assert report["frames"]["processed"] == 3 and report["labels"]["miou"] == 100.0
    matching = report["labels"]["label_matching"]
    assert matching.pop("evaluated") == 2
    (reason, count), = matching.items()
    assert count == 1 and reason.startswith("label image on /front/labels is truncated: 1120 bytes for 40 rows")


def test_replay_undeserialisable_label_message_is_one_clear_line(tmp_path, capsys):
    bag = write_bag(tmp_path / "in", "mcap", n=1, labels={})
    with Writer(tmp_path / "bad", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        with Reader(bag) as reader:
            conns = {c.topic: writer.add_connection(c.topic, c.msgtype, typestore=TYPESTORE)
                     for c in reader.connections}
            for conn, timestamp, data in reader.messages(connections=reader.connections):
                writer.write(conns[conn.topic], timestamp, data)
        writer.write(conns["/front/labels"], stamp_of(0, 0), b"\x00\x01\x00\x00garbage")
    rc = cli_main(["replay", str(tmp_path / "bad"), "--model", "tiny-test", "--out", str(tmp_path / "out"),
                   "--labels", "/front/labels"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "label message at bag time" in err and "is not a valid sensor_msgs/msg/Image" in err


class FailingPredictor:
    """The real predictor, except that its `fail_at`-th predict raises what a GPU out of memory raises."""

    def __init__(self, real, fail_at: int):
        self.real, self.fail_at, self.calls = real, fail_at, 0

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def predict(self, rgb: np.ndarray):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported")
        return self.real.predict(rgb)


def test_replay_predictor_failure_midway_keeps_the_report(tmp_path, predictor):
    bag = write_bag(tmp_path / "in", "mcap", n=3)
    with pytest.raises(VLTSegError, match=r"stopped at frame 2 \(RuntimeError: CUDA error: out of memory\); the "
                                          r"results for the frames before it are in") as info:
        replay(bag, FailingPredictor(predictor, fail_at=2), tmp_path / "out", topics=[FRONT])
    assert "\n" not in str(info.value)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["failure"] == "RuntimeError: CUDA error: out of memory"
    assert (saved["frames"]["read"], saved["frames"]["processed"]) == (2, 1)
    assert saved["frames"]["skipped_reasons"] == {"replay stopped while processing it (RuntimeError)": 1}
    assert "**The replay stopped** at frame 2" in (tmp_path / "out" / "report.md").read_text()
    assert len(read_bag(tmp_path / "out" / "bag")["/front/segmentation/mask"]) == 1


def test_replay_video_failure_keeps_the_report(tmp_path, predictor):
    bag = write_bag(tmp_path / "in", "mcap", n=2)
    (tmp_path / "out" / "overlay_front_image_raw.mp4").mkdir(parents=True)  # the video file cannot be created
    with pytest.raises(VLTSegError, match=r"stopped at frame 1 \(VLTSegError: OpenCV cannot write mp4v video"):
        replay(bag, predictor, tmp_path / "out", topics=[FRONT], video=True)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["failure"].startswith("VLTSegError: OpenCV cannot write mp4v video")
    assert saved["frames"]["read"] == saved["frames"]["processed"] == 1


def test_replay_without_rosbags_is_one_line(tmp_path, monkeypatch, capsys):
    """A plain `pip install .` has no rosbags (the ros extra): `vltseg replay` says so instead of a traceback."""
    import sys

    for name in [m for m in sys.modules if m.partition(".")[0] == "rosbags"] + ["rosbags"]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("vltseg_ros.replay", "vltseg_ros.replay_set", "vltseg_ros.bag_reading", "vltseg_ros.image_conversions",
                 "vltseg_ros.commands.replay"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    rc = cli_main(["replay", str(tmp_path / "in"), "--model", "tiny-test", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == ("vltseg replay: error: the Python package 'rosbags' is not installed (expected with "
                               "the 'ros' extra: pip install 'vltseg_ros[ros]')")


def test_replay_perturbed_labels_give_exact_iou(tmp_path, predictor):
    preds = own_labels(predictor)
    labels = {}
    for i, pred in preds.items():
        lab = pred.copy()
        lab[: H // 2, : W // 2] = 11  # a quarter becomes "person"
        lab[-4:, :] = 255  # ignored rows
        labels[i] = lab
    bag = write_bag(tmp_path / "in", "sqlite3", labels=labels)
    report = replay(bag, predictor, tmp_path / "out", topics=[FRONT], labels="/front/labels")

    tp, fp, fn = np.zeros(19), np.zeros(19), np.zeros(19)  # computed here, independently of the evaluator
    for i in preds:
        valid = labels[i] != 255
        p, g = preds[i][valid], labels[i][valid]
        for c in range(19):
            tp[c] += np.sum((p == c) & (g == c))
            fp[c] += np.sum((p == c) & (g != c))
            fn[c] += np.sum((p != c) & (g == c))
    union = tp + fp + fn
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan) * 100
    assert report["labels"]["miou"] == pytest.approx(np.nanmean(iou), abs=0.01)
    for c, name in enumerate(predictor.class_table.names):
        got = report["labels"]["iou"][name]
        assert (got is None) == np.isnan(iou[c])
        if got is not None:
            assert got == pytest.approx(iou[c], abs=0.01)


def test_replay_cli_with_label_folder(tmp_path, capsys, predictor):
    bag = write_bag(tmp_path / "in", "mcap", n=2)
    folder = tmp_path / "labels" / "front_image_raw"
    folder.mkdir(parents=True)
    for i in range(2):  # all-255 labels: matched by stamp file name, but nothing to score
        cv2.imwrite(str(folder / f"{stamp_of(i, 0)}.png"), np.full((H, W), 255, np.uint8))
    rc = cli_main(["replay", str(bag), "--model", "tiny-test", "--out", str(tmp_path / "out"),
                   "--labels", str(tmp_path / "labels"), "--video"])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["frames"]["processed"] == 4
    assert report["labels"]["label_matching"] == {"evaluated": 2, "no label for this frame": 2}
    assert report["labels"]["miou"] is None  # every label pixel ignored
    assert "[replay] report_md:" in capsys.readouterr().out


def test_replay_unknown_encoding_is_skipped_and_counted(tmp_path, predictor):
    bag = write_bag(tmp_path / "in", "mcap", n=3, bad_encoding={1})
    report = replay(bag, predictor, tmp_path / "out")
    f = report["frames"]
    assert (f["read"], f["processed"], f["skipped"]) == (6, 5, 1)
    assert f["processed"] + f["skipped"] == f["read"]
    (reason, count), = f["skipped_reasons"].items()
    assert count == 1 and "unsupported encoding 'yuv9000'" in reason and FRONT in reason
    assert len(read_bag(tmp_path / "out" / "bag")["/front/segmentation/mask"]) == 2


def test_replay_nothing_decodable_is_an_error_with_report(tmp_path, predictor):
    bag = write_bag(tmp_path / "in", "sqlite3", n=2, bad_encoding={0, 1})
    with pytest.raises(VLTSegError, match=r"no frame .* could be processed: 2 x unsupported encoding 'yuv9000'"):
        replay(bag, predictor, tmp_path / "out", topics=[FRONT])
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["frames"]["read"] == saved["frames"]["skipped"] == 2


@pytest.mark.parametrize("storage,suffix", [("sqlite3", ".db3"), ("mcap", ".mcap")])
def test_replay_truncated_bag_is_one_clear_error(tmp_path, capsys, storage, suffix):
    bag = write_bag(tmp_path / "in", storage, n=4)
    (data_file,) = bag.glob(f"*{suffix}")
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    rc = cli_main(["replay", str(bag), "--model", "tiny-test", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "corrupt or truncated" in err and str(bag) in err and "Traceback" not in err


def test_replay_damaged_mcap_keeps_what_was_done(tmp_path, predictor):
    bag = write_bag(tmp_path / "in", "mcap", n=4)
    (data_file,) = bag.glob("*.mcap")
    data = bytearray(data_file.read_bytes())
    data[100:4000] = bytes(3900)  # zero the first chunk; the file's summary still opens
    data_file.write_bytes(bytes(data))
    with pytest.raises(VLTSegError, match="cannot be read past frame"):
        replay(bag, predictor, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["bag_error"] and saved["frames"]["processed"] + saved["frames"]["skipped"] == saved["frames"]["read"]
    assert (tmp_path / "out" / "bag" / "metadata.yaml").is_file()


def test_replay_bad_inputs(tmp_path, predictor):
    bag = write_bag(tmp_path / "in", "mcap", n=1)
    with pytest.raises(VLTSegError, match=r"topic '/nope' is not in bag .*image topics there"):
        replay(bag, predictor, tmp_path / "a", topics=["/nope"])
    with pytest.raises(VLTSegError, match=r"topic '/vehicle/status' .* has type std_msgs/msg/String"):
        replay(bag, predictor, tmp_path / "b", topics=[OTHER])
    with pytest.raises(VLTSegError, match="bag not found"):
        replay(tmp_path / "missing", predictor, tmp_path / "c")
    with pytest.raises(VLTSegError, match="neither a topic of the bag nor a folder"):
        replay(bag, predictor, tmp_path / "d", labels="/no/such/labels")
    not_a_bag = tmp_path / "empty"
    not_a_bag.mkdir()
    with pytest.raises(VLTSegError, match="no readable metadata.yaml"):
        replay(not_a_bag, predictor, tmp_path / "e")
    replay(bag, predictor, tmp_path / "f")
    with pytest.raises(VLTSegError, match="already exists"):
        replay(bag, predictor, tmp_path / "f")


def test_replay_real_camvid_frames_score_like_vltseg_eval(tmp_path, predictor, camvid_root):
    """Two real CamVid val frames in a bag with their raw 11-class annotations as a label topic: replay's mIoU
    over CamVid's classes equals the evaluator applied to the predictor's output and the mapped labels."""
    from vltseg_core.data.label_maps import load_label_map
    from vltseg_core.evaluation import ConfusionMatrix

    pairs = [line.split() for line in (camvid_root / "val.txt").read_text().splitlines()[:2]]
    label_map = load_label_map("camvid11")
    matrix = ConfusionMatrix()
    with Writer(tmp_path / "in", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        cam = writer.add_connection("/camvid/image_raw", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        lab = writer.add_connection("/camvid/labels", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        for i, (image_path, label_path) in enumerate(pairs):
            rgb = cv2.imread(str(camvid_root / image_path))[:, :, ::-1]
            raw = cv2.imread(str(camvid_root / label_path), cv2.IMREAD_UNCHANGED)
            writer.write(cam, stamp_of(i, 0), TYPESTORE.serialize_cdr(
                raw_image(rgb, stamp_of(i, 0), "camvid", pad=0), "sensor_msgs/msg/Image"))
            writer.write(lab, stamp_of(i, 0), TYPESTORE.serialize_cdr(
                label_msg(raw, stamp_of(i, 0), "camvid"), "sensor_msgs/msg/Image"))
            matrix.update(predictor.predict(np.ascontiguousarray(rgb)).labels, label_map.apply(raw, label_path))
    report = replay(tmp_path / "in", predictor, tmp_path / "out", labels="/camvid/labels", label_map="camvid11")
    assert report["frames"]["processed"] == 2 and report["labels"]["label_matching"] == {"evaluated": 2}
    assert report["labels"]["class_ids"] == list(label_map.class_ids)
    assert report["labels"]["miou"] == pytest.approx(100 * matrix.miou(label_map.class_ids), abs=0.01)

    # The dataset's own annotation folder (CamVid's file names, not stamps) matches the frames by position.
    annot = tmp_path / "camvid_annotations" / "camvid_image_raw"
    annot.mkdir(parents=True)
    for _, label_path in pairs:
        (annot / Path(label_path).name).symlink_to(camvid_root / label_path)
    by_name = replay(tmp_path / "in", predictor, tmp_path / "out_folder", topics=["/camvid/image_raw"],
                     labels=str(annot.parent), label_map="camvid11")
    assert by_name["labels"]["label_matching"] == {"evaluated": 2}
    assert "matched by file-name order" in by_name["labels"]["labels"]
    assert by_name["labels"]["miou"] == pytest.approx(report["labels"]["miou"], abs=1e-9)
    (annot / "0016E5_99999.png").symlink_to(camvid_root / pairs[0][1])  # one more label than frames: said so
    extra = replay(tmp_path / "in", predictor, tmp_path / "out_extra", topics=["/camvid/image_raw"],
                   labels=str(annot.parent), label_map="camvid11")
    assert extra["labels"]["label_matching"] == {
        "evaluated": 2, "labels left over after the last frame (the folder has more files than frames)": 1}


def test_replay_rosbag2_type_without_its_definition_is_read_as_jazzy(tmp_path, predictor):
    """A rosbag2 may carry the definitions of some types only (`ros2 bag record` stores none for a type it could
    not find); the bag's own definitions serve the others, ROS 2 Jazzy's the undescribed ones."""
    import sqlite3

    bag = write_bag(tmp_path / "in", "sqlite3", n=2)
    db = sqlite3.connect(next(bag.glob("*.db3")))
    db.execute("DELETE FROM message_definitions WHERE topic_type = 'sensor_msgs/msg/CompressedImage'")
    db.commit()
    db.close()
    report = replay(bag, predictor, tmp_path / "out")
    assert report["topics"][REAR]["processed"] == 2 and report["frames"]["skipped"] == 0
