"""The domain-shift signal of the real node (its own process, the demo model, evaluation mode) on real CamVid val
frames: the per-frame record on segmentation/domain_shift equals the core's for the same frame, a frame darkened
to night levels is ERROR, and the camera's domain-shift status on /diagnostics carries the statistics and level."""
import json

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import Image
from std_msgs.msg import String

from ros_helpers import RELIABLE, Harness, rgb_image, start_node, stop_node
from vltseg_core.data.datasets import build_dataset
from vltseg_core.domain_shift import frame_record, load_references
from vltseg_core.predictor import load_predictor


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    log = tmp_path_factory.mktemp("domain_shift") / "node.log"
    proc = start_node(log, model="demo", backend="torch", mode="evaluation", autostart=True, diagnostics_period=0.3)
    harness = Harness("domain_shift_test", log, proc)
    yield harness
    harness.close()
    assert stop_node(proc) == 0, f"node did not exit cleanly on SIGINT:\n{harness.node_log()}"


def test_records_and_diagnostics_on_real_frames(node, camvid_root):
    h = node
    clean = build_dataset("camvid", camvid_root, "val").load(0).image
    dark = (clean * 0.03).astype(np.uint8)  # near-black (test_domain_shift.test_degraded_frames_raise_the_level)
    pub = h.node.create_publisher(Image, "image", RELIABLE)
    records = h.collect(String, "segmentation/domain_shift")
    diags = h.collect(DiagnosticArray, "/diagnostics")
    h.wait_matched(pub, "image", timeout=120)
    h.wait_for(lambda: h.node.count_subscribers("segmentation/domain_shift") > 0 and
               h.node.count_publishers("segmentation/domain_shift") > 0, 30, "the domain_shift topic")
    h.spin_for(0.5)
    for i, rgb in enumerate((clean, dark)):
        pub.publish(rgb_image(rgb, i, "camvid"))
    h.wait_for(lambda: len(records) >= 2, 120, "a domain_shift record per frame")
    got = [json.loads(m.data) for m in records[:2]]
    assert [(r["stamp"]["sec"], r["frame_id"]) for r in got] == [(1000, "camvid_0"), (1001, "camvid_1")]

    predictor, refs = load_predictor("demo", backend="torch"), load_references("demo")
    for rgb, record in zip((clean, dark), got):
        pred = predictor.predict(rgb)
        want = frame_record(pred.labels, pred.confidence, predictor.class_table.names, refs)
        assert record["level"] == want["level"]
        for key in ("mean_confidence", "low_confidence_share", "class_distance"):
            assert record[key] == pytest.approx(want[key], abs=1e-3)
    assert got[0]["level"] == "OK" and got[1]["level"] == "ERROR" and "mean confidence" in got[1]["reason"]

    def shift_statuses():
        return [(status, {kv.key: kv.value for kv in status.values}) for msg in diags for status in msg.status
                if status.name.endswith("/image domain shift")]

    def total(key):
        return sum(int(values.get(key, 0)) for _, values in shift_statuses())

    h.wait_for(lambda: total("frames") == 2, 30, "both frames in the domain-shift statuses")
    assert total("frames_ok") == 1 and total("frames_error") == 1 and total("frames_warn") == 0
    status, values = next((s, v) for s, v in shift_statuses() if v.get("frames_error") == "1")
    assert status.hardware_id == "/image" and values["references"] == "camvid:val, 101 frames"
    # the period's means: the dark frame alone, or with the clean one (then their mean, still far under p1)
    in_period = got[1:] if values["frames"] == "1" else got
    assert float(values["mean_confidence"]) == pytest.approx(np.mean([r["mean_confidence"] for r in in_period]),
                                                             abs=1e-3)
    assert status.level == DiagnosticStatus.ERROR and status.message.startswith("ERROR: ")
    assert any(k.startswith("class_share/") for k in values)
    idle = [s for s, v in shift_statuses() if "frames" not in v]
    assert idle and all(s.level == DiagnosticStatus.OK and "no frames" in s.message for s in idle)
