"""`vltseg export onnx` on the tiny preset: dynamic export, ORT-vs-PyTorch parity, FP16 check on real CamVid
frames, deployment outputs, and loud failures (parity broken, FP16 overflow, bad arguments)."""
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vltseg_core.cli import main
from vltseg_core.errors import VLTSegError
from vltseg_core.export.onnx_export import export_onnx, graph_metadata
from vltseg_core.verify import parity as parity_module
from vltseg_core.verify.fp16 import check_fp16
from vltseg_core.verify.parity import check_parity
from vltseg_core.models import build_model
from model_helpers import tiny_mask2former_preset


def test_cli_dynamic_export_with_parity_and_fp16_check(tmp_path, camvid_root):
    out, report = tmp_path / "tiny.onnx", tmp_path / "report.json"
    cmd = [sys.executable, "-m", "vltseg_core.cli", "export", "onnx", "--model", "tiny-test", "--dynamic",
           "--size", "128x160", "--out", str(out), "--fp16-data", f"camvid:{camvid_root}:val", "--fp16-frames", "2",
           "--report", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ONNX Runtime vs PyTorch 128x160" in proc.stdout and "FP16 vs FP32 on 2 frames" in proc.stdout
    result = json.loads(report.read_text())
    assert [tuple(p["size"]) for p in result["parity"]] == [(128, 160), (192, 128)]
    assert all(p["argmax_agreement"] > 0.999 and p["max_abs_diff"] < 1e-3 for p in result["parity"])
    fp16 = result["fp16"]
    assert fp16["frames"] == 2 and fp16["nonfinite"] == 0 and fp16["argmax_agreement"] > 0.99
    assert fp16["storage_nonfinite"] == 0 and fp16["storage_agreement"] > 0.99
    assert fp16["miou_fp32"] is not None and abs(fp16["miou_delta"]) < 0.01
    dims = onnx.load(str(out), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # N, 3, H, W
    assert dims[1].dim_value == 3 and {op.version for op in onnx.load(str(out)).opset_import if op.domain == ""} == {18}
    meta = graph_metadata(out)
    assert meta["preset"]["name"] == "tiny-test" and meta["dynamic"] is True and meta["num_classes"] == 19


def test_deploy_outputs_and_parity_failure(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny-test")
    path = export_onnx(model, tmp_path / "deploy.onnx", (96, 128), deploy_outputs=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probs", "labels", "confidence"]
    images = np.random.default_rng(0).integers(0, 256, (1, 3, 96, 128)).astype(np.float32)
    probs, labels, confidence = session.run(None, {"images": images})
    assert labels.dtype == np.int32 and labels.shape == (1, 96, 128)
    np.testing.assert_array_equal(labels, probs.argmax(1))
    np.testing.assert_allclose(confidence, probs.max(1) / probs.sum(1), atol=1e-6)  # the predictor's confidence
    assert check_parity(model, path, [(96, 128)])[0].argmax_agreement > 0.999
    torch.manual_seed(1)
    other = build_model("tiny-test")  # different weights: the check must fail loudly
    with pytest.raises(VLTSegError, match="ONNX parity check failed"):
        check_parity(other, path, [(96, 128)])


def test_cli_parity_failure_leaves_no_graph(tmp_path, capsys):
    """A graph that fails its check is not written to --out (a later `export trt` would take it for a good one)."""
    out = tmp_path / "tiny.onnx"
    args = ["export", "onnx", "--model", "tiny-test", "--size", "64x64", "--out", str(out), "--tolerance", "0"]
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "ONNX parity check failed at 64x64" in last and f"{out} not written" in last
    assert list(tmp_path.iterdir()) == []


def test_cached_graph_that_failed_parity_is_not_reused(tmp_path, monkeypatch):
    """cached_onnx checks before the graph enters the cache: a second call runs the check again, not the graph."""
    monkeypatch.setenv("VLTSEG_HOME", str(tmp_path))
    real_check = parity_module.check_parity
    monkeypatch.setattr(parity_module, "check_parity",  # too tight a tolerance: every graph fails
                        lambda model, path, sizes: real_check(model, path, sizes, max_abs_diff=0.0))
    torch.manual_seed(0)
    model = build_model("tiny-test").eval()
    for _ in range(2):
        with pytest.raises(VLTSegError, match="ONNX parity check failed.*not written"):
            parity_module.cached_onnx(model, "tiny-test")
        assert [p.name for p in (tmp_path / "onnx").iterdir() if not p.name.endswith(".lock")] == []


class HugeWeights(torch.nn.Module):
    """Weights beyond float16's 65504 (|w| up to ~1e5): the fp16-converted graph saturates them."""

    num_classes = 19

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 19, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(19, 3, 1, 1, generator=torch.Generator().manual_seed(0)) * 3e4)
            self.conv.bias.zero_()

    def forward(self, images):
        return (self.conv(images / 255.0) * 1e-4).softmax(1)


class OverflowingNorm(HugeWeights):
    """A hand-rolled channel norm whose squared deviations (~1e6) exceed float16's range: the LayerNorm failure
    mode. ONNX Runtime's CPU provider runs this chain in fp32 even in the converted graph; the fp16-storage
    emulation (fp16_storage_graph) is what catches it."""

    def __init__(self):
        super().__init__()
        with torch.no_grad():
            order = torch.randperm(57, generator=torch.Generator().manual_seed(0))
            self.conv.weight.copy_(torch.linspace(-5, 5, 57)[order].view(19, 3, 1, 1))

    def forward(self, images):
        d = self.conv(images)
        d = d - d.mean(1, keepdim=True)
        return (d / torch.sqrt((d * d).mean(1, keepdim=True) + 1e-5)).softmax(1)


@pytest.mark.parametrize("module, caught_by", [
    (HugeWeights, r"argmax agreement [0-8]?\d\.\d+%"),  # the converted graph disagrees
    (OverflowingNorm, r"between layers [0-8]?\d\.\d+%"),  # only the fp16-storage emulation does
])
def test_fp16_check_catches_overflow(tmp_path, module, caught_by):
    path = export_onnx(module(), tmp_path / "overflow.onnx", (64, 64))
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(VLTSegError, match="FP16 check failed") as info:
        check_fp16(path, [frame])
    assert re.search(caught_by, str(info.value)), str(info.value)


@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-preset", "--out", "x.onnx"], "model preset 'no-such-preset' not found"),
    (["--model", "tiny-test", "--out", "x.txt"], "expected a path ending in .onnx"),
    (["--model", "tiny-test", "--out", "x.onnx", "--fp16-data", "nowhere:/x"], "--data 'nowhere:/x'"),
    (["--model", "tiny-test", "--out", "x.onnx", "--size", "big"], "size 'big' is not HEIGHTxWIDTH"),
])
def test_cli_bad_arguments_give_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "onnx", *args]) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # earlier lines: progress log
    assert last.startswith("vltseg export: error:") and message in last and "Traceback" not in err


def test_demo_model_export_parity_and_fp16_check(tmp_path, camvid_root):
    """The embedded demo model at CamVid's native 360x480: ONNX parity and FP16 check on real frames."""
    from vltseg_core.verify.fp16 import load_frames
    from vltseg_core.pretrained import load_demo_model

    model = load_demo_model()
    path = export_onnx(model, tmp_path / "demo.onnx", (360, 480))
    frames, labels, class_ids = load_frames("camvid", camvid_root, "val", 2)
    parity = check_parity(model, path, [(360, 480)], images=frames)
    assert parity[0].argmax_agreement > 0.999
    report = check_fp16(path, frames, labels, class_ids)
    assert report.nonfinite == 0 and report.argmax_agreement > 0.99 and abs(report.miou_delta) < 0.01


def test_mask2former_exports_dynamic_with_parity(tmp_path):
    """The paper's head (plain-PyTorch deformable attention, masked attention) is one ONNX graph with standard
    ops only (no custom plugins for TensorRT) and matches PyTorch at the traced and at another size."""
    torch.manual_seed(0)
    model = build_model(tiny_mask2former_preset()).eval()
    path = export_onnx(model, tmp_path / "m2f.onnx", (128, 192), dynamic=True)
    graph = onnx.load(str(path))
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}
    assert "GridSample" in {node.op_type for node in graph.graph.node}
    results = check_parity(model, path, [(128, 192), (160, 96)])
    assert all(r.argmax_agreement > 0.999 for r in results), results
