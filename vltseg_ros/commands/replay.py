"""`vltseg replay BAG --model M --out DIR`: the model over a rosbag2's camera topics (see docs/replay.md)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", type=Path, help="rosbag2 directory (sqlite3 or mcap), or a bare .mcap / .db3 file")
    parser.add_argument("--model", required=True, help="preset, checkpoint, .onnx / engine file, or 'demo'")
    parser.add_argument("--backend", default="auto", help="torch, onnxruntime, tensorrt or auto")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16, bf16 or int8 (backend permitting)")
    parser.add_argument("--mode", default=None, choices=("whole", "slide"), help="override the preset's mode")
    parser.add_argument("--out", type=Path, required=True, help="output folder (bag/, report.json, report.md, plots)")
    parser.add_argument("--topics", nargs="+", help="image topics to segment (default: every Image/CompressedImage)")
    parser.add_argument("--labels", help="label image topic in the bag, or a folder of label PNGs (named <stamp>.png, "
                        "or a dataset's own names matched in order)")
    parser.add_argument("--label-map", help="the labels hold this dataset's raw ids (configs/datasets/NAME.yaml, e.g. "
                        "camvid11); the mIoU then averages over its classes, like `vltseg eval`")
    parser.add_argument("--copy-inputs", action="store_true", help="copy every input topic into the output bag")
    parser.add_argument("--video", action="store_true", help="also write an overlay mp4 per camera")


def run(args: argparse.Namespace) -> int:
    from vltseg_core.predictor import load_predictor
    from vltseg_ros.replay import open_bag, replay

    open_bag(args.bag).close()  # a bad bag fails before the model is loaded
    predictor = load_predictor(args.model, args.backend, args.device, args.precision, args.mode)
    report = replay(args.bag, predictor, args.out, topics=args.topics, labels=args.labels,
                    copy_inputs=args.copy_inputs, video=args.video, label_map=args.label_map)
    frames = report["frames"]
    print(f"[replay] {frames['read']} frames read, {frames['processed']} processed, {frames['skipped']} skipped; "
          f"{report['throughput_fps']:.2f} frames/s")
    if report["labels"]:
        print(f"[replay] mIoU {report['labels']['miou']} ({report['labels']['labels']})")
    for name, path in report["files"].items():
        print(f"[replay] {name}: {path}")
    return 0
