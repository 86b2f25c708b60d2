"""Replay evaluation: run a predictor over the camera topics of a recording, with no ROS install needed.

`rosbags` reads the bag (ROS 1, or rosbag2 in sqlite3 or mcap: `bag_reading`) and writes the output rosbag2. Every
image message read is accounted for: it is either processed (its mask, colour and confidence images go to the output
bag with the input's header and bag timestamp) or skipped with a reason (depth images are not camera frames and are
always skipped). Labels, when given, are scored with the same ConfusionMatrix as `vltseg eval`. The report (JSON +
Markdown), plots and the optional overlay video go next to the output bag. Several bags: `replay_set`.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from rosbags.convert.converter import create_connections_converters
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Writer
from tqdm import tqdm

from vltseg_core.data.label_maps import LabelMap, load_label_map
from vltseg_core.domain_shift import LEVELS, THRESHOLD, References, frame_record
from vltseg_core.errors import VLTSegError
from vltseg_core.visualize import confidence_mono8, overlay
from vltseg_ros.bag_reading import (BAG_READ_ERRORS, COMPRESSED, IMAGE, IMAGE_TYPES, STORAGE_NAMES, TYPESTORE,
                                    input_storage, not_a_camera_frame, open_bag, output_storage, ros2_header,
                                    storage_of)
from vltseg_ros.image_conversions import compressed_to_rgb, image_to_rgb

__all__ = ["COMPRESSED", "IMAGE", "IMAGE_TYPES", "TYPESTORE", "open_bag", "storage_of", "replay"]  # demo.py uses them
OUTPUTS = ("mask", "color", "confidence")  # published under <camera namespace>/segmentation/<name>
STAGES = ("decode", "preprocess", "inference", "postprocess", "write", "total")
MAX_PIXELS = 64_000_000


# -- bags -----------------------------------------------------------------------------------------------------
def camera_namespace(topic: str) -> str:
    """`/front/image_raw/compressed` -> `/front`: outputs go where the node would publish them for that camera."""
    parts = topic.rstrip("/").split("/")
    if parts[-1] == "compressed":
        parts = parts[:-1]
    return "/".join(parts[:-1])


def output_topics(image_topics: list[str]) -> dict[str, dict[str, str]]:
    """Per input topic, its output topics; cameras sharing a namespace get the input topic as namespace."""
    spaces = Counter(camera_namespace(t) for t in image_topics)
    result = {}
    for topic in image_topics:
        ns = camera_namespace(topic) if spaces[camera_namespace(topic)] == 1 else topic.rstrip("/")
        result[topic] = {name: f"{ns}/segmentation/{name}" for name in OUTPUTS}
    return result


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def image_msg(array: np.ndarray, encoding: str, header):
    """A rosbags sensor_msgs/Image (mono8 HxW or rgb8 HxWx3) carrying exactly `header` (a ROS 2 header)."""
    image_type = TYPESTORE.types[IMAGE]
    array = np.ascontiguousarray(array, dtype=np.uint8)
    channels = array.shape[2] if array.ndim == 3 else 1
    return image_type(header=header, height=array.shape[0], width=array.shape[1], encoding=encoding,
                      is_bigendian=0, step=array.shape[1] * channels, data=array.reshape(-1))


def decode(msgtype: str, msg, where: str) -> np.ndarray:
    """Image / CompressedImage (rosbags message) -> HxWx3 uint8 RGB, through the node's own conversions."""
    if msgtype == COMPRESSED:
        return compressed_to_rgb(msg, MAX_PIXELS, where)
    return image_to_rgb(msg, MAX_PIXELS, where)


# -- labels ---------------------------------------------------------------------------------------------------
def topic_folder(topic: str) -> str:
    """The folder name that holds one camera's label PNGs: `/front/image_raw` -> `front_image_raw`."""
    return topic.strip("/").replace("/", "_")


def label_image(msgtype: str, msg, where: str) -> np.ndarray:
    """A label message (mono8 Image or png CompressedImage of trainIds) -> HxW uint8."""
    if msgtype == IMAGE:
        if msg.encoding not in ("mono8", "8UC1"):
            raise VLTSegError(f"label image on {where} has encoding '{msg.encoding}' (expected mono8 trainIds)")
        if msg.step < msg.width or len(msg.data) < msg.step * msg.height:
            raise VLTSegError(f"label image on {where} is truncated: {len(msg.data)} bytes for {msg.height} rows of "
                              f"step {msg.step}, width {msg.width} (expected height x step bytes, step >= width)")
        rows = np.asarray(msg.data, np.uint8)[: msg.step * msg.height].reshape(msg.height, msg.step)
        return np.ascontiguousarray(rows[:, : msg.width])
    labels = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_UNCHANGED)
    if labels is None or labels.ndim != 2:
        raise VLTSegError(f"label image on {where} is not a single-channel png (expected trainIds)")
    return labels.astype(np.uint8)


@dataclass
class LabelSource:
    """Ground truth per frame: by (header stamp, frame_id) for a label topic; by (camera folder, stamp), then
    stamp alone, for a label folder named by stamps; by position for a dataset's label folder (the n-th file in
    name order labels a camera's n-th frame in the bag)."""

    description: str
    by_key: dict = field(default_factory=dict)
    by_order: dict[str, list] = field(default_factory=dict)  # camera folder ('' = every camera) -> loaders
    label_map: LabelMap | None = None  # labels hold a dataset's raw ids (else trainIds)

    def find(self, header, topic: str, index: int) -> np.ndarray | None:
        """The labels of the frame (the `index`-th of its topic) as trainIds, None when there are none."""
        stamp = stamp_ns(header)
        value = next((self.by_key[k] for k in ((stamp, header.frame_id), (topic_folder(topic), stamp), stamp)
                      if k in self.by_key), None)
        if value is None:
            in_order = self.by_order.get(self._order_key(topic), [])
            value = in_order[index] if index < len(in_order) else None
        if value is None:
            return None
        labels = value() if callable(value) else value
        return self.label_map.apply(labels, self.description) if self.label_map else labels

    def _order_key(self, topic: str) -> str:
        """The in-order list of a topic: its camera's sub-folder, else the flat folder ('')."""
        return topic_folder(topic) if topic_folder(topic) in self.by_order else ""

    def unused(self, frames_per_topic: dict[str, int]) -> int:
        """Labels of an in-order folder left over after the last frame (a folder for another recording?)."""
        frames: dict[str, int] = {}
        for topic, n in frames_per_topic.items():
            key = self._order_key(topic)
            frames[key] = max(frames.get(key, 0), n)
        return sum(max(0, len(loaders) - frames.get(key, 0)) for key, loaders in self.by_order.items())

    def class_ids(self, num_classes: int) -> list[int]:
        """The trainIds the mIoU averages over: the dataset's (like `vltseg eval`), else every class."""
        return list(self.label_map.class_ids) if self.label_map else list(range(num_classes))


def labels_from_topic(reader: AnyReader, bag: Path, topic: str) -> LabelSource:
    """The label messages of `topic`, decoded when their frame is scored: a bad label image (truncated, wrong
    encoding) is counted against its frame like a missing one. A label topic that cannot be read is an error."""
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns or conns[0].msgtype not in IMAGE_TYPES:
        raise VLTSegError(f"label topic '{topic}' is not an Image/CompressedImage topic of {bag} "
                          f"(topics there: {sorted({c.topic for c in reader.connections})})")
    source = LabelSource(f"topic {topic}")
    messages = reader.messages(connections=conns)
    while True:
        try:
            conn, timestamp, data = next(messages)
        except StopIteration:
            return source
        except BAG_READ_ERRORS as exc:
            raise VLTSegError(f"label topic '{topic}' of bag {bag} cannot be read past label "
                              f"{len(source.by_key)} ({type(exc).__name__}: {exc}; expected an undamaged "
                              f"bag)") from None
        try:
            msg = reader.deserialize(data, conn.msgtype)
        except Exception as exc:  # noqa: BLE001 - whatever the deserializer raises means a damaged message
            raise VLTSegError(f"label message at bag time {timestamp} on '{topic}' of bag {bag} is not a "
                              f"valid {conn.msgtype} ({type(exc).__name__}: {exc})") from None
        # a label carries its image's header
        source.by_key[(stamp_ns(msg.header), msg.header.frame_id)] = partial(label_image, conn.msgtype, msg, topic)


def labels_from_dir(folder: Path) -> LabelSource:
    """Label PNGs, optionally in a sub-folder per camera named after its topic (`front_image_raw/` for
    `/front/image_raw`). Named by the frame's header stamp (`<ns>.png`, `<sec>.<nanosec>.png` or
    `<sec>_<nanosec>.png`) they are matched by stamp; a folder with no such name (a dataset's own names, e.g.
    CamVid's `0001TP_008550.png`) is matched by position: its files in name order are the frames in bag order."""
    if not folder.is_dir():
        raise VLTSegError(f"--labels {folder}: neither a topic of the bag nor a folder (expected '/topic' or a "
                          f"folder of label PNGs)")
    source = LabelSource(f"folder {folder}")
    paths = sorted(folder.rglob("*.png"))

    def loader(path: Path):
        return lambda: _read_label_png(path)

    for path in paths:
        stem = path.stem.replace("_", ".")
        try:
            sec, _, nsec = stem.partition(".")
            stamp = int(sec) * 1_000_000_000 + int(nsec.ljust(9, "0")[:9]) if nsec else int(sec)
        except ValueError:
            continue
        if path.parent != folder:
            source.by_key[(path.parent.name, stamp)] = loader(path)
        source.by_key.setdefault(stamp, loader(path))
    if not source.by_key:
        for path in paths:
            source.by_order.setdefault("" if path.parent == folder else path.parent.name, []).append(loader(path))
        source.description += " (matched by file-name order)"
    if not source.by_key and not source.by_order:
        raise VLTSegError(f"--labels {folder}: no label PNG in it (expected PNGs named by the frame's stamp, e.g. "
                          f"1700000000123456789.png, or a dataset's label PNGs in frame order)")
    return source


def _read_label_png(path: Path) -> np.ndarray:
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None or labels.ndim != 2:
        raise VLTSegError(f"label file {path} is not a single-channel PNG of trainIds")
    return labels.astype(np.uint8)


# -- statistics -----------------------------------------------------------------------------------------------
@dataclass
class TopicStats:
    read: int = 0
    processed: int = 0
    skipped: Counter = field(default_factory=Counter)
    in_metadata: int = 0

    def as_dict(self) -> dict:
        return {"read": self.read, "processed": self.processed, "skipped": sum(self.skipped.values()),
                "skipped_reasons": dict(self.skipped), "in_bag_metadata": self.in_metadata}


def percentiles(samples_s: list[float]) -> dict:
    if not samples_s:
        return {"n": 0}
    ms = np.asarray(samples_s) * 1000.0
    return {"n": int(ms.size), "mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)),
            "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


class VideoSink:
    """One mp4v overlay video per camera topic, opened at the first frame's size."""

    def __init__(self, out_dir: Path, fps: float):
        self.out_dir, self.fps = out_dir, fps
        self.writers: dict[str, tuple[cv2.VideoWriter, tuple[int, int], Path]] = {}

    def path_for(self, topic: str) -> Path:
        return self.out_dir / f"overlay{topic.replace('/', '_')}.mp4"

    def add(self, topic: str, frame_rgb: np.ndarray) -> None:
        size = (frame_rgb.shape[1], frame_rgb.shape[0])
        if topic not in self.writers:
            path = self.path_for(topic)
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            if not writer.isOpened():
                raise VLTSegError(f"OpenCV cannot write mp4v video {path}")
            self.writers[topic] = (writer, size, path)
        writer, first_size, _ = self.writers[topic]
        if size != first_size:
            frame_rgb = cv2.resize(frame_rgb, first_size, interpolation=cv2.INTER_AREA)
        writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> list[Path]:
        for writer, _, _ in self.writers.values():
            writer.release()
        return [path for _, _, path in self.writers.values()]


def video_fps(reader: AnyReader, topics: list[str]) -> float:
    """The cameras' frame rate from the bag's metadata (messages / duration), clamped to 1..60."""
    counts = [c.msgcount for c in reader.connections if c.topic in topics]
    duration_s = reader.duration / 1e9 if reader.message_count else 0.0
    if not counts or duration_s <= 0:
        return 10.0
    return float(np.clip((max(counts) - 1) / duration_s, 1.0, 60.0))


# -- the replay -----------------------------------------------------------------------------------------------
def select_image_topics(reader: AnyReader, bag: Path, topics: list[str] | None, exclude: str | None) -> list[str]:
    types = {c.topic: c.msgtype for c in reader.connections}
    image_topics = sorted(t for t, m in types.items() if m in IMAGE_TYPES and t != exclude)
    if not topics:
        if not image_topics:
            raise VLTSegError(f"bag {bag} has no sensor_msgs/Image or CompressedImage topic "
                              f"(topics there: {sorted(types)})")
        return image_topics
    for topic in topics:
        if topic not in types:
            raise VLTSegError(f"topic '{topic}' is not in bag {bag} (image topics there: {image_topics})")
        if types[topic] not in IMAGE_TYPES:
            raise VLTSegError(f"topic '{topic}' in bag {bag} has type {types[topic]} "
                              f"(expected sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage)")
    return list(dict.fromkeys(topics))


def replay(bag: Path, predictor, out_dir: Path, topics: list[str] | None = None, labels: str | None = None,
           copy_inputs: bool = False, video: bool = False, label_map: str | None = None,
           labels_optional: bool = False, references: References | None = None) -> dict:
    """Run `predictor` over the image topics of `bag` (ROS 1 or rosbag2); write `out_dir/bag` (a rosbag2),
    report.{json,md}, plots, videos.

    `references`: the model's domain-shift references (vltseg_core.domain_shift.load_references), which give
    each frame's domain-shift statistics their level; None = statistics without levels.

    `labels`: a label topic of the bag or a folder of label PNGs (`labels_optional`: a topic this bag lacks means
    no labels, as for one bag of several); `label_map`: a dataset label map (configs/datasets/) when they hold that
    dataset's raw ids instead of trainIds.

    Returns the report. A bag that breaks off part-way, or a predictor, output or video failure part-way, keeps
    everything done so far: the output bag and report are written, then a VLTSegError says where it broke.
    """
    bag, out_dir = Path(bag), Path(out_dir)
    reader = open_bag(bag)
    out_bag = out_dir / "bag"
    if out_bag.exists():
        reader.close()
        raise VLTSegError(f"output bag {out_bag} already exists (expected a new --out folder; nothing overwritten)")
    try:
        label_topic = labels if labels in {c.topic for c in reader.connections} else None
        if labels_optional and not label_topic and not Path(labels or "").is_dir():
            labels = None
        selected = select_image_topics(reader, bag, topics, label_topic)
        label_source = None
        if label_topic:
            label_source = labels_from_topic(reader, bag, label_topic)
        elif labels:
            label_source = labels_from_dir(Path(labels))
        if label_source and label_map:
            label_source.label_map = load_label_map(label_map)
        out_dir.mkdir(parents=True, exist_ok=True)
        report = _run(reader, bag, predictor, out_dir, out_bag, selected, label_source, label_topic, copy_inputs,
                      video, references)
    finally:
        reader.close()
    if report["bag_error"]:
        raise VLTSegError(f"bag {bag} cannot be read past frame {report['frames']['read']} ({report['bag_error']}); "
                          f"the results for the frames before it are in {out_dir}")
    if report["frames"]["read"] and not report["frames"]["processed"]:
        reasons = "; ".join(f"{n} x {r}" for r, n in report["frames"]["skipped_reasons"].items())
        raise VLTSegError(f"no frame of {bag} could be processed: {reasons}")
    return report


def _run(reader: AnyReader, bag: Path, predictor, out_dir: Path, out_bag: Path, selected: list[str],
         label_source: LabelSource | None, label_topic: str | None, copy_inputs: bool, video: bool,
         references: References | None) -> dict:
    from vltseg_core.evaluation import ConfusionMatrix

    table = predictor.class_table
    names = output_topics(selected)
    stats = {t: TopicStats() for t in selected}
    for conn in reader.connections:
        if conn.topic in stats:
            stats[conn.topic].in_metadata += conn.msgcount
    latencies: dict[str, list[float]] = defaultdict(list)
    shifts: list[dict] = []  # one domain-shift record per processed frame
    matrix = ConfusionMatrix(num_classes=table.num_classes, ignore_index=table.ignore_index) if label_source else None
    label_counts = Counter()
    sink = VideoSink(out_dir, video_fps(reader, selected)) if video else None
    in_conns = [c for c in reader.connections if copy_inputs or c.topic in stats]
    bag_error, interrupted, failure = None, False, None
    total = sum(s.in_metadata for s in stats.values())
    t_start = time.perf_counter()
    with Writer(out_bag, version=9, storage_plugin=output_storage(bag)) as writer:
        outs: dict[str, dict] = {}  # input topic -> output connections, added at its first segmented frame
        if copy_inputs:  # rosbags' own converter: verbatim for rosbag2, ROS 1 -> CDR (and its Header) for ROS 1
            with contextlib.redirect_stdout(io.StringIO()):  # it prints which types it migrates
                copies, converters = create_connections_converters(in_conns, None, reader, writer)
        bar = tqdm(total=total, desc="replay", unit="frame")
        messages = reader.messages(connections=in_conns)
        try:
            while True:
                try:
                    conn, timestamp, data = next(messages)
                except StopIteration:
                    break
                except BAG_READ_ERRORS as exc:
                    bag_error = f"{type(exc).__name__}: {exc}"
                    break
                if copy_inputs:
                    writer.write(copies[(conn.id, conn.owner)], timestamp, converters[conn.msgtype](data))
                if conn.topic not in stats:
                    continue
                s = stats[conn.topic]
                s.read += 1
                bar.update()
                t0 = time.perf_counter()
                try:
                    msg = reader.deserialize(data, conn.msgtype)
                except Exception as exc:  # noqa: BLE001 - whatever the deserializer raises means a damaged message
                    s.skipped[f"undeserializable {conn.msgtype} message ({type(exc).__name__})"] += 1
                    continue
                not_camera = not_a_camera_frame(conn.msgtype, msg)
                if not_camera:
                    s.skipped[f"{not_camera} on {conn.topic}"] += 1
                    continue
                try:
                    rgb = decode(conn.msgtype, msg, conn.topic)
                    t1 = time.perf_counter()
                    pred = predictor.predict(rgb)
                except VLTSegError as exc:
                    s.skipped[str(exc)] += 1
                    continue
                t2 = time.perf_counter()
                if conn.topic not in outs:
                    outs[conn.topic] = {name: writer.add_connection(topic, IMAGE, typestore=TYPESTORE)
                                        for name, topic in names[conn.topic].items()}
                header = ros2_header(msg.header)
                color = table.colorize(pred.labels)
                confidence = confidence_mono8(pred.confidence)
                for name, array, encoding in (("mask", pred.labels, "mono8"), ("color", color, "rgb8"),
                                              ("confidence", confidence, "mono8")):
                    writer.write(outs[conn.topic][name], timestamp,
                                 TYPESTORE.serialize_cdr(image_msg(array, encoding, header), IMAGE))
                t3 = time.perf_counter()
                s.processed += 1
                for stage, seconds in (("decode", t1 - t0), *predictor.last_timings.items(), ("write", t3 - t2),
                                       ("total", t3 - t0)):
                    latencies[stage].append(seconds)
                shifts.append(shift_record(pred, table.names, references, conn.topic, header))
                if matrix is not None:
                    _score(matrix, label_source, header, conn.topic, s.read - 1, pred.labels, label_counts)
                if sink is not None:
                    sink.add(conn.topic, overlay(rgb, color))
        except KeyboardInterrupt:  # keep what is done: close the bag, write the report, then stop
            interrupted = True
            _account_in_flight(stats, "interrupted while being processed")
        except Exception as exc:  # noqa: BLE001 - predictor, writer or video failure: the same, then one error line
            failure = exc
            _account_in_flight(stats, f"replay stopped while processing it ({type(exc).__name__})")
        bar.close()
    wall = time.perf_counter() - t_start
    read, listed = sum(s.read for s in stats.values()), sum(s.in_metadata for s in stats.values())
    if bag_error is None and not interrupted and read < listed:  # a damaged file may end early without raising
        bag_error = f"only {read} of the {listed} image messages listed in its metadata could be read"
    videos = sink.close() if sink else []
    if label_source is not None and label_source.by_order:  # matched by position: say if the counts differ
        left_over = label_source.unused({topic: s.read for topic, s in stats.items()})
        if left_over:
            label_counts["labels left over after the last frame (the folder has more files than frames)"] = left_over
    others = _other_topics(reader, stats, label_topic, copy_inputs)
    report = _write_report(out_dir, out_bag, bag, predictor, stats, names, others, latencies, wall, matrix,
                           label_source, label_counts, videos, bag_error, copy_inputs, interrupted, failure,
                           shifts, references)
    if interrupted:
        print(f"[replay] interrupted after {report['frames']['read']} frames; results so far are in {out_dir}")
        raise KeyboardInterrupt
    if failure is not None:
        raise VLTSegError(f"replay of {bag} stopped at frame {report['frames']['read']} ({report['failure']}); "
                          f"the results for the frames before it are in {out_dir}") from failure
    return report


def _other_topics(reader: AnyReader, stats: dict, label_topic: str | None, copy_inputs: bool) -> dict[str, dict]:
    """The bag's topics that are not segmented, with their message counts: every message is accounted for."""
    role = "copied" if copy_inputs else "not segmented"
    return {topic: {"type": info.msgtype, "messages": info.msgcount,
                    "role": "labels" if topic == label_topic else role}
            for topic, info in reader.topics.items() if topic not in stats}


def _account_in_flight(stats: dict[str, TopicStats], reason: str) -> None:
    """A frame that was read but neither processed nor skipped when the loop stopped is skipped for `reason`."""
    for st in stats.values():
        if st.read > st.processed + sum(st.skipped.values()):
            st.skipped[reason] += 1


def _score(matrix, source: LabelSource, header, topic: str, index: int, pred: np.ndarray, counts: Counter) -> None:
    try:
        labels = source.find(header, topic, index)
    except VLTSegError as exc:  # unreadable file, raw ids the label map does not know
        counts[str(exc)] += 1
        return
    if labels is None:
        counts["no label for this frame"] += 1
    elif labels.shape != pred.shape:
        counts[f"label size {labels.shape[1]}x{labels.shape[0]} != image size {pred.shape[1]}x{pred.shape[0]}"] += 1
    else:
        try:
            matrix.update(pred, labels)
        except VLTSegError as exc:  # e.g. raw dataset ids instead of trainIds
            counts[str(exc)] += 1
            return
        counts["evaluated"] += 1


# -- report ---------------------------------------------------------------------------------------------------
def _write_report(out_dir, out_bag, bag, predictor, stats, names, others, latencies, wall, matrix,
                  label_source, label_counts, videos, bag_error, copy_inputs, interrupted, failure, shifts,
                  references) -> dict:
    frames = TopicStats()
    for s in stats.values():
        frames.read += s.read
        frames.processed += s.processed
        frames.skipped.update(s.skipped)
        frames.in_metadata += s.in_metadata
    report = {
        "bag": str(bag),
        "storage": input_storage(bag),
        "output_bag": str(out_bag),
        "output_storage": STORAGE_NAMES[output_storage(bag)],
        "copied_inputs": copy_inputs,
        "model": predictor.identity(),
        "class_table": class_table_dict(predictor.class_table),
        "frames": frames.as_dict(),
        "topics": {t: {**s.as_dict(), "outputs": names[t]} for t, s in stats.items()},
        "other_topics": others,
        "latency_ms": {stage: percentiles(latencies[stage]) for stage in STAGES if stage in latencies},
        # every frame's latency per stage: what `vltseg replay --merge` needs for exact percentiles over bags
        "latency_samples_ms": {stage: [round(x * 1000.0, 4) for x in latencies[stage]] for stage in STAGES
                               if stage in latencies},
        "wall_s": wall,
        "throughput_fps": frames.processed / wall if wall > 0 else 0.0,
        "bag_error": bag_error,
        "interrupted": interrupted,
        "failure": None if failure is None else f"{type(failure).__name__}: {(str(failure).splitlines() or [''])[0]}",
        "labels": None,
        "domain_shift": domain_shift_summary(shifts, references),
        "files": {"report_json": str(out_dir / "report.json"), "report_md": str(out_dir / "report.md"),
                  "latency_histogram": str(out_dir / "latency_histogram.png"),
                  "videos": [str(v) for v in videos]},
    }
    if matrix is not None:
        report["labels"], paths = label_summary(matrix, predictor.class_table, report["model"], f"replay:{bag.name}",
                                                label_source.class_ids(matrix.num_classes),
                                                label_source.description, label_counts, out_dir)
        report["files"].update({f"eval_{kind}": str(path) for kind, path in paths.items()})
    if shifts:
        report["files"]["domain_shift_plot"] = str(domain_shift_plot(shifts, references,
                                                                     out_dir / "domain_shift.png"))
    if latencies:
        latency_histogram(latencies, out_dir / "latency_histogram.png")
    else:
        del report["files"]["latency_histogram"]
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "report.md").write_text(report_markdown(report))
    return report


def shift_record(pred, names, references: References | None, topic: str, header) -> dict:
    """One frame's domain-shift statistics and level, as the node's segmentation/domain_shift topic has them."""
    return {"topic": topic, "stamp_ns": stamp_ns(header),
            **frame_record(pred.labels, pred.confidence, names, references)}


def domain_shift_summary(shifts: list[dict], references: References | None) -> dict:
    """Frames per level, the range of each statistic, every frame's record, and the references they met."""
    summary: dict = {"references": None if references is None else
                     {k: v for k, v in references.to_dict().items() if k != "class_shares"},
                     "levels": {name: sum(r["level"] == name for r in shifts) for name in LEVELS}}
    for key in ("mean_confidence", "low_confidence_share", "class_distance"):
        values = [r[key] for r in shifts if r[key] is not None]
        summary[key] = ({"min": round(min(values), 4), "mean": round(float(np.mean(values)), 4),
                         "max": round(max(values), 4)} if values else None)
    summary["frames"] = shifts
    return summary


def domain_shift_plot(shifts: list[dict], references: References | None, path: Path) -> Path:
    """Mean confidence, low-confidence share and class-mix distance per frame (one line per topic), with the
    WARN / ERROR bands of the references shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(7, 6.2), sharex=True)
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.08, top=0.95, hspace=0.15)
    for topic in dict.fromkeys(r["topic"] for r in shifts):  # each topic (of each bag of a set) from its start
        rows = [r for r in shifts if r["topic"] == topic]
        start = min(r["stamp_ns"] for r in rows)
        t = [(r["stamp_ns"] - start) / 1e9 for r in rows]
        axes[0].plot(t, [r["mean_confidence"] for r in rows], label=topic, linewidth=1)
        axes[1].plot(t, [r["low_confidence_share"] for r in rows], linewidth=1)
        axes[2].plot(t, [np.nan if r["class_distance"] is None else r["class_distance"] for r in rows], linewidth=1)
    if references is not None:
        m, low = references.mean_confidence, references.low_confidence_share
        axes[0].axhspan(m["p1"], m["p5"], color="#ffcc66", alpha=0.35, label=f"WARN (< {references.dataset} p5)")
        axes[0].axhspan(0, m["p1"], color="#ee6677", alpha=0.25, label="ERROR (< p1)")
        axes[0].axhline(m["p50"], color="k", linestyle=":", linewidth=1, label="validation median")
        axes[1].axhspan(low["p95"], low["p99"], color="#ffcc66", alpha=0.35)
        axes[1].axhspan(low["p99"], 1, color="#ee6677", alpha=0.25)
        axes[1].axhline(low["p50"], color="k", linestyle=":", linewidth=1)
        axes[2].axhspan(references.class_distance["p99"], 1, color="#ffcc66", alpha=0.35)
        axes[2].axhline(references.class_distance["p50"], color="k", linestyle=":", linewidth=1)
    values = [r["mean_confidence"] for r in shifts] + ([references.mean_confidence["p1"]] if references else [])
    axes[0].set_ylim(max(0.0, min(values) - 0.05), 1.0)
    values = [r["low_confidence_share"] for r in shifts] + ([references.low_confidence_share["p99"]]
                                                            if references else [])
    axes[1].set_ylim(0.0, min(1.0, max(values) * 1.3 + 0.01))
    axes[0].set_ylabel("mean confidence")
    threshold = references.threshold if references else THRESHOLD
    axes[1].set_ylabel(f"share < {threshold:g}")
    axes[2].set_ylim(0.0, 1.0)
    axes[2].set_ylabel("class mix distance")
    axes[2].set_xlabel("time in the bag (s)")
    axes[0].legend(loc="lower left", fontsize="x-small", ncol=2)
    counts = ", ".join(f"{sum(r['level'] == n for r in shifts)} {n}" for n in LEVELS)
    axes[0].set_title(f"domain shift per frame: {counts}", fontsize="small")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def label_summary(matrix, table, identity: dict, name: str, class_ids: list[int], description: str,
                  counts: Counter, out_dir: Path) -> tuple[dict, dict[str, Path]]:
    """mIoU / per-class IoU (and the confusion matrix, which is what merging sums) through the report writers of
    `vltseg eval` (eval.json, eval.md, eval_iou.png)."""
    from vltseg_core.evaluation import TargetResult, make_report, write_reports

    target = TargetResult(name=name, confusion=matrix, class_ids=class_ids, num_images=counts["evaluated"],
                          extra={"labels": description, "label_matching": dict(counts)})
    meta = {"model": identity.get("model") or identity.get("onnx") or identity.get("backend"), "identity": identity}
    report = make_report([target], meta, table)
    return report["targets"][0], write_reports(report, out_dir, stem="eval")


def class_table_dict(table) -> dict:
    """The class table in the report, so that a merge can name the classes without the model."""
    return {"name": table.name, "names": list(table.names), "colors": table.colors.tolist(),
            "ignore_index": table.ignore_index}


def latency_histogram(latencies: dict[str, list[float]], path: Path) -> Path:
    """One histogram per stage (ms), stacked vertically, with p50/p95 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in STAGES if latencies.get(s)]
    height = 1.8 * len(stages)
    fig, axes = plt.subplots(len(stages), 1, figsize=(7, height), squeeze=False)
    # fixed margins in inches: tight_layout measured every text and took most of a small replay's time
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.55 / height, top=1 - 0.15 / height, hspace=0.45)
    for ax, stage in zip(axes[:, 0], stages):
        ms = np.asarray(latencies[stage]) * 1000.0
        ax.hist(ms, bins=min(50, max(5, ms.size // 2)), color="#4477aa")
        for q, style in ((50, "-"), (95, "--")):
            ax.axvline(np.percentile(ms, q), color="k", linestyle=style, linewidth=1, label=f"p{q}")
        ax.set_ylabel(stage)
    axes[0, 0].legend(loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel("latency per frame (ms)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def skipped_and_latency_markdown(skipped: dict[str, int], latency_ms: dict[str, dict],
                                 empty_table: bool = False) -> list[str]:
    """The skipped-frames list and the per-stage latency table of a replay report (one bag or several; a one-bag
    report shows the table's header even with no frame timed)."""
    lines = ["", "Skipped frames:", ""] + [f"- {n} x {r}" for r, n in skipped.items()] if skipped else []
    if latency_ms or empty_table:
        lines += ["", "| stage | p50 ms | p95 ms | p99 ms | mean ms |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {stage} | {p['p50']:.1f} | {p['p95']:.1f} | {p['p99']:.1f} | {p['mean']:.1f} |"
                  for stage, p in latency_ms.items()]
    return lines


def report_markdown(report: dict) -> str:
    f = report["frames"]
    lines = [f"# Replay of `{report['bag']}`", "",
             f"Model: `{json.dumps(report['model'], default=str)}`", "",
             f"Output bag: `{report['output_bag']}` ({report['output_storage']}; input {report['storage']})", "",
             f"Frames: {f['read']} read, {f['processed']} processed, {f['skipped']} skipped; "
             f"throughput {report['throughput_fps']:.2f} frames/s over {report['wall_s']:.1f} s.", ""]
    if report["bag_error"]:
        lines += [f"**The bag cannot be read** past frame {f['read']} ({f['in_bag_metadata']} in its metadata): "
                  f"{report['bag_error']}", ""]
    if report["failure"]:
        lines += [f"**The replay stopped** at frame {f['read']}: {report['failure']}", ""]
    lines += ["| topic | read | processed | skipped | outputs |", "| --- | ---: | ---: | ---: | --- |"]
    for topic, s in report["topics"].items():
        outputs = f"`{s['outputs']['mask'].rsplit('/', 1)[0]}/*`" if s["processed"] else "none"
        lines.append(f"| `{topic}` | {s['read']} | {s['processed']} | {s['skipped']} | {outputs} |")
    if report["other_topics"]:
        lines += ["", "Other topics: " + ", ".join(f"`{t}` ({o['type']}, {o['messages']} messages, {o['role']})"
                                                  for t, o in report["other_topics"].items()) + "."]
    lines += skipped_and_latency_markdown(f["skipped_reasons"], report["latency_ms"], empty_table=True)
    lines += domain_shift_markdown(report["domain_shift"])
    if report["labels"]:
        lab = report["labels"]
        miou = "n/a" if lab["miou"] is None else f"{lab['miou']:.2f}"
        lines += ["", f"## mIoU {miou} (labels from {lab['labels']})", "",
                  "Label matching: " + ", ".join(f"{n} {k}" for k, n in lab["label_matching"].items()) + ".",
                  f"Per-class IoU: `{Path(report['files']['eval_markdown']).name}`, "
                  f"`{Path(report['files']['eval_chart']).name}`."]
    return "\n".join(lines) + "\n"


def domain_shift_markdown(shift: dict) -> list[str]:
    """The domain-shift section: levels, ranges against the references, the plot, and every frame in a fold."""
    if not shift["frames"]:
        return []
    refs = shift["references"]
    levels = ", ".join(f"{n} {name}" for name, n in shift["levels"].items())
    lines = ["", "## Domain shift", "", f"Frames per level: {levels} " + (
        f"(against {refs['frames']} frames of {refs['dataset']}: mean confidence p1/p5/p50 "
        f"{refs['mean_confidence']['p1']:.3f}/{refs['mean_confidence']['p5']:.3f}/"
        f"{refs['mean_confidence']['p50']:.3f}, share under {refs['threshold']:g} p95/p99 "
        f"{refs['low_confidence_share']['p95']:.1%}/{refs['low_confidence_share']['p99']:.1%}, class mix p99 "
        f"{refs['class_distance']['p99']:.2f})." if refs else "(no references for this model: statistics only)."),
        "", "| statistic | min | mean | max |", "| --- | ---: | ---: | ---: |"]
    for key in ("mean_confidence", "low_confidence_share", "class_distance"):
        if shift[key]:
            lines.append(f"| {key} | {shift[key]['min']:.3f} | {shift[key]['mean']:.3f} | {shift[key]['max']:.3f} |")
    lines += ["", "Plot: `domain_shift.png`.", "", "<details><summary>every frame</summary>", "",
              "| topic | stamp (ns) | mean confidence | share under threshold | class mix | level | why |",
              "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in shift["frames"]:
        dist = "n/a" if r["class_distance"] is None else f"{r['class_distance']:.3f}"
        lines.append(f"| `{r['topic']}` | {r['stamp_ns']} | {r['mean_confidence']:.3f} | "
                     f"{r['low_confidence_share']:.3f} | {dist} | {r['level']} | {r['reason']} |")
    return lines + ["", "</details>"]
