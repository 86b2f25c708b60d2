"""Ctrl-C (SIGINT, what a user and `ros2 launch` send) and SIGTERM of a node that is busy with a backlog of frames:
the worker finishes its batch while the context is still valid, the process exits 0, and the log holds no ERROR
(rclpy's own signal handler used to shut the context down under the worker: `RCLError: failed to get subscription
count: publisher's context is invalid`, then "Failed to publish log message to rosout")."""
import signal

import pytest
from sensor_msgs.msg import Image

from ros_helpers import RELIABLE, Harness, frame, rgb_image, start_node, stop_node, tiny_onnx

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
