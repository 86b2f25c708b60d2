"""`vltseg bench`: latency of each layer (backend, predictor, node, replay) in one run; JSON, Markdown and a plot."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from vltseg_core import bench
from vltseg_core.errors import VLTSegError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="demo", help="preset name, checkpoint, ONNX file or 'demo' (default)")
    parser.add_argument("--backend", default="torch,onnxruntime", help="comma-separated backends to compare")
    parser.add_argument("--sizes", default="360x480,512x1024,1080x1920",
                        help="comma-separated input sizes, HEIGHTxWIDTH (default: 360x480,512x1024,1080x1920, "
                             "up to a 1080p vehicle camera)")
    parser.add_argument("--layers", default=",".join(bench.LAYERS),
                        help=f"comma-separated subset of {','.join(bench.LAYERS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16 or bf16 (backend permitting)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up frames per cell, not counted")
    parser.add_argument("--iters", type=int, default=20, help="measured frames per cell")
    parser.add_argument("--target-sizes", default=None, metavar="HxW[,HxW]",
                        help="size(s) the node-overhead target is judged at (default: every size)")
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder")


def run(args: argparse.Namespace) -> int:
    if args.iters < 1 or args.warmup < 0:
        raise VLTSegError(f"--iters {args.iters} / --warmup {args.warmup} (expected iters >= 1, warmup >= 0)")
    sizes = bench.parse_sizes(args.sizes)
    layers = bench.parse_layers(args.layers)
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    if not backends:
        raise VLTSegError(f"--backend '{args.backend}' names no backend (expected e.g. torch,onnxruntime)")
    target_sizes = [f"{h}x{w}" for h, w in bench.parse_sizes(args.target_sizes)] if args.target_sizes else None
    command = "vltseg bench " + shlex.join(
        [f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items() if value is not None])
    paths: dict[str, Path] = {}

    def write(results: list[bench.LayerResult], identities: dict[str, dict]) -> None:
        report = bench.build_report(results, identities, args.model, args.device, args.precision, args.warmup, args.iters,
                                    command, target_sizes)
        paths.update(bench.write_report(report, args.out))

    bench.run_bench(args.model, backends, sizes, layers, args.device, args.precision, args.warmup, args.iters,
                    on_layer_done=write)
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"[bench] {kind}: {path}")
    return 0
