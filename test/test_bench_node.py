"""The node layer of `vltseg bench` reads the node's own per-stage latency from real /diagnostics messages."""
import pytest

diagnostic_msgs = pytest.importorskip("diagnostic_msgs.msg", reason="needs the ROS 2 message wheels (ros extra)")

from vltseg_ros.bench_node import _NodeStages  # noqa: E402


def _diag(processed: int, **latency: float):
    msg = diagnostic_msgs.DiagnosticArray()
    kv = diagnostic_msgs.KeyValue
    model = diagnostic_msgs.DiagnosticStatus(name="/b/segmentation_node: model",
                                             values=[kv(key=f"latency_ms/{k}", value=str(v)) for k, v in latency.items()])
    camera = diagnostic_msgs.DiagnosticStatus(name="/b/segmentation_node: /b/image",
                                              values=[kv(key="processed", value=str(processed)),
                                                      kv(key="receive_to_publish_ms_mean", value="10.0")])
    msg.status = [model, camera]
    return msg


def test_stage_means_are_weighted_by_frames_and_skip_periods_without_the_stage():
    stages = _NodeStages("/b/segmentation_node")
    stages.on_message(_diag(5, inference=99.0))  # before start(): the baseline count only
    stages.start()
    stages.on_message(_diag(8, inference=10.0, decode=2.0))  # 3 frames
    stages.on_message(_diag(9, inference=20.0))  # 1 frame, no decode figure this period
    stages.on_message(_diag(9, inference=50.0))  # no new frame: not counted
    means = stages.means_ms()
    assert stages.frames() == 4
    assert means["inference"] == pytest.approx((3 * 10.0 + 1 * 20.0) / 4)
    assert means["decode"] == pytest.approx(2.0)  # over the 3 frames that reported it, not all 4
    assert means["receive_to_publish"] == pytest.approx(10.0)
