"""The node's stage pipeline (decode -> infer -> publish) with a model slower than the camera, in this process (the
node's own rclpy context) so its queues and counters can be read directly: evaluation mode processes every frame
in order, live mode never builds a backlog (each queue at most its bound, every frame accounted for, newest frames
published, stamps strictly increasing), decoding the next frame overlaps inference, and deactivate joins every
stage thread. Only structural facts are asserted, no durations."""
import threading
import time

import pytest
from rclpy.lifecycle import TransitionCallbackReturn

from ros_helpers import frame, node_in_process, rgb_image, tiny_onnx

FRAMES = 30
SLOW_S = 0.15  # added to every predict call: the camera (frames queued at once) is far faster than this model


def slow_pipeline(node, published: list):
    """Slow the model down; record the stamps published on each camera's mask topic, and whether a decoded frame
    was already waiting each time an inference ended."""
    predict, overlaps = node._predictor.predict_batch_device, []

    def slow(images):
        time.sleep(SLOW_S)
        result = predict(images)
        overlaps.append(len(node._queues["decoded"]) > 0)
        return result
    node._predictor.predict_batch_device = slow
    node._wanted = lambda cam: {"mask"}  # as if the mask had a subscriber (live mode skips unwatched frames)
    lock = threading.Lock()
    for cam in node._cameras:
        publish = cam.publishers["mask"].publish

        def record(msg, cam=cam, publish=publish):
            with lock:
                published.append((cam.name, msg.header.stamp.sec))
            publish(msg)
        cam.publishers["mask"].publish = record
    return overlaps


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def accounted(stats) -> int:
    return stats.processed + stats.dropped + stats.skipped + stats.skipped_error + stats.unwatched


@pytest.mark.parametrize("mode", ["evaluation", "live"])
def test_pipeline_under_a_camera_faster_than_the_model(mode):
    params = {"model": str(tiny_onnx()), "backend": "onnxruntime", "mode": mode, "cameras": ["a", "b"],
              "max_batch_size": 2}
    with node_in_process(**params) as node:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        published: list = []
        overlaps = slow_pipeline(node, published)
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        for i in range(FRAMES):  # both cameras, all at once
            for cam in node._cameras:
                node._on_image(cam)(rgb_image(frame(i), i, cam.name))
        cameras = list(node._stats.cameras.values())
        wait_until(lambda: all(accounted(s) == s.received == FRAMES for s in cameras), 120,
                   "every received frame to be accounted for")
        for name in ("a", "b"):
            stamps = [sec for cam, sec in published if cam == name]
            assert stamps == sorted(set(stamps)), f"camera {name}: published out of order: {stamps}"
            if mode == "evaluation":
                assert stamps == [1000 + i for i in range(FRAMES)], f"camera {name}: lost frames"
            else:
                assert stamps[-1] == 1000 + FRAMES - 1, "the newest frame is always segmented"
        if mode == "evaluation":
            assert all(s.processed == FRAMES and s.dropped == 0 for s in cameras)
            assert node._queues["input"].bound is None
            assert node._queues["input"].high_water > 1  # the backlog waits in the keep-all input, not in stages
            assert 2 in node._stats.batch_sizes  # frames of the two cameras inferred together
        else:
            assert all(s.dropped > 0 and s.processed < FRAMES for s in cameras)
            assert node._queues["input"].bound == 1
        for name in ("decoded", "segmented") if mode == "evaluation" else ("input", "decoded", "segmented"):
            queue = node._queues[name]
            assert queue.bound == 1 and queue.high_water <= 1, (name, queue.high_water)
        assert any(overlaps), "the next frame was never decoded while the model ran"
        threads = node._threads
        assert threads.alive()
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node._threads is None and not threads.alive()  # every stage thread joined


@pytest.mark.parametrize("on_device", [False, True], ids=["numpy render", "device render"])
def test_every_output_equals_the_serial_path(on_device, monkeypatch):
    """Both rendering branches of the node (numpy in the publish stage; torch in the infer stage, taken here with
    CPU tensors as a GPU backend takes it with CUDA ones) publish the bytes of the serial path: predict, then
    colourise / mono8 / blend."""
    import numpy as np

    import vltseg_ros.node
    from vltseg_core.predictor import load_predictor
    from vltseg_core.visualize import confidence_mono8, overlay

    monkeypatch.setattr(vltseg_ros.node, "renders_on_device", lambda labels: on_device)
    calls = {"render": 0, "render_device": 0}
    for name in calls:
        def counted(*args, name=name, real=getattr(vltseg_ros.node, name)):
            calls[name] += 1
            return real(*args)
        monkeypatch.setattr(vltseg_ros.node, name, counted)
    params = {"model": str(tiny_onnx()), "backend": "onnxruntime", "mode": "evaluation", "overlay_alpha": 0.3}
    outputs = ("mask", "color", "confidence", "overlay")
    with node_in_process(**params) as node:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        node._wanted = lambda cam: set(outputs)
        (cam,) = node._cameras
        published = {out: [] for out in outputs}
        for out in outputs:
            cam.publishers[out].publish = published[out].append
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        frames = [frame(i) for i in range(4)]
        for i, rgb in enumerate(frames):
            node._on_image(cam)(rgb_image(rgb, i))
        wait_until(lambda: all(len(msgs) == len(frames) for msgs in published.values()), 60, "every output")
        assert node._stats.camera(cam.input_topic).processed == len(frames)
        assert calls == {"render": 0 if on_device else 4, "render_device": 4 if on_device else 0}
        predictor, table = load_predictor(str(tiny_onnx()), backend="onnxruntime"), node._table

    def pixels(msg):
        arr = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, -1)
        return arr[..., 0] if msg.encoding == "mono8" else arr
    for i, rgb in enumerate(frames):
        prediction = predictor.predict(rgb)
        color = table.colorize(prediction.labels)
        expected = {"mask": prediction.labels, "color": color, "confidence": confidence_mono8(prediction.confidence),
                    "overlay": overlay(rgb, color, 0.3)}
        for out in outputs:
            msg = published[out][i]
            assert msg.header.stamp.sec == 1000 + i
            assert np.array_equal(pixels(msg), expected[out]), (out, i)
