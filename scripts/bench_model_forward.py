"""CPU forward time of each model preset at one input size (median of a few runs), split into backbone+neck and
head (incl. semantic inference), with each preset's head swapped for the light head too. Benchmark, not a test:
    nice -n 10 .venv/bin/python scripts/bench_model_forward.py --runs 3
Prints a Markdown table for docs/model.md."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from tqdm import tqdm

from vltseg_core.models import build_model, load_preset

DEFAULT_PRESETS = ["tiny-test", "eva02-b16-m2f", "clip-b16-m2f", "eva02-l14-m2f", "clip-l14-m2f"]


def timed(fn, runs: int) -> tuple[float, float, object]:
    """-> (median wall seconds, median CPU seconds of this process, last output). CPU seconds stay meaningful
    on a shared machine, where wall time also counts other processes' load."""
    out = fn()  # warm-up
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), out


def bench(preset: dict, images: torch.Tensor, runs: int) -> tuple[float, float, float, float, float]:
    """-> (params in M, backbone+neck wall / CPU seconds, head+inference wall / CPU seconds)."""
    torch.manual_seed(0)
    model = build_model(preset).eval()
    size = images.shape[-2:]
    with torch.inference_mode():
        w_feat, c_feat, feats = timed(lambda: model.forward_features(images), runs)
        w_head, c_head, _ = timed(lambda: model.head.semantic_scores(model.forward_head(feats), size), runs)
    return sum(p.numel() for p in model.parameters()) / 1e6, w_feat, c_feat, w_head, c_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS)
    parser.add_argument("--size", nargs=2, type=int, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-light", action="store_true", help="do not also time each preset with the light head")
    args = parser.parse_args()
    images = torch.rand(1, 3, *args.size) * 255
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, input 1x3x{args.size[0]}x{args.size[1]}, median of {args.runs}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| preset | head | params (M) | backbone+neck wall / CPU (s) | head + inference wall / CPU (s) | forward wall (s) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    jobs = []
    for name in args.presets:
        preset = load_preset(name)
        jobs.append((name, preset))
        if not args.no_light and preset["head"]["type"] != "light":
            light = dict(preset, head={"type": "light", "channels": preset["neck"].get("out_channels", 256)})
            jobs.append((name, light))
    for name, preset in tqdm(jobs, desc="presets", leave=False):
        params, w_feat, c_feat, w_head, c_head = bench(preset, images, args.runs)
        print(f"| {name} | {preset['head']['type']} | {params:.1f} | {w_feat:.2f} / {c_feat:.2f} | "
              f"{w_head:.2f} / {c_head:.2f} | {w_feat + w_head:.2f} |", flush=True)


if __name__ == "__main__":
    main()
