"""Ctrl-C (SIGINT, what a user and `ros2 launch` send) and SIGTERM of a node that is busy with a backlog of frames:
the worker finishes its batch while the context is still valid, the process exits 0, and the log holds no ERROR
(rclpy's own signal handler used to shut the context down under the worker: `RCLError: failed to get subscription
count: publisher's context is invalid`, then "Failed to publish log message to rosout"). Also a signal during
autostart's configure."""
import os
import signal
import time

import pytest
from sensor_msgs.msg import Image

from ros_helpers import RELIABLE, Harness, frame, rgb_image, start_node, stop_node, tiny_onnx
from vltseg_core.assets import cache_dir

FRAMES = 40


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_of_a_busy_node_stops_it_cleanly(sig, tmp_path):
    log = tmp_path / "node.log"
    proc = start_node(log, model=str(tiny_onnx()), backend="onnxruntime", autostart=True, mode="evaluation")
    h = Harness("shutdown_test", log, proc)
    try:
        masks = h.collect(Image, "segmentation/mask")
        pub = h.node.create_publisher(Image, "image", RELIABLE)
        h.wait_matched(pub, "image", timeout=120)
        pixels = frame(0, 240, 320)
        for i in range(FRAMES):
            pub.publish(rgb_image(pixels, i))
        h.wait_for(lambda: len(masks) >= 2, 60, "the first masks")
        busy = len(masks)
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
    finally:
        h.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert busy < FRAMES, "the node had no backlog left when signalled: the test did not exercise a busy node"
    assert code == 0, f"exit code {code} after {sig.name}:\n{text[-3000:]}"
    bad = [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line or "Failed to publish" in line]
    assert not bad, f"{sig.name} of a busy node logged:\n" + "\n".join(bad)


def test_ctrl_c_works_when_the_node_was_started_with_sigint_ignored(tmp_path):
    """A process started in the background by a script (`cmd &`, nohup) inherits SIGINT ignored, and Python then
    installs no handler: the node installs its own, so Ctrl-C / `ros2 launch`'s SIGINT still stops it."""
    log = tmp_path / "node.log"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the child at exec
    try:
        proc = start_node(log, model=str(tiny_onnx()), backend="onnxruntime", autostart=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    h = Harness("ignored_sigint_test", log, proc)
    try:
        h.wait_for(lambda: "active:" in log.read_text(), 120, "the node to activate")
    finally:
        h.close()
    assert stop_node(proc) == 0, log.read_text()


def _wait_in_log(log, text: str, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"the node exited ({proc.returncode}) before logging '{text}':\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no '{text}' in {timeout} s:\n{log.read_text()}"
        time.sleep(0.1)


@pytest.mark.parametrize("signals", [1, 2], ids=["once", "twice"])
def test_signal_during_autostart_configure(signals, tmp_path):
    """Autostart's configure can take minutes (here the demo model's first ONNX export). Ctrl-C there: once, the
    export finishes (it is cached for the next start) and the node exits 0 without activating; twice, it stops at
    once with 130. Neither leaves a traceback."""
    home = tmp_path / "home"  # the real assets, but no cached ONNX graph: configure has to export
    home.mkdir()
    for entry in cache_dir().iterdir():
        if entry.name != "onnx":
            (home / entry.name).symlink_to(entry)
    log = tmp_path / "node.log"
    proc = start_node(log, env={**os.environ, "VLTSEG_HOME": str(home)}, model="demo", backend="onnxruntime",
                      autostart=True)
    try:
        _wait_in_log(log, "exporting demo to ONNX", proc, 120)
        proc.send_signal(signal.SIGINT)
        _wait_in_log(log, "signal again to stop now", proc, 30)
        if signals == 2:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30 if signals == 2 else 600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert code == (130 if signals == 2 else 0), text
    assert "Traceback" not in text and "active:" not in text, text
    assert any((home / "onnx").glob("*.onnx")) == (signals == 1), sorted((home / "onnx").iterdir())
