"""Several recordings in one replay evaluation, shards of them for a cluster scheduler, and the merge of shards.

Each bag is replayed by `replay.replay` into its own folder (`<out>/<name>/bag`, its report, plots); the set's
report adds them up. The totals come from what each bag's report.json stores, never from averages: frame counts
and skip reasons are summed, latency percentiles are taken over every frame's latency, and the mIoU is computed
from the summed confusion matrices. A shard (`--shard K/N`) is a deterministic subset of the inputs, so N jobs
given the same inputs split them without talking to each other, and `merge` runs the same summation over the
shards' bags: the merged report equals the report of one unsharded run.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vltseg_core.classes import ClassTable
from vltseg_core.domain_shift import References
from vltseg_core.errors import VLTSegError
from vltseg_ros.bag_reading import ROS1_SUFFIX, bag_bytes
from vltseg_ros.replay import (STAGES, TopicStats, domain_shift_markdown, domain_shift_plot, domain_shift_summary,
                               label_summary, latency_histogram, percentiles, replay, skipped_and_latency_markdown)

KIND = "vltseg replay set"


@dataclass(frozen=True)
class SetEntry:
    """One input of the set: its place in the full input list and the folder name of its outputs."""

    index: int
    bag: Path
    name: str


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N (K is $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX, both from 0)."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        k = n = -1
    if not 0 <= k < n:
        raise VLTSegError(f"--shard {text}: expected K/N with 0 <= K < N, e.g. 0/4 for the first of four shards")
    return k, n


def plan(bags: list[Path], shard: tuple[int, int] | None = None) -> list[SetEntry]:
    """The entries this run replays: every input, or those of shard K of N. Shards are balanced by size on disk
    (largest bag first, each to the shard with the fewest bytes so far; ties by input order and lowest shard), a
    rule every job computes alike from the same input list."""
    entries = [SetEntry(i, bag, name) for i, (bag, name) in enumerate(zip(bags, output_names(bags)))]
    if shard is None:
        return entries
    k, n = shard
    load = [0] * n
    mine = []
    for entry in sorted(entries, key=lambda e: (-bag_bytes(e.bag), e.index)):
        target = min(range(n), key=lambda s: (load[s], s))
        load[target] += bag_bytes(entry.bag)
        if target == k:
            mine.append(entry)
    return sorted(mine, key=lambda e: e.index)


def output_names(bags: list[Path]) -> list[str]:
    """A folder name per bag, unique within the inputs: its path below their common folder, without the
    storage suffix, '/' -> '__' (`drives/a/run1.bag` and `drives/b/run1.bag` -> `a__run1`, `b__run1`)."""
    absolute = [bag.absolute() for bag in bags]
    root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    names = []
    for path in absolute:
        rel = path.relative_to(root)
        if rel.suffix in (ROS1_SUFFIX, ".mcap", ".db3"):
            rel = rel.with_suffix("")
        names.append("__".join(rel.parts))
    return names


def replay_set(entries: list[SetEntry], inputs: list[Path], predictor, out_dir: Path,
               shard: tuple[int, int] | None = None, topics: list[str] | None = None, labels: str | None = None,
               copy_inputs: bool = False, video: bool = False, label_map: str | None = None,
               references: References | None = None) -> dict:
    """Replay each entry into `out_dir/<name>/`, then write the set's report.{json,md} (and eval.*, the latency
    histogram) into `out_dir`. A bag that fails (cannot be opened, breaks off, nothing decodable) does not stop
    the others: its error is in the report, and a VLTSegError after the report names the failed bags.

    `labels`: a label topic (a bag without it has no labels), or a folder of label PNGs; a folder with a
    sub-folder named like a bag's output folder gives that bag the sub-folder."""
    out_dir = Path(out_dir)
    if (out_dir / "report.json").exists():
        raise VLTSegError(f"{out_dir / 'report.json'} already exists (expected a new --out folder; nothing "
                          f"overwritten)")
    out_dir.mkdir(parents=True, exist_ok=True)
    options = {"topics": topics, "labels": labels, "label_map": label_map, "copy_inputs": copy_inputs,
               "video": video}
    meta = {"kind": KIND, "model": predictor.identity() if entries else None, "options": options,
            "inputs": [str(b) for b in inputs], "shard": list(shard) if shard else None}
    done: list[dict] = []
    try:
        for entry in entries:
            done.append({"index": entry.index, "bag": str(entry.bag), "name": entry.name, "error": None})
            bag_labels = labels
            if labels and (Path(labels) / entry.name).is_dir():
                bag_labels = str(Path(labels) / entry.name)
            print(f"[replay] bag {len(done)}/{len(entries)}: {entry.bag}")
            try:
                replay(entry.bag, predictor, out_dir / entry.name, topics=topics, labels=bag_labels,
                       copy_inputs=copy_inputs, video=video, label_map=label_map, labels_optional=True,
                       references=references)
            except VLTSegError as exc:
                done[-1]["error"] = str(exc)
                print(f"[replay] {entry.bag}: {exc}")
    except KeyboardInterrupt:  # the bag's own report is written; add the set's, then stop
        if done:
            done[-1]["error"] = "interrupted"
        combine(done, [out_dir] * len(done), meta, out_dir)
        raise
    report = combine(done, [out_dir] * len(done), meta, out_dir)
    failed = [e for e in report["bags"] if e["error"]]
    if shard is None:  # one shard may hold only bags without labels
        _check_labels_found(report, out_dir)
    if failed:
        raise VLTSegError(f"{len(failed)} of {len(done)} bags did not replay completely ("
                          + "; ".join(f"{e['bag']}: {e['error']}" for e in failed)
                          + f"); the report of all of them is {out_dir / 'report.md'}")
    return report


def merge(shard_dirs: list[Path], out_dir: Path) -> dict:
    """One report from the --out folders of the N shards of one sharded run (all N, each once)."""
    out_dir = Path(out_dir)
    shards = [(Path(d), _read_set_report(Path(d))) for d in shard_dirs]
    first_dir, first = shards[0]
    for d, rep in shards[1:]:
        for key in ("inputs", "options"):
            if rep[key] != first[key]:
                raise VLTSegError(f"shard {d} was run with other {key} than shard {first_dir} ({rep[key]} vs "
                                  f"{first[key]}; expected the shards of one run)")
    models = {json.dumps(rep["model"], sort_keys=True) for _, rep in shards if rep["model"] is not None}
    if len(models) > 1:
        raise VLTSegError(f"the shards ran different models ({sorted(models)}; expected one model for all)")
    count = first["shard"][1]
    seen = Counter(rep["shard"][0] for _, rep in shards)
    if any(rep["shard"][1] != count for _, rep in shards) or set(seen) != set(range(count)) or max(seen.values()) > 1:
        given = ", ".join(f"{d}: {rep['shard'][0]}/{rep['shard'][1]}" for d, rep in shards)
        raise VLTSegError(f"--merge needs each shard 0/{count} .. {count - 1}/{count} exactly once (given {given})")
    if (out_dir / "report.json").exists():
        raise VLTSegError(f"{out_dir / 'report.json'} already exists (expected a new --out folder; nothing "
                          f"overwritten)")
    pairs = sorted(((e, d) for d, rep in shards for e in rep["bags"]), key=lambda pair: pair[0]["index"])
    meta = {"kind": KIND, "model": json.loads(models.pop()) if models else None, "options": first["options"],
            "inputs": first["inputs"], "shard": None, "merged_from": [str(d) for d, _ in shards]}
    out_dir.mkdir(parents=True, exist_ok=True)
    report = combine([{k: e[k] for k in ("index", "bag", "name", "error")} for e, _ in pairs],
                     [d for _, d in pairs], meta, out_dir)
    _check_labels_found(report, out_dir)
    return report


def _check_labels_found(report: dict, out_dir: Path) -> None:
    """--labels that matched no bag at all is a mistake (a typo in the topic?), not 'no labels'."""
    labels = report["options"]["labels"]
    if labels and report["labels"] is None and any(b["frames"] for b in report["bags"]):
        raise VLTSegError(f"--labels {labels}: neither a topic of any of the bags nor a folder (expected a label "
                          f"topic or a folder of label PNGs; the report without labels is {out_dir / 'report.md'})")


def _read_set_report(folder: Path) -> dict:
    try:
        rep = json.loads((folder / "report.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VLTSegError(f"--merge {folder}: no readable report.json ({exc}; expected the --out folder of a "
                          f"`vltseg replay ... --shard K/N` run)") from None
    if rep.get("kind") != KIND or not rep.get("shard"):
        raise VLTSegError(f"--merge {folder}: report.json is not the report of a shard (expected the --out folder "
                          f"of a `vltseg replay ... --shard K/N` run)")
    return rep


def combine(entries: list[dict], set_dirs: list[Path], meta: dict, out_dir: Path) -> dict:
    """The set's report from its bags' report.json files (`set_dirs[i] / entries[i]['name']`), written into
    `out_dir`: per-bag figures and totals summed from them (frames, skip reasons, every latency sample, confusion
    matrices)."""
    frames, latencies, label_counts = TopicStats(), {stage: [] for stage in STAGES}, Counter()
    matrix, labelled, tables, bags = None, [], [], []
    shifts, shift_refs = [], None  # every bag's per-frame domain-shift records, topics prefixed by the bag
    wall = 0.0
    for entry, set_dir in zip(entries, set_dirs):
        folder = set_dir / entry["name"]
        row = {**entry, "output_dir": str(folder), "frames": None, "latency_ms": {}, "throughput_fps": None,
               "miou": None}
        bags.append(row)
        try:
            rep = json.loads((folder / "report.json").read_text())
        except (OSError, json.JSONDecodeError):  # failed before anything was processed
            continue
        row.update(frames=rep["frames"], latency_ms=rep["latency_ms"], throughput_fps=rep["throughput_fps"],
                   output_bag=rep["output_bag"], storage=rep["storage"])
        frames.read += rep["frames"]["read"]
        frames.processed += rep["frames"]["processed"]
        frames.skipped.update(rep["frames"]["skipped_reasons"])
        frames.in_metadata += rep["frames"]["in_bag_metadata"]
        wall += rep["wall_s"]
        for stage, samples in rep["latency_samples_ms"].items():
            latencies[stage] += samples
        tables.append(rep["class_table"])
        shift = rep.get("domain_shift") or {"frames": [], "references": None}
        shifts += [{**r, "topic": f"{entry['name']}:{r['topic']}"} for r in shift["frames"]]
        shift_refs = shift_refs or shift["references"]
        if rep["labels"]:
            lab = rep["labels"]
            row["miou"] = lab["miou"]
            bag_matrix = np.asarray(lab["confusion_matrix"], np.int64)
            if labelled and (lab["class_ids"] != labelled[0]["class_ids"] or bag_matrix.shape != matrix.shape):
                raise VLTSegError(f"bag {entry['bag']} was scored over other classes than the bags before it "
                                  f"(expected one class table and label map for all bags)")
            matrix = bag_matrix if matrix is None else matrix + bag_matrix
            label_counts.update(lab["label_matching"])
            labelled.append(lab)
    if any(t != tables[0] for t in tables):
        raise VLTSegError("the bags were segmented with different class tables (expected one model for all)")
    report = {**meta, "bags": bags, "frames": frames.as_dict(),
              "latency_ms": {s: percentiles([ms / 1000.0 for ms in v]) for s, v in latencies.items() if v},
              "wall_s": wall, "throughput_fps": frames.processed / wall if wall > 0 else 0.0, "labels": None,
              "errors": sum(1 for b in bags if b["error"]),
              "files": {"report_json": str(out_dir / "report.json"), "report_md": str(out_dir / "report.md")}}
    references = None if shift_refs is None else References.from_dict({**shift_refs, "class_shares": {}},
                                                                         "a bag's report.json")
    report["domain_shift"] = domain_shift_summary(shifts, references)
    if shifts:
        report["files"]["domain_shift_plot"] = str(domain_shift_plot(shifts, references,
                                                                     out_dir / "domain_shift.png"))
    if matrix is not None:
        report["labels"], paths = _total_labels(matrix, tables[0], meta["model"], labelled, label_counts, out_dir)
        report["files"].update({f"eval_{kind}": str(path) for kind, path in paths.items()})
    if any(latencies.values()):
        hist = latency_histogram({s: [ms / 1000.0 for ms in v] for s, v in latencies.items()},
                                 out_dir / "latency_histogram.png")
        report["files"]["latency_histogram"] = str(hist)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "report.md").write_text(set_markdown(report))
    return report


def _total_labels(matrix: np.ndarray, table: dict, identity: dict, labelled: list[dict], counts: Counter,
                  out_dir: Path):
    from vltseg_core.evaluation import ConfusionMatrix

    classes = ClassTable(table["name"], tuple(table["names"]), np.asarray(table["colors"], np.uint8),
                         table["ignore_index"])
    total = ConfusionMatrix(num_classes=classes.num_classes, ignore_index=classes.ignore_index)
    total.mat = matrix
    descriptions = ", ".join(dict.fromkeys(lab["labels"] for lab in labelled))
    return label_summary(total, classes, identity, f"replay:{len(labelled)} bags", labelled[0]["class_ids"],
                         descriptions, counts, out_dir)


def set_markdown(report: dict) -> str:
    f = report["frames"]
    shard = f" (shard {report['shard'][0]}/{report['shard'][1]})" if report["shard"] else ""
    merged = report.get("merged_from")
    lines = [f"# Replay of {len(report['bags'])} bags{shard}", "",
             f"Model: `{json.dumps(report['model'], default=str)}`", ""]
    if merged:
        lines += [f"Merged from {len(merged)} shards: " + ", ".join(f"`{d}`" for d in merged) + ".", ""]
    lines += [f"Frames: {f['read']} read, {f['processed']} processed, {f['skipped']} skipped; "
              f"throughput {report['throughput_fps']:.2f} frames/s over {report['wall_s']:.1f} s of replay.", "",
              "| bag | read | processed | skipped | p50 total ms | mIoU | error |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for b in report["bags"]:
        fr = b["frames"] or {"read": 0, "processed": 0, "skipped": 0}
        p50 = b["latency_ms"].get("total", {}).get("p50")
        lines.append(f"| `{b['name']}` | {fr['read']} | {fr['processed']} | {fr['skipped']} | {_num(p50, 1)} | "
                     f"{_num(b['miou'], 2)} | {b['error'] or ''} |")
    total_p50 = report["latency_ms"].get("total", {}).get("p50")
    total_miou = report["labels"]["miou"] if report["labels"] else None
    lines.append(f"| **total** | {f['read']} | {f['processed']} | {f['skipped']} | {_num(total_p50, 1)} | "
                 f"{_num(total_miou, 2)} | {report['errors'] or ''} |")
    lines += skipped_and_latency_markdown(f["skipped_reasons"], report["latency_ms"])
    if report["labels"]:
        lab = report["labels"]
        miou = "n/a" if lab["miou"] is None else f"{lab['miou']:.2f}"
        lines += ["", f"## mIoU {miou} over {lab['num_images']} frames (summed confusion matrices)", "",
                  "Label matching: " + ", ".join(f"{n} {k}" for k, n in lab["label_matching"].items()) + ".",
                  f"Per-class IoU: `{Path(report['files']['eval_markdown']).name}`, "
                  f"`{Path(report['files']['eval_chart']).name}`."]
    lines += domain_shift_markdown(report["domain_shift"])
    return "\n".join(lines) + "\n"


def _num(x: float | None, digits: int) -> str:
    return "" if x is None else f"{x:.{digits}f}"
