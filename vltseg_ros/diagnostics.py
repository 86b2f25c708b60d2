"""Counters and latencies of the segmentation node, and the /diagnostics message built from them.

Counters are cumulative and each received frame ends in exactly one of them (processed, dropped, skipped,
skipped_error, unwatched) once handled; rates and latencies cover the last diagnostics period, so a glance at
`/diagnostics` shows what happens now. The domain-shift status of each camera levels the period's mean statistics
against the model's references (vltseg_core.domain_shift).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from vltseg_core.domain_shift import ERROR, LEVELS, OK, WARN, FrameStats, References, level

STAGES = ("decode", "preprocess", "inference", "postprocess", "render", "publish")
DOMAIN_SHIFT = " domain shift"  # suffix of each camera's domain-shift status name (after its counters' status)
WINDOW = 1000  # samples kept per period; enough for 1 kHz at the default 1 s period


def _window() -> deque:
    return deque(maxlen=WINDOW)


@dataclass
class CameraStats:
    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced by a newer frame in a stage queue (live mode)
    skipped: int = 0  # bad input or a frame the model cannot take
    skipped_error: int = 0  # in a batch that failed with something else (a bug, a backend failure; logged as errors)
    unwatched: int = 0  # not processed because nobody subscribed to any output (live mode)
    ages: deque = field(default_factory=_window)  # header stamp -> publish, node clock (sim time aware), s
    queue_latencies: deque = field(default_factory=_window)  # receive -> publish, steady clock, s
    last_received: int = 0
    last_processed: int = 0
    last_skipped: int = 0  # skipped + skipped_error at the last message
    shifts: deque = field(default_factory=_window)  # domain_shift.frame_record of each frame, this period


@dataclass
class NodeStats:
    identity: dict = field(default_factory=dict)
    mode: str = ""
    state: str = "unconfigured"
    errors: int = 0  # batches that raised something other than bad input (logged as errors)
    cameras: dict[str, CameraStats] = field(default_factory=dict)
    stages: dict[str, deque] = field(default_factory=lambda: {s: _window() for s in STAGES})
    batch_sizes: deque = field(default_factory=_window)  # frames per predict_batch call (cameras sharing the model)
    references: References | None = None  # the model's domain-shift references (None: statistics only)
    queues: dict = field(default_factory=dict)  # the node's vltseg_core.pipeline.StageQueue by name

    def add_camera(self, topic: str) -> None:
        self.cameras[topic] = CameraStats()

    def camera(self, topic: str) -> CameraStats:
        return self.cameras[topic]

    def stage(self, name: str, seconds: float) -> None:
        self.stages.setdefault(name, _window()).append(seconds)


def _drain(samples: deque) -> list:
    """Take the period's samples one by one (popleft is atomic): a sample the stage threads append between a copy
    and a clear() would be lost, this way it counts in the next period."""
    return [samples.popleft() for _ in range(len(samples))]


def _summary(samples: deque, reduce=np.mean, scale: float = 1000.0) -> str:
    """Reduce and forget one period's samples (seconds -> ms by default)."""
    values = _drain(samples)
    return f"{reduce(values) * scale:.1f}" if values else "nan"


def diagnostics_message(stats: NodeStats, node_name: str, period: float, stamp) -> DiagnosticArray:
    """One status for the model (identity, per-stage latency) and one per camera (counters, rates, age)."""
    model = DiagnosticStatus(name=f"{node_name}: model", hardware_id=str(stats.identity.get("device", "")),
                             level=DiagnosticStatus.ERROR if stats.errors else DiagnosticStatus.OK,
                             message=f"{stats.state}, {stats.mode} mode, {stats.errors} failed batches")
    model.values = [KeyValue(key=k, value=str(v)) for k, v in stats.identity.items()]
    model.values += [KeyValue(key=f"latency_ms/{name}", value=_summary(samples))
                     for name, samples in stats.stages.items()]
    model.values += [KeyValue(key="errors", value=str(stats.errors)),
                     KeyValue(key="batch_size_max", value=_summary(stats.batch_sizes.copy(), np.max, 1.0)),
                     KeyValue(key="batch_size_mean", value=_summary(stats.batch_sizes, np.mean, 1.0))]
    # per stage queue: the most frames one camera ever had waiting in it, and its bound (none: unbounded)
    for name, queue in stats.queues.items():
        model.values += [KeyValue(key=f"queue_max/{name}", value=str(queue.high_water)),
                         KeyValue(key=f"queue_bound/{name}", value=str(queue.bound or "none"))]
    statuses = [model]
    for topic, cam in stats.cameras.items():
        in_rate = (cam.received - cam.last_received) / period
        out_rate = (cam.processed - cam.last_processed) / period
        skipped = cam.skipped + cam.skipped_error
        level = DiagnosticStatus.WARN if skipped > cam.last_skipped else DiagnosticStatus.OK
        cam.last_received, cam.last_processed, cam.last_skipped = cam.received, cam.processed, skipped
        status = DiagnosticStatus(name=f"{node_name}: {topic}", level=level, hardware_id=topic,
                                  message=f"{out_rate:.1f} of {in_rate:.1f} frames/s segmented")
        status.values = [KeyValue(key=k, value=str(v)) for k, v in (
            ("received", cam.received), ("processed", cam.processed), ("dropped", cam.dropped),
            ("skipped_bad_input", cam.skipped), ("skipped_error", cam.skipped_error), ("unwatched", cam.unwatched),
            ("input_rate_hz", f"{in_rate:.2f}"), ("output_rate_hz", f"{out_rate:.2f}"),
            ("input_age_ms_max", _summary(cam.ages.copy(), np.max)), ("input_age_ms_mean", _summary(cam.ages)),
            ("receive_to_publish_ms_mean", _summary(cam.queue_latencies)))]
        statuses.append(status)
        statuses.append(domain_shift_status(cam, stats.references, f"{node_name}: {topic}{DOMAIN_SHIFT}", topic))
    msg = DiagnosticArray(status=statuses)
    msg.header.stamp = stamp
    return msg


_DIAGNOSTIC_LEVEL = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}


def domain_shift_status(cam: CameraStats, references: References | None, name: str, topic: str) -> DiagnosticStatus:
    """The period's mean statistics and their level (a lone odd frame shows in frames_warn / frames_error, not in
    the level); class shares averaged over the period."""
    records = _drain(cam.shifts)
    status = DiagnosticStatus(name=name, hardware_id=topic, level=DiagnosticStatus.OK)
    if not records:
        status.message = "no frames analysed this period (nothing segmented, or no /diagnostics subscriber then)"
        return status
    distances = [r["class_distance"] for r in records if r["class_distance"] is not None]
    mean = FrameStats(mean_confidence=float(np.mean([r["mean_confidence"] for r in records])),
                      low_confidence_share=float(np.mean([r["low_confidence_share"] for r in records])),
                      class_shares={}, class_distance=float(np.mean(distances)) if distances else float("nan"))
    lvl, why = level(mean, references)
    status.level, status.message = _DIAGNOSTIC_LEVEL[lvl], f"{lvl}: {why}"
    shares: dict[str, float] = {}
    for r in records:
        for k, v in r["class_shares"].items():
            shares[k] = shares.get(k, 0.0) + v / len(records)
    values = [("frames", len(records)), ("mean_confidence", f"{mean.mean_confidence:.4f}"),
              ("mean_confidence_min", f"{min(r['mean_confidence'] for r in records):.4f}"),
              ("low_confidence_share", f"{mean.low_confidence_share:.4f}"),
              ("low_confidence_share_max", f"{max(r['low_confidence_share'] for r in records):.4f}"),
              ("class_distance", f"{mean.class_distance:.4f}"),
              *((f"frames_{n.lower()}", sum(r["level"] == n for r in records)) for n in LEVELS)]
    if references is not None:
        values += [("references", f"{references.dataset}, {references.frames} frames"),
                   ("threshold", f"{references.threshold:g}"),
                   ("reference_mean_confidence_p1_p5_p50", "/".join(
                       f"{references.mean_confidence[p]:.4f}" for p in ("p1", "p5", "p50"))),
                   ("reference_low_confidence_share_p95_p99", "/".join(
                       f"{references.low_confidence_share[p]:.4f}" for p in ("p95", "p99"))),
                   ("reference_class_distance_p99", f"{references.class_distance['p99']:.4f}")]
    values += [(f"class_share/{k}", f"{v:.4f}") for k, v in sorted(shares.items(), key=lambda kv: -kv[1])]
    status.values = [KeyValue(key=k, value=str(v)) for k, v in values]
    return status
