"""Helpers for tests that run the real segmentation node in its own process and talk to it over real DDS from the
test process: start/stop the node, lifecycle service calls, waiting with clear failure messages."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import rclpy
import torch
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter as Parameter_msg
from rcl_interfaces.srv import GetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

REPO = Path(__file__).resolve().parents[1]
NODE_NAME = "segmentation_node"
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)


def tiny_onnx() -> Path:
    """The seeded tiny-test model as a dynamic-size ONNX graph (exported once per machine, in the asset cache), so
    the node process and the test process run exactly the same weights."""
    from vltseg_core.verify.parity import cached_onnx
    from vltseg_core.models import build_model

    torch.manual_seed(0)
    return cached_onnx(build_model("tiny-test"), "tiny-test (seed 0)")


def frame(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    """A real-looking RGB test frame: smooth gradients + blobs, so the model predicts several classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
    noise = rng.integers(0, 60, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def header(index: int, frame_id: str = "camera") -> Header:
    h = Header(frame_id=f"{frame_id}_{index}")
    h.stamp.sec, h.stamp.nanosec = 1000 + index, 123_000 + index
    return h


def rgb_image(rgb: np.ndarray, index: int, frame_id: str = "camera") -> Image:
    msg = Image(header=header(index, frame_id), height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                step=rgb.shape[1] * 3)
    msg.data = rgb.tobytes()
    return msg


def start_node(log: Path, name: str = NODE_NAME, env: dict[str, str] | None = None, **params) -> subprocess.Popen:
    """`segmentation_node --ros-args --params-file config/segmentation_node.yaml -p k:=v ...`: the console script of a
    pip install (what the demo runs), else the module (colcon installs it under lib/vltseg_ros)."""
    script = Path(sys.executable).parent / "segmentation_node"
    args = [str(script)] if script.is_file() else [sys.executable, "-m", "vltseg_ros.node"]
    args += ["--ros-args", "-r", f"__node:={name}",
            "--params-file", str(REPO / "config" / "segmentation_node.yaml")]
    for key, value in params.items():
        text = ("true" if value else "false") if isinstance(value, bool) else \
            "[" + ",".join(value) + "]" if isinstance(value, list) else str(value)
        args += ["-p", f"{key}:={text}"]
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


@contextmanager
def node_in_process(**params) -> Iterator:
    """The segmentation node in this test process (its own rclpy context) with parameter overrides, for what cannot
    be reached from outside (its queues, counters, references); stopped and destroyed afterwards."""
    from vltseg_ros.node import SegmentationNode

    context = rclpy.Context()
    rclpy.init(context=context)
    node = SegmentationNode(context=context,
                            parameter_overrides=[Parameter(name, value=value) for name, value in params.items()])
    try:
        yield node
    finally:
        node._stop_processing()
        node.destroy_node()
        rclpy.shutdown(context=context)


def stop_node(proc: subprocess.Popen) -> int:
    """Ctrl-C, as a user or `ros2 launch` would; the node must exit cleanly."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Harness:
    """The test side: one rclpy node + executor in the test process, in a private context (other test modules
    may hold the default one)."""

    def __init__(self, name: str, node_log: Path, proc: subprocess.Popen):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.log, self.proc = node_log, proc
        # the service clients exist from the start, so discovery has matched them before the first call
        self._clients = {name: self.node.create_client(srv_type, name) for srv_type, name in (
            (GetState, f"/{NODE_NAME}/get_state"), (ChangeState, f"/{NODE_NAME}/change_state"),
            (GetParameters, f"/{NODE_NAME}/get_parameters"))}

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def node_log(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-25:])

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Spin until `predicate()` holds; fail with `what` and the node's log tail otherwise."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited ({self.proc.returncode}) while waiting for {what}:\n"
                                     f"{self.node_log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; node log:\n" +
                                     f"{self.node_log()}")
            self.executor.spin_once(timeout_sec=0.05)

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)

    def collect(self, msg_type, topic: str, qos=RELIABLE) -> list:
        received: list = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def _call(self, name: str, request, timeout: float = 60.0, retry_every: float | None = None):
        """A service call through the harness's one client for `name` (a fresh client's first request can go out
        before the server's reply writer has matched it, and that reply is then lost); `retry_every` seconds
        re-sends a request that is safe to repeat (queries) when its reply was lost to discovery."""
        client = self._clients[name]
        self.wait_for(client.service_is_ready, 30, f"service {name}")
        deadline = time.monotonic() + timeout
        while True:
            future = client.call_async(request)
            wait = min(retry_every or timeout, max(deadline - time.monotonic(), 0.1))
            try:
                self.wait_for(future.done, wait, f"reply of {name}")
                return future.result()
            except AssertionError:
                client.remove_pending_request(future)
                if retry_every is None or time.monotonic() >= deadline or self.proc.poll() is not None:
                    raise

    def state(self) -> str:
        reply = self._call(f"/{NODE_NAME}/get_state", GetState.Request(), retry_every=5.0)
        return reply.current_state.label

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self._call(f"/{NODE_NAME}/change_state", request).success

    def parameter(self, name: str):
        """A parameter of the node under test, through its get_parameters service."""
        reply = self._call(f"/{NODE_NAME}/get_parameters", GetParameters.Request(names=[name]), retry_every=5.0)
        return Parameter.from_parameter_msg(Parameter_msg(name=name, value=reply.values[0])).value

    def wait_matched(self, publisher, what: str, timeout: float = 30) -> None:
        self.wait_for(lambda: publisher.get_subscription_count() > 0, timeout, f"the node to subscribe to {what}")


def diagnostics_values(msgs: list, camera_topic: str) -> dict[str, str]:
    """Key/values of the newest /diagnostics status for one camera topic ({} if none yet)."""
    for msg in reversed(msgs):
        for status in msg.status:
            if status.hardware_id == camera_topic:
                return {kv.key: kv.value for kv in status.values}
    return {}
