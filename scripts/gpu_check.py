"""The prepared GPU check: one command for a machine with an NVIDIA GPU and no network, one summary line per check.

    python scripts/gpu_check.py [--frames DIR] [--out DIR]        (or scripts/gpu_check.sh)

Checks, in order (each prints `[gpu-check] NAME: ok|FAIL|skipped ...`):
0. doctor          `vltseg doctor --json --build-engine`: the machine's GPUs, providers that load, TensorRT
1. gpu-tests       the tests marked `gpu` or `tensorrt` (pytest), which skip without CUDA / TensorRT
2. torch-cuda      tiny-test and the demo model at 512x1024 on cuda in fp32/fp16/bf16: label agreement with the
                   CPU fp32 run and ms/frame (the demo model needs its backbone in $VLTSEG_HOME: `vltseg setup`)
3. trt-plumbing    the TensorRT backend's side of the contract with a fake `tensorrt` (test/fake_tensorrt.py) whose
                   engine runs the real tiny-test model on the buffers and the CUDA stream the backend hands it:
                   uint8 upload, tensor addresses, stream hand-over (synchronise + record_stream), batch chunking,
                   use from a worker thread, bounded staging buffers; same numbers as torch. Without a GPU it runs
                   on CPU tensors (HostStream), which is what CI runs.
4. tensorrt        real TensorRT: version inside the supported range (the engine tests are in check 1)
5. bench           `vltseg bench` of tiny-test, backend and predictor layers, on cuda
Nothing is downloaded; frames come from --frames, else $VLTSEG_HOME/gate_frames, else random pixels (said so).
Exit status 1 when any check fails. Budget: under 5 minutes on a GPU machine.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS: list[tuple[str, str]] = []


def report(name: str, status: str, detail: str) -> None:
    RESULTS.append((name, status))
    print(f"[gpu-check] {name}: {status} {detail}", flush=True)


def check(name: str):
    def wrap(fn):
        def run(*args):
            started = time.perf_counter()
            try:
                status, detail = fn(*args)
            except Exception as exc:  # a check that crashes is a failed check, the others still run
                status, detail = "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            report(name, status, f"{detail} ({time.perf_counter() - started:.1f} s)")
        return run
    return wrap


def load_frames(folder: Path | None, count: int = 2) -> tuple[list[np.ndarray], str]:
    from vltseg_core.errors import VLTSegError
    from vltseg_core.verify.gate_frames import default_folder, load_gate_frames

    for candidate in ([folder] if folder else []) + [default_folder()]:
        try:
            frames, frames_id = load_gate_frames(candidate)
            return frames[:count], frames_id
        except (VLTSegError, OSError):
            continue
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (540, 960, 3), dtype=np.uint8) for _ in range(count)], "random pixels (no frames)"


@check("doctor")
def doctor(args):
    import json

    proc = subprocess.run([sys.executable, "-m", "vltseg_core.cli", "doctor", "--json", "--build-engine"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    try:
        rows = json.loads(proc.stdout)
    except ValueError:
        return "FAIL", (proc.stderr.strip().splitlines() or ["no output"])[-1]
    rows = rows.get("checks", rows) if isinstance(rows, dict) else rows
    failed = [r.get("check") for r in rows if r.get("status") == "fail"]
    shown = "; ".join(f"{r.get('check')} {r.get('status')}" for r in rows if r.get("status") != "absent")
    return ("FAIL" if failed else "ok"), shown[:400]


@check("gpu-tests")
def gpu_tests(args):
    proc = subprocess.run([sys.executable, "-m", "pytest", "test", "-q", "-m", "gpu or tensorrt", "-rs",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    return ("ok" if proc.returncode in (0, 5) else "FAIL"), last


@check("torch-cuda")
def torch_cuda(args, frames):
    if not torch.cuda.is_available():
        return "skipped", "no CUDA GPU"
    from vltseg_core.predictor import load_predictor

    lines = []
    for model in ("tiny-test", "demo"):
        try:
            reference = load_predictor(model, backend="torch", device="cpu")
        except Exception as exc:
            lines.append(f"{model}: not available ({str(exc).splitlines()[0][:80]})")
            continue
        images = [np.ascontiguousarray(__import__("cv2").resize(f, (1024, 512))) for f in frames]
        ref = [reference.predict(f).labels for f in images]
        for precision in ("fp32", "fp16", "bf16"):
            predictor = load_predictor(model, backend="torch", device="cuda", precision=precision)
            predictor.predict(images[0])  # warm-up
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(3):
                got = [predictor.predict(f).labels for f in images]
            ms = 1000 * (time.perf_counter() - started) / (3 * len(images))
            agree = float(np.mean([(a == b).mean() for a, b in zip(ref, got)]))
            lines.append(f"{model} {precision} {100 * agree:.2f}% of CPU fp32 labels, {ms:.1f} ms/frame")
    return "ok", "; ".join(lines)


@check("trt-plumbing")
def trt_plumbing(args, frames):
    spec = importlib.util.spec_from_file_location("fake_tensorrt", ROOT / "test" / "fake_tensorrt.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    if importlib.util.find_spec("tensorrt") is not None:
        return "skipped", "a real tensorrt is installed (check 1 runs the real engine tests)"
    from vltseg_core.backends import tensorrt_backend
    from vltseg_core.backends.torch_backend import TorchBackend
    from vltseg_core.export import tensorrt_build
    from vltseg_core.export.onnx_export import export_onnx
    from vltseg_core.models import build_model

    cuda = torch.cuda.is_available()
    gpu = (torch.cuda.get_device_name(0), "%d.%d" % torch.cuda.get_device_capability(0)) if cuda else ("fake", "0.0")
    sys.modules["tensorrt"] = fake
    patched = [(tensorrt_build, "current_gpu"), (tensorrt_backend, "current_gpu")]
    saved = [getattr(m, n) for m, n in patched]
    saved_device = torch.cuda.device
    try:
        for module, name in patched:
            setattr(module, name, lambda device="cuda": gpu)
        if not cuda:
            torch.cuda.device = lambda index: contextlib.nullcontext()
        torch.manual_seed(0)
        model = build_model("tiny-test").eval()
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export_onnx(model, Path(tmp) / "tiny.onnx", (128, 160), dynamic=True)
            engine = tensorrt_build.engine_for_onnx(onnx_path, precision="fp32", size=(128, 160), min_size=(64, 64),
                                                    max_size=(256, 320), batch=(1, 4, 4))
            fake.KNOBS["model"] = model.to("cuda" if cuda else "cpu")
            backend = tensorrt_backend.TensorRTBackend(engine, device="cuda", host_only=not cuda)
            reference = TorchBackend(model, device="cuda" if cuda else "cpu")
            import cv2

            batch = np.stack([cv2.resize(f, (160, 128)).transpose(2, 0, 1) for f in (frames * 3)[:6]])
            result: dict = {}
            worker = threading.Thread(target=lambda: result.update(out=backend.infer_device(batch)))
            worker.start()
            worker.join()
            out = result["out"]
            if cuda:
                torch.cuda.synchronize()
            diff = float((out - reference.infer_device(batch)).abs().max())
            for h, w in [(64, 64), (96, 128), (256, 320), (128, 160)]:
                backend.infer(np.zeros((1, 3, h, w), np.uint8))
            largest = max(4 * 3 * 128 * 160, 3 * 256 * 320)  # uint8 staging: the largest chunk, not the sum
            ok = diff < 1e-4 and backend.executions == 6 and backend.host.nbytes == largest
            return ("ok" if ok else "FAIL"), (f"on {'cuda (real stream, pointers, record_stream)' if cuda else 'CPU tensors'}:"
                                              f" max |d| vs torch {diff:.1e}, 6 frames = 2 calls + 4 sizes = "
                                              f"{backend.executions} calls, staging {backend.host.nbytes} bytes")
    finally:
        for (module, name), value in zip(patched, saved):
            setattr(module, name, value)
        torch.cuda.device = saved_device
        sys.modules.pop("tensorrt", None)


@check("tensorrt")
def tensorrt_version(args):
    if importlib.util.find_spec("tensorrt") is None:
        return "skipped", "TensorRT is not installed (see docs/gpu.md)"
    from vltseg_core.gpu import tensorrt_version as version

    return "ok", f"TensorRT {version()} (inside the supported range)"


@check("bench")
def bench(args):
    if not torch.cuda.is_available():
        return "skipped", "no CUDA GPU"
    out = args.out / "bench"
    proc = subprocess.run([sys.executable, "-m", "vltseg_core.cli", "bench", "--model", "tiny-test", "--backend",
                           "torch", "--device", "cuda", "--sizes", "512x1024,1080x1920", "--layers",
                           "backend,predictor", "--warmup", "2", "--iters", "10", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    tail = (proc.stdout.strip().splitlines() or [proc.stderr.strip()[-200:]])[-1]
    return ("ok" if proc.returncode == 0 else "FAIL"), f"{tail} (figures in {out})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=Path, default=None, help="folder of real frames (png/jpg)")
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"), help="where bench figures go")
    parser.add_argument("--only", default=None, help="comma-separated checks to run (default: all)")
    args = parser.parse_args(argv)
    frames, frames_id = load_frames(args.frames)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
    print(f"[gpu-check] machine: {device}; torch {torch.__version__} (CUDA {torch.version.cuda}); frames: {frames_id}")
    checks = {"doctor": lambda: doctor(args), "gpu-tests": lambda: gpu_tests(args), "torch-cuda": lambda: torch_cuda(args, frames),
              "trt-plumbing": lambda: trt_plumbing(args, frames), "tensorrt": lambda: tensorrt_version(args),
              "bench": lambda: bench(args)}
    for name in (args.only.split(",") if args.only else checks):
        checks[name]()
    failed = [name for name, status in RESULTS if status == "FAIL"]
    skipped = sum(status == "skipped" for _, status in RESULTS)
    print(f"[gpu-check] summary: {len(RESULTS) - len(failed) - skipped} ok, {skipped} skipped, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
