"""TensorRT: the clear errors, the device parser and the engine-vs-ONNX Runtime verdict run everywhere; engine
build + parity + gate + cache reuse need TensorRT (10.0 to 11.x) and a CUDA GPU (marked `tensorrt`, skipped
elsewhere with the reason). The version gate and the API conformance are in test_tensorrt_api.py, the builder's
requests to TensorRT and the gate's decisions in test_tensorrt_build.py (fake tensorrt)."""
import importlib.util
import json
import logging
import time

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vltseg_core.errors import VLTSegError
from vltseg_core.export.engine_cache import manifest_path
from vltseg_core.gpu import cuda_index, current_gpu
from vltseg_core.predictor import load_predictor
from vltseg_core.verify.engine_gate import engine_agreement

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
NO_TRT_REASON = "needs TensorRT (10.0 to 11.x) and a CUDA GPU (not on this machine)"


@pytest.fixture
def small_onnx(tmp_path):
    """A minimal valid graph with the image-input layout (softmax over channels of a 1x1 conv)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [19, 3, 1, 1], np.linspace(-1, 1, 57).tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 48])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 19, 32, 48])], initializer=[w])
    path = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.mark.skipif(HAVE_TRT, reason="checks the error where TensorRT or the GPU is missing")
def test_tensorrt_requested_without_it_is_one_clear_error(small_onnx, tmp_path, monkeypatch):
    missing = "TensorRT was requested but (the `tensorrt` Python package is not installed|no CUDA GPU is visible)"
    with pytest.raises(VLTSegError, match=missing):
        load_predictor(str(small_onnx), backend="tensorrt", device="cuda")
    # A preset named for TensorRT fails before the ONNX export (minutes for real models) would start.
    monkeypatch.setenv("VLTSEG_HOME", str(tmp_path / "home"))
    started = time.perf_counter()
    with pytest.raises(VLTSegError, match=missing):
        load_predictor("tiny-test", backend="tensorrt", device="cuda")
    assert time.perf_counter() - started < 5 and not (tmp_path / "home" / "onnx").exists()


def test_cuda_device_parser():
    assert cuda_index("cuda") == 0 and cuda_index("cuda:0") == 0 and cuda_index("cuda:3") == 3
    for bad in ("cpu", "cuda:", "cuda:x", "cuda:-1", "gpu:1"):
        with pytest.raises(VLTSegError, match=f"device '{bad}' is not a CUDA device"):
            cuda_index(bad)
    with pytest.raises(VLTSegError, match="TensorRT needs a CUDA device, got device 'cpu'"):
        current_gpu("cpu")


def _probs(labels: np.ndarray, num_classes: int = 19) -> np.ndarray:
    """(N,C,H,W) probabilities whose argmax is `labels` (N,H,W)."""
    probs = np.full((*labels.shape[:1], num_classes, *labels.shape[1:]), 0.01, np.float32)
    np.put_along_axis(probs, labels[:, None], 0.82, axis=1)
    return probs


@pytest.mark.parametrize("precision, changed, ok", [
    ("fp32", 0, True), ("fp32", 10, True), ("fp32", 11, False),  # 10000 pixels: 99.9% = 10 may differ
    ("fp16", 100, True), ("fp16", 101, False), ("int8", 200, True), ("int8", 201, False)])
def test_engine_agreement_verdict(precision, changed, ok):
    """The engine gate's bars (fp32 99.9%, fp16 99%, int8 98%), which the GPU tests below use too."""
    labels = np.random.default_rng(0).integers(0, 19, (1, 100, 100))
    ref = _probs(labels)
    moved = labels.copy()
    moved.reshape(-1)[:changed] = (moved.reshape(-1)[:changed] + 1) % 19
    verdict = engine_agreement(ref, _probs(moved), precision)
    assert verdict.ok is ok and verdict.argmax_agreement == pytest.approx(1 - changed / 10000)
    assert verdict.line().startswith(f"{precision} engine vs ONNX Runtime: argmax agreement")


def test_engine_agreement_fails_on_nonfinite_and_bad_input():
    ref = _probs(np.zeros((1, 8, 8), int))
    got = ref.copy()
    got[0, 1, 0, 0] = np.inf  # not the argmax class: agreement stays 100%, the inf alone fails it
    verdict = engine_agreement(ref, got, "fp16")
    assert verdict.argmax_agreement == 1.0 and verdict.nonfinite == 1 and not verdict.ok
    assert np.isfinite(verdict.max_abs_diff)
    with pytest.raises(VLTSegError, match="differs in shape"):
        engine_agreement(ref, got[:, :, :4], "fp16")
    with pytest.raises(VLTSegError, match="unknown TensorRT precision 'bf16'"):
        engine_agreement(ref, got, "bf16")


def test_engine_file_errors(small_onnx, tmp_path):
    with pytest.raises(VLTSegError, match="model file not found"):
        load_predictor(str(tmp_path / "missing.engine"))
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    with pytest.raises(VLTSegError, match="no readable manifest"):
        load_predictor(str(engine), device="cuda")
    manifest_path(engine).write_text(json.dumps({"format": 1, "engine_sha256": "0" * 64, "spec": {}}))
    with pytest.raises(VLTSegError, match="corrupt or was replaced"):
        load_predictor(str(engine), device="cuda")
    from vltseg_core.export.tensorrt_build import engine_for_onnx

    with pytest.raises(VLTSegError, match="ONNX file not found"):
        engine_for_onnx(tmp_path / "missing.onnx")
    with pytest.raises(VLTSegError, match="fixed at 32x48 but the opt size asked for is 64x64"):
        engine_for_onnx(small_onnx, size=(64, 64))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from vltseg_core.export.onnx_export import export_onnx
    from vltseg_core.models import build_model

    torch.manual_seed(0)
    return export_onnx(build_model("tiny-test"), tmp_path_factory.mktemp("trt") / "tiny.onnx", (128, 160),
                       dynamic=True)


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TRT, reason=NO_TRT_REASON)
@pytest.mark.parametrize("precision, min_agreement", [("fp32", 0.999), ("fp16", 0.99)])
def test_engine_matches_onnxruntime_and_is_cached(tiny_onnx, precision, min_agreement, caplog):
    from vltseg_core.backends.onnxruntime_backend import OnnxRuntimeBackend
    from vltseg_core.backends.tensorrt_backend import TensorRTBackend
    from vltseg_core.export.tensorrt_build import engine_for_onnx

    engine = engine_for_onnx(tiny_onnx, precision=precision, size=(128, 160), min_size=(64, 64), max_size=(256, 320))
    built_at = json.loads(manifest_path(engine).read_text())["built_at"]
    with caplog.at_level(logging.INFO, logger="vltseg_core.export.engine_cache"):
        assert engine_for_onnx(tiny_onnx, precision=precision, size=(128, 160), min_size=(64, 64),
                               max_size=(256, 320)) == engine
    assert "using cached TensorRT engine" in caplog.text
    assert json.loads(manifest_path(engine).read_text())["built_at"] == built_at
    trt_backend, ort_backend = TensorRTBackend(engine), OnnxRuntimeBackend(tiny_onnx)
    batch = np.random.default_rng(0).integers(0, 256, (1, 3, 96, 200), dtype=np.uint8)
    ref, got = ort_backend.infer(batch), trt_backend.infer(batch)
    assert float((ref.argmax(1) == got.argmax(1)).mean()) >= min_agreement
    on_gpu = trt_backend.infer_device(batch)  # what the predictor uses: left on the GPU
    assert on_gpu.device.type == "cuda"
    np.testing.assert_allclose(on_gpu.cpu().numpy(), got, atol=1e-5)
    pair = np.concatenate([batch, batch[:, :, ::-1].copy()])  # more images than the profile's batch of 1
    np.testing.assert_allclose(trt_backend.infer(pair)[:1], got, atol=1e-5)
    with pytest.raises(VLTSegError, match="outside the engine's profile"):
        trt_backend.infer(np.zeros((1, 3, 512, 512), np.uint8))
    predictor = load_predictor(str(engine), device="cuda")
    assert predictor.identity()["backend"] == "tensorrt"
    assert predictor.predict(np.zeros((90, 120, 3), np.uint8)).labels.shape == (90, 120)
