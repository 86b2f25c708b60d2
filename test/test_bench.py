"""Smoke test of `vltseg bench` on the tiny preset: every layer really runs (the node in its own process over real
rclpy, replay on a generated bag, torch and onnxruntime) for two frames per cell, and the JSON, the Markdown table
and the PNG plot are well-formed and agree with each other. Speed is never asserted: that is what the bench is for."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vltseg_core.bench import CUMULATIVE_PEAK_RSS
from vltseg_core.cli import main

LAYERS = ("backend", "predictor", "node", "node-live", "replay")
BACKENDS = ("torch",)  # the onnxruntime path is the same code; its target logic is tested below
SIZES = ("32x48", "48x64")


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = main(["bench", "--model", "tiny-test", "--backend", ",".join(BACKENDS), "--sizes", ",".join(SIZES),
               "--warmup", "1", "--iters", "2", "--out", str(out)])
    assert rc == 0
    return out


def test_json_has_every_cell_with_consistent_statistics(bench_out):
    report = json.loads((bench_out / "bench.json").read_text())
    rows = {(r["layer"], r["backend"], r["size"]): r for r in report["results"]}
    assert set(rows) == {(lay, b, s) for lay in LAYERS for b in BACKENDS for s in SIZES}
    for (layer, backend, size), row in rows.items():
        assert row["size_hw"] == [int(v) for v in size.split("x")]
        assert row["frames_per_s"] > 0 and row["peak_rss_mib"] > 0
        assert 0 < row["median_ms"] <= row["p95_ms"]
        if layer == "replay":
            assert row["details"]["frames"] == 2 and row["latencies_s"] == []
        elif layer == "node-live":  # a camera faster than the model: every mask's age, drops counted
            d = row["details"]
            assert d["camera_hz"] >= 30 and d["published"] >= 30 * d["window_s"] * 0.5
            assert 0 < d["processed"] == row["n"] and d["dropped"] == d["published"] - d["processed"]
            assert len(d["one_at_a_time_ms"]) == 1 and row["below"] == "node"
            assert all(t > 0 for t in row["latencies_s"])
        else:
            assert row["n"] == 2 and all(t > 0 for t in row["latencies_s"])
            assert row["median_ms"] == pytest.approx(np.median(row["latencies_s"]) * 1e3)
            assert row["frames_per_s"] == pytest.approx(2 / sum(row["latencies_s"]))
    for backend in BACKENDS:
        for size in SIZES:
            pred, back = rows[("predictor", backend, size)], rows[("backend", backend, size)]
            node, rep = rows[("node", backend, size)], rows[("replay", backend, size)]
            assert back["ratio_to_below"] is None
            assert pred["ratio_to_below"] == pytest.approx(pred["median_ms"] / back["median_ms"])
            assert node["below"] == "predictor"
            assert node["ratio_to_below"] == pytest.approx(node["median_ms"] / pred["median_ms"])
            assert rep["ratio_to_below"] == pytest.approx(rep["frames_per_s"] / pred["frames_per_s"])
            assert node["details"]["node_stage_mean_ms"]["inference"] > 0  # the node's own /diagnostics
            assert len(node["details"]["predictor_interleaved_ms"]) == 2  # one predictor frame after each node frame
            h, w = (int(v) for v in size.split("x"))
            assert back["details"]["batches"] == [[1, 3, h, w]]  # tiny-test infers at the input size


def test_targets_and_machine_identity(bench_out):
    report = json.loads((bench_out / "bench.json").read_text())
    kinds = [t["target"] for t in report["targets"]]
    assert sum("node adds" in k for k in kinds) == len(BACKENDS) * len(SIZES)
    assert sum("replay" in k for k in kinds) == len(BACKENDS) * len(SIZES)
    assert all(isinstance(t["met"], bool) and t["value"] for t in report["targets"])
    assert report["peak_rss"] in ("per layer", CUMULATIVE_PEAK_RSS)
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["torch"] == torch.__version__
    assert machine["onnxruntime"]
    assert report["backends"]["torch"]["backend"] == "torch"  # Predictor.identity() of each backend


def test_targets_met_and_missed_at_their_thresholds():
    """The three targets on hand-made rows just inside and just outside each threshold."""
    from vltseg_core.bench import add_ratios, evaluate_targets

    def row(layer, backend, median, fps=None):
        return {"layer": layer, "backend": backend, "size": "360x480", "median_ms": median,
                "frames_per_s": fps or 1e3 / median}

    rows = [row("predictor", "torch", 100.0, 10.0), row("node", "torch", 105.0), row("replay", "torch", 100.0, 9.5),
            row("predictor", "onnxruntime", 40.0, 25.0), row("node", "onnxruntime", 43.5),
            row("replay", "onnxruntime", 40.0, 23.0), row("backend", "torch", 90.0), row("backend", "onnxruntime", 95.0)]
    add_ratios(rows)
    targets = evaluate_targets(rows, "cpu")

    def met(words: str, backend: str) -> bool:
        (found,) = [t["met"] for t in targets if words in t["target"] and t["backend"] == backend]
        return found

    assert met("node adds", "torch") is True  # +5 ms = 5 % of 100 ms
    assert met("node adds", "onnxruntime") is False  # +3.5 ms > max(2 ms, 3 ms)
    assert met("replay", "torch") is True  # exactly 95 %
    assert met("replay", "onnxruntime") is False  # 92 %
    assert met("(predictor)", "onnxruntime") is True  # 40 vs 100 ms
    assert met("(backend)", "onnxruntime") is False  # 95 vs 90 ms
    assert evaluate_targets(rows, "cuda")[-1]["target"].startswith("replay")  # the CPU-only target is skipped
    assert rows[1]["ratio_to_below"] == pytest.approx(1.05)

    # where the node row carries predictor frames interleaved with its own, the target is judged on those (the
    # same load), and it needs no predictor cell
    rows[1]["details"] = {"predictor_interleaved_ms": [101.0, 99.0, 98.0]}  # median 99: +6 ms > 5 %
    (node_torch,) = [t for t in evaluate_targets(rows, "cpu") if "node adds" in t["target"] and t["backend"] == "torch"]
    assert not node_torch["met"]
    alone = [dict(rows[1], details={"predictor_interleaved_ms": [100.0]})]
    (target,) = evaluate_targets(alone, "cpu")
    assert target["met"] and "interleaved" in target["value"]


def test_markdown_and_plot(bench_out):
    report = json.loads((bench_out / "bench.json").read_text())
    markdown = (bench_out / "bench.md").read_text()
    assert report["command"] in markdown
    lines = markdown.splitlines()
    for row in report["results"]:
        cells = f"| {row['layer']} | {row['backend']} | {row['size']} | {row['median_ms']:.1f} | {row['p95_ms']:.1f} |"
        assert sum(line.startswith(cells) for line in lines) == 1, cells
    assert markdown.count("| met |") + markdown.count("| **missed** |") == len(report["targets"])
    with Image.open(bench_out / "latency_vs_resolution.png") as png:
        assert png.format == "PNG" and png.width > 300 and png.height > 200


def test_peak_rss_without_clear_refs_is_marked_cumulative(monkeypatch):
    """Containers may refuse writes to /proc/<pid>/clear_refs: the bench goes on and says what its peak RSS is."""
    from vltseg_core import bench

    assert bench.reset_peak_rss("no-such-process") is False
    with bench.peak_memory("cpu") as peak:  # whether or not the window could be reset here
        pass
    assert peak["rss_mib"] > 0
    monkeypatch.setattr(bench, "reset_peak_rss", lambda pid="self": False)
    row = bench.LayerResult("predictor", "torch", (32, 48), [0.01, 0.02], 66.7, peak["rss_mib"])
    report = bench.build_report([row], {"torch": {"backend": "torch"}}, "tiny-test", "cpu", "fp32", 1, 2,
                                "vltseg bench")
    assert report["peak_rss"] == bench.CUMULATIVE_PEAK_RSS
    assert f"Peak RSS is {bench.CUMULATIVE_PEAK_RSS}" in bench.markdown_report(report)


@pytest.mark.parametrize("option, value, expected", [("--sizes", "360by480", "--sizes"),
                                                     ("--layers", "backend,gpu", "--layers")])
def test_bad_options_are_one_clear_line(tmp_path, capsys, option, value, expected):
    assert main(["bench", "--model", "tiny-test", option, value, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and value.split(",")[-1] in err[0]
    assert not (tmp_path / "bench.json").exists()
