"""A per-frame domain-shift signal: how sure the model is about a frame, against how sure it was on its own
validation data.

A segmentation model that has left its training distribution (night, rain, another country, a dirty lens) keeps
producing masks; what changes is its confidence. From the confidence map and labels the predictor already returns,
each frame gets its mean confidence, the share of pixels under a threshold and its class shares; reference
percentiles of the same statistics, measured once on the model's validation data, are stored next to the model
(`references_path`) and turn them into OK / WARN / ERROR (`level`; the rule and its reasons are in docs/ros.md).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vltseg_core.errors import VLTSegError

FORMAT = "vltseg-domain-shift-references"
VERSION = 1
THRESHOLD = 0.5  # a pixel "under threshold": its top class has less than half the probability mass
SAMPLE_PIXELS = 1 << 17  # statistics read about this many pixels (a regular grid): ~0.5 ms at 1080x1920
OK, WARN, ERROR = "OK", "WARN", "ERROR"
LEVELS = (OK, WARN, ERROR)
DEMO_REFERENCES = Path(__file__).resolve().parent / "pretrained" / "demo_domain_shift.json"


@dataclass
class FrameStats:
    mean_confidence: float
    low_confidence_share: float  # share of pixels with confidence < threshold
    class_shares: dict[str, float]  # class name -> share of pixels ('unknown' = label 255), classes present only
    class_distance: float  # total-variation distance of class_shares to the references' mean shares (0..1); nan without

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


@dataclass
class References:
    """Percentiles of the per-frame statistics on validation data (the ones `level` compares with)."""
    model: str
    dataset: str
    frames: int
    threshold: float
    mean_confidence: dict[str, float]  # p1, p5, p50, mean
    low_confidence_share: dict[str, float]  # p50, p95, p99
    class_distance: dict[str, float]  # p50, p95, p99 (reported, not leveled: scenes differ legitimately)
    class_shares: dict[str, float] = field(default_factory=dict)  # mean share per class name

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "References":
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise VLTSegError(f"{where}: not domain-shift references (expected format '{FORMAT}' version {VERSION})")
        try:
            refs = cls(**{k: data[k] for k in cls.__dataclass_fields__})
            for group, keys in (("mean_confidence", ("p1", "p5")), ("low_confidence_share", ("p95", "p99"))):
                for key in keys:
                    float(getattr(refs, group)[key])
        except (KeyError, TypeError, ValueError) as exc:
            raise VLTSegError(f"{where}: malformed domain-shift references ({type(exc).__name__}: {exc}; "
                              "re-measure with `vltseg domain-shift`)") from None
        return refs


def sample_step(height: int, width: int) -> int:
    """Grid step so that about SAMPLE_PIXELS pixels are read: means and shares of 131k pixels differ from the
    full frame's by well under a percent point, and the cost stays flat with the camera's resolution."""
    return max(1, round(math.sqrt(height * width / SAMPLE_PIXELS)))


def frame_stats(labels: np.ndarray, confidence: np.ndarray, names: list[str] | tuple[str, ...],
                references: References | None = None, threshold: float | None = None) -> FrameStats:
    """The statistics of one frame from a Prediction's labels (HxW uint8, 255 unknown) and confidence (HxW)."""
    if labels.shape != confidence.shape or labels.ndim != 2:
        raise VLTSegError(f"domain shift: labels {labels.shape} and confidence {confidence.shape} must be the "
                          "same HxW")
    threshold = (references.threshold if references else THRESHOLD) if threshold is None else threshold
    step = sample_step(*labels.shape)
    conf = confidence[::step, ::step]
    counts = np.bincount(labels[::step, ::step].ravel(), minlength=256)
    total = float(counts.sum())
    shares = {(names[c] if c < len(names) else "unknown" if c == 255 else str(c)): counts[c] / total
              for c in np.flatnonzero(counts)}
    shares = {k: round(float(v), 4) for k, v in shares.items()}
    distance = class_distance(shares, references.class_shares) if references and references.class_shares else math.nan
    return FrameStats(mean_confidence=float(conf.mean(dtype=np.float64)),
                      low_confidence_share=float(np.count_nonzero(conf < threshold)) / conf.size,
                      class_shares=shares, class_distance=distance)


def class_distance(shares: dict[str, float], reference: dict[str, float]) -> float:
    """Total-variation distance between two class-share maps: 0 = the same mix of classes, 1 = disjoint."""
    return 0.5 * sum(abs(shares.get(k, 0.0) - reference.get(k, 0.0)) for k in set(shares) | set(reference))


def level(stats: FrameStats, references: References | None) -> tuple[str, str]:
    """(OK | WARN | ERROR, why). ERROR: mean confidence under the validation frames' 1st percentile or the
    low-confidence share over their 99th. WARN: under the 5th / over the 95th, or a class mix farther from the
    validation mean than their 99th percentile (a scene the model was not validated on, even when it is confident:
    never ERROR alone, an empty road legitimately changes the mix). Without references: OK, saying so."""
    if references is None:
        return OK, "no reference values for this model (statistics only)"
    mean, low = references.mean_confidence, references.low_confidence_share
    reasons: dict[str, list[str]] = {ERROR: [], WARN: []}
    for name, percentile_mean, percentile_low in ((ERROR, "p1", "p99"), (WARN, "p5", "p95")):
        if stats.mean_confidence < mean[percentile_mean]:
            reasons[name].append(f"mean confidence {stats.mean_confidence:.3f} < validation {percentile_mean} "
                                 f"{mean[percentile_mean]:.3f}")
        if stats.low_confidence_share > low[percentile_low]:
            reasons[name].append(f"{stats.low_confidence_share:.1%} of pixels under {references.threshold:g} > "
                                 f"validation {percentile_low} {low[percentile_low]:.1%}")
    far = references.class_distance.get("p99")
    if far is not None and stats.class_distance > far:  # nan (no shares to compare) is never greater
        reasons[WARN].append(f"class mix {stats.class_distance:.2f} from the validation mean > validation p99 "
                             f"{far:.2f}")
    for name in (ERROR, WARN):
        if reasons[name]:
            return name, "; ".join(reasons[name])
    return OK, f"within the {references.dataset} validation range"


def frame_record(labels: np.ndarray, confidence: np.ndarray, names: list[str] | tuple[str, ...],
                 references: References | None) -> dict[str, Any]:
    """One frame's statistics with their level and its reason: the record of the node's
    segmentation/domain_shift topic and of `vltseg replay`'s report."""
    stats = frame_stats(labels, confidence, names, references)
    lvl, why = level(stats, references)
    return {**stats.as_dict(), "level": lvl, "reason": why}


def references_path(model: str) -> Path:
    """Where a model's references live: the demo model's in the package, any model file's next to it
    (`final.safetensors` -> `final.domain_shift.json`, the same for .onnx and engines)."""
    return DEMO_REFERENCES if str(model) == "demo" else Path(model).with_suffix(".domain_shift.json")


def load_references(model: str) -> References | None:
    """The stored references of `model`, or None when none were measured (a preset name, a new checkpoint)."""
    if str(model) != "demo" and not Path(model).is_file():
        return None  # a preset name: weights are not a file we can sit next to
    path = references_path(model)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VLTSegError(f"{path}: unreadable domain-shift references ({exc})") from None
    return References.from_dict(data, str(path))


def _percentiles(values: list[float], points: tuple[int, ...]) -> dict[str, float]:
    return {f"p{p}": round(float(np.percentile(values, p)), 4) for p in points}


def measure_references(predictor: Any, dataset: Any, model: str, limit: int | None = None,
                       threshold: float = THRESHOLD) -> References:
    """Run `predictor` over `dataset` (its first `limit` frames, with a progress bar) and take the percentiles."""
    from tqdm import tqdm

    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise VLTSegError(f"domain shift: dataset {dataset.kind}:{dataset.split} has no frames")
    names = list(predictor.class_table.names)
    frames = []
    for i in tqdm(range(count), desc=f"domain-shift references {dataset.kind}:{dataset.split}", unit="img",
                  dynamic_ncols=True):
        pred = predictor.predict(dataset.load(i).image)
        frames.append(frame_stats(pred.labels, pred.confidence, names, threshold=threshold))
    keys = sorted({k for f in frames for k in f.class_shares})
    mean_shares = {k: round(float(np.mean([f.class_shares.get(k, 0.0) for f in frames])), 4) for k in keys}
    refs = References(model=str(model), dataset=f"{dataset.kind}:{dataset.split}", frames=count, threshold=threshold,
                      mean_confidence={**_percentiles([f.mean_confidence for f in frames], (1, 5, 50)),
                                       "mean": round(float(np.mean([f.mean_confidence for f in frames])), 4)},
                      low_confidence_share=_percentiles([f.low_confidence_share for f in frames], (50, 95, 99)),
                      class_distance={}, class_shares=mean_shares)
    refs.class_distance = _percentiles([class_distance(f.class_shares, mean_shares) for f in frames], (50, 95, 99))
    return refs


def save_references(references: References, path: Path) -> Path:
    path.write_text(json.dumps(references.to_dict(), indent=2) + "\n")
    return path
