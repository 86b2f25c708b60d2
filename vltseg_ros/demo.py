"""The one-command demo: the real segmentation node, in its own process, on real dashcam footage.

A short clip of the demo bag (or any bag with one CompressedImage/Image camera) is played into the node with its
header stamps and a matching /clock (the node runs with use_sim_time, evaluation mode, autostart), the node's
outputs are recorded into an output bag, and a person gets what happened: an overlay video, a few overlay PNGs,
a report (frames played / segmented / skipped / lost, latency) and where each file is. No GPU and no system-wide ROS 2
are needed: rclpy and the messages come from the Python environment.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Writer
from tqdm import tqdm

from vltseg_core.errors import VLTSegError
from vltseg_ros.diagnostics import DOMAIN_SHIFT
from vltseg_ros.replay import (COMPRESSED, IMAGE, IMAGE_TYPES, TYPESTORE, VideoSink, camera_namespace,
                               latency_histogram, open_bag, percentiles, stamp_ns, storage_of)

OUTPUTS = ("mask", "color", "confidence", "overlay")
NODE_NAME = "segmentation_node"
DIAGNOSTICS_PERIOD = 0.5
SKIP_COUNTERS = ("skipped_bad_input", "skipped_error")  # the node's counts of frames it took and could not segment
WARMUP_FRAME_ID = "vltseg_demo_warmup"
ANSWER_GRACE = 2.0  # seconds to wait for the last answers once the node reports every frame as done


@dataclass
class DemoOptions:
    bag: Path | None = None  # None: the prepared demo bag (vltseg setup)
    out: Path = Path("outputs/demo")
    model: str = "demo"
    backend: str = "auto"
    device: str = "cpu"
    seconds: float = 8.0  # clip length, from `start` seconds into the bag
    start: float = 0.0
    fps: float = 5.0  # frames per second of bag time that are played (the rest are not sent)
    rate: float = 0.0  # 0: the next frame goes when the node answered the last; R > 0: R x bag time
    pngs: int = 4
    node_timeout: float = 600.0  # model loading (first run: ONNX export / engine build)
    frame_timeout: float = 120.0


@dataclass
class PlayedFrame:
    timestamp: int  # bag receive time (ns)
    stamp: int  # header stamp (ns)
    frame_id: str
    image: bytes  # serialized input message
    info: bytes | None  # serialized CameraInfo with the same stamp, when the bag has one
    published: float = 0.0  # time.monotonic()
    outputs: dict = field(default_factory=dict)  # output name -> (received monotonic, rclpy message)


# -- the clip -------------------------------------------------------------------------------------------------
def select_frames(bag: Path, seconds: float, fps: float, start: float) -> tuple[str, str, list[PlayedFrame]]:
    """(image topic, its type, frames) of the bag's one camera between start and start+seconds, at most `fps`
    frames per second of bag time; CameraInfo messages with the same stamp ride along."""
    if seconds <= 0 or fps <= 0 or start < 0:
        raise VLTSegError(f"--seconds {seconds}, --fps {fps}, --start {start} (expected seconds > 0, fps > 0, "
                          f"start >= 0)")
    reader = open_bag(bag)
    try:
        images = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        if len({c.topic for c in images}) != 1:
            raise VLTSegError(f"bag {bag} has image topics {sorted({c.topic for c in images})} (expected exactly "
                              f"one camera for the demo; use `vltseg replay --topics` for several)")
        topic, msgtype = images[0].topic, images[0].msgtype
        infos = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/CameraInfo"
                 and camera_namespace(c.topic) == camera_namespace(topic)]
        first = reader.start_time + int(start * 1e9)
        stop = first + int(seconds * 1e9)
        frames, info_by_stamp, next_due, period = [], {}, first, int(1e9 / fps)
        for conn, timestamp, data in reader.messages(connections=images + infos, start=first, stop=stop):
            header = TYPESTORE.deserialize_cdr(data, conn.msgtype).header
            if conn.msgtype == "sensor_msgs/msg/CameraInfo":
                info_by_stamp[stamp_ns(header)] = data
            elif timestamp >= next_due:
                frames.append(PlayedFrame(timestamp, stamp_ns(header), header.frame_id, data, None))
                next_due += period * ((timestamp - next_due) // period + 1)
        duration = reader.duration / 1e9
    finally:
        reader.close()
    if not frames:
        raise VLTSegError(f"no {topic} frame in bag {bag} between {start} s and {start + seconds} s "
                          f"(expected --start within the bag's {duration:.1f} s)")
    for frame in frames:
        frame.info = info_by_stamp.get(frame.stamp)
    return topic, msgtype, frames


# -- the node process -----------------------------------------------------------------------------------------
def node_command(opts: DemoOptions, namespace: str, transport: str, camera_info: bool) -> list[str]:
    """The real node (same Python environment) in evaluation mode, configured and activated at start-up."""
    params = {"model": opts.model, "backend": opts.backend, "device": opts.device, "mode": "evaluation",
              "transport": transport, "autostart": "true", "use_sim_time": "true",
              "use_camera_info": "true" if camera_info else "false", "diagnostics_period": str(DIAGNOSTICS_PERIOD)}
    cmd = [sys.executable, "-m", "vltseg_ros.node", "--ros-args", "-r", f"__ns:={namespace or '/'}"]
    for key, value in params.items():
        cmd += ["-p", f"{key}:={value}"]
    return cmd


def _tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return " | ".join(text[-lines:]) or "no output"


# -- playing and recording ------------------------------------------------------------------------------------
class Player:
    """An rclpy node that plays frames (with /clock) and records the segmentation node's answers."""

    def __init__(self, namespace: str, msgtype: str, frames: list[PlayedFrame]):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node("vltseg_demo_player", namespace=namespace or "/", context=self.context)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
        self.image_type = CompressedImage if msgtype == COMPRESSED else Image
        relative = "image/compressed" if msgtype == COMPRESSED else "image"
        self.image_pub = self.node.create_publisher(self.image_type, relative, reliable)
        self.info_pub = self.node.create_publisher(CameraInfo, "camera_info", reliable)
        self.clock_pub = self.node.create_publisher(Clock, "/clock", 10)
        self.clock_type = Clock
        self.by_stamp = {(f.stamp, f.frame_id): f for f in frames}
        self.unexpected = Counter()
        self.diagnostics: list = []
        self.node_prefix = f"{namespace.rstrip('/')}/{NODE_NAME}: "
        self.published = 0
        self.handled = 0  # frames the node reports as processed or skipped (bad input), from /diagnostics
        self.warm_outputs: set[str] = set()
        self.progress_at = time.monotonic()
        self.answered = threading.Condition()
        self.subs = [self.node.create_subscription(Image, f"segmentation/{name}", self._on_output(name), reliable)
                     for name in OUTPUTS]
        self.subs.append(self.node.create_subscription(CameraInfo, "segmentation/camera_info",
                                                       self._on_output("camera_info"), reliable))
        self.subs.append(self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_output(self, name: str):
        def callback(msg) -> None:
            received = time.monotonic()
            frame = self.by_stamp.get((msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec,
                                       msg.header.frame_id))
            with self.answered:
                if msg.header.frame_id == WARMUP_FRAME_ID:
                    self.warm_outputs.add(name)
                elif frame is None:
                    self.unexpected[name] += 1
                else:
                    frame.outputs[name] = (received, msg)
                self.progress_at = received
                self.answered.notify_all()
        return callback

    def _on_diagnostics(self, msg) -> None:
        with self.answered:
            self.diagnostics.append(msg)
            for status in msg.status:
                if (status.name.startswith(self.node_prefix) and not status.name.endswith(": model")
                        and not status.name.endswith(DOMAIN_SHIFT)):
                    values = {kv.key: kv.value for kv in status.values}
                    handled = sum(int(values.get(k, 0)) for k in ("processed", *SKIP_COUNTERS))
                    if handled > self.handled:
                        self.handled, self.progress_at = handled, time.monotonic()
            self.answered.notify_all()

    def wait_ready(self, process: subprocess.Popen, log: Path, timeout: float) -> float:
        """Wait until the node subscribed to the camera (it does when active) and its outputs reach us."""
        start = time.monotonic()
        with tqdm(desc="node start-up (loading the model)", bar_format="{desc}: {elapsed}", mininterval=1.0) as bar:
            while time.monotonic() - start < timeout:
                if process.poll() is not None:
                    raise VLTSegError(f"the segmentation node exited with code {process.returncode} during start-up "
                                      f"({_tail(log)}); full log: {log}")
                if self.image_pub.get_subscription_count() and all(s.get_publisher_count() for s in self.subs[:4]):
                    return time.monotonic() - start
                time.sleep(0.2)
                bar.update()
        raise VLTSegError(f"the segmentation node was not active after {timeout:.0f} s ({_tail(log)}); log: {log}")

    def publish(self, frame: PlayedFrame) -> None:
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import CameraInfo

        image = deserialize_message(frame.image, self.image_type)
        self.clock_pub.publish(self.clock_type(clock=image.header.stamp))
        if frame.info is not None:
            self.info_pub.publish(deserialize_message(frame.info, CameraInfo))
        with self.answered:
            self.published += 1
            frame.published = self.progress_at = time.monotonic()
        self.image_pub.publish(image)

    def warm_up(self, frame: PlayedFrame, timeout: float) -> int:
        """Send the clip's first image, marked as a warm-up frame, until the node has answered on every output:
        then discovery has matched both sides of every topic (nothing played later is lost to it) and the model
        has run once. Returns the number of warm-up frames sent."""
        from rclpy.serialization import deserialize_message

        image = deserialize_message(frame.image, self.image_type)
        image.header.frame_id = WARMUP_FRAME_ID
        deadline, sent = time.monotonic() + timeout, 0
        with self.answered:
            while set(OUTPUTS) - self.warm_outputs:
                if time.monotonic() > deadline:
                    raise VLTSegError(f"the segmentation node answered warm-up frames only on "
                                      f"{sorted(self.warm_outputs)} within {timeout:.0f} s (expected {list(OUTPUTS)})")
                if self.handled >= self.published:  # the node is done with what it got: send (another) one
                    self.clock_pub.publish(self.clock_type(clock=image.header.stamp))
                    self.image_pub.publish(image)
                    self.published, sent, self.progress_at = self.published + 1, sent + 1, time.monotonic()
                self.answered.wait(0.5)
        return sent

    def wait_for(self, frames: list[PlayedFrame], timeout: float) -> None:
        """Wait until every frame has all its outputs (the mask alone is not enough: the last frame's other
        outputs may still be in flight), or the node counted every frame sent as done and nothing arrived for
        ANSWER_GRACE seconds (a frame it skipped), or nothing at all happened for `timeout` seconds."""
        with self.answered:
            while not all(f.outputs.keys() >= set(OUTPUTS) for f in frames):
                idle = time.monotonic() - self.progress_at
                if (self.handled >= self.published and idle > ANSWER_GRACE) or idle > timeout:
                    return
                self.answered.wait(0.2)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


def play(player: Player, frames: list[PlayedFrame], rate: float, frame_timeout: float) -> None:
    """Lock-step (rate 0: each frame waits for the previous answer) or paced at `rate` x bag time."""
    start_wall, start_bag = time.monotonic(), frames[0].timestamp
    for i, frame in enumerate(tqdm(frames, desc="playing into the node", unit="frame")):
        if rate > 0:
            delay = (frame.timestamp - start_bag) / 1e9 / rate - (time.monotonic() - start_wall)
            if delay > 0:
                time.sleep(delay)
        player.publish(frame)
        if rate <= 0:
            player.wait_for([frame], frame_timeout)
    player.wait_for(frames, frame_timeout)


def stop_node(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


# -- what a person gets ---------------------------------------------------------------------------------------
def write_output_bag(path: Path, storage, topic: str, msgtype: str, namespace: str,
                     frames: list[PlayedFrame]) -> dict[str, int]:
    """The played input frames and every answer of the node, at the input's bag time; returns counts per topic."""
    from rclpy.serialization import serialize_message

    counts = Counter()
    prefix = f"{namespace}/segmentation/"
    with Writer(path, version=9, storage_plugin=storage) as writer:
        conns = {"image": writer.add_connection(topic, msgtype, typestore=TYPESTORE)}
        if any(f.info for f in frames):
            conns["info"] = writer.add_connection(f"{namespace}/camera_info", "sensor_msgs/msg/CameraInfo",
                                                  typestore=TYPESTORE)
        for name in OUTPUTS:
            conns[name] = writer.add_connection(prefix + name, IMAGE, typestore=TYPESTORE)
        conns["camera_info"] = writer.add_connection(prefix + "camera_info", "sensor_msgs/msg/CameraInfo",
                                                     typestore=TYPESTORE)
        for frame in frames:
            writer.write(conns["image"], frame.timestamp, frame.image)
            counts[topic] += 1
            if frame.info is not None:
                writer.write(conns["info"], frame.timestamp, frame.info)
            for name, (_, msg) in frame.outputs.items():
                writer.write(conns[name], frame.timestamp, serialize_message(msg))
                counts[prefix + name] += 1
    return dict(counts)


def image_array(msg) -> np.ndarray:
    """An rclpy mono8/rgb8 Image from the node -> numpy, via the node's own conversions."""
    from vltseg_ros.image_conversions import image_to_rgb

    if msg.encoding == "mono8":
        return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width]
    return image_to_rgb(msg, msg.width * msg.height)


def node_diagnostics(messages: list, namespace: str) -> dict:
    """The node's own view from its last /diagnostics: identity, counters, and per-stage latency (the median of
    the per-period means it reported while frames were processed)."""
    model, camera, stages = {}, {}, {}
    node = f"{namespace}/{NODE_NAME}".replace("//", "/")
    for array in messages:
        for status in array.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name == f"{node}: model":
                model = {k: v for k, v in values.items() if not k.startswith("latency_ms/")}
                for key, value in values.items():
                    if key.startswith("latency_ms/") and value != "nan":
                        stages.setdefault(key.split("/", 1)[1], []).append(float(value))
            elif status.name.startswith(f"{node}: ") and not status.name.endswith(DOMAIN_SHIFT):
                camera = {k: v for k, v in values.items() if k in ("received", "processed", "dropped",
                                                                   *SKIP_COUNTERS)}
    return {"identity": model, "counters": {k: int(v) for k, v in camera.items()},
            "stage_latency_ms_median_of_period_means": {k: float(np.median(v)) for k, v in stages.items()}}


def run_demo(opts: DemoOptions) -> dict:
    """Play the clip into the real node, record its answers, write the report; returns the report."""
    from vltseg_ros.demo_bag import prepare_demo_bag

    if opts.pngs < 0 or opts.rate < 0:
        raise VLTSegError(f"--pngs {opts.pngs}, --rate {opts.rate} (expected both >= 0)")
    bag = Path(opts.bag) if opts.bag else prepare_demo_bag()
    topic, msgtype, frames = select_frames(bag, opts.seconds, opts.fps, opts.start)
    namespace = camera_namespace(topic)
    out = Path(opts.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=False)
    log = out / "node.log"
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # the demo's graph stays on this host
    cmd = node_command(opts, namespace, "compressed" if msgtype == COMPRESSED else "raw",
                       any(f.info for f in frames))
    print(f"[demo] {len(frames)} frames of {topic} from {bag} -> the segmentation node (model {opts.model})")
    with open(log, "w") as log_file:
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy())
    player = None
    try:
        player = Player(namespace, msgtype, frames)
        startup_s = player.wait_ready(process, log, opts.node_timeout)
        warm_up_frames = player.warm_up(frames[0], opts.node_timeout)
        play(player, frames, opts.rate, opts.frame_timeout)
        answers = [f.outputs["mask"][0] for f in frames if "mask" in f.outputs]
        wall = (max(answers) if answers else time.monotonic()) - frames[0].published
        time.sleep(2.5 * DIAGNOSTICS_PERIOD)  # a last /diagnostics that counts every frame
    finally:
        if player is not None:
            player.close()
        node_rc = stop_node(process)
    return _write_outputs(opts, bag, out, topic, msgtype, namespace, frames, player,
                          {"command": shlex.join(cmd), "startup_s": startup_s, "warm_up_frames": warm_up_frames,
                           "exit_code": node_rc, "log": str(log)},
                          wall)


def _write_outputs(opts: DemoOptions, bag: Path, out: Path, topic: str, msgtype: str, namespace: str,
                   frames: list[PlayedFrame], player: Player, node: dict, wall: float) -> dict:
    counts = write_output_bag(out / "bag", storage_of(bag), topic, msgtype, namespace, frames)
    answered = [f for f in frames if "mask" in f.outputs]
    same_header = sum(all((m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec, m.header.frame_id)
                          == (f.stamp, f.frame_id) for _, m in f.outputs.values()) for f in answered)
    overlays = [f for f in frames if "overlay" in f.outputs]
    fps = opts.fps if opts.rate <= 0 else opts.fps * opts.rate
    sink = VideoSink(out, fps)
    for frame in overlays:
        sink.add(topic, image_array(frame.outputs["overlay"][1]))
    videos = sink.close()
    diag = node_diagnostics(player.diagnostics, namespace)
    table = _class_table(diag["identity"])
    pngs = []
    for k in np.unique(np.linspace(0, len(overlays) - 1, min(opts.pngs, len(overlays))).round().astype(int)):
        path = out / f"overlay_{k:04d}.png"
        image = image_array(overlays[k].outputs["overlay"][1])
        if table is not None and "mask" in overlays[k].outputs:
            image = with_legend(image, image_array(overlays[k].outputs["mask"][1]), table)
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        pngs.append(path)
    shares = Counter()
    for frame in answered:
        labels = image_array(frame.outputs["mask"][1])
        shares.update(dict(zip(*np.unique(labels, return_counts=True))))
    class_names = dict(enumerate(table.names)) if table is not None else {}
    total_px = sum(shares.values()) or 1
    latencies = {"end_to_end": [f.outputs["mask"][0] - f.published for f in answered]}
    skipped = sum(diag["counters"].get(k, 0) for k in SKIP_COUNTERS)  # frames the node counted and did not segment
    report = {
        "bag": str(bag), "topic": topic,
        "clip": {"start_s": opts.start, "seconds": opts.seconds, "fps": opts.fps,
                 "pacing": "lock-step" if opts.rate <= 0 else f"{opts.rate}x bag time"},
        "frames": {"played": len(frames), "segmented": len(answered), "skipped_by_node": skipped,
                   "lost": len(frames) - len(answered) - skipped,
                   "outputs_with_input_header": same_header,
                   "per_output": {name: sum(name in f.outputs for f in frames) for name in (*OUTPUTS, "camera_info")},
                   "unexpected_outputs": dict(player.unexpected)},
        "node": {**node, **diag},
        "latency_ms": {"end_to_end": percentiles(latencies["end_to_end"])},
        "throughput_fps": len(answered) / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "class_pixel_share_percent": {class_names.get(int(k), str(k)): round(100.0 * v / total_px, 2)
                                      for k, v in shares.most_common()},
        "files": {"output_bag": str(out / "bag"), "bag_topics": counts, "video": [str(v) for v in videos],
                  "overlay_pngs": [str(p) for p in pngs], "report_json": str(out / "report.json"),
                  "report_md": str(out / "report.md"), "latency_histogram": str(out / "latency_histogram.png")},
    }
    if answered:
        latency_histogram({"total": latencies["end_to_end"]}, out / "latency_histogram.png")
    else:
        del report["files"]["latency_histogram"]
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(demo_markdown(report))
    return report


def _class_table(identity: dict):
    """The node's class table (named in its diagnostics), for names and colours in the report and PNGs."""
    from vltseg_core.classes import load_class_table

    try:
        return load_class_table(identity.get("class_table") or "cityscapes")
    except VLTSegError:
        return None


def with_legend(image: np.ndarray, labels: np.ndarray, table, min_share: float = 0.005) -> np.ndarray:
    """The image with a strip below it naming the colours of the classes in this frame, largest first."""
    ids, counts = np.unique(labels, return_counts=True)
    present = [int(i) for c, i in sorted(zip(counts, ids), reverse=True)
               if i < table.num_classes and c >= min_share * labels.size]
    strip = np.full((28, image.shape[1], 3), 255, np.uint8)
    x = 6
    for class_id in present:
        name = table.names[class_id]
        (width, _), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        if x + 20 + width > strip.shape[1]:
            break
        strip[6:22, x : x + 16] = table.colors[class_id]
        cv2.putText(strip, name, (x + 20, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        x += 20 + width + 14
    return np.vstack([image, strip])


def demo_markdown(report: dict) -> str:
    f, node = report["frames"], report["node"]
    e2e = report["latency_ms"]["end_to_end"]
    lines = [f"# VLTSeg demo on `{report['topic']}`", "",
             f"Bag: `{report['bag']}`, clip {report['clip']['seconds']} s from {report['clip']['start_s']} s at "
             f"{report['clip']['fps']} frames/s, {report['clip']['pacing']}.", "",
             f"Node: `{node['command']}` (ready after {node['startup_s']:.1f} s; log `{node['log']}`).", "",
             f"Model: `{json.dumps(node['identity'])}`", "",
             f"Frames: {f['played']} played, {f['segmented']} segmented, {f['skipped_by_node']} skipped by the node "
             f"(bad input or a failed batch), {f['lost']} lost; "
             f"{f['outputs_with_input_header']} answers carry exactly the input header. "
             f"Throughput {report['throughput_fps']:.2f} frames/s.", ""]
    if e2e.get("n"):
        lines += [f"Latency publish -> mask received: p50 {e2e['p50']:.0f} ms, p95 {e2e['p95']:.0f} ms, "
                  f"p99 {e2e['p99']:.0f} ms.", ""]
    if node["stage_latency_ms_median_of_period_means"]:
        lines += ["| node stage | ms |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.1f} |" for k, v in node["stage_latency_ms_median_of_period_means"].items()] + [""]
    if node["counters"]:
        lines += [f"Node counters (including {node['warm_up_frames']} warm-up frame(s) sent before the clip): "
                  + ", ".join(f"{k} {v}" for k, v in node["counters"].items()) + ".", ""]
    top = list(report["class_pixel_share_percent"].items())[:8]
    if top:
        lines += ["What the model sees (share of pixels): " + ", ".join(f"{k} {v:.1f}%" for k, v in top) + ".", ""]
    lines += ["Files:", ""]
    for key, value in report["files"].items():
        if key != "bag_topics":
            lines.append(f"- {key}: " + ", ".join(f"`{v}`" for v in (value if isinstance(value, list) else [value])))
    return "\n".join(lines) + "\n"
