"""The ROS layers of `vltseg bench`: the node end to end (real rclpy, two processes) and replay throughput.

Node: the segmentation node runs in its own process in evaluation mode (reliable, nothing dropped); this process
publishes one frame at a time and waits for its mask, so per-frame latency = mask receive time - publish time on
one clock, and it includes serialisation, transport both ways and the node's own conversion work.

Node live: the node in live mode under a camera publishing faster than the model (at least twice its one-at-a-time
rate, and at least LIVE_CAMERA_MIN_HZ): frames/s processed, age of each published mask (its frame's publish ->
mask receive) and the frames dropped (latest frame wins), next to its one-at-a-time latency.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vltseg_core.bench import (BenchSetup, LayerResult, peak_memory, read_peak_rss_mib, reset_peak_rss,
                               test_frame)
from vltseg_core.errors import VLTSegError
from vltseg_ros.image_conversions import array_to_image

NODE_START_TIMEOUT_S = 600.0  # the node loads (or exports/builds) the model before its first mask
FRAME_TIMEOUT_S = 300.0  # one frame through a large model on a busy CPU
DIAGNOSTICS_PERIOD_S = 1.0
REPLAY_TOPIC = "/camera/image"
REPLAY_START_NS = 1_700_000_000_000_000_000
LIVE_CAMERA_MIN_HZ = 30.0  # a vehicle camera's rate


def _image_msg(frame: np.ndarray, stamp_ns: int):
    """An rgb8 Image whose stamp identifies the frame (the node copies the header onto the mask)."""
    from std_msgs.msg import Header

    header = Header(frame_id="bench_camera")
    header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return array_to_image(frame, "rgb8", header)


class _NodeStages:
    """The node's own per-stage means from /diagnostics, weighted by the frames each period processed: where the
    node's time goes (decode, preprocess, inference, postprocess, publish, receive -> publish)."""

    def __init__(self, node_name: str):
        self.node_name = node_name
        self.periods: list[tuple[int, dict[str, float]]] = []
        self.last_processed: int | None = None
        self.messages = 0
        self.recording = False

    def on_message(self, msg) -> None:
        statuses = {status.name: {kv.key: kv.value for kv in status.values} for status in msg.status}
        model = statuses.get(f"{self.node_name}: model")
        camera = next((v for k, v in statuses.items() if k.startswith(self.node_name) and "processed" in v), None)
        if model is None or camera is None:
            return
        self.messages += 1
        processed = int(camera["processed"])
        frames = processed - (self.last_processed if self.last_processed is not None else processed)
        self.last_processed = processed
        values = {key.removeprefix("latency_ms/"): float(value) for key, value in model.items()
                  if key.startswith("latency_ms/")}
        values["receive_to_publish"] = float(camera["receive_to_publish_ms_mean"])
        if self.recording and frames:
            self.periods.append((frames, values))

    def start(self) -> None:
        self.periods, self.recording = [], True

    def frames(self) -> int:
        return sum(n for n, _ in self.periods)

    def means_ms(self) -> dict[str, float]:
        """Frame-weighted mean of each stage over the periods that report it (a period without a stage, or with
        a non-finite value, counts neither in the sum nor in the weight)."""
        self.recording = False
        means = {}
        for key in sorted({key for _, values in self.periods for key in values}):
            found = [(n, values[key]) for n, values in self.periods if np.isfinite(values.get(key, np.nan))]
            weight = sum(n for n, _ in found)
            if weight:
                means[key] = sum(n * v for n, v in found) / weight
        return means


class _NodeProcess:
    """The segmentation node in a child process under a private namespace, its output kept in a log file."""

    def __init__(self, setup: BenchSetup, namespace: str, log_dir: Path, mode: str = "evaluation"):
        self.log_path = log_dir / "segmentation_node.log"
        params = {"model": setup.model, "backend": setup.backend, "device": setup.device,
                  "precision": setup.precision, "mode": mode, "autostart": "true",
                  "diagnostics_period": DIAGNOSTICS_PERIOD_S}
        cmd = [sys.executable, "-c", "from vltseg_ros.node import main; main()", "--ros-args",
               "-r", f"__ns:={namespace}"]
        for name, value in params.items():
            cmd += ["-p", f"{name}:={value}"]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text().strip().splitlines()[-1:] or ["no output"]
            raise VLTSegError(f"the segmentation node exited with code {self.proc.returncode} during the benchmark: "
                              f"{tail[0]} (full log: {self.log_path})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass
class _Client:
    """This process's side of a node benchmark: a publisher on the node's image topic and the receive time of every
    mask, by the stamp of its frame."""
    namespace: str
    node_proc: _NodeProcess
    node: Any
    executor: Any
    publisher: Any
    received: dict[int, float] = field(default_factory=dict)


@contextmanager
def _node_client(setup: BenchSetup, name: str, mode: str, depth: int) -> Iterator[_Client]:
    """The node process (`mode`) under a private namespace and an rclpy client of it in its own context, both
    stopped afterwards."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    namespace = f"/{name}_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix=f"{name}_") as tmp:
        node_proc = _NodeProcess(setup, namespace, Path(tmp), mode=mode)
        context = rclpy.Context()
        rclpy.init(context=context)
        try:
            node = rclpy.create_node(name, namespace=namespace, context=context)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
            client = _Client(namespace, node_proc, node, executor, node.create_publisher(Image, "image", qos))

            def on_mask(msg: Image) -> None:
                client.received[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = time.perf_counter()

            node.create_subscription(Image, "segmentation/mask", on_mask, qos)
            yield client
            executor.shutdown()
            node.destroy_node()
        finally:
            rclpy.try_shutdown(context=context)
            node_proc.stop()


def _predict_seconds(predictor, frame: np.ndarray) -> float:
    start = time.perf_counter()
    predictor.predict(frame)
    return time.perf_counter() - start


def bench_node(setup: BenchSetup, sizes: list[tuple[int, int]]) -> list[LayerResult]:
    """Publish a frame, wait for its mask from the node process, then one bare predictor frame in this process (on
    the inference worker thread), repeat; one node process for all sizes. The interleaved predictor frames see the
    machine's load as the node's frames do: the node target is judged on them."""
    from diagnostic_msgs.msg import DiagnosticArray

    results = []
    with _node_client(setup, "vltseg_bench", "evaluation", depth=5) as client:
        namespace, node_proc, node, executor = client.namespace, client.node_proc, client.node, client.executor
        publisher, received = client.publisher, client.received
        stages = _NodeStages(f"{namespace}/segmentation_node")
        node.create_subscription(DiagnosticArray, "/diagnostics", stages.on_message, 10)

        def send(frame: np.ndarray, timeout: float, resend_every: float | None = None) -> float:
            """Seconds from publish to this frame's mask (the frame is re-sent while the node starts up)."""
            stamp = time.time_ns()
            msg = _image_msg(frame, stamp)
            deadline = time.monotonic() + timeout
            sent = time.perf_counter()
            publisher.publish(msg)
            while stamp not in received:
                executor.spin_once(timeout_sec=0.05)
                node_proc.check_alive()
                if time.monotonic() > deadline:
                    raise VLTSegError(f"no mask on {namespace}/segmentation/mask within {timeout:.0f} s of "
                                      f"publishing a {frame.shape[1]}x{frame.shape[0]} frame on {namespace}/image "
                                      f"(node log: {node_proc.log_path})")
                if resend_every and time.perf_counter() - sent > resend_every:
                    sent = time.perf_counter()
                    publisher.publish(msg)
            return received.pop(stamp) - sent

        def spin_until(done: Callable[[], bool], timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while not done() and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=0.05)

        # first frame: wait for the node to configure, activate and match our topics
        send(test_frame(sizes[0]), NODE_START_TIMEOUT_S, resend_every=2.0)
        for size in sizes:
            frame = test_frame(size)
            reset_peak_rss(node_proc.proc.pid)
            for _ in range(setup.warmup):
                send(frame, FRAME_TIMEOUT_S)
                setup.tick()
            # diagnostics periods from the next one on hold measured frames only; wait for the one holding
            # the last measured frame afterwards
            seen = stages.messages
            spin_until(lambda: stages.messages > seen, 3 * DIAGNOSTICS_PERIOD_S)
            stages.start()
            times, interleaved = [], []
            for _ in range(setup.iters):
                times.append(send(frame, FRAME_TIMEOUT_S))
                interleaved.append(setup.in_worker(_predict_seconds, setup.predictor, frame))
                setup.tick()
            spin_until(lambda: stages.frames() >= setup.iters, 3 * DIAGNOSTICS_PERIOD_S)
            results.append(LayerResult("node", setup.backend, size, times, len(times) / sum(times),
                                       read_peak_rss_mib(node_proc.proc.pid),
                                       details={"peak_rss_of": "segmentation node process",
                                                "node_stage_mean_ms": stages.means_ms(),
                                                "node_stage_frames": stages.frames(),
                                                "predictor_interleaved_ms": [t * 1e3 for t in interleaved]}))
    return results


def bench_node_live(setup: BenchSetup, sizes: list[tuple[int, int]]) -> list[LayerResult]:
    """Per size: `warmup` frames one at a time (the model's pace), then a camera at max(LIVE_CAMERA_MIN_HZ, twice
    that pace) for `iters` model periods; one live-mode node process for all sizes."""
    results = []
    with _node_client(setup, "vltseg_bench_live", "live", depth=1) as client:
        namespace, node_proc, executor = client.namespace, client.node_proc, client.executor
        publisher, received = client.publisher, client.received
        sent: dict[int, float] = {}  # stamp -> publish time (perf_counter)

        def publish(frame: np.ndarray) -> int:
            stamp = time.time_ns()
            sent[stamp] = time.perf_counter()
            publisher.publish(_image_msg(frame, stamp))
            return stamp

        def spin_until(done: Callable[[], bool], timeout: float, what: str) -> None:
            deadline = time.monotonic() + timeout
            while not done():
                executor.spin_once(timeout_sec=0.01)
                node_proc.check_alive()
                if time.monotonic() > deadline:
                    raise VLTSegError(f"no mask on {namespace}/segmentation/mask within {timeout:.0f} s ({what}; "
                                      f"node log: {node_proc.log_path})")

        deadline = time.monotonic() + NODE_START_TIMEOUT_S  # start-up: re-publish until the first mask
        while not received:
            publish(test_frame(sizes[0]))
            resend = time.monotonic() + 2.0
            while not received and time.monotonic() < resend:
                executor.spin_once(timeout_sec=0.05)
                node_proc.check_alive()
            if not received and time.monotonic() > deadline:
                raise VLTSegError(f"no mask on {namespace}/segmentation/mask within {NODE_START_TIMEOUT_S:.0f} s "
                                  f"of start-up (node log: {node_proc.log_path})")
        for size in sizes:
            frame = test_frame(size)
            one_at_a_time = []
            for _ in range(max(1, setup.warmup)):
                stamp = publish(frame)
                spin_until(lambda: stamp in received, FRAME_TIMEOUT_S, "one frame at a time")
                one_at_a_time.append(received[stamp] - sent[stamp])
                setup.tick()
            pace = float(np.median(one_at_a_time))
            camera_hz = max(LIVE_CAMERA_MIN_HZ, 2.0 / pace)
            sent.clear()
            received.clear()
            reset_peak_rss(node_proc.proc.pid)
            start = next_frame = time.perf_counter()
            while (now := time.perf_counter()) < start + max(1.0, setup.iters * pace):
                if now >= next_frame:
                    publish(frame)
                    next_frame += 1.0 / camera_hz
                executor.spin_once(timeout_sec=max(0.0, min(next_frame - time.perf_counter(), 0.01)))
                node_proc.check_alive()
            end = time.perf_counter()
            in_window = sum(1 for t in received.values() if t <= end)
            last = max(sent)
            settle = time.monotonic() + 2 * pace + 1.0  # the frame in flight at the end still comes back
            while time.monotonic() < settle and last not in received:
                executor.spin_once(timeout_sec=0.01)
            ages = [received[s] - sent[s] for s in sorted(sent) if s in received]
            for _ in range(setup.iters):
                setup.tick()
            results.append(LayerResult("node-live", setup.backend, size, ages, in_window / (end - start),
                                       read_peak_rss_mib(node_proc.proc.pid),
                                       details={"peak_rss_of": "segmentation node process (live mode)",
                                                "camera_hz": camera_hz, "window_s": end - start,
                                                "published": len(sent), "processed": len(ages),
                                                "dropped": len(sent) - len(ages),
                                                "one_at_a_time_ms": [t * 1e3 for t in one_at_a_time]}))
    return results


def write_frames_bag(bag: Path, frame: np.ndarray, count: int, topic: str = REPLAY_TOPIC) -> Path:
    """A rosbag2 of `count` raw rgb8 copies of `frame` at 10 Hz: replay's input, generated (nothing to fetch)."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    image_t, header_t = store.types["sensor_msgs/msg/Image"], store.types["std_msgs/msg/Header"]
    time_t = store.types["builtin_interfaces/msg/Time"]
    data = np.ascontiguousarray(frame).ravel()
    with Writer(bag, version=9) as writer:
        conn = writer.add_connection(topic, image_t.__msgtype__, typestore=store)
        for i in range(count):
            stamp = REPLAY_START_NS + i * 100_000_000
            header = header_t(stamp=time_t(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="bench_camera")
            msg = image_t(header=header, height=frame.shape[0], width=frame.shape[1], encoding="rgb8",
                          is_bigendian=0, step=frame.shape[1] * 3, data=data)
            writer.write(conn, stamp, store.serialize_cdr(msg, image_t.__msgtype__))
    return bag


def bench_replay(setup: BenchSetup, sizes: list[tuple[int, int]]) -> list[LayerResult]:
    """`vltseg replay` (vltseg_ros.replay.replay with the same predictor) over a generated bag of `iters` frames,
    after a warm-up replay of `warmup` frames; throughput is replay's own (processed frames / wall time)."""
    from vltseg_ros.replay import replay

    results = []
    with tempfile.TemporaryDirectory(prefix="vltseg_bench_replay_") as tmp:
        for size in sizes:
            frame = test_frame(size)
            root = Path(tmp) / f"{size[0]}x{size[1]}"
            if setup.warmup:
                replay(write_frames_bag(root / "warmup_in", frame, setup.warmup), setup.predictor, root / "warmup")
                for _ in range(setup.warmup):
                    setup.tick()
            bag = write_frames_bag(root / "in", frame, setup.iters)
            with peak_memory(setup.device) as peak:
                start = time.perf_counter()
                report = replay(bag, setup.predictor, root / "out")
                wall = time.perf_counter() - start
            for _ in range(setup.iters):
                setup.tick()
            total = report["latency_ms"]["total"]
            results.append(LayerResult("replay", setup.backend, size, [], report["throughput_fps"],
                                       peak["rss_mib"], peak["cuda_mib"],
                                       details={"median_ms": total["p50"], "p95_ms": total["p95"],
                                                "frames": report["frames"]["processed"],
                                                "call_wall_s": wall,  # incl. opening the bag and writing the report
                                                "stage_median_ms": {stage: v["p50"] for stage, v in
                                                                    report["latency_ms"].items() if v.get("n")}}))
    return results
