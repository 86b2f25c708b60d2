"""TensorRT: the clear errors run everywhere; engine build + parity + cache reuse need TensorRT 10 and a CUDA
GPU (marked `tensorrt`, skipped elsewhere with the reason)."""
import importlib.util
import json
import logging

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vltseg_core.errors import VLTSegError
from vltseg_core.export.engine_cache import manifest_path
from vltseg_core.predictor import load_predictor

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
NO_TRT_REASON = "needs TensorRT 10 and a CUDA GPU (not on this machine)"


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
def test_tensorrt_requested_without_it_is_one_clear_error(small_onnx):
    with pytest.raises(VLTSegError, match="TensorRT was requested but (the `tensorrt` Python package is not "
                                          "installed|no CUDA GPU is visible)"):
        load_predictor(str(small_onnx), backend="tensorrt", device="cuda")


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
    pair = np.concatenate([batch, batch[:, :, ::-1].copy()])  # more images than the profile's batch of 1
    np.testing.assert_allclose(trt_backend.infer(pair)[:1], got, atol=1e-5)
    with pytest.raises(VLTSegError, match="outside the engine's profile"):
        trt_backend.infer(np.zeros((1, 3, 512, 512), np.uint8))
    predictor = load_predictor(str(engine), device="cuda")
    assert predictor.identity()["backend"] == "tensorrt"
    assert predictor.predict(np.zeros((90, 120, 3), np.uint8)).labels.shape == (90, 120)
