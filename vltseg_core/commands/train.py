"""`vltseg train CONFIG --work-dir DIR [--resume]`; multi-GPU / multi-node through torchrun:
`torchrun --nproc_per_node N -m vltseg_core.cli train CONFIG --work-dir DIR`.
`vltseg train CONFIG --print-config` prints the fully resolved configuration as YAML and exits."""
from __future__ import annotations

import argparse
from pathlib import Path

from vltseg_core.errors import VLTSegError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment name (configs/experiments/NAME.yaml) or path to a YAML file")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="checkpoints, TensorBoard scalars, feature cache and the resolved config go here")
    parser.add_argument("--resume", action="store_true", help="continue exactly from the latest checkpoint in --work-dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE",
                        help="override a config value (YAML), e.g. --set train.iterations=100 --set data.train.root=/data/cs")
    parser.add_argument("--print-config", action="store_true",
                        help="print the fully resolved configuration (model, data, transforms, optimizer groups, "
                             "schedule, loss, test protocol) as YAML and exit; needs no datasets")


def run(args: argparse.Namespace) -> int:
    if args.print_config:
        import yaml

        from vltseg_core.train.trainer import load_experiment, resolved_config

        print(yaml.safe_dump(resolved_config(load_experiment(args.config, args.overrides)), sort_keys=False,
                             default_flow_style=None, width=120), end="")
        return 0
    if args.work_dir is None:
        raise VLTSegError("vltseg train needs --work-dir DIR (where checkpoints go), or --print-config")
    from vltseg_core.train.trainer import train

    last = train(args.config, args.work_dir, resume=args.resume, overrides=args.overrides)
    summary = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if not k.startswith("loss_"))
    print(f"[train] done: {summary}; checkpoints in {args.work_dir / 'checkpoints'}")
    return 0
