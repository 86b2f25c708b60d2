"""`vltseg eval`: mIoU / per-class IoU of one model on one or more datasets (JSON, Markdown, bar chart)."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from vltseg_core.commands.protocol_args import add_protocol_args, apply_protocol_args, protocol_flags
from vltseg_core.data.datasets import DATASETS, build_dataset, parse_dataset_spec
from vltseg_core.errors import VLTSegError
from vltseg_core.evaluation import TTA, evaluate, write_reports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="demo", help="preset name, checkpoint, ONNX/engine file or 'demo' (default)")
    parser.add_argument("--data", action="append", required=True, metavar="KIND:ROOT[:SPLIT]",
                        help=f"a target dataset (repeat for the domain-generalization table); KIND: {', '.join(DATASETS)}")
    parser.add_argument("--mode", choices=("whole", "slide"), default=None, help="inference mode (default: the preset's)")
    add_protocol_args(parser)
    parser.add_argument("--tta", action="store_true", help="test-time augmentation: multi-scale + horizontal flip")
    parser.add_argument("--tta-scales", default=None, metavar="S[,S...]",
                        help=f"TTA scales (default {','.join(map(str, TTA.scales))})")
    parser.add_argument("--backend", default="auto", help="torch, onnxruntime, tensorrt or auto")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16 or bf16 (backend permitting)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of each dataset")
    parser.add_argument("--out", type=Path, default=Path("eval_out"), help="output folder")


def run(args: argparse.Namespace) -> int:
    from vltseg_core.predictor import InferenceSettings, load_predictor

    apply_protocol_args(InferenceSettings(), args)  # a malformed --size/--crop/--stride fails before anything loads
    if args.limit is not None and args.limit < 1:
        raise VLTSegError(f"--limit {args.limit} (expected a positive number of images)")
    tta = None
    if args.tta or args.tta_scales:
        try:
            scales = tuple(float(s) for s in args.tta_scales.split(",")) if args.tta_scales else TTA.scales
        except ValueError:
            raise VLTSegError(f"--tta-scales '{args.tta_scales}' (expected comma-separated numbers, e.g. 0.75,1,1.25)") from None
        if not scales or min(scales) <= 0:
            raise VLTSegError(f"--tta-scales '{args.tta_scales}' (expected positive scales)")
        tta = TTA(scales=scales)
    datasets = [build_dataset(*parse_dataset_spec(spec)) for spec in args.data]  # fail fast, before the model loads
    args.out.mkdir(parents=True, exist_ok=True)  # and before the evaluation, which may take hours
    predictor = load_predictor(args.model, backend=args.backend, device=args.device, precision=args.precision,
                               mode=args.mode)
    predictor.settings = apply_protocol_args(predictor.settings, args)
    report = evaluate(predictor, datasets, tta=tta, limit=args.limit, model=args.model)
    report["command"] = _command_line(args)
    paths = write_reports(report, args.out)
    print(paths["markdown"].read_text().split("\n## ")[0].rstrip())
    for kind, path in paths.items():
        print(f"[eval] {kind}: {path}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this report."""
    parts = ["--model", args.model] + [x for spec in args.data for x in ("--data", spec)]
    for flag in ("mode", "tta_scales", "limit"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    parts += protocol_flags(args)
    parts += ["--tta"] if args.tta else []
    parts += [x for flag in ("backend", "device", "precision") for x in (f"--{flag}", getattr(args, flag))]
    return "vltseg eval " + shlex.join(parts + ["--out", str(args.out)])
