"""The real node in its own process (live mode, raw images, driven through its lifecycle services) against frames
published from this process over real DDS: identical headers, encodings and sizes, masks equal to the predictor's
for the same frame, lazy outputs, camera_info scaling, and latest-frame-wins under a publisher faster than the
model."""
import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from ros_helpers import (BEST_EFFORT, RELIABLE, Harness, diagnostics_values, frame, rgb_image,
                         start_node, stop_node, tiny_onnx)
from vltseg_core.predictor import load_predictor
from vltseg_core.visualize import confidence_mono8, overlay
from vltseg_ros.image_conversions import image_to_rgb
from vltseg_ros.label_info import label_info_type

MAX = 1 << 24


@pytest.fixture(scope="module")
def onnx_model():
    return tiny_onnx()


@pytest.fixture(scope="module")
def live(onnx_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("live") / "node.log"
    proc = start_node(log, model=str(onnx_model), backend="onnxruntime", use_camera_info=True,
                      diagnostics_period=0.2, overlay_alpha=0.5)
    harness = Harness("live_test", log, proc)
    yield harness
    harness.close()
    assert stop_node(proc) == 0, f"node did not exit cleanly on SIGINT:\n{harness.node_log()}"


def as_array(msg: Image) -> np.ndarray:
    channels = {"mono8": 1, "rgb8": 3}[msg.encoding]
    assert msg.step == msg.width * channels
    arr = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, channels)
    return arr[..., 0] if channels == 1 else arr


def label_names(msg) -> list[str]:
    """Class names by id from whichever type the node publishes: vision_msgs/LabelInfo on a ROS 2 install, else
    std_msgs/String holding the class table as YAML."""
    if hasattr(msg, "class_map"):
        assert [c.class_id for c in msg.class_map] == list(range(len(msg.class_map)))
        return [c.class_name for c in msg.class_map]
    return [c["name"] for c in yaml.safe_load(msg.data)["classes"]]


def test_lifecycle_outputs_lazy_work_and_latest_frame_wins(live, onnx_model):
    h = live
    assert h.state() == "unconfigured"
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    labels = h.collect(label_info_type(), "segmentation/label_info", latched)
    diags = h.collect(DiagnosticArray, "/diagnostics")
    assert h.transition(Transition.TRANSITION_CONFIGURE)
    assert h.state() == "inactive"
    h.wait_for(lambda: labels, 20, "the latched label info")
    names = label_names(labels[-1])
    assert len(names) == 19 and names[0] == "road"
    assert h.parameter("class_names") == names

    image_pub = h.node.create_publisher(Image, "image", BEST_EFFORT)
    info_pub = h.node.create_publisher(CameraInfo, "camera_info", RELIABLE)
    assert h.transition(Transition.TRANSITION_ACTIVATE)
    assert h.state() == "active"
    h.wait_matched(image_pub, "image")
    h.wait_matched(info_pub, "camera_info")

    # Nobody listens yet: frames are received but not decoded or inferred (lazy).
    for i in range(3):
        image_pub.publish(rgb_image(frame(i), i))
        h.spin_for(0.1)
    h.wait_for(lambda: int(diagnostics_values(diags, "/image").get("unwatched", 0)) >= 1, 20,
               "the node to count unwatched frames")
    assert diagnostics_values(diags, "/image")["processed"] == "0"

    outputs = {name: h.collect(Image, f"segmentation/{name}") for name in ("mask", "color", "confidence", "overlay")}
    infos = h.collect(CameraInfo, "segmentation/camera_info")
    h.wait_for(lambda: all(h.node.count_publishers(f"segmentation/{n}") for n in outputs), 20, "output publishers")
    h.spin_for(0.5)  # let the node see our subscriptions too

    # One frame at a time (row-padded bgr8 to exercise the conversion); each must come back on every output.
    predictor = load_predictor(str(onnx_model), backend="onnxruntime")
    sent = {}
    for i in range(10, 13):
        rgb = frame(i)
        msg = rgb_image(rgb, i)
        if i == 11:
            padded = np.concatenate([rgb[..., ::-1], np.zeros((96, 2, 3), np.uint8)], axis=1)
            msg.encoding, msg.step, msg.data = "bgr8", 130 * 3, padded.tobytes()
        info = CameraInfo(header=msg.header, width=256, height=192, k=[200.0, 0, 128, 0, 200, 96, 0, 0, 1],
                          p=[200.0, 0, 128, 0, 0, 200, 96, 0, 0, 0, 1, 0])
        info_pub.publish(info)
        h.spin_for(0.2)
        image_pub.publish(msg)
        sent[msg.header.frame_id] = (msg.header, image_to_rgb(msg, MAX))
        h.wait_for(lambda: all(any(m.header == msg.header for m in out) for out in [*outputs.values(), infos]),
                   30, f"all four outputs and camera_info of frame {i}")
    for name, msgs in outputs.items():
        for out in msgs:
            hdr, rgb = sent[out.header.frame_id]
            assert out.header == hdr, name  # exact stamp and frame_id: message_filters exact sync works
            assert (out.height, out.width, out.encoding) == (96, 128, "rgb8" if name in ("color", "overlay")
                                                             else "mono8"), name
    # The pipeline's outputs are byte for byte the serial path's: predict, then colourise / blend / mono8.
    for out in outputs["mask"]:
        rgb = sent[out.header.frame_id][1]
        prediction = predictor.predict(rgb)
        assert np.array_equal(as_array(out), prediction.labels)
        conf = [c for c in outputs["confidence"] if c.header == out.header][0]
        assert np.array_equal(as_array(conf), confidence_mono8(prediction.confidence))
        color = [c for c in outputs["color"] if c.header == out.header][0]
        assert np.array_equal(as_array(color), predictor.class_table.colorize(prediction.labels))
        blended = [c for c in outputs["overlay"] if c.header == out.header][0]
        assert np.array_equal(as_array(blended), overlay(rgb, as_array(color), 0.5))
    assert len(np.unique(as_array(outputs["mask"][0]))) > 1, "the test frames should give several classes"
    scaled = [i for i in infos if i.header == outputs["mask"][-1].header][0]
    assert (scaled.width, scaled.height) == (128, 96)
    assert scaled.k[0] == 100.0 and scaled.k[2] == 64.0 and scaled.p[6] == 48.0

    # A bad frame in live mode is skipped and counted; the next good frame works.
    bad = rgb_image(frame(30), 30)
    bad.encoding = "weird42"
    image_pub.publish(bad)
    h.wait_for(lambda: diagnostics_values(diags, "/image").get("skipped_bad_input") == "1", 20,
               "the node to count the bad frame")
    good = rgb_image(frame(31), 31)
    image_pub.publish(good)
    h.wait_for(lambda: any(m.header == good.header for m in outputs["mask"]), 20, "the mask of the next good frame")

    # Deactivated: nothing comes out; activated again: it works again.
    assert h.transition(Transition.TRANSITION_DEACTIVATE)
    before = len(outputs["mask"])
    image_pub.publish(rgb_image(frame(20), 20))
    h.spin_for(1.0)
    assert len(outputs["mask"]) == before
    assert h.transition(Transition.TRANSITION_ACTIVATE)
    h.wait_matched(image_pub, "image after re-activation")

    # A camera faster than the model (200 Hz, larger frames than one inference can keep up with): older frames are
    # replaced in the node's queue (counted as dropped), the newest one is always segmented, and every received
    # frame is accounted for. How fast frames reach the node over DDS depends on the machine's load, so up to three
    # bursts are sent until one outpaces the model.
    def settled() -> bool:
        v = diagnostics_values(diags, "/image")
        return bool(v) and int(v["received"]) == sum(int(v[k]) for k in ("processed", "dropped", "skipped_bad_input",
                                                                           "skipped_error", "unwatched"))
    sent_in_bursts = 0
    for attempt in range(3):
        burst = [rgb_image(frame(100 + i, 240, 320), 100 + 40 * attempt + i) for i in range(40)]
        for msg in burst:
            image_pub.publish(msg)
            h.spin_for(0.005)
        sent_in_bursts += len(burst)
        h.wait_for(lambda: any(m.header == burst[-1].header for m in outputs["mask"]), 30, "the newest burst frame")
        h.wait_for(settled, 20, "counters to add up (received = processed + dropped + skipped + unwatched)")
        v = diagnostics_values(diags, "/image")
        if int(v["dropped"]) > 0:
            break
    burst_masks = [m for m in outputs["mask"] if m.header.stamp.sec >= 1100]
    assert int(v["dropped"]) > 0 and len(burst_masks) < sent_in_bursts, v
    # No backlog: every queue between the stages held at most its bound of one frame, and masks came out newest
    # last (stamps strictly increasing: nothing old was published after something newer).
    stamps = [m.header.stamp.sec for m in burst_masks]
    assert stamps == sorted(set(stamps)), stamps
    model_values = {kv.key: kv.value for kv in [s for s in diags[-1].status if s.name.endswith("model")][0].values}
    for queue in ("input", "decoded", "segmented"):
        assert model_values[f"queue_bound/{queue}"] == "1", model_values
        assert int(model_values[f"queue_max/{queue}"]) <= 1, model_values
    assert int(v["skipped_bad_input"]) == 1 and int(v["skipped_error"]) == 0
    model_status = [s for s in diags[-1].status if s.name.endswith("model")][0]
    keys = {kv.key for kv in model_status.values}
    assert {"backend", "onnx_sha256", "latency_ms/decode", "latency_ms/inference", "latency_ms/publish"} <= keys
    assert {kv.key: kv.value for kv in model_status.values}["errors"] == "0"

    # Cleanup frees the model; configure loads it again; shutdown finalizes.
    assert h.transition(Transition.TRANSITION_DEACTIVATE)
    assert h.transition(Transition.TRANSITION_CLEANUP)
    assert h.state() == "unconfigured"
    assert h.transition(Transition.TRANSITION_CONFIGURE)
    assert h.transition(Transition.TRANSITION_INACTIVE_SHUTDOWN)
    assert h.state() == "finalized"
