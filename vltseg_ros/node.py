"""SegmentationNode: a thin rclpy lifecycle node over vltseg_core's Predictor.

Callbacks only queue messages; three stage threads (vltseg_core.pipeline) decode, infer (frames of several cameras
waiting together go as one batch) and render + publish, so the executor never blocks and decoding frame N+1 and
publishing frame N-1 overlap inferring frame N. Live mode keeps the latest frame per camera in every queue (older
ones are counted as dropped); evaluation mode keeps every frame, in order. Bad frames are skipped with a throttled
warning and a counter; the node never dies on input. Runs unchanged on Humble, Jazzy and Kilted (only APIs common
to all).
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
from dataclasses import dataclass, field

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
from vltseg_core.pipeline import Stage, StageQueue, StageThreads
from vltseg_core.visualize import render, render_device
from vltseg_ros.diagnostics import NodeStats, diagnostics_message
from vltseg_ros.image_conversions import array_to_image, compressed_to_rgb, image_to_rgb
from vltseg_ros.label_info import LATCHED, label_info_message, label_info_type
from vltseg_ros.params import MODES, OUTPUT_PARAMS, PARAMS, TRANSPORTS, descriptor

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
    """One message on its way through the stages."""
    camera: Camera
    msg: Image | CompressedImage
    received: float  # time.monotonic()
    counted: bool = False  # in exactly one counter (processed, skipped, unwatched...) once handled
    rgb: np.ndarray | None = None  # decoded
    images: dict[str, np.ndarray] = field(default_factory=dict)  # visualize.render's, or mask + probability only
    rendered: bool = False  # images rendered on the device (GPU backends); else rendered in the publish stage


@dataclass
class Camera:
    """One camera's topics and latest camera_info; `name` is its namespace ('' = the node's own), `index` its key
    in the stage queues."""
    name: str
    index: int
    input_topic: str  # fully resolved; also the key of its counters
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
        self._count_lock = threading.Lock()  # counters are written from the executor and the stage threads
        self._queues: dict[str, StageQueue] = {}  # input -> decode -> decoded -> infer -> segmented -> publish
        self._threads: StageThreads | None = None
        self._predictor = None
        self._table = None
        self._cameras: list[Camera] = []
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
        self._cameras = []
        for index, name in enumerate(names):
            cam = Camera(name, index, "")
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
        self._start_pipeline()
        try:
            self._subscribe()
        except Exception as exc:  # noqa: BLE001 - e.g. a bad qos_overrides parameter; rclpy would say nothing
            self.get_logger().error(f"activate failed: {_reason(exc)}")
            self._stop_processing()
            return TransitionCallbackReturn.FAILURE
        self._stats.state = "active"
        self.get_logger().info(f"active: {len(self._cameras)} camera(s), {self._param('mode')} mode, "
                               f"{self._param('transport')} transport")
        return TransitionCallbackReturn.SUCCESS

    def _start_pipeline(self) -> None:
        """Queues of one frame per camera between the stages (the input queue too in live mode; evaluation input
        is unbounded, as the subscription is keep-all): live drops the oldest, evaluation waits."""
        live, count = self._param("mode") == "live", len(self._cameras)
        dropped = self._on_dropped
        self._queues = {"input": StageQueue(count, 1 if live else None, live, dropped),
                        "decoded": StageQueue(count, 1, live, dropped),
                        "segmented": StageQueue(count, 1, live, dropped)}
        self._stats.queues = self._queues
        self._threads = StageThreads([
            Stage("segmentation-decode", self._queues["input"], self._decode, self._on_stage_error),
            Stage("segmentation-infer", self._queues["decoded"], self._infer, self._on_stage_error,
                  batch=lambda: self._param("max_batch_size")),
            Stage("segmentation-publish", self._queues["segmented"], self._publish, self._on_stage_error)])
        self._threads.start()

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
        """Unsubscribe, let each stage finish the frames it holds, forget queued frames, join the stage threads."""
        for cam in self._cameras:
            for sub in cam.subscriptions:
                self.destroy_subscription(sub)
            cam.subscriptions.clear()
        for queue in self._queues.values():
            queue.close()
        if self._threads is not None:
            self._threads.join()
            self._threads = None
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
            self._count_received(cam)
            self._queues["input"].put(cam.index, Frame(cam, msg, time.monotonic()))  # live: replaces a waiting one
        return callback

    def _on_camera_info(self, cam: Camera):
        def callback(msg: CameraInfo) -> None:
            cam.camera_info = msg
        return callback

    # ---- stages: decode -> infer -> publish (vltseg_core.pipeline) ---------------------------------------------
    def _count_received(self, cam: Camera) -> None:
        with self._count_lock:
            self._stats.camera(cam.input_topic).received += 1

    def _count(self, frame: Frame, counter: str) -> None:
        """Count a handled frame in exactly one counter, so per camera received = processed + dropped + skipped +
        skipped_error + unwatched once the queues are empty."""
        with self._count_lock:
            stats = self._stats.camera(frame.camera.input_topic)
            setattr(stats, counter, getattr(stats, counter) + 1)
        frame.counted = True

    def _on_dropped(self, frame: Frame) -> None:
        """Live mode: a newer frame of the same camera replaced this one in a stage queue."""
        self._count(frame, "dropped")

    def _on_stage_error(self, frames: list[Frame], exc: Exception) -> None:
        with self._count_lock:
            self._stats.errors += 1
        failed = [frame for frame in frames if not frame.counted]
        for frame in failed:
            self._count(frame, "skipped_error")
        self.get_logger().error(f"{len(failed)} frame(s) skipped: {_reason(exc)}",
                                throttle_duration_sec=max(self._param("warn_throttle"), 1e-3))

    def _wanted(self, cam: Camera) -> set[str]:
        return {out for out in (*OUTPUTS, SHIFT) if cam.publishers[out].get_subscription_count() > 0}

    def _images_wanted(self, cam: Camera) -> set[str]:
        """What to render for a frame (visualize.IMAGES): the subscribed outputs; in evaluation mode always the
        mask; the mask and the float confidence when the domain-shift statistics are wanted."""
        subscribed = self._wanted(cam)
        wanted = subscribed & set(OUTPUTS)
        if self._param("mode") != "live":
            wanted.add("mask")
        if SHIFT in subscribed or self._diag_pub.get_subscription_count() > 0:  # lazy: ~2 ms at 1080x1920
            wanted |= {"mask", "probability"}
        return wanted

    def _warn(self, text: str) -> None:
        self.get_logger().warning(text, throttle_duration_sec=max(self._param("warn_throttle"), 1e-3))

    def _decode(self, frames: list[Frame]) -> None:
        (frame,) = frames
        if self._param("mode") == "live" and not self._wanted(frame.camera):
            self._count(frame, "unwatched")  # lazy: nobody listens, so no decode and no inference
            return
        start = time.monotonic()
        try:
            convert = compressed_to_rgb if isinstance(frame.msg, CompressedImage) else image_to_rgb
            frame.rgb = convert(frame.msg, self._param("max_image_pixels"), frame.camera.input_topic)
        except VLTSegError as exc:
            self._count(frame, "skipped")
            self._warn(f"skipped frame: {exc}")
            return
        self._stats.stage("decode", time.monotonic() - start)
        self._queues["decoded"].put(frame.camera.index, frame)

    def _infer(self, frames: list[Frame]) -> None:
        """One predict call for the batch (same-size frames are one backend batch). GPU backends render the
        wanted images on the device and copy them to the host once; CPU results are rendered by the publish
        stage, overlapping the next inference."""
        try:
            maps = self._predictor.predict_batch_device([frame.rgb for frame in frames])
        except VLTSegError as exc:
            for frame in frames:
                self._count(frame, "skipped")
            self._warn(f"skipped {len(frames)} frame(s): {exc}")
            return
        self._stats.batch_sizes.append(len(frames))
        for stage, seconds in (self._predictor.last_timings or {}).items():
            self._stats.stage(stage, seconds)
        for frame, (labels, confidence) in zip(frames, maps):
            if not renders_on_device(labels):
                frame.images = {"mask": labels.numpy(), "probability": confidence.numpy()}
                continue
            start = time.monotonic()
            frame.images = render_device(labels, confidence, frame.rgb, self._table,
                                         self._param("overlay_alpha"), self._images_wanted(frame.camera))
            frame.rendered = True
            self._stats.stage("render", time.monotonic() - start)
        for frame in frames:  # last: from here on the publish stage accounts for them
            self._queues["segmented"].put(frame.camera.index, frame)

    def _publish(self, frames: list[Frame]) -> None:
        (frame,) = frames
        cam, header = frame.camera, frame.msg.header
        images = frame.images
        if not frame.rendered:
            start = time.monotonic()
            images = render(images["mask"], images["probability"], frame.rgb, self._table,
                            self._param("overlay_alpha"), self._images_wanted(cam))
            self._stats.stage("render", time.monotonic() - start)
        start = time.monotonic()
        wanted = self._wanted(cam)
        if self._param("mode") != "live":
            wanted.add("mask")  # evaluation: every mask, listened to or not
        for out, encoding in (("mask", "mono8"), ("confidence", "mono8"), ("color", "rgb8"), ("overlay", "rgb8")):
            if out in wanted and out in images:
                cam.publishers[out].publish(array_to_image(images[out], encoding, header))
        if "probability" in images:
            record = frame_record(images["mask"], images["probability"], self._table.names, self._stats.references)
            self._stats.camera(cam.input_topic).shifts.append(record)
            if SHIFT in wanted:
                stamp = {"sec": header.stamp.sec, "nanosec": header.stamp.nanosec}
                cam.publishers[SHIFT].publish(String(data=json.dumps({"stamp": stamp, "frame_id": header.frame_id,
                                                                      **record})))
        if cam.camera_info is not None:
            cam.publishers["camera_info"].publish(camera_info_for(cam.camera_info, header, *frame.rgb.shape[:2]))
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


def renders_on_device(labels) -> bool:
    """Maps a GPU backend left on its GPU are rendered there; host tensors (CPU backends, and ONNX Runtime on any
    provider) by numpy. A function of its own so that tests can take the device path with CPU tensors."""
    return labels.device.type != "cpu"


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
    # rclpy's signal handler would shut the context down at once, under the stage threads' publish (an ERROR at every
    # Ctrl-C of a busy node); ours only asks the spin loop to end, so `finally` stops the stages first. It is a flag,
    # not Python's KeyboardInterrupt: raised inside rclpy's C++ take_message that one arrives as a RuntimeError (exit
    # 1). Installed for SIGINT explicitly: a process started with SIGINT ignored (nohup, a script's `cmd &`) gets no
    # Python handler, and Ctrl-C / `ros2 launch`'s SIGINT would be ignored. SIGTERM (`ros2 launch` after SIGINT) too.
    # Autostart's transitions run in this thread and can take minutes (an ONNX export, an engine build): a first signal
    # there lets the transition finish (its result is cached) and skips the rest; a second one aborts it at once.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop, transitioning = threading.Event(), threading.Event()

    def on_signal(signum: int, frame) -> None:
        if transitioning.is_set():  # set only once `node` exists
            if stop.is_set():
                raise KeyboardInterrupt
            node.get_logger().warning("shutdown requested during autostart: stopping when the current transition "
                                      "returns (signal again to stop now)")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    node = SegmentationNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value:
            transitioning.set()
            try:
                for transition, trigger in (("configure", node.trigger_configure),
                                            ("activate", node.trigger_activate)):
                    if stop.is_set():
                        break
                    if trigger() != TransitionCallbackReturn.SUCCESS:  # the transition logged why
                        node.get_logger().info(f"autostart: {transition} did not succeed; exiting with code 2")
                        return 2
            finally:
                transitioning.clear()  # from here on a signal only sets the flag (the clean-up below runs whole)
        while rclpy.ok() and not stop.is_set():
            executor.spin_once(timeout_sec=0.2)  # a bounded wait: the flag is read in between
    except ExternalShutdownException:
        pass
    except KeyboardInterrupt:  # the second signal during an autostart transition
        node.get_logger().warning("autostart interrupted; exiting with code 130")
        return 130
    finally:
        node._stop_processing()
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
