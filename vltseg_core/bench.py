"""`vltseg bench`: where the time goes, layer by layer (bare backend -> predictor -> node -> replay).

This module holds the ROS-free layers, what every layer shares (percentiles, peak memory, machine identity, the
test frame) and the JSON / Markdown / PNG report. The ROS layers live in `vltseg_ros.bench_node` and are imported
only when asked for, so `vltseg_core` never imports ROS.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vltseg_core.errors import VLTSegError

# Layer name -> "module:function"; each layer is measured on top of the one before it. A layer function takes a
# BenchSetup and the sizes and returns one LayerResult per size.
LAYERS: dict[str, str] = {
    "backend": "vltseg_core.bench:bench_backend",
    "predictor": "vltseg_core.bench:bench_predictor",
    "node": "vltseg_ros.bench_node:bench_node",
    "node-live": "vltseg_ros.bench_node:bench_node_live",  # a camera faster than the model, live mode
    "replay": "vltseg_ros.bench_node:bench_replay",
}
# Layers that run inference in this process run it on one worker thread, as the node does (its inference worker):
# torch's OpenMP team on the main thread spin-waits, which on a CPU shared with other busy processes made the same
# predict 3.5x slower than on a worker thread (docs/benchmarks.md), and would be mistaken for a layer's overhead.
# The node layer stays on the main thread: it only publishes and waits (rclpy), inference is in the node process.
MAIN_THREAD_LAYERS = {"node", "node-live"}
NODE_OVERHEAD_REL, NODE_OVERHEAD_ABS_MS = 0.05, 3.0  # node may add max(5 %, 3 ms) over the predictor
REPLAY_MIN_RATIO = 0.95  # replay reaches at least 95 % of the predictor's throughput
CUMULATIVE_PEAK_RSS = "cumulative since each process started (/proc/<pid>/clear_refs is not writable here)"


@dataclass
class LayerResult:
    """One layer measured for one backend at one input size. Replay has no per-frame latencies, only throughput."""

    layer: str
    backend: str
    size: tuple[int, int]  # (H, W) of the input frame
    latencies_s: list[float]  # per frame, warm-up excluded
    frames_per_s: float
    peak_rss_mib: float
    cuda_max_allocated_mib: float | None = None  # torch's allocator on the chosen device
    cuda_device_used_mib: float | None = None  # the whole device at the end (TensorRT / ONNX Runtime included)
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s, dtype=np.float64) * 1e3
        out = asdict(self)
        out["size"] = f"{self.size[0]}x{self.size[1]}"
        out["n"] = int(lat.size)
        # replay reports its own per-frame percentiles (decode + predict + write) in `details`
        out["median_ms"] = float(np.median(lat)) if lat.size else self.details.get("median_ms")
        out["p95_ms"] = float(np.percentile(lat, 95)) if lat.size else self.details.get("p95_ms")
        return out


@dataclass
class BenchSetup:
    """What every layer of one backend needs; the predictor is loaded once and shared by the in-process layers."""

    model: str
    backend: str
    device: str
    precision: str
    warmup: int
    iters: int
    predictor: Any  # vltseg_core.predictor.Predictor
    tick: Callable[[], None] = lambda: None  # advances the progress bar by one frame
    # runs fn(*args) on the bench's inference worker thread: the node layer times predictor frames interleaved
    # with its own, so both see the same load (on a shared machine two cells a minute apart differ by 10 %)
    in_worker: Callable[..., Any] = lambda fn, *args: fn(*args)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'360x480,512x1024' -> [(360, 480), (512, 1024)] (height x width)."""
    from vltseg_core.export.onnx_export import parse_size

    try:
        sizes = [parse_size(item) for item in filter(None, (s.strip() for s in text.split(",")))]
    except VLTSegError as exc:
        raise VLTSegError(f"--sizes: {exc}") from None
    if not sizes:
        raise VLTSegError("--sizes is empty (expected HEIGHTxWIDTH[,HEIGHTxWIDTH...], e.g. 360x480)")
    return sizes


def parse_layers(text: str) -> list[str]:
    layers = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [name for name in layers if name not in LAYERS]
    if unknown or not layers:
        raise VLTSegError(f"unknown layer(s) {unknown or text!r} in --layers (expected a subset of {list(LAYERS)})")
    return [name for name in LAYERS if name in layers]  # always bottom-up


def test_frame(size: tuple[int, int]) -> np.ndarray:
    """A deterministic HxWx3 uint8 RGB frame; dense models cost the same whatever the pixels show."""
    return np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)


def read_peak_rss_mib(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) of a process since its start or since the last reset_peak_rss."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status)[1]) / 1024


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Start a new peak-RSS window so that each layer reports its own peak (Linux >= 4.0). False where
    /proc/<pid>/clear_refs cannot be written (some containers): the peak then counts from the process start."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@contextmanager
def peak_memory(device: str) -> Iterator[dict[str, float | None]]:
    """Peak RSS (MiB) and, on the chosen CUDA device, torch's max allocated memory and the device's memory in use
    at the end (MiB; it includes what TensorRT and ONNX Runtime allocate outside torch, and other processes')."""
    import torch

    cuda = device.startswith("cuda") and torch.cuda.is_available()
    reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    peak: dict[str, float | None] = {"rss_mib": None, "cuda_mib": None, "cuda_used_mib": None}
    yield peak
    peak["rss_mib"] = read_peak_rss_mib()
    if cuda:
        peak["cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        free, total = torch.cuda.mem_get_info(device)
        peak["cuda_used_mib"] = (total - free) / 2**20


def machine_identity(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, memory, library versions (and the GPU when one is used): the figures' provenance."""
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").is_file() else ""
    mem = re.search(r"MemTotal:\s+(\d+)", meminfo)
    ident: dict[str, Any] = {
        "cpu": model[1].strip() if model else platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(mem[1]) / 2**20, 1) if mem else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import onnxruntime

        ident["onnxruntime"] = onnxruntime.__version__
        ident["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        ident["onnxruntime"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        ident["gpu"] = torch.cuda.get_device_name(device)
        ident["cuda"] = torch.version.cuda
    return ident


def time_calls(fn: Callable[[], Any], warmup: int, iters: int, tick: Callable[[], None]) -> list[float]:
    """Seconds per call of `fn`, `warmup` calls first and not counted."""
    for _ in range(warmup):
        fn()
        tick()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        tick()
    return times


def _result(layer: str, setup: BenchSetup, size: tuple[int, int], times: list[float], peak: dict,
            details: dict | None = None) -> LayerResult:
    return LayerResult(layer=layer, backend=setup.backend, size=size, latencies_s=times,
                       frames_per_s=len(times) / sum(times), peak_rss_mib=peak["rss_mib"],
                       cuda_max_allocated_mib=peak["cuda_mib"], cuda_device_used_mib=peak["cuda_used_mib"],
                       details=details or {})


def backend_batches(predictor: Any, frame: np.ndarray) -> list[np.ndarray]:
    """The exact batches the predictor hands its backend for `frame` (resized; one per crop chunk in slide mode)."""
    real, batches = predictor.backend, []

    class Recorder:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def infer_device(self, batch: np.ndarray) -> Any:
            batches.append(batch.copy())
            return real.infer_device(batch)

    predictor.backend = Recorder()
    try:
        predictor.predict(frame)
    finally:
        predictor.backend = real
    return batches


def bench_backend(setup: BenchSetup, sizes: list[tuple[int, int]]) -> list[LayerResult]:
    """The bare backend (`infer_device`, as the predictor calls it) on the batches the predictor would feed it for
    one frame (no pre/post-processing)."""
    results = []
    for size in sizes:
        batches = backend_batches(setup.predictor, test_frame(size))
        backend = setup.predictor.backend

        def infer() -> None:
            for batch in batches:
                backend.infer_device(batch)

        with peak_memory(setup.device) as peak:
            times = time_calls(infer, setup.warmup, setup.iters, setup.tick)
        shapes = [list(batch.shape) for batch in batches]
        results.append(_result("backend", setup, size, times, peak, {"batches": shapes}))
    return results


def bench_predictor(setup: BenchSetup, sizes: list[tuple[int, int]]) -> list[LayerResult]:
    """`Predictor.predict` on an HxWx3 uint8 frame: pre-processing, inference and post-processing."""
    results = []
    for size in sizes:
        frame = test_frame(size)
        stages: dict[str, list[float]] = {}

        def predict() -> None:
            setup.predictor.predict(frame)
            for stage, seconds in (setup.predictor.last_timings or {}).items():
                stages.setdefault(stage, []).append(seconds)

        with peak_memory(setup.device) as peak:
            times = time_calls(predict, setup.warmup, setup.iters, setup.tick)
        medians = {f"{stage}_median_ms": float(np.median(v[setup.warmup:]) * 1e3) for stage, v in stages.items()}
        results.append(_result("predictor", setup, size, times, peak, medians))
    return results


def layer_function(layer: str) -> Callable[[BenchSetup, list[tuple[int, int]]], list[LayerResult]]:
    module_name, func_name = LAYERS[layer].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise VLTSegError(f"layer '{layer}' needs {module_name}, which does not import ({exc}); "
                          "install the 'ros' extra or leave the layer out of --layers") from exc
    return getattr(module, func_name)


class _Worker:
    """One long-lived daemon thread running jobs one at a time (daemon: Ctrl-C does not wait for it)."""

    def __init__(self) -> None:
        self.jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, name="bench-worker", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, args, box, done = self.jobs.get()
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                box["error"] = exc
            done.set()

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        box: dict[str, Any] = {}
        done = threading.Event()
        self.jobs.put((fn, args, box, done))
        while not done.wait(0.1):  # short waits keep the main thread responsive to Ctrl-C
            pass
        if "error" in box:
            raise box["error"]
        return box["value"]


def run_bench(model: str, backends: list[str], sizes: list[tuple[int, int]], layers: list[str], device: str = "cpu",
              precision: str = "fp32", warmup: int = 3, iters: int = 20,
              on_layer_done: Callable[[list[LayerResult], dict[str, dict]], None] = lambda results, identities: None
              ) -> tuple[list[LayerResult], dict[str, dict]]:
    """Measure every layer for every backend and size, on this machine, in this one run; returns the results and
    each backend's `Predictor.identity()`. `on_layer_done` gets both after each layer (the command writes the
    report each time, so a failure loses nothing)."""
    from tqdm import tqdm

    from vltseg_core.predictor import load_predictor

    functions = {layer: layer_function(layer) for layer in layers}
    # replay measures whole bags (warm-up + iters frames); every other layer sends warm-up + iters frames too
    total = len(backends) * len(sizes) * len(layers) * (warmup + iters)
    results: list[LayerResult] = []
    identities: dict[str, dict] = {}
    worker = _Worker()
    with tqdm(total=total, desc="bench", unit="frame") as bar:
        for backend in backends:
            bar.set_postfix_str(f"loading {model} on {backend}")
            predictor = load_predictor(model, backend=backend, device=device, precision=precision)
            setup = BenchSetup(model, backend, device, precision, warmup, iters, predictor, lambda: bar.update(1),
                               worker.run)
            for layer, function in functions.items():
                bar.set_postfix_str(f"{backend} {layer}")
                if layer in MAIN_THREAD_LAYERS:
                    results.extend(function(setup, sizes))
                else:
                    results.extend(worker.run(function, setup, sizes))
                identities[backend] = predictor.identity()
                on_layer_done(results, identities)
    return results, identities


def _key(r: LayerResult | dict) -> tuple[str, str]:
    size = r.size if isinstance(r, LayerResult) else r["size"]
    backend = r.backend if isinstance(r, LayerResult) else r["backend"]
    return backend, size if isinstance(size, str) else f"{size[0]}x{size[1]}"


def add_ratios(rows: list[dict]) -> None:
    """Each row gets `ratio_to_below`: its median latency over the layer below it (replay: its throughput over the
    predictor's, the figure the replay target is stated in)."""
    by_key = {(row["layer"], *_key(row)): row for row in rows}
    below = {"predictor": "backend", "node": "predictor", "node-live": "node", "replay": "predictor"}
    for row in rows:
        ref = by_key.get((below.get(row["layer"]), *_key(row)))
        row["below"] = ref["layer"] if ref else None
        if ref is None:
            row["ratio_to_below"] = None
        elif row["layer"] == "replay":
            row["ratio_to_below"] = row["frames_per_s"] / ref["frames_per_s"]
        else:
            row["ratio_to_below"] = row["median_ms"] / ref["median_ms"]


def evaluate_targets(rows: list[dict], device: str, target_sizes: list[str] | None = None) -> list[dict]:
    """The issue's three targets, each met / missed with its numbers. `target_sizes` restricts the node target to
    the demo model's size (all sizes when None)."""
    by_key = {(row["layer"], *_key(row)): row for row in rows}
    targets = []
    for row in rows:
        backend, size = _key(row)
        pred = by_key.get(("predictor", backend, size))
        interleaved = (row.get("details") or {}).get("predictor_interleaved_ms")
        if row["layer"] == "node" and (pred or interleaved) and (target_sizes is None or size in target_sizes):
            # the predictor's frames interleaved with the node's where measured (the same load), else its cell
            ref = float(np.median(interleaved)) if interleaved else pred["median_ms"]
            which = " (predictor frames interleaved with the node's)" if interleaved else ""
            added = row["median_ms"] - ref
            allowed = max(NODE_OVERHEAD_REL * ref, NODE_OVERHEAD_ABS_MS)
            targets.append({"target": "node adds <= max(5 %, 3 ms) over the predictor", "backend": backend,
                            "size": size, "met": added <= allowed,
                            "value": f"+{added:.1f} ms ({added / ref:+.1%}) over {ref:.1f} ms{which}; "
                                     f"allowed {allowed:.1f} ms"})
        if pred is None:
            continue
        if row["layer"] == "replay":
            ratio = row["frames_per_s"] / pred["frames_per_s"]
            targets.append({"target": "replay >= 95 % of the predictor's throughput", "backend": backend,
                            "size": size, "met": ratio >= REPLAY_MIN_RATIO,
                            "value": f"{row['frames_per_s']:.2f} vs {pred['frames_per_s']:.2f} frames/s "
                                     f"({ratio:.1%})"})
    if device == "cpu":
        for layer in ("backend", "predictor"):
            for (lay, backend, size), ort in by_key.items():
                torch_row = by_key.get((layer, "torch", size))
                if lay != layer or backend != "onnxruntime" or torch_row is None:
                    continue
                targets.append({"target": f"onnxruntime no slower than torch on CPU ({layer})", "backend":
                                "onnxruntime", "size": size, "met": ort["median_ms"] <= torch_row["median_ms"],
                                "value": f"{ort['median_ms']:.1f} vs {torch_row['median_ms']:.1f} ms "
                                         f"({ort['median_ms'] / torch_row['median_ms']:.2f}x)"})
    return targets


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def markdown_report(report: dict) -> str:
    """The Markdown table of `vltseg bench` (also pasted into docs/benchmarks.md)."""
    ident = report["machine"]
    lines = [f"Model `{report['model']}`, device `{report['device']}`, precision `{report['precision']}`, "
             f"{report['warmup']} warm-up + {report['iters']} measured frames per cell.",
             f"Machine: {ident['cpu']}, {ident['cores']} cores, {ident.get('memory_gib')} GiB"
             + (f", GPU {ident['gpu']} (CUDA {ident['cuda']})" if ident.get("gpu") else "")
             + f"; torch {ident['torch']} ({ident['torch_threads']} threads), onnxruntime {ident.get('onnxruntime')}.",
             f"Command: `{report['command']}`", ""]
    lines += [f"- `{name}`: " + ", ".join(f"{k}={v}" for k, v in identity.items()) for name, identity in
              report["backends"].items()]
    if report["peak_rss"] != "per layer":
        lines += ["", f"Peak RSS is {report['peak_rss']}: a layer's figure includes the layers measured before it."]
    lines += ["", "| layer | backend | size (HxW) | median ms | p95 ms | frames/s | vs layer below | peak RSS MiB |",
              "| --- | --- | --- | ---: | ---: | ---: | --- | ---: |"]
    for row in report["results"]:
        ratio = row["ratio_to_below"]
        vs = "-" if ratio is None else (f"{ratio:.1%} of {row['below']} fps" if row["layer"] == "replay"
                                        else f"{ratio:.2f}x {row['below']}")
        rss = _fmt(row["peak_rss_mib"], ".0f")
        if row["cuda_max_allocated_mib"] is not None:
            rss += f" (CUDA torch {row['cuda_max_allocated_mib']:.0f}, device {row['cuda_device_used_mib']:.0f})"
        lines.append(f"| {row['layer']} | {row['backend']} | {row['size']} | {_fmt(row['median_ms'])} | "
                     f"{_fmt(row['p95_ms'])} | {row['frames_per_s']:.2f} | {vs} | {rss} |")
    node_rows = [row for row in report["results"] if row["details"].get("node_stage_mean_ms")]
    if node_rows:
        stages = ("decode", "preprocess", "inference", "postprocess", "render", "publish", "receive_to_publish")
        lines += ["", "Inside the node (means over the measured frames, ms, from its /diagnostics):", "",
                  "| backend | size | " + " | ".join(stages) + " |", "| --- | --- |" + " ---: |" * len(stages)]
        lines += [f"| {row['backend']} | {row['size']} | " + " | ".join(
            _fmt(row["details"]["node_stage_mean_ms"].get(stage)) for stage in stages) + " |" for row in node_rows]
    live_rows = [row for row in report["results"] if row["layer"] == "node-live"]
    if live_rows:
        lines += ["", "The node in live mode under a camera faster than the model (age: the frame's publish -> its "
                  "mask received; median ms above is the median age):", "",
                  "| backend | size | camera Hz | published | processed | dropped | frames/s processed | age p50 ms "
                  "| age p95 ms | one at a time ms |", "| --- | --- |" + " ---: |" * 8]
        lines += [f"| {row['backend']} | {row['size']} | {row['details']['camera_hz']:.1f} | "
                  f"{row['details']['published']} | {row['details']['processed']} | {row['details']['dropped']} | "
                  f"{row['frames_per_s']:.2f} | {_fmt(row['median_ms'])} | {_fmt(row['p95_ms'])} | "
                  f"{_fmt(float(np.median(row['details']['one_at_a_time_ms'])))} |" for row in live_rows]
    replay_rows = [row for row in report["results"] if row["details"].get("stage_median_ms")]
    if replay_rows:
        stages = ("decode", "preprocess", "inference", "postprocess", "write", "total")
        lines += ["", "Inside replay (medians per frame, ms, from its report; wall = 1000 / throughput, so wall - total "
                  "is reading the bag and the loop itself):", "",
                  "| backend | size | " + " | ".join(stages) + " | wall |", "| --- | --- |" + " ---: |" * (len(stages) + 1)]
        lines += [f"| {row['backend']} | {row['size']} | " + " | ".join(
            _fmt(row["details"]["stage_median_ms"].get(stage)) for stage in stages)
            + f" | {1e3 / row['frames_per_s']:.1f} |" for row in replay_rows]
    if report["targets"]:
        lines += ["", "| target | backend | size | result | figures |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {t['target']} | {t['backend']} | {t['size']} | {'met' if t['met'] else '**missed**'} | "
                  f"{t['value']} |" for t in report["targets"]]
    return "\n".join(lines) + "\n"


def plot_latency(rows: list[dict], path: Path) -> None:
    """Median latency (p95 as the upper whisker) against input pixels, one line per layer and backend; replay is
    drawn as its time per frame (1 / throughput)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        series.setdefault((row["layer"], row["backend"]), []).append(row)
    layers = list(dict.fromkeys(layer for layer, _ in series))
    backends = list(dict.fromkeys(backend for _, backend in series))
    styles = ["-", "--", ":", "-."]
    ticks: dict[float, str] = {}
    for (layer, backend), points in series.items():
        points.sort(key=lambda r: r["size_hw"][0] * r["size_hw"][1])
        mpix = [r["size_hw"][0] * r["size_hw"][1] / 1e6 for r in points]
        median = [r["median_ms"] if r["median_ms"] is not None else 1e3 / r["frames_per_s"] for r in points]
        upper = [max(0.0, (r["p95_ms"] or m) - m) for r, m in zip(points, median)]
        # colour = layer, line style = backend: the layers of one backend sit together, backends are told apart
        ax.errorbar(mpix, median, yerr=[[0] * len(upper), upper], marker="o", capsize=3,
                    color=f"C{layers.index(layer)}", linestyle=styles[backends.index(backend) % len(styles)],
                    label=f"{layer} ({backend})")
        ticks.update({x: f"{r['size']}\n{x:.2f} MP" for x, r in zip(mpix, points)})
    ax.set_xticks(list(ticks), list(ticks.values()), fontsize=8)
    ax.set_xlabel("input size (HxW, megapixels)")
    ax.set_ylabel("latency per frame (ms): median, whisker to p95")
    ax.set_title("vltseg bench: latency vs input resolution")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_report(results: list[LayerResult], identities: dict[str, dict], model: str, device: str, precision: str,
                 warmup: int, iters: int, command: str, target_sizes: list[str] | None = None) -> dict[str, Any]:
    rows = []
    for result in results:
        row = result.summary()
        row["size_hw"] = list(result.size)
        rows.append(row)
    add_ratios(rows)
    # Whether each layer's peak RSS is its own: the same on every process of this machine, so ask this one.
    peak_rss = "per layer" if reset_peak_rss() else CUMULATIVE_PEAK_RSS
    return {"model": model, "device": device, "precision": precision, "warmup": warmup, "iters": iters,
            "command": command, "machine": machine_identity(device), "backends": identities, "results": rows,
            "peak_rss": peak_rss, "targets": evaluate_targets(rows, device, target_sizes)}


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """bench.json (everything, per-frame latencies included), bench.md (the table), latency_vs_resolution.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md",
             "plot": out_dir / "latency_vs_resolution.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["markdown"].write_text(markdown_report(report))
    plot_latency(report["results"], paths["plot"])
    return paths
