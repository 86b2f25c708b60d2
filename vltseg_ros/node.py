"""SegmentationNode: a thin rclpy lifecycle node over vltseg_core's Predictor.

Callbacks only queue messages; one worker thread decodes, infers (frames of several cameras waiting together go
as one batch) and publishes, so the executor never blocks. Live mode keeps the latest frame per camera (older
ones are counted as dropped); evaluation mode keeps every frame. Bad frames are skipped with a throttled warning
and a counter; the node never dies on input. Runs unchanged on Humble, Jazzy and Kilted (only APIs common to all).
"""
from __future__ import annotations

import copy
import gc
import json
import logging
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from vltseg_core.domain_shift import frame_record, load_references
from vltseg_core.errors import VLTSegError
from vltseg_core.visualize import confidence_mono8, overlay
from vltseg_ros.diagnostics import NodeStats, diagnostics_message
from vltseg_ros.image_conversions import array_to_image, compressed_to_rgb, image_to_rgb
from vltseg_ros.label_info import LATCHED, label_info_message, label_info_type
from vltseg_ros.params import MODES, OUTPUT_PARAMS, PARAMS, TRANSPORTS, descriptor

if TYPE_CHECKING:  # importing the predictor loads torch: only in configure
    from vltseg_core.predictor import Prediction

OUTPUTS = ("mask", "color", "confidence", "overlay")
SHIFT = "domain_shift"  # std_msgs/String JSON per frame (docs/ros.md, "Domain shift")
LIVE_INPUT = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                        durability=DurabilityPolicy.VOLATILE)
EVALUATION_INPUT = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE)
# Reliable publishers match best-effort and reliable subscribers alike; keep-all so a slow recorder of an
# evaluation loses nothing.
LIVE_OUTPUT = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
EVALUATION_OUTPUT = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
# The `qos_overrides.<input topic>.subscription.*` parameters each input declares (docs/ros.md);
# QoSOverridingOptions.with_default_policies() would leave out durability.
INPUT_QOS_OVERRIDES = (QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH, QoSPolicyKind.RELIABILITY,
                       QoSPolicyKind.DURABILITY)


@dataclass
class Frame:
    camera: Camera
    msg: Image | CompressedImage
    received: float  # time.monotonic()
    counted: bool = False  # in exactly one counter (processed, skipped, unwatched...) once handled


@dataclass
class Camera:
    """One camera's topics, queue and latest camera_info; `name` is its namespace ('' = the node's own)."""
    name: str
    input_topic: str  # fully resolved; also the key of its counters
    pending: deque
    publishers: dict = field(default_factory=dict)
    subscriptions: list = field(default_factory=list)
    camera_info: CameraInfo | None = None

    def topic(self, relative: str) -> str:
        return f"{self.name}/{relative}" if self.name else relative


class SegmentationNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("segmentation_node", **kwargs)
        for spec in PARAMS:
            self.declare_parameter(spec.name, spec.default, descriptor(spec))
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._predictor = None
        self._table = None
        self._cameras: list[Camera] = []
        self._next_camera = 0  # index of the camera the next batch starts with (round robin)
        self._label_pub = None
        self._diag_pub = None
        self._diag_timer = None
        self._stats = NodeStats()

    def _param(self, name: str):
        return self.get_parameter(name).value

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # noqa: BLE001 - rclpy would swallow it without a word
            self.get_logger().error(f"configure failed: {_reason(exc)}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        from vltseg_core.classes import load_class_table
        from vltseg_core.predictor import load_predictor

        mode, transport = self._param("mode"), self._param("transport")
        if mode not in MODES:
            raise VLTSegError(f"parameter mode='{mode}' is not one of {MODES}")
        if transport not in TRANSPORTS:
            raise VLTSegError(f"parameter transport='{transport}' is not one of {TRANSPORTS}")
        names = [n.strip("/") for n in self._param("cameras")]
        if not names or len(set(names)) != len(names):
            raise VLTSegError(f"parameter cameras={names} must list distinct camera namespaces (expected e.g. "
                              "['front', 'rear'], or [''] for one camera on the node's own topics)")
        model = self._param("model")
        self.get_logger().info(f"loading model '{model}' (backend {self._param('backend')}, device "
                               f"{self._param('device')}, {self._param('precision')}) ...")
        start = time.monotonic()
        self._predictor = load_predictor(model, backend=self._param("backend"), device=self._param("device"),
                                         precision=self._param("precision"),
                                         mode=self._param("inference_mode") or None)
        self._table = self._predictor.class_table
        if self._param("class_table"):
            table = load_class_table(self._param("class_table"))
            if table.num_classes != self._table.num_classes:
                raise VLTSegError(f"parameter class_table='{self._param('class_table')}' has {table.num_classes} "
                                  f"classes but model '{model}' predicts {self._table.num_classes}")
            self._table = table
        identity = self._predictor.identity()
        self.get_logger().info(f"model ready in {time.monotonic() - start:.1f} s: {identity}")
        self._stats = NodeStats(identity=identity, mode=mode, state="inactive", references=load_references(model))

        output_qos = LIVE_OUTPUT if mode == "live" else EVALUATION_OUTPUT
        self._cameras, self._next_camera = [], 0
        for name in names:
            cam = Camera(name, "", deque(maxlen=1) if mode == "live" else deque())
            cam.input_topic = self.resolve_topic_name(cam.topic("image" if transport == "raw" else "image/compressed"))
            for out in OUTPUTS:
                cam.publishers[out] = self.create_publisher(Image, cam.topic(f"segmentation/{out}"), output_qos)
            cam.publishers[SHIFT] = self.create_publisher(String, cam.topic(f"segmentation/{SHIFT}"), output_qos)
            cam.publishers["camera_info"] = self.create_publisher(CameraInfo, cam.topic("segmentation/camera_info"),
                                                                  output_qos)
            self._stats.add_camera(cam.input_topic)
            self._cameras.append(cam)

        self._label_pub = self.create_publisher(label_info_type(), "segmentation/label_info", LATCHED)
        self._label_pub.publish(label_info_message(self._table, self.get_clock().now().to_msg()))
        class_names = Parameter("class_names", Parameter.Type.STRING_ARRAY, list(self._table.names))
        if self.has_parameter("class_names"):
            self.set_parameters([class_names])  # a re-configure may have loaded another model
        else:
            self.declare_parameter("class_names", class_names.value, descriptor(OUTPUT_PARAMS[0]))

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(self._param("diagnostics_period"), self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._subscribe()
        except Exception as exc:  # noqa: BLE001 - e.g. a bad qos_overrides parameter; rclpy would say nothing
            self.get_logger().error(f"activate failed: {_reason(exc)}")
            self._stop_processing()
            return TransitionCallbackReturn.FAILURE
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="segmentation-worker", daemon=True)
        self._worker.start()
        self._stats.state = "active"
        self.get_logger().info(f"active: {len(self._cameras)} camera(s), {self._param('mode')} mode, "
                               f"{self._param('transport')} transport")
        return TransitionCallbackReturn.SUCCESS

    def _subscribe(self) -> None:
        live = self._param("mode") == "live"
        msg_type = Image if self._param("transport") == "raw" else CompressedImage
        for cam in self._cameras:
            # qos_overrides.<topic>.subscription.* parameters can change the mode's default (e.g. reliable live
            # input for large frames between processes, docs/ros.md). rclpy writes the overrides into the profile
            # it is given, so each subscription gets its own copy (else one camera's override leaks to the next).
            cam.subscriptions.append(self.create_subscription(
                msg_type, cam.input_topic, self._on_image(cam), copy.copy(LIVE_INPUT if live else EVALUATION_INPUT),
                qos_overriding_options=QoSOverridingOptions(INPUT_QOS_OVERRIDES)))
            if self._param("use_camera_info"):
                cam.subscriptions.append(self.create_subscription(
                    CameraInfo, cam.topic("camera_info"), self._on_camera_info(cam),
                    copy.copy(LIVE_INPUT) if live else 10))

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised (rclpy logs nothing): free everything and go back to unconfigured."""
        self.get_logger().error(f"transition from '{state.label}' raised; model released, node unconfigured")
        self._stop_processing()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_processing(self) -> None:
        """Unsubscribe, let the worker finish its current batch, forget queued frames."""
        for cam in self._cameras:
            for sub in cam.subscriptions:
                self.destroy_subscription(sub)
            cam.subscriptions.clear()
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        for cam in self._cameras:
            cam.pending.clear()
        self._stats.state = "inactive"

    def _release(self) -> None:
        """Drop publishers and the model; free GPU memory so another model can be configured."""
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        for pub in [p for cam in self._cameras for p in cam.publishers.values()] + [self._label_pub, self._diag_pub]:
            if pub is not None:
                self.destroy_publisher(pub)
        self._cameras, self._label_pub, self._diag_pub, self._diag_timer = [], None, None, None
        self._predictor = self._table = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._stats.state = "unconfigured"

    # ---- callbacks: queue only -------------------------------------------------------------------------------
    def _on_image(self, cam: Camera):
        def callback(msg) -> None:
            with self._lock:
                if cam.pending.maxlen is not None and len(cam.pending) == cam.pending.maxlen:
                    self._stats.camera(cam.input_topic).dropped += 1
                cam.pending.append(Frame(cam, msg, time.monotonic()))
                self._stats.camera(cam.input_topic).received += 1
                self._lock.notify()
        return callback

    def _on_camera_info(self, cam: Camera):
        def callback(msg: CameraInfo) -> None:
            cam.camera_info = msg
        return callback

    # ---- worker ----------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while not self._stop.is_set() and not any(cam.pending for cam in self._cameras):
                    self._lock.wait(0.5)
                batch = self._take_batch(self._param("max_batch_size"))
            if batch and not self._stop.is_set():
                try:
                    self._process(batch)
                except Exception as exc:  # noqa: BLE001 - one failing batch must not end processing for good
                    self._stats.errors += 1
                    failed = [frame for frame in batch if not frame.counted]
                    for frame in failed:
                        self._count(frame, "skipped_error")
                    self.get_logger().error(f"{len(failed)} frame(s) skipped: {_reason(exc)}",
                                            throttle_duration_sec=max(self._param("warn_throttle"), 1e-3))

    def _take_batch(self, limit: int) -> list[Frame]:
        """The oldest waiting frame of up to `limit` cameras (caller holds the lock). Each batch starts after the
        last camera served, so with more cameras than `limit` none starves and no frame is taken and lost."""
        batch: list[Frame] = []
        count = len(self._cameras)
        for step in range(count):
            index = (self._next_camera + step) % count
            if len(batch) < limit and self._cameras[index].pending:
                batch.append(self._cameras[index].pending.popleft())
                self._next_camera = (index + 1) % count
        return batch

    def _count(self, frame: Frame, counter: str) -> None:
        """Count a handled frame in exactly one counter, so per camera received = processed + dropped + skipped +
        skipped_error + unwatched once its queue is empty."""
        stats = self._stats.camera(frame.camera.input_topic)
        setattr(stats, counter, getattr(stats, counter) + 1)
        frame.counted = True

    def _wanted(self, cam: Camera) -> set[str]:
        return {out for out in (*OUTPUTS, SHIFT) if cam.publishers[out].get_subscription_count() > 0}

    def _warn(self, text: str) -> None:
        self.get_logger().warning(text, throttle_duration_sec=max(self._param("warn_throttle"), 1e-3))

    def _process(self, batch: list[Frame]) -> None:
        live = self._param("mode") == "live"
        decoded: list[tuple[Frame, np.ndarray]] = []
        for frame in batch:
            if live and not self._wanted(frame.camera):
                self._count(frame, "unwatched")  # lazy: nobody listens, so no decode and no inference
                continue
            start = time.monotonic()
            try:
                convert = compressed_to_rgb if isinstance(frame.msg, CompressedImage) else image_to_rgb
                rgb = convert(frame.msg, self._param("max_image_pixels"), frame.camera.input_topic)
            except VLTSegError as exc:
                self._count(frame, "skipped")
                self._warn(f"skipped frame: {exc}")
                continue
            self._stats.stage("decode", time.monotonic() - start)
            decoded.append((frame, rgb))

        if not decoded:
            return
        try:  # one call: the predictor runs same-size frames as one backend batch
            predictions = self._predictor.predict_batch([rgb for _, rgb in decoded])
        except VLTSegError as exc:
            for frame, _ in decoded:
                self._count(frame, "skipped")
            self._warn(f"skipped {len(decoded)} frame(s): {exc}")
            return
        self._stats.batch_sizes.append(len(decoded))
        for stage, seconds in (self._predictor.last_timings or {}).items():
            self._stats.stage(stage, seconds)
        for (frame, rgb), prediction in zip(decoded, predictions):
            self._publish(frame, rgb, prediction)

    def _publish(self, frame: Frame, rgb: np.ndarray, prediction: Prediction) -> None:
        start = time.monotonic()
        cam, header = frame.camera, frame.msg.header
        wanted = self._wanted(cam)
        if "mask" in wanted or self._param("mode") != "live":  # evaluation: every mask, listened to or not
            cam.publishers["mask"].publish(array_to_image(prediction.labels, "mono8", header))
        if "confidence" in wanted:
            cam.publishers["confidence"].publish(array_to_image(confidence_mono8(prediction.confidence), "mono8",
                                                                header))
        if wanted & {"color", "overlay"}:
            color = self._table.colorize(prediction.labels)
            if "color" in wanted:
                cam.publishers["color"].publish(array_to_image(color, "rgb8", header))
            if "overlay" in wanted:
                blended = overlay(rgb, color, self._param("overlay_alpha"))
                cam.publishers["overlay"].publish(array_to_image(blended, "rgb8", header))
        if SHIFT in wanted or self._diag_pub.get_subscription_count() > 0:  # lazy: ~2 ms at 1080x1920
            record = frame_record(prediction.labels, prediction.confidence, self._table.names, self._stats.references)
            self._stats.camera(cam.input_topic).shifts.append(record)
            if SHIFT in wanted:
                stamp = {"sec": header.stamp.sec, "nanosec": header.stamp.nanosec}
                cam.publishers[SHIFT].publish(String(data=json.dumps({"stamp": stamp, "frame_id": header.frame_id,
                                                                      **record})))
        if cam.camera_info is not None:
            cam.publishers["camera_info"].publish(camera_info_for(cam.camera_info, header, *rgb.shape[:2]))
        now = time.monotonic()
        self._stats.stage("publish", now - start)
        self._count(frame, "processed")
        stats = self._stats.camera(cam.input_topic)
        stats.ages.append((self.get_clock().now().nanoseconds - Time.from_msg(header.stamp).nanoseconds)
                          / 1e9)
        stats.queue_latencies.append(now - frame.received)

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(diagnostics_message(self._stats, self.get_fully_qualified_name(),
                                                   self._param("diagnostics_period"),
                                                   self.get_clock().now().to_msg()))


def _reason(exc: Exception) -> str:
    """One line: a VLTSegError already says what was wrong; anything else also names its type."""
    text = " ".join(str(exc).split())
    return text if isinstance(exc, VLTSegError) else f"{type(exc).__name__}: {text}"


def camera_info_for(info: CameraInfo, header, height: int, width: int) -> CameraInfo:
    """The camera's intrinsics with the input header, scaled when they were given for another image size."""
    out = copy.deepcopy(info)
    out.header, out.height, out.width = header, height, width
    if info.width and info.height and (info.width, info.height) != (width, height):
        sx, sy = width / info.width, height / info.height
        k, p = np.array(info.k, float).reshape(3, 3), np.array(info.p, float).reshape(3, 4)
        k[0] *= sx
        k[1] *= sy
        p[0] *= sx
        p[1] *= sy
        out.k, out.p = k.ravel().tolist(), p.ravel().tolist()
        out.roi.x_offset, out.roi.width = int(info.roi.x_offset * sx), int(info.roi.width * sx)
        out.roi.y_offset, out.roi.height = int(info.roi.y_offset * sy), int(info.roi.height * sy)
    return out


def main(args: list[str] | None = None) -> int:
    """`ros2 run vltseg_ros segmentation_node` / the `segmentation_node` console script."""
    # vltseg_core reports long steps (backend choice, ONNX export, engine build) through `logging`.
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [vltseg] %(message)s")
    # rclpy's signal handler would shut the context down at once, under the worker's publish (an ERROR at every
    # Ctrl-C of a busy node); Python's KeyboardInterrupt in this thread lets `finally` stop the worker first.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # what `ros2 launch` sends after SIGINT: same path
    node = SegmentationNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            for transition, trigger in (("configure", node.trigger_configure), ("activate", node.trigger_activate)):
                if trigger() != TransitionCallbackReturn.SUCCESS:  # the transition logged why
                    node.get_logger().info(f"autostart: {transition} did not succeed; exiting with code 2")
                    return 2
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.2)  # a bounded wait: Python runs its signal handler in between
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._stop_processing()
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
