"""Graphs and engines that take only some input sizes never change a frame's aspect ratio: whole mode fits the frame
into a fixed size and zero-pads the rest, a frame larger than an engine profile is shrunk to fit it, one smaller is
padded; the padding is cropped off before the scores are resized back. Backends here are the real torch backend
with the size limits a fixed graph or a TensorRT profile would have (TensorRT cannot run here)."""
import numpy as np
import pytest
import torch

from vltseg_core.backends.torch_backend import TorchBackend
from vltseg_core.classes import load_class_table
from vltseg_core.export.engine_cache import InputProfile
from vltseg_core.models import build_model
from vltseg_core.predictor import InferenceSettings, Predictor, fit_within


class LimitedBackend(TorchBackend):
    """The torch backend restricted like a fixed graph (`input_size`) or an engine profile (`profile`); it records
    every batch it is given."""

    def __init__(self, model, input_size=None, profile=None):
        super().__init__(model)
        self.input_size, self.profile, self.batches = input_size, profile, []

    def infer_device(self, batch):
        if self.input_size is not None:
            assert tuple(batch.shape[2:]) == self.input_size
        if self.profile is not None:
            assert self.profile.contains(batch.shape), batch.shape
        self.batches.append(batch.copy())
        return super().infer_device(batch)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny-test").eval()


def frame(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(1, 256, (h, w, 3), dtype=np.uint8)  # no zero pixel: padding is visible


def content(batch: np.ndarray) -> tuple[int, int]:
    """Height and width of the non-zero (non-padding) region of the first image."""
    rows, cols = np.nonzero(batch[0].max(0))
    return int(rows.max()) + 1, int(cols.max()) + 1


def test_fixed_size_whole_mode_keeps_the_aspect_ratio(model):
    backend = LimitedBackend(model, input_size=(256, 256))
    predictor = Predictor(backend, load_class_table("cityscapes"), InferenceSettings(mode="whole"))
    result = predictor.predict(frame(540, 960))  # a 16:9 camera into a square engine
    assert result.labels.shape == (540, 960)
    assert content(backend.batches[-1]) == (144, 256) == fit_within((540, 960), (256, 256))
    portrait = predictor.predict(frame(300, 100))
    assert portrait.labels.shape == (300, 100) and content(backend.batches[-1]) == (256, 85)


def test_engine_profile_shrinks_large_frames_and_pads_small_ones(model):
    profile = InputProfile("images", (1, 3, 128, 128), (1, 3, 192, 256), (4, 3, 256, 320))
    backend = LimitedBackend(model, profile=profile)
    predictor = Predictor(backend, load_class_table("cityscapes"), InferenceSettings(mode="whole"))
    assert predictor.predict(frame(540, 960)).labels.shape == (540, 960)
    assert backend.batches[-1].shape[2:] == (180, 320)  # shrunk to the profile's max width, 16:9 kept
    assert predictor.predict(frame(100, 200)).labels.shape == (100, 200)
    assert backend.batches[-1].shape[2:] == (128, 200) and content(backend.batches[-1]) == (100, 200)
    # inside the profile: the frame's own shape, like torch and ONNX Runtime
    assert predictor.predict(frame(200, 300)).labels.shape == (200, 300)
    assert backend.batches[-1].shape[2:] == (200, 300)


def test_deploy_outputs_are_used_end_to_end_and_equal_the_predictors(model, tmp_path):
    """A deploy-output graph computes labels and confidence itself: where the network runs at the frame's size the
    predictor fetches only those two maps, and they are what it computes from the scores."""
    from vltseg_core.backends.onnxruntime_backend import OnnxRuntimeBackend
    from vltseg_core.export.onnx_export import export_onnx

    plain = OnnxRuntimeBackend(export_onnx(model, tmp_path / "plain.onnx", (64, 96), dynamic=True))
    deploy = OnnxRuntimeBackend(export_onnx(model, tmp_path / "deploy.onnx", (64, 96), dynamic=True,
                                            deploy_outputs=True))
    assert deploy.deploy_outputs and not plain.deploy_outputs
    calls = []
    real = deploy.infer_labels
    deploy.infer_labels = lambda batch: (calls.append(batch.shape), real(batch))[1]
    table, settings = load_class_table("cityscapes"), InferenceSettings(mode="whole")
    frames = [frame(64, 96), frame(64, 96)[::-1].copy()]
    got = Predictor(deploy, table, settings).predict_batch(frames)
    ref = Predictor(plain, table, settings).predict_batch(frames)
    assert calls == [(2, 3, 64, 96)]  # one call, only labels and confidence fetched
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-6)
    Predictor(deploy, table, InferenceSettings(mode="whole", size=(32, 48))).predict(frames[0])  # resized: scores path
    assert len(calls) == 1
