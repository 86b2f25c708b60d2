"""`vltseg export onnx|trt`: ONNX export with parity, FP16 and TensorRT pre-flight checks; TensorRT engines through
the engine cache, each gated on real frames before it is used."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from vltseg_core.errors import VLTSegError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    onnx = sub.add_parser("onnx", help="export an ONNX graph; check it against PyTorch and in FP16")
    onnx.add_argument("--model", default="demo", help="preset, checkpoint or 'demo' (default)")
    onnx.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    onnx.add_argument("--size", default=None, metavar="HxW", help="export/trace size (default: the preset's crop)")
    onnx.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    onnx.add_argument("--deploy-outputs", action="store_true",
                      help="also output argmax labels (int32) and confidence, so deployments skip the C-channel copy")
    onnx.add_argument("--tolerance", type=float, default=1e-3, help="max |p_ort - p_torch| allowed (default 1e-3)")
    onnx.add_argument("--fp16-data", default=None, metavar="KIND:ROOT[:SPLIT]",
                      help="real labelled frames for the FP16 check (e.g. camvid:/data/camvid:val); without it the "
                           "FP16 check is skipped")
    onnx.add_argument("--fp16-frames", type=int, default=4, help="how many frames the FP16 check uses (default 4)")
    onnx.add_argument("--report", type=Path, default=None, help="write the parity/FP16 results as JSON here")
    onnx.add_argument("--skip-trt-check", action="store_true",
                      help="write the graph even if the TensorRT pre-flight check finds ops TensorRT 10 refuses "
                           "(for ONNX Runtime-only deployments)")

    trt = sub.add_parser("trt", help="build (or reuse) a TensorRT engine from an ONNX graph")
    trt.add_argument("--onnx", type=Path, required=True, help="graph from `vltseg export onnx`")
    trt.add_argument("--engine", type=Path, default=None, help="engine path (default: beside the ONNX, named by "
                                                               "precision and GPU)")
    precision = trt.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="FP16 engine")
    precision.add_argument("--precision", dest="precision", choices=("fp32", "fp16", "int8"),
                           help="fp32 (TF32 off), fp16 (the float16 graph the FP16 check runs) or int8 (Q/DQ graphs)")
    trt.set_defaults(precision="fp32")
    trt.add_argument("--size", default=None, metavar="HxW", help="size to optimise for (dynamic graphs)")
    trt.add_argument("--min-size", default=None, metavar="HxW", help="smallest input (dynamic graphs)")
    trt.add_argument("--max-size", default=None, metavar="HxW", help="largest input (dynamic graphs)")
    trt.add_argument("--batch", default="1,4,4", metavar="MIN[,OPT,MAX]",
                     help="batch sizes of the profile (default 1,4,4: slide mode's crops per call and the node's "
                          "default max_batch_size, each one engine call)")
    trt.add_argument("--workspace-mib", type=int, default=4096, help="builder workspace limit in MiB")
    trt.add_argument("--allow-tf32", action="store_true", help="let fp32 engines use TF32 tensor cores")
    trt.add_argument("--device", default="cuda", help="cuda or cuda:N")
    trt.add_argument("--rebuild", action="store_true", help="rebuild even when a matching engine exists")
    trt.add_argument("--gate-frames", type=Path, default=None, metavar="DIR",
                     help="real frames (png/jpg) for the engine gate (default: the dashcam frames of `vltseg setup`)")
    trt.add_argument("--build-only", action="store_true",
                     help="build the engine and exit without the gate (recorded in the manifest; the next load gates it)")


def run(args: argparse.Namespace) -> int:
    # Export and engine builds take minutes: show our progress/cache log lines (not third-party INFO chatter).
    logger, handler = logging.getLogger("vltseg_core"), logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return _onnx(args) if args.target == "onnx" else _trt(args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _onnx(args: argparse.Namespace) -> int:
    from vltseg_core.data.datasets import parse_dataset_spec
    from vltseg_core.export.fp16_graph import fp16_graph_bytes
    from vltseg_core.export.onnx_export import default_size, export_checked, parse_size
    from vltseg_core.export.trt_compat import check_graph, require_trt_compatible
    from vltseg_core.predictor import load_module
    from vltseg_core.verify.fp16 import check_fp16, load_frames
    from vltseg_core.verify.parity import check_parity

    if args.out.suffix != ".onnx":
        raise VLTSegError(f"--out {args.out} (expected a path ending in .onnx)")
    if args.tolerance < 0:
        raise VLTSegError(f"--tolerance {args.tolerance} (expected a max |dp| >= 0, e.g. 1e-3)")
    fp16_spec = parse_dataset_spec(args.fp16_data) if args.fp16_data else None  # fail fast, before the export
    size = parse_size(args.size) if args.size else None
    model, model_id = load_module(args.model)
    size = size or default_size(getattr(model, "preset", {}))
    frames = labels = class_ids = None
    if fp16_spec:
        frames, labels, class_ids = load_frames(*fp16_spec, count=args.fp16_frames)
    # Parity at the export size, and for dynamic graphs also at another, non-square size.
    sizes = [size] + ([(size[0] + 64, size[1] - 32 if size[1] > 96 else size[1] + 32)] if args.dynamic else [])

    def check(graph: Path) -> dict:
        """TensorRT pre-flight, parity, then the FP16 check: --out is written only when all pass."""
        if args.skip_trt_check:
            violations = check_graph(graph)
            print(f"[export] TensorRT pre-flight check: {len(violations)} violation(s), not enforced (--skip-trt-check)")
        else:
            require_trt_compatible(graph, where=str(args.out))
            print("[export] TensorRT pre-flight check passed (onnx-tensorrt 10.x importer rules; a static check, "
                  "not a TensorRT build)")
        parity = check_parity(model, graph, sizes, images=frames, max_abs_diff=args.tolerance)
        for report in parity:
            print(f"[export] ONNX Runtime vs PyTorch {report.line()}")
        result = {"onnx": str(args.out), "model": model_id, "parity": [vars(r) for r in parity]}
        if frames:
            fp16 = check_fp16(graph, frames, labels, class_ids)
            fp16_sha = fp16_graph_bytes(graph)[1]
            print(f"[export] {fp16.line()}; float16 graph sha256 {fp16_sha[:16]} (what an fp16 engine is built from)")
            result["fp16"] = {**fp16.as_dict(), "fp16_graph_sha256": fp16_sha}
        else:
            print("[export] FP16 check skipped (give --fp16-data KIND:ROOT[:SPLIT] to run it on real frames)")
        return result

    result = export_checked(model, args.out, size, check, dynamic=args.dynamic, deploy_outputs=args.deploy_outputs)
    print(f"[export] {model_id} -> {args.out} ({'dynamic' if args.dynamic else 'fixed'} {size[0]}x{size[1]})")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result, indent=2, default=list))
    return 0


def _trt(args: argparse.Namespace) -> int:
    from vltseg_core.export.engine_cache import manifest_path
    from vltseg_core.export.onnx_export import parse_size
    from vltseg_core.export.tensorrt_build import engine_for_onnx
    from vltseg_core.verify.engine_gate import EngineGateFailed, gate_engine, record_gate_skipped

    try:
        batch = tuple(int(b) for b in args.batch.split(","))
    except ValueError:
        raise VLTSegError(f"--batch '{args.batch}' (expected N or MIN,OPT,MAX)") from None
    if len(batch) not in (1, 3):
        raise VLTSegError(f"--batch '{args.batch}' (expected N or MIN,OPT,MAX)")
    batch = batch * 3 if len(batch) == 1 else batch
    sizes = {k: parse_size(getattr(args, k)) if getattr(args, k) else None for k in ("size", "min_size", "max_size")}
    engine = engine_for_onnx(args.onnx, precision=args.precision, device=args.device, engine_path=args.engine,
                             batch=batch, workspace_mib=args.workspace_mib, allow_tf32=args.allow_tf32,
                             force=args.rebuild, **sizes)
    print(f"[export] TensorRT engine: {engine}")
    if args.build_only:
        record_gate_skipped(engine, "built with --build-only")
        print("[export] engine gate skipped (--build-only): the first load_predictor / node configure runs it")
        return 0
    from vltseg_core.backends.tensorrt_backend import TensorRTBackend

    try:
        verdict = gate_engine(engine, TensorRTBackend(engine, device=args.device), args.gate_frames)
    except EngineGateFailed as exc:  # never leave an engine known to disagree where nodes would load it
        engine.unlink(missing_ok=True)
        manifest_path(engine).unlink(missing_ok=True)
        raise VLTSegError(f"{exc}; {engine} removed") from None
    print(f"[export] TensorRT engine gate: {'passed before' if verdict is None else verdict.line()}")
    return 0
