"""What the engine builder asks TensorRT for, checked with a fake `tensorrt` module (TensorRT cannot run here):
strongly typed networks parsed from the graph whose precision was checked, no precision builder flags, TF32 off,
recovery from refused/corrupt timing caches without losing a build, and the engine gate's decisions (real ONNX
Runtime sessions stand in for the engine). The real-TensorRT versions of these are in test_tensorrt.py (marked)."""
import contextlib
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import fake_tensorrt
from vltseg_core.errors import VLTSegError
from vltseg_core.export import tensorrt_build
from vltseg_core.export.engine_cache import manifest_path, read_manifest
from vltseg_core.export.fp16_graph import fp16_graph_bytes


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """The fake module as `tensorrt`, a fake GPU, and a private asset cache."""
    fake_tensorrt.reset()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr(tensorrt_build, "current_gpu", lambda device="cuda": ("NVIDIA Fake GPU", "8.9"))
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setenv("VLTSEG_HOME", str(tmp_path / "home"))
    return fake_tensorrt


def small_graph(path: Path, dynamic: bool = True, qdq: bool = False) -> Path:
    """images -> 1x1 conv (19 classes) -> LayerNormalization over channels' last axis -> softmax: a float16
    conversion has fp16 tensors (the conv) and fp32 islands (normalisation, softmax, the output)."""
    hw = ["h", "w"] if dynamic else [32, 48]
    w = helper.make_tensor("w", TensorProto.FLOAT, [19, 3, 1, 1], np.linspace(-0.05, 0.05, 57).tolist())
    nodes = [helper.make_node("Conv", ["images", "w"], ["logits"], name="conv"),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax")]
    inits = [w]
    if qdq:
        inits += [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
        nodes = [helper.make_node("QuantizeLinear", ["images", "s", "z"], ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
                 helper.make_node("Conv", ["dq", "w"], ["logits"], name="conv"), nodes[1]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *hw])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 19, *hw])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key="vltseg.dynamic", value=json.dumps(dynamic))
    model.metadata_props.add(key="vltseg.export_size", value=json.dumps([32, 48]))
    onnx.save(model, str(path))
    return path


def test_fp16_engine_is_strongly_typed_from_the_checked_float16_graph(fake_trt, tmp_path):
    from vltseg_core.backends.onnxruntime_backend import OnnxRuntimeBackend

    onnx_path = small_graph(tmp_path / "m.onnx")
    engine = tensorrt_build.engine_for_onnx(onnx_path, precision="fp16", size=(32, 48))
    rec = fake_trt.RECORD
    assert rec["network_flags"] == 1 << fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    config = rec["config"]
    assert config.flags_set == set() and config.flags_cleared == {fake_trt.BuilderFlag.TF32}  # no FP16 flag exists
    # the graph TensorRT parsed is byte for byte the float16 graph that the FP16 check runs in ONNX Runtime
    data, sha = fp16_graph_bytes(onnx_path)
    assert rec["parsed_sha256"] == sha
    checked = OnnxRuntimeBackend(onnx_path, precision="fp16")
    assert checked.graph_sha256 == sha
    manifest = read_manifest(engine)
    assert manifest["spec"]["network_onnx_sha256"] == sha and manifest["spec"]["precision"] == "fp16"
    # per-tensor types of the parsed network: fp32 at the edges and in the softmax island, fp16 in the conv
    types, outputs = rec["network"].tensor_types, rec["network"].node_output_types
    assert types["images"] == TensorProto.FLOAT and types["probs"] == TensorProto.FLOAT
    assert outputs["conv"] == [TensorProto.FLOAT16] and outputs["softmax"] == [TensorProto.FLOAT]


def test_fp32_engine_parses_the_graph_itself_with_tf32_off_unless_asked(fake_trt, tmp_path):
    onnx_path = small_graph(tmp_path / "m.onnx", dynamic=False)
    tensorrt_build.engine_for_onnx(onnx_path, precision="fp32")
    assert fake_trt.RECORD["parsed_path"] == str(onnx_path)
    assert fake_trt.RECORD["config"].flags_cleared == {fake_trt.BuilderFlag.TF32}
    assert all(t == [TensorProto.FLOAT] for t in fake_trt.RECORD["network"].node_output_types.values())
    tensorrt_build.engine_for_onnx(onnx_path, precision="fp32", allow_tf32=True)  # another spec: its own engine
    assert fake_trt.RECORD["config"].flags_set == {fake_trt.BuilderFlag.TF32}


def test_int8_needs_a_quantized_graph(fake_trt, tmp_path):
    with pytest.raises(VLTSegError, match="int8 needs an explicitly quantized graph.*no QuantizeLinear"):
        tensorrt_build.engine_for_onnx(small_graph(tmp_path / "m.onnx"), precision="int8", size=(32, 48))
    assert "network_flags" not in fake_trt.RECORD  # refused before any build
    qdq = small_graph(tmp_path / "q.onnx", qdq=True)
    tensorrt_build.engine_for_onnx(qdq, precision="int8", size=(32, 48))
    assert fake_trt.RECORD["parsed_path"] == str(qdq) and fake_trt.RECORD["config"].flags_set == set()


def _timing_cache(engine: Path) -> Path:
    caches = list(engine.parent.glob("timing-*.cache"))
    assert len(caches) == 1, caches
    return caches[0]


@pytest.mark.parametrize("damage", ["corrupt", "refused", "none_after_build", "save_fails"])
def test_timing_cache_trouble_never_loses_the_build(fake_trt, tmp_path, caplog, damage):
    onnx_path = small_graph(tmp_path / "m.onnx", dynamic=False)
    engine = tensorrt_build.engine_for_onnx(onnx_path, precision="fp32")
    cache = _timing_cache(engine)
    assert cache.read_bytes() == b"+tuned"  # the first build starts empty and saves what it tuned
    if damage == "corrupt":
        cache.write_bytes(b"corrupt bytes")
    elif damage == "refused":
        cache.write_bytes(b"other-gpu cache")
        fake_trt.KNOBS["refuse_cache_prefix"] = b"other-gpu"
    elif damage == "none_after_build":
        fake_trt.KNOBS["no_timing_cache_after_build"] = True
    else:
        fake_trt.KNOBS["serialize_raises"] = True
    with caplog.at_level(logging.WARNING, logger="vltseg_core.export.tensorrt_build"):
        rebuilt = tensorrt_build.engine_for_onnx(onnx_path, precision="fp32", force=True)
    assert rebuilt == engine and json.loads(engine.read_bytes())["fake_engine"]  # the engine was written
    assert read_manifest(engine)["engine_sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    expected = {"corrupt": "is unreadable (damaged?); starting from an empty one",
                "refused": "refused timing cache",
                "none_after_build": "no timing cache to save", "save_fails": "timing cache not saved"}[damage]
    assert expected in caplog.text
    if damage in ("corrupt", "refused"):  # fell back to an empty cache and saved a fresh one
        assert fake_trt.RECORD["timing_cache_created"][-1] == b"" and cache.read_bytes() == b"+tuned"


def test_failed_build_and_missing_context_are_one_line(fake_trt, tmp_path):
    from vltseg_core.backends.tensorrt_backend import execution_context

    onnx_path = small_graph(tmp_path / "m.onnx", dynamic=False)
    fake_trt.KNOBS["build_fails"] = True
    with pytest.raises(VLTSegError, match="TensorRT failed to build an engine from .*logger vltseg_core.tensorrt"):
        tensorrt_build.engine_for_onnx(onnx_path, precision="fp32")
    fake_trt.KNOBS["no_context"] = True
    with pytest.raises(VLTSegError, match="could not create an execution context .*not enough free memory on cuda:1"):
        execution_context(fake_trt.ICudaEngine({}), tmp_path / "x.engine", "cuda:1")


def test_tensorrt_log_goes_to_python_logging(fake_trt, caplog):
    logger = tensorrt_build.tensorrt_logger()
    with caplog.at_level(logging.DEBUG, logger="vltseg_core.tensorrt"):
        logger.log(fake_trt.ILogger.Severity.ERROR, "parser said no")
        logger.log(fake_trt.ILogger.Severity.VERBOSE, "chatter")
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels == {"TensorRT: parser said no": logging.ERROR, "TensorRT: chatter": logging.DEBUG}


# -- the engine gate ----------------------------------------------------------------------------------------------
class StandInEngine:
    """What a TensorRT engine computes, played by ONNX Runtime running `graph` (e.g. the float16 graph): the gate
    compares whatever it is given with the fp32 graph, which is the thing under test."""

    def __init__(self, onnx_path: Path, precision: str, shape):
        from vltseg_core.backends.onnxruntime_backend import OnnxRuntimeBackend
        from vltseg_core.export.engine_cache import InputProfile

        self.inner = OnnxRuntimeBackend(onnx_path, precision=precision)
        self.profile = InputProfile("images", shape, shape, shape)
        self.calls = 0

    def infer(self, batch):
        self.calls += 1
        return self.inner.infer(batch)


@pytest.fixture(scope="session")
def gate_frames():
    """Real dashcam frames: the gate frames `vltseg setup` prepares (before any test moves VLTSEG_HOME)."""
    from vltseg_core.verify.gate_frames import load_gate_frames

    return load_gate_frames()[0][:3]


@pytest.fixture
def frames_dir(tmp_path, gate_frames):
    """Three of them in a folder of their own (the gate's `--gate-frames DIR`)."""
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, rgb in enumerate(gate_frames):
        cv2.imwrite(str(folder / f"f{i}.png"), rgb[:, :, ::-1])
    return folder


def _gated_engine(fake_trt, tmp_path, precision="fp16"):
    onnx_path = small_graph(tmp_path / "m.onnx")
    engine = tensorrt_build.engine_for_onnx(onnx_path, precision=precision, size=(32, 48))
    return onnx_path, engine


def test_gate_passes_records_and_is_reused(fake_trt, tmp_path, frames_dir):
    from vltseg_core.verify.engine_gate import gate_engine

    onnx_path, engine = _gated_engine(fake_trt, tmp_path)
    stand_in = StandInEngine(onnx_path, "fp16", (1, 3, 32, 48))
    verdict = gate_engine(engine, stand_in, frames_dir)
    assert verdict.ok and verdict.argmax_agreement >= 0.99 and stand_in.calls == 3  # one call per real frame
    record = read_manifest(engine)["gate"]
    assert record["passed"] and record["engine_sha256"] == read_manifest(engine)["engine_sha256"]
    assert gate_engine(engine, stand_in, frames_dir) is None and stand_in.calls == 3  # reused from the manifest
    # other frames are a new measurement
    (frames_dir / "f0.png").unlink()
    assert gate_engine(engine, stand_in, frames_dir).ok and stand_in.calls == 5


def test_gate_refuses_an_engine_that_disagrees(fake_trt, tmp_path, frames_dir):
    from vltseg_core.verify.engine_gate import EngineGateFailed, gate_engine

    onnx_path, engine = _gated_engine(fake_trt, tmp_path)
    wrong = small_graph(tmp_path / "other.onnx")
    model = onnx.load(str(wrong))
    model.graph.initializer[0].CopyFrom(helper.make_tensor("w", TensorProto.FLOAT, [19, 3, 1, 1],
                                                           np.linspace(0.05, -0.05, 57).tolist()))
    onnx.save(model, str(wrong))
    stand_in = StandInEngine(wrong, "fp32", (1, 3, 32, 48))
    with pytest.raises(EngineGateFailed, match=r"failed its gate: fp16 engine vs ONNX Runtime: argmax agreement .* "
                                               r"on 3 real frames .*not used"):
        gate_engine(engine, stand_in, frames_dir)
    assert read_manifest(engine)["gate"]["passed"] is False
    calls = stand_in.calls
    with pytest.raises(EngineGateFailed, match="failed its gate on "):  # the recorded verdict, not a re-run
        gate_engine(engine, stand_in, frames_dir)
    assert stand_in.calls == calls


def test_build_only_records_the_skip_and_the_next_load_gates(fake_trt, tmp_path, frames_dir, capsys):
    from vltseg_core.cli import main
    from vltseg_core.verify.engine_gate import gate_engine

    onnx_path = small_graph(tmp_path / "m.onnx")
    assert main(["export", "trt", "--onnx", str(onnx_path), "--fp16", "--size", "32x48", "--build-only"]) == 0
    engine = Path(capsys.readouterr().out.split("TensorRT engine: ")[1].split()[0])
    assert read_manifest(engine)["gate"] == {**read_manifest(engine)["gate"], "passed": False,
                                             "skipped": "built with --build-only"}
    assert gate_engine(engine, StandInEngine(onnx_path, "fp16", (1, 3, 32, 48)), frames_dir).ok


def test_gate_without_its_onnx_is_one_line(fake_trt, tmp_path, frames_dir):
    from vltseg_core.verify.engine_gate import gate_engine

    onnx_path, engine = _gated_engine(fake_trt, tmp_path)
    stand_in = StandInEngine(onnx_path, "fp16", (1, 3, 32, 48))
    onnx_path.unlink()
    with pytest.raises(VLTSegError, match="has not been gated and its ONNX source .* is not here"):
        gate_engine(engine, stand_in, frames_dir)
    assert manifest_path(engine).is_file()


# -- the backend's plumbing (buffers, bindings, batching) on CPU tensors -----------------------------------------
@pytest.fixture
def plumbing(fake_trt, tmp_path, monkeypatch):
    """An engine of a dynamic tiny-test graph with a batch-1..4 profile, run by the fake TensorRT with the real
    torch model on the buffers the backend binds (HostStream: CPU tensors), and that model for reference."""
    from vltseg_core.backends import tensorrt_backend
    from vltseg_core.export.onnx_export import export_onnx
    from vltseg_core.models import build_model

    monkeypatch.setattr(tensorrt_backend, "current_gpu", lambda device="cuda": ("NVIDIA Fake GPU", "8.9"))
    torch.manual_seed(0)
    model = build_model("tiny-test").eval()
    onnx_path = export_onnx(model, tmp_path / "tiny.onnx", (64, 96), dynamic=True)
    engine = tensorrt_build.engine_for_onnx(onnx_path, precision="fp32", size=(64, 96), min_size=(32, 32),
                                            max_size=(128, 160), batch=(1, 4, 4))
    fake_trt.KNOBS["model"] = model
    return tensorrt_backend.TensorRTBackend(engine, host_only=True), model


def test_backend_binds_runs_and_returns_the_models_numbers(plumbing):
    from vltseg_core.backends.torch_backend import TorchBackend

    backend, model = plumbing
    batch = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 96), dtype=np.uint8)
    np.testing.assert_allclose(backend.infer(batch), TorchBackend(model).infer(batch), atol=1e-5)
    assert backend.executions == 1 and backend.profile.max[0] == 4
    with pytest.raises(VLTSegError, match="outside the engine's profile"):
        backend.infer(np.zeros((1, 3, 200, 200), np.uint8))


def test_a_batch_of_crops_or_cameras_is_one_engine_call(plumbing):
    from vltseg_core.classes import load_class_table
    from vltseg_core.predictor import InferenceSettings, Predictor, engine_batch

    backend, _ = plumbing
    assert engine_batch(InferenceSettings(mode="slide", crops_per_batch=4)) == (1, 4, 4)
    slide = Predictor(backend, load_class_table("cityscapes"),
                      InferenceSettings(mode="slide", crop_size=(64, 64), stride=(48, 48), crops_per_batch=4))
    slide.predict(np.random.default_rng(1).integers(0, 256, (64, 208, 3), dtype=np.uint8))  # 4 windows
    assert backend.executions == 1
    whole = Predictor(backend, load_class_table("cityscapes"), InferenceSettings(mode="whole"))
    cameras = [np.random.default_rng(i).integers(0, 256, (64, 96, 3), dtype=np.uint8) for i in range(4)]
    whole.predict_batch(cameras)  # four cameras batched by the node
    assert backend.executions == 2
    whole.predict_batch(cameras + cameras[:2])  # more than the profile's batch: chunks of 4
    assert backend.executions == 4


def test_host_buffers_stay_bounded_over_many_sizes(plumbing):
    backend, _ = plumbing
    sizes = [(h, w) for h in range(32, 129, 16) for w in range(32, 161, 32)]
    for h, w in sizes:
        backend.infer(np.zeros((1, 3, h, w), np.uint8))
    assert len(backend.host.buffers) == 1  # one uint8 staging buffer, reused
    assert backend.host.nbytes == 3 * 128 * 160  # the largest batch seen, not the sum of all sizes
