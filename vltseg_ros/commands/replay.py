"""`vltseg replay BAG... --model M --out DIR [--shard K/N]` and `vltseg replay --merge SHARD_DIR... --out DIR`:
the model over the camera topics of ROS 1 bags and rosbag2s (see docs/replay.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vltseg_core.commands.protocol_args import add_protocol_args, apply_protocol_args
from vltseg_core.errors import VLTSegError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", type=Path, nargs="*", metavar="BAG",
                        help="ROS 1 .bag file, rosbag2 directory (sqlite3 or mcap), bare .mcap / .db3 file, or a "
                             "folder of them; several: one report over all, one output bag each")
    parser.add_argument("--model", help="preset, checkpoint, .onnx / engine file, or 'demo'")
    parser.add_argument("--backend", default="auto", help="torch, onnxruntime, tensorrt or auto")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16, bf16 or int8 (backend permitting)")
    parser.add_argument("--mode", default=None, choices=("whole", "slide"), help="override the preset's mode")
    add_protocol_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder (bag/, report.json, report.md, plots)")
    parser.add_argument("--topics", nargs="+", help="image topics to segment (default: every Image/CompressedImage)")
    parser.add_argument("--labels", help="label image topic in the bag, or a folder of label PNGs (named <stamp>.png, "
                        "or a dataset's own names matched in order; with several bags a sub-folder per bag)")
    parser.add_argument("--label-map", help="the labels hold this dataset's raw ids (configs/datasets/NAME.yaml, e.g. "
                        "camvid11); the mIoU then averages over its classes, like `vltseg eval`")
    parser.add_argument("--copy-inputs", action="store_true", help="copy every input topic into the output bag")
    parser.add_argument("--video", action="store_true", help="also write an overlay mp4 per camera")
    parser.add_argument("--shard", metavar="K/N", help="replay only shard K (0..N-1) of the inputs, e.g. "
                        "$SLURM_ARRAY_TASK_ID/N or $JOB_COMPLETION_INDEX/N; combine the shards with --merge")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="SHARD_DIR",
                        help="combine the --out folders of all N shards of a run into one report in --out")


def run(args: argparse.Namespace) -> int:
    from vltseg_ros.bag_reading import find_bags, is_bag, open_bag
    from vltseg_ros.replay_set import merge, parse_shard, plan, replay_set

    if args.merge:
        if args.bags or args.shard:
            raise VLTSegError("--merge takes shard folders only (expected `vltseg replay --merge DIR... --out DIR`, "
                              "without bags or --shard)")
        _print_set(merge(args.merge, args.out), "merged")
        return 0
    if not args.bags or not args.model:
        raise VLTSegError("expected BAG... and --model (or --merge SHARD_DIR... to combine shard reports)")
    from vltseg_core.predictor import InferenceSettings

    apply_protocol_args(InferenceSettings(), args)  # a malformed --size/--crop/--stride fails before anything loads
    from vltseg_core.domain_shift import load_references

    options = {"topics": args.topics, "labels": args.labels, "copy_inputs": args.copy_inputs, "video": args.video,
               "label_map": args.label_map, "references": load_references(args.model)}
    if len(args.bags) == 1 and is_bag(args.bags[0]) and args.shard is None:
        from vltseg_ros.replay import replay

        open_bag(args.bags[0]).close()  # a bad bag fails before the model is loaded
        report = replay(args.bags[0], _predictor(args), args.out, **options)
        frames = report["frames"]
        print(f"[replay] {frames['read']} frames read, {frames['processed']} processed, {frames['skipped']} skipped; "
              f"{report['throughput_fps']:.2f} frames/s")
        if report["labels"]:
            print(f"[replay] mIoU {report['labels']['miou']} ({report['labels']['labels']})")
        for name, path in report["files"].items():
            print(f"[replay] {name}: {path}")
        return 0
    shard = parse_shard(args.shard) if args.shard else None
    inputs = find_bags(args.bags)
    entries = plan(inputs, shard)
    if shard:
        print(f"[replay] shard {shard[0]}/{shard[1]}: {len(entries)} of {len(inputs)} bags")
    predictor = _predictor(args) if entries else None  # an empty shard still writes its (empty) report
    _print_set(replay_set(entries, inputs, predictor, args.out, shard=shard, **options), "replayed")
    return 0


def _predictor(args: argparse.Namespace):
    """The model with the command line's protocol overrides (recorded in its identity, so in every report)."""
    from vltseg_core.predictor import load_predictor

    predictor = load_predictor(args.model, args.backend, args.device, args.precision, args.mode)
    predictor.settings = apply_protocol_args(predictor.settings, args)
    return predictor


def _print_set(report: dict, verb: str) -> None:
    frames = report["frames"]
    print(f"[replay] {len(report['bags'])} bags {verb}: {frames['read']} frames read, {frames['processed']} "
          f"processed, {frames['skipped']} skipped; {report['throughput_fps']:.2f} frames/s")
    if report["labels"]:
        print(f"[replay] mIoU {report['labels']['miou']} over {report['labels']['num_images']} labelled frames")
    for name, path in report["files"].items():
        print(f"[replay] {name}: {path}")
