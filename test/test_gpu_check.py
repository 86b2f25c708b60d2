"""The prepared GPU check runs its CPU-safe parts here: the TensorRT backend's plumbing against the fake tensorrt on
CPU tensors (same numbers as torch, batches chunked to the profile, bounded staging), and says what it skipped."""
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_safe_parts(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--only", "doctor,trt-plumbing,torch-cuda,tensorrt,bench",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = {line.split(":")[0].removeprefix("[gpu-check] "): line for line in proc.stdout.splitlines()
             if line.startswith("[gpu-check]")}
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plumbing = lines["trt-plumbing"]
    assert plumbing.startswith("[gpu-check] trt-plumbing: ok") and "6 frames = 2 calls" in plumbing, plumbing
    if not torch.cuda.is_available():
        assert "on CPU tensors" in plumbing
        assert lines["torch-cuda"].startswith("[gpu-check] torch-cuda: skipped no CUDA GPU")
        assert lines["bench"].startswith("[gpu-check] bench: skipped no CUDA GPU")
    assert lines["doctor"].startswith("[gpu-check] doctor: ok") and "torch ok" in lines["doctor"]
    assert lines["tensorrt"].split(": ", 1)[1].split()[0] in ("ok", "skipped")
    assert "0 failed" in lines["summary"]
