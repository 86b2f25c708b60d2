"""`vltseg domain-shift`: (re)measure a model's domain-shift references on its validation data and store them
next to the model, where the node and `vltseg replay` find them (vltseg_core.domain_shift.references_path)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vltseg_core.data.datasets import DATASETS, build_dataset, parse_dataset_spec
from vltseg_core.errors import VLTSegError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="demo", help="'demo' (default), a checkpoint, ONNX or engine file")
    parser.add_argument("--data", required=True, metavar="KIND:ROOT[:SPLIT]",
                        help=f"the model's validation data, e.g. camvid:../shared/data/camvid:val; KIND: "
                             f"{', '.join(DATASETS)}")
    parser.add_argument("--backend", default="auto", help="torch, onnxruntime, tensorrt or auto")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--limit", type=int, default=None, help="only the first N frames")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: next to the model, where it is looked for)")


def run(args: argparse.Namespace) -> int:
    from vltseg_core.domain_shift import measure_references, references_path, save_references
    from vltseg_core.predictor import load_predictor

    if args.limit is not None and args.limit < 1:
        raise VLTSegError(f"--limit {args.limit} (expected a positive number of frames)")
    if args.model != "demo" and not Path(args.model).is_file():
        raise VLTSegError(f"--model {args.model}: references are stored next to a model file (expected 'demo' or "
                          "an existing checkpoint, ONNX or engine file)")
    dataset = build_dataset(*parse_dataset_spec(args.data))  # fail fast, before the model loads
    predictor = load_predictor(args.model, backend=args.backend, device=args.device)
    refs = measure_references(predictor, dataset, args.model, limit=args.limit)
    path = save_references(refs, args.out or references_path(args.model))
    print(json.dumps({k: v for k, v in refs.to_dict().items() if k != "class_shares"}, indent=2))
    print(f"[domain-shift] references: {path}")
    return 0
