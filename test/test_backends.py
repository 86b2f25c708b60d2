"""Backends behind one interface: torch vs onnxruntime parity on real frames, fixed-size graphs in both
modes, fp16 on CPU, backend selection, and clear errors for bad graphs and wrong sizes."""
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vltseg_core.backends.base import Backend
from vltseg_core.backends.factory import available_backends, choose_backend
from vltseg_core.backends.onnxruntime_backend import OnnxRuntimeBackend
from vltseg_core.backends.torch_backend import TorchBackend
from vltseg_core.classes import load_class_table
from vltseg_core.errors import VLTSegError
from vltseg_core.export.onnx_export import export_onnx
from vltseg_core.models import build_model
from vltseg_core.predictor import InferenceSettings, Predictor, load_predictor

SIZE = (192, 256)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return build_model("tiny-test").eval()


@pytest.fixture(scope="module")
def fixed_onnx(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny_fixed.onnx", SIZE)


@pytest.fixture(scope="module")
def frames(camvid_root):
    names = [line.split()[0].lstrip("/").split("CamVid/")[-1] for line in (camvid_root / "val.txt").read_text().splitlines()[:2]]
    return [cv2.cvtColor(cv2.imread(str(camvid_root / n)), cv2.COLOR_BGR2RGB) for n in names]


def predictor(backend, **settings):
    return Predictor(backend, load_class_table("cityscapes"), InferenceSettings(**settings))


def agreement(a, b) -> float:
    return float((a.labels == b.labels).mean())


def test_both_backends_implement_the_interface(model, fixed_onnx):
    for backend in (TorchBackend(model), OnnxRuntimeBackend(fixed_onnx)):
        assert isinstance(backend, Backend)
        assert backend.num_classes == 19 and backend.identity()["backend"] == backend.name
    assert OnnxRuntimeBackend(fixed_onnx).input_size == SIZE and TorchBackend(model).input_size is None
    assert len(OnnxRuntimeBackend(fixed_onnx).identity()["onnx_sha256"]) == 64


def test_torch_and_onnxruntime_agree_on_real_frames(model, fixed_onnx, frames):
    """Whole mode: the fixed graph resizes every frame to 192x256; torch gets the same size via settings."""
    ort_pred = predictor(OnnxRuntimeBackend(fixed_onnx))
    torch_pred = predictor(TorchBackend(model), size=SIZE)  # 360x480 fits into 192x256 exactly
    for frame in frames:
        a, b = torch_pred.predict(frame), ort_pred.predict(frame)
        assert a.labels.shape == b.labels.shape == frame.shape[:2]
        assert agreement(a, b) > 0.999
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-4)


def test_fixed_graph_in_slide_mode_pads_and_agrees(model, fixed_onnx, frames):
    """Slide mode with a fixed graph: crops take the graph's size, small images are padded to it."""
    ort_pred = predictor(OnnxRuntimeBackend(fixed_onnx), mode="slide", stride=(128, 192))
    torch_pred = predictor(TorchBackend(model), mode="slide", crop_size=SIZE, stride=(128, 192))
    a, b = torch_pred.predict(frames[0]), ort_pred.predict(frames[0])
    assert agreement(a, b) > 0.999
    small = frames[0][:100, :150]
    assert ort_pred.predict(small).labels.shape == (100, 150)


def test_onnxruntime_fp16_on_cpu(fixed_onnx, frames):
    fp32 = predictor(OnnxRuntimeBackend(fixed_onnx)).predict(frames[0])
    fp16_backend = OnnxRuntimeBackend(fixed_onnx, precision="fp16")
    assert fp16_backend.identity()["precision"] == "fp16"
    assert agreement(fp32, predictor(fp16_backend).predict(frames[0])) > 0.99


@pytest.mark.parametrize("precision, min_agreement", [("fp16", 0.99), ("bf16", 0.98)])
def test_torch_half_precisions(model, precision, min_agreement):
    batch = np.random.default_rng(0).integers(0, 256, (1, 3, *SIZE), dtype=np.uint8)
    ref, out = TorchBackend(model).infer(batch), TorchBackend(model, precision=precision).infer(batch)
    assert out.dtype == np.float32 and float((ref.argmax(1) == out.argmax(1)).mean()) > min_agreement


def test_batches_of_uint8_and_float32_agree(fixed_onnx, model):
    batch = np.random.default_rng(0).integers(0, 256, (2, 3, *SIZE), dtype=np.uint8)
    ort = OnnxRuntimeBackend(fixed_onnx)
    np.testing.assert_allclose(ort.infer(batch), ort.infer(batch.astype(np.float32)), atol=1e-6)
    out = ort.infer(batch)  # a batch-1 graph loops over the batch
    assert out.shape == (2, 19, *SIZE)
    np.testing.assert_allclose(out, TorchBackend(model).infer(batch), atol=1e-4)


def test_graph_errors(fixed_onnx, tmp_path):
    ort = OnnxRuntimeBackend(fixed_onnx)
    with pytest.raises(VLTSegError, match="input is 100x100 but the graph was built for 192x256"):
        ort.infer(np.zeros((1, 3, 100, 100), np.float32))
    with pytest.raises(VLTSegError, match=r"expected float32 \(N,3,H,W\)"):
        ort.infer(np.zeros((1, 100, 100, 3), np.float32))
    with pytest.raises(VLTSegError, match="dtype float64"):
        ort.infer(np.zeros((1, 3, *SIZE), np.float64))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"definitely not protobuf")
    with pytest.raises(VLTSegError, match="onnxruntime cannot load"):
        OnnxRuntimeBackend(broken)
    with pytest.raises(VLTSegError, match="ONNX file not found"):
        OnnxRuntimeBackend(tmp_path / "missing.onnx")
    with pytest.raises(VLTSegError, match="device 'cuda' requested but this onnxruntime has no CUDA"):
        if "CUDAExecutionProvider" in available_backends()["onnxruntime"]:
            pytest.skip("this onnxruntime has CUDA")
        OnnxRuntimeBackend(fixed_onnx, device="cuda")


def test_gpu_provider_that_did_not_load_is_one_line_not_a_cpu_run(fixed_onnx, monkeypatch, caplog):
    """onnxruntime lists providers compiled into the wheel, and a session whose GPU provider cannot load only warns
    and runs on the CPU. Here the CPU wheel is made to list CUDA: the real session then really falls back, and the
    backend refuses it (or, opted in, warns)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime really has CUDA")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(VLTSegError, match=r"backend onnxruntime \(tiny_fixed.onnx\): device 'cuda:1' was requested "
                                          r"but the session runs on CPUExecutionProvider only"):
        OnnxRuntimeBackend(fixed_onnx, device="cuda:1")
    monkeypatch.setenv("VLTSEG_ALLOW_PROVIDER_FALLBACK", "1")
    with caplog.at_level(logging.WARNING, logger="vltseg_core.backends.onnxruntime_backend"):
        backend = OnnxRuntimeBackend(fixed_onnx, device="cuda")
    assert "running anyway" in caplog.text and backend.identity()["providers"] == ["CPUExecutionProvider"]


def test_tensorrt_provider_gets_explicit_profile_shapes():
    from vltseg_core.backends.onnxruntime_backend import providers_for

    providers = providers_for("cuda:1", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                              cache_dir=Path("/tmp"),
                              profile=((1, 3, 256, 512), (1, 3, 512, 1024), (4, 3, 1024, 2048)))
    trt_options = dict(p for p in providers if isinstance(p, tuple))["TensorrtExecutionProvider"]
    assert trt_options["device_id"] == 1 and "trt_fp16_enable" not in trt_options  # fp16 = the float16 graph
    assert (trt_options["trt_profile_min_shapes"], trt_options["trt_profile_opt_shapes"],
            trt_options["trt_profile_max_shapes"]) == ("images:1x3x256x512", "images:1x3x512x1024", "images:4x3x1024x2048")
    assert providers[1] == ("CUDAExecutionProvider", {"device_id": 1}) and providers[-1] == "CPUExecutionProvider"


def test_selection_by_name_and_auto(fixed_onnx, caplog):
    assert choose_backend("auto", "engine", "cpu") == ("tensorrt", "a serialized TensorRT engine was given")
    assert choose_backend("auto", "model", "cpu") == (
        "torch", "PyTorch weights on CPU (no export step needed; onnxruntime is an explicit choice)")
    if available_backends()["tensorrt"] != "available":
        assert choose_backend("auto", "onnx", "cpu")[0] == "onnxruntime"
    assert choose_backend("onnxruntime", "model", "cpu") == ("onnxruntime", "requested by name")
    with pytest.raises(VLTSegError, match="only runs on backend 'tensorrt'"):
        choose_backend("onnxruntime", "engine", "cpu")
    with pytest.raises(VLTSegError, match="runs on 'onnxruntime' or 'tensorrt', not 'torch'"):
        choose_backend("torch", "onnx", "cpu")
    with caplog.at_level(logging.INFO, logger="vltseg_core.predictor"):
        pred = load_predictor(str(fixed_onnx))
    assert pred.identity()["backend"] == "onnxruntime" and "backend onnxruntime for" in caplog.text
    assert pred.class_table.name == "cityscapes"  # from the graph's metadata


def test_named_backend_that_cannot_run_fails_before_any_export(tmp_path, monkeypatch):
    """`--backend onnxruntime` without onnxruntime (or without a GPU provider on cuda): one clear line, before the
    minutes of export a preset would otherwise take first."""
    monkeypatch.setenv("VLTSEG_HOME", str(tmp_path))
    if "CUDAExecutionProvider" not in available_backends()["onnxruntime"]:
        with pytest.raises(VLTSegError, match="device 'cuda' requested but this onnxruntime has no CUDA"):
            load_predictor("tiny-test", backend="onnxruntime", device="cuda")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(VLTSegError, match="backend onnxruntime was requested but the `onnxruntime` Python "
                                          "package is not installed"):
        load_predictor("tiny-test", backend="onnxruntime")
    assert not (tmp_path / "onnx").exists()


def test_precision_the_backend_cannot_run_fails_before_any_export(tmp_path, monkeypatch):
    monkeypatch.setenv("VLTSEG_HOME", str(tmp_path))
    with pytest.raises(VLTSegError, match=r"backend onnxruntime: precision 'bf16' is not supported \(expected one "
                                          r"of fp32, fp16\)"):
        load_predictor("tiny-test", backend="onnxruntime", precision="bf16")
    with pytest.raises(VLTSegError, match="unknown precision 'fp8'"):
        load_predictor("tiny-test", backend="torch", precision="fp8")
    assert not (tmp_path / "onnx").exists()


def test_load_predictor_exports_a_cached_graph_for_onnxruntime(tmp_path, monkeypatch, frames):
    """A preset/checkpoint with backend onnxruntime: exported once (dynamic H/W, parity-checked) into the cache."""
    monkeypatch.setenv("VLTSEG_HOME", str(tmp_path))
    torch.manual_seed(0)
    pred = load_predictor("tiny-test", backend="onnxruntime")
    cached = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(cached) == 1 and pred.backend.input_size is None
    result = pred.predict(frames[0][:150, :210])
    assert result.labels.shape == (150, 210)
    torch.manual_seed(0)
    assert load_predictor("tiny-test", backend="onnxruntime").backend.onnx_path == cached[0]  # same weights: reused


def test_cached_graph_is_keyed_by_the_model_code(tmp_path, monkeypatch):
    """A release that changes the model code (or torch) must not run a graph exported by an older one."""
    from vltseg_core.verify import parity
    from vltseg_core.models import build_model

    monkeypatch.setenv("VLTSEG_HOME", str(tmp_path))
    torch.manual_seed(0)
    model = build_model("tiny-test").eval()
    first = parity.cached_onnx(model, "tiny-test")
    monkeypatch.setattr(parity, "graph_code_digest", lambda: "code of another release")
    second = parity.cached_onnx(model, "tiny-test")
    assert second != first and first.is_file() and second.is_file()


def test_infer_device_is_infer_left_on_the_device(model, fixed_onnx):
    """What the predictor calls (a torch tensor on the backend's device) holds exactly what `infer` returns."""
    batch = np.random.default_rng(3).integers(0, 256, (2, 3, *SIZE)).astype(np.uint8)
    for backend in (TorchBackend(model), OnnxRuntimeBackend(fixed_onnx)):
        on_device = backend.infer_device(batch)
        assert isinstance(on_device, torch.Tensor) and on_device.dtype == torch.float32
        assert on_device.device.type == "cpu"  # both on the CPU here; torch on cuda keeps it there
        np.testing.assert_allclose(on_device.numpy(), backend.infer(batch), rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (not on this machine)")
def test_torch_on_cuda_keeps_probabilities_on_the_gpu_and_agrees_with_cpu(model, frames):
    """On a GPU the probabilities stay there (resize back and argmax on the device) and the labels are the CPU's."""
    import copy

    gpu = TorchBackend(copy.deepcopy(model), device="cuda")
    batch = np.stack([cv2.resize(f, SIZE[::-1]).transpose(2, 0, 1) for f in frames])
    assert gpu.infer_device(batch).device.type == "cuda"
    for settings in ({}, {"mode": "slide", "crop_size": (128, 128), "stride": (96, 96)}):
        cpu_pred, gpu_pred = predictor(TorchBackend(model), **settings), predictor(gpu, **settings)
        for frame in frames:
            assert agreement(cpu_pred.predict(frame), gpu_pred.predict(frame)) > 0.999
