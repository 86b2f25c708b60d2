"""`vltseg replay` on real ROS 1 bags (format 2.0) written with rosbags' rosbag1 Writer and ROS 1 serialization:
every kind of image a robot records (rgb8, mono8, 16UC1 and 32FC1 depth, JPEG and PNG CompressedImage,
compressedDepth), a message type of the team's own, a truncated bag and a bag damaged part-way."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag1 import Writer as Writer1
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from vltseg_core.cli import main as cli_main
from vltseg_core.errors import VLTSegError
from vltseg_core.predictor import load_predictor
from vltseg_ros.replay import replay

H, W = 40, 56
RGB, MONO, JPEG, PNG = "/cam/rgb/image_raw", "/cam/mono/image_raw", "/cam/rgb/image_raw/compressed", \
    "/cam/mono/image_png/compressed"
DEPTH, DEPTH_F, DEPTH_C = "/cam/depth/image_raw", "/cam/depth/image_float", "/cam/depth/image_raw/compressedDepth"
STATUS, LABELS = "/robot/status", "/cam/rgb/labels"
CAMERAS = (RGB, MONO, JPEG, PNG)
CUSTOM = "robot_msgs/msg/Status"
CUSTOM_DEF = "std_msgs/Header header\nstring mode\nfloat32 battery\n"
STORE = get_typestore(Stores.ROS1_NOETIC)
STORE.register(get_types_from_msg(CUSTOM_DEF, CUSTOM))
T = STORE.types


def header(stamp: int, frame_id: str, seq: int = 0):
    return T["std_msgs/msg/Header"](seq=seq, stamp=T["builtin_interfaces/msg/Time"](
        sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=frame_id)


def frame(seed: int) -> np.ndarray:
    """A smooth random RGB image (JPEG-friendly), so the predictor sees structure."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (5, 7, 3), np.uint8), (W, H), interpolation=cv2.INTER_CUBIC)


def grey(seed: int) -> np.ndarray:
    return cv2.cvtColor(frame(seed), cv2.COLOR_RGB2GRAY)


def stamp_of(i: int, camera: int = 0, base: int = 1_600_000_000) -> int:
    return base * 10**9 + i * 100_000_000 + camera * 1_000_000


def raw(array: np.ndarray, encoding: str, stamp: int, frame_id: str, seq: int):
    channels = array.shape[2] if array.ndim == 3 else 1
    return T["sensor_msgs/msg/Image"](header=header(stamp, frame_id, seq), height=array.shape[0],
                                      width=array.shape[1], encoding=encoding, is_bigendian=0,
                                      step=array.shape[1] * channels * array.itemsize,
                                      data=np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8))


def compressed(data: bytes, fmt: str, stamp: int, frame_id: str, seq: int):
    return T["sensor_msgs/msg/CompressedImage"](header=header(stamp, frame_id, seq), format=fmt,
                                                data=np.frombuffer(data, np.uint8))


def camera_messages(i: int, seed: int) -> dict[str, tuple[str, object]]:
    """Frame i of every stream: topic -> (type, ROS 1 message)."""
    rgb, mono = frame(seed), grey(seed + 1)
    depth = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7 + i)
    jpeg = cv2.imencode(".jpg", frame(seed + 2)[:, :, ::-1])[1].tobytes()
    png = cv2.imencode(".png", frame(seed + 3)[:, :, ::-1])[1].tobytes()
    depth_png = bytes(12) + cv2.imencode(".png", depth)[1].tobytes()  # compressed_depth_image_transport layout
    image, comp = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
    return {
        RGB: (image, raw(rgb, "rgb8", stamp_of(i, 0), "rgb", i)),
        MONO: (image, raw(mono, "mono8", stamp_of(i, 1), "mono", i)),
        DEPTH: (image, raw(depth, "16UC1", stamp_of(i, 2), "depth", i)),
        DEPTH_F: (image, raw(depth.astype(np.float32) / 1000, "32FC1", stamp_of(i, 3), "depth", i)),
        JPEG: (comp, compressed(jpeg, "rgb8; jpeg compressed bgr8", stamp_of(i, 4), "rgb", i)),
        PNG: (comp, compressed(png, "bgr8; png compressed bgr8", stamp_of(i, 5), "mono", i)),
        DEPTH_C: (comp, compressed(depth_png, "16UC1; compressedDepth png", stamp_of(i, 6), "depth", i)),
    }


def write_ros1_bag(path: Path, n: int = 2, seed: int = 0, labels: dict[int, np.ndarray] | None = None,
                   streams: tuple[str, ...] | None = None, chunk_bytes: int | None = None) -> Path:
    """A ROS 1 bag with every kind of image stream (or `streams`), a custom status type and optional labels."""
    with Writer1(path) as writer:
        if chunk_bytes:
            writer.chunk_threshold = chunk_bytes
        conns = {}
        for i in range(n):
            messages = {t: m for t, m in camera_messages(i, seed + 10 * i).items() if streams is None or t in streams}
            for topic, (msgtype, msg) in messages.items():
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, msgtype, typestore=STORE)
                writer.write(conns[topic], stamp_of(i, 7) + 5, STORE.serialize_ros1(msg, msgtype))
            if STATUS not in conns:
                conns[STATUS] = writer.add_connection(STATUS, CUSTOM, typestore=STORE)
            status = T[CUSTOM](header=header(stamp_of(i), "base", i), mode=f"auto{i}", battery=0.5 + i)
            writer.write(conns[STATUS], stamp_of(i, 8), STORE.serialize_ros1(status, CUSTOM))
            if labels is not None and i in labels:
                if LABELS not in conns:
                    conns[LABELS] = writer.add_connection(LABELS, "sensor_msgs/msg/Image", typestore=STORE)
                msg = raw(labels[i], "mono8", stamp_of(i, 0), "rgb", i)
                writer.write(conns[LABELS], stamp_of(i, 9), STORE.serialize_ros1(msg, "sensor_msgs/msg/Image"))
    return path


def read_any(path: Path) -> dict[str, list[tuple[int, object]]]:
    """Every message of a bag (either generation), deserialized by its own definitions."""
    out: dict[str, list] = {}
    with AnyReader([path]) as reader:
        for conn, timestamp, data in reader.messages():
            out.setdefault(conn.topic, []).append((timestamp, reader.deserialize(data, conn.msgtype)))
    return out


def pixels(msg) -> np.ndarray:
    channels = {"mono8": 1, "rgb8": 3}[msg.encoding]
    arr = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * channels]
    return arr.reshape(msg.height, msg.width) if channels == 1 else arr.reshape(msg.height, msg.width, 3)


def expected_rgb(topic: str, msg) -> np.ndarray:
    """What the model must see for an input frame, decoded independently of the replay code. mono8 is the grey
    value in R, G and B (the node's image_to_rgb)."""
    if topic in (JPEG, PNG):
        return cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    data = np.asarray(msg.data, np.uint8)
    if msg.encoding == "mono8":
        return np.repeat(data.reshape(msg.height, msg.width)[:, :, None], 3, axis=2)
    return data.reshape(msg.height, msg.width, 3).copy()


@pytest.fixture(scope="module")
def predictor():
    return load_predictor("tiny-test")


def test_ros1_bag_every_image_kind(tmp_path, predictor):
    """The issue's 'done when' with the fast model: every rgb8/mono8/JPEG/PNG frame segmented, depth skipped
    with its reason, every message of the bag accounted for, a valid rosbag2 (mcap) with the input stamps."""
    bag = write_ros1_bag(tmp_path / "robot.bag", n=2)
    replay(bag, predictor, tmp_path / "out", copy_inputs=True)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["storage"], report["output_storage"]) == ("rosbag1", "mcap")
    f = report["frames"]
    assert (f["read"], f["processed"], f["skipped"], f["in_bag_metadata"]) == (14, 8, 6, 14)
    assert f["skipped_reasons"] == {
        f"16UC1 image (depth or disparity), not a camera frame on {DEPTH}": 2,
        f"32FC1 image (depth or disparity), not a camera frame on {DEPTH_F}": 2,
        f"compressedDepth image (format '16UC1; compressedDepth png'), not a camera frame on {DEPTH_C}": 2}
    assert report["other_topics"] == {STATUS: {"type": CUSTOM, "messages": 2, "role": "copied"}}
    inputs = read_any(bag)
    assert f["read"] + sum(o["messages"] for o in report["other_topics"].values()) == \
        sum(len(v) for v in inputs.values())  # every message of the bag is in the report

    out_bag = tmp_path / "out" / "bag"
    assert "storage_identifier: mcap" in (out_bag / "metadata.yaml").read_text()
    outputs = read_any(out_bag)
    namespaces = {t: t for t in CAMERAS}  # raw and compressed share a camera namespace: the full topic each
    assert set(outputs) == set(inputs) | {f"{ns}/segmentation/{name}" for ns in namespaces.values()
                                          for name in ("mask", "color", "confidence")}
    for topic, ns in namespaces.items():
        masks, confs = outputs[f"{ns}/segmentation/mask"], outputs[f"{ns}/segmentation/confidence"]
        assert len(masks) == len(confs) == 2
        for (t_in, msg_in), (t_out, mask), (_, conf) in zip(inputs[topic], masks, confs):
            assert t_out == t_in  # bag time of the input
            assert (mask.header.stamp.sec, mask.header.stamp.nanosec, mask.header.frame_id) == \
                (msg_in.header.stamp.sec, msg_in.header.stamp.nanosec, msg_in.header.frame_id)
            assert not hasattr(mask.header, "seq")  # a ROS 2 header
            pred = predictor.predict(expected_rgb(topic, msg_in))
            np.testing.assert_array_equal(pixels(mask), pred.labels)
            np.testing.assert_array_equal(pixels(conf), np.floor(pred.confidence * 255 + 0.5).astype(np.uint8))
    for topic in (*CAMERAS, DEPTH, STATUS):  # --copy-inputs: the same messages, now CDR in the rosbag2
        assert [t for t, _ in outputs[topic]] == [t for t, _ in inputs[topic]]
    status = outputs[STATUS][1][1]
    assert (status.mode, status.battery, status.header.frame_id) == ("auto1", 1.5, "base")
    np.testing.assert_array_equal(outputs[DEPTH][0][1].data, inputs[DEPTH][0][1].data)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "(mcap; input rosbag1)" in md and f"`{STATUS}` ({CUSTOM}, 2 messages, copied)" in md


def test_ros1_label_topic_scores_like_the_evaluator(tmp_path, predictor):
    from vltseg_core.evaluation import ConfusionMatrix

    labels, matrix = {}, ConfusionMatrix()
    for i in range(2):
        pred = predictor.predict(frame(10 * i)).labels
        lab = pred.copy()
        lab[: H // 2] = 13  # half the frame labelled "car"
        labels[i] = lab
        matrix.update(pred, lab)
    bag = write_ros1_bag(tmp_path / "labelled.bag", n=2, labels=labels, streams=(RGB,))
    report = replay(bag, predictor, tmp_path / "out", labels=LABELS)
    assert report["labels"]["label_matching"] == {"evaluated": 2}
    assert report["labels"]["miou"] == pytest.approx(100 * matrix.miou(), abs=1e-9)
    assert report["labels"]["confusion_matrix"] == matrix.mat.tolist()
    assert report["other_topics"][LABELS]["role"] == "labels"


def test_truncated_ros1_bag_is_one_clear_line(tmp_path, capsys):
    bag = write_ros1_bag(tmp_path / "cut.bag", n=2)
    bag.write_bytes(bag.read_bytes()[: bag.stat().st_size // 2])  # the index at the end is gone
    rc = cli_main(["replay", str(bag), "--model", "tiny-test", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"bag {bag} is corrupt or truncated" in err and "rosbag reindex" in err
    assert not (tmp_path / "out").exists()  # failed before the model was loaded, nothing written


def test_ros1_bag_damaged_part_way_keeps_what_was_processed(tmp_path, predictor):
    """Small chunks; the data of the last one with a camera frame is overwritten: the frames of the chunks before it are in the
    output bag and the report, then one error line says how far it got."""
    from rosbags.rosbag1 import Reader as Reader1

    bag = write_ros1_bag(tmp_path / "damaged.bag", n=4, streams=(RGB,), chunk_bytes=2000)
    with Reader1(bag) as reader:
        (camera,) = [c.id for c in reader.connections if c.topic == RGB]
        last = reader.chunks[[c.pos for c in reader.chunk_infos if camera in c.connection_counts][-1]]
        start, size = last.datapos, last.datasize
    data = bytearray(bag.read_bytes())
    data[start: start + size] = b"\xff" * size
    bag.write_bytes(bytes(data))
    with pytest.raises(VLTSegError, match=r"cannot be read past frame \d .*the results for the frames before it") \
            as info:
        replay(bag, predictor, tmp_path / "out")
    assert "\n" not in str(info.value)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["bag_error"] and 0 < saved["frames"]["processed"] < 4
    assert saved["frames"]["processed"] + saved["frames"]["skipped"] == saved["frames"]["read"]
    masks = read_any(tmp_path / "out" / "bag")["/cam/rgb/segmentation/mask"]
    assert len(masks) == saved["frames"]["processed"]


def test_cli_protocol_overrides_reach_the_report(tmp_path, capsys):
    """`--size` (the shared protocol flags of `vltseg eval`) sets the network input size; the masks stay at the
    frame's resolution."""
    bag = write_ros1_bag(tmp_path / "robot.bag", n=1, streams=(RGB, JPEG))
    rc = cli_main(["replay", str(bag), "--model", "tiny-test", "--out", str(tmp_path / "out"), "--size", "20x28"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["size"] == [20, 28] and report["frames"]["processed"] == 2
    masks = read_any(tmp_path / "out" / "bag")[f"{RGB}/segmentation/mask"]
    assert (masks[0][1].height, masks[0][1].width) == (H, W)
    capsys.readouterr()
    assert cli_main(["replay", str(bag), "--model", "tiny-test", "--out", str(tmp_path / "bad"), "--size", "big"]) == 2
    assert capsys.readouterr().err.strip().startswith("vltseg replay: error: --size: ")
    assert not (tmp_path / "bad").exists()
