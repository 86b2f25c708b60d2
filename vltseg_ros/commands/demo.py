"""`vltseg demo`: the real segmentation node on real dashcam footage, in minutes on a CPU (docs/replay.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vltseg_ros.demo import DemoOptions

DEFAULTS = DemoOptions()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bag", type=Path,
                        help="a rosbag2 with one camera (default: the demo bag from `vltseg setup`)")
    parser.add_argument("--out", type=Path, default=DEFAULTS.out, help="results go to OUT/<date-time>/")
    parser.add_argument("--model", default=DEFAULTS.model, help="preset, checkpoint, .onnx / engine file, or 'demo'")
    parser.add_argument("--backend", default=DEFAULTS.backend, help="torch, onnxruntime, tensorrt or auto")
    parser.add_argument("--device", default=DEFAULTS.device, help="cpu or cuda[:N]")
    parser.add_argument("--seconds", type=float, default=DEFAULTS.seconds, help="clip length (bag time, s)")
    parser.add_argument("--start", type=float, default=DEFAULTS.start, help="clip start (s into the bag)")
    parser.add_argument("--fps", type=float, default=DEFAULTS.fps, help="frames played per second of bag time")
    parser.add_argument("--rate", type=float, default=DEFAULTS.rate,
                        help="0: each frame waits for the node's answer to the last; R > 0: play at R x bag time")
    parser.add_argument("--pngs", type=int, default=DEFAULTS.pngs, help="how many overlay PNGs to save")
    parser.add_argument("--node-timeout", type=float, default=DEFAULTS.node_timeout,
                        help="seconds the node may take to load the model and become active")


def run(args: argparse.Namespace) -> int:
    from vltseg_ros.demo import run_demo

    opts = DemoOptions(bag=args.bag, out=args.out, model=args.model, backend=args.backend, device=args.device,
                       seconds=args.seconds, start=args.start, fps=args.fps, rate=args.rate, pngs=args.pngs,
                       node_timeout=args.node_timeout)
    report = run_demo(opts)
    f, e2e = report["frames"], report["latency_ms"]["end_to_end"]
    latency = f", p50 latency {e2e['p50']:.0f} ms" if e2e.get("n") else ""
    print(f"[demo] {f['played']} frames played, {f['segmented']} segmented, {f['skipped_by_node']} skipped by the "
          f"node, {f['lost']} lost "
          f"({report['throughput_fps']:.2f} frames/s{latency})")
    files = report["files"]
    for label, key in (("overlay video", "video"), ("overlay images", "overlay_pngs"), ("report", "report_md"),
                       ("report (JSON)", "report_json"), ("output bag", "output_bag"),
                       ("latency histogram", "latency_histogram")):
        if files.get(key):
            value = files[key]
            print(f"[demo] {label}: {', '.join(value) if isinstance(value, list) else value}")
    print(f"[demo] node log: {report['node']['log']}")
    return 0 if f["segmented"] else 1
