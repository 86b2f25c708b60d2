"""The node's two rendering paths give identical bytes: visualize.render (numpy, CPU backends) and
visualize.render_device (torch on the backend's device, one host copy; run here on CPU tensors, and on a CUDA GPU
where there is one), from Predictor.predict_batch_device's maps, which equal predict_batch's."""
import numpy as np
import pytest
import torch

from vltseg_core.backends.torch_backend import TorchBackend
from vltseg_core.classes import load_class_table
from vltseg_core.models import build_model
from vltseg_core.predictor import InferenceSettings, Predictor
from vltseg_core.visualize import IMAGES, confidence_mono8, overlay, render, render_device

ALL = set(IMAGES)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(TorchBackend(build_model("tiny-test")), load_class_table("cityscapes"),
                     InferenceSettings(min_confidence=0.08))


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:72, 0:100]
    base = np.stack([xx * 2.5, yy * 3.5, (xx + yy) * 1.4], -1)
    return [np.clip(base + rng.integers(0, 80, base.shape), 0, 255).astype(np.uint8) for _ in range(2)]


def test_device_maps_equal_host_predictions(predictor, frames):
    maps = predictor.predict_batch_device(frames)
    for (labels, confidence), prediction in zip(maps, predictor.predict_batch(frames)):
        assert labels.dtype == torch.uint8 and confidence.dtype == torch.float32
        assert np.array_equal(labels.numpy(), prediction.labels)
        assert np.array_equal(confidence.numpy(), prediction.confidence)
    assert (maps[0][0] == 255).any() and len(np.unique(maps[0][0].numpy())) > 2  # min_confidence marks some unknown


def _check_identical(predictor, frames, device: str) -> None:
    table = predictor.class_table
    for (labels, confidence), rgb in zip(predictor.predict_batch_device(frames), frames):
        for alpha in (0.5, 0.3, 0.77, 0.0, 1.0):
            host = render(labels.numpy(), confidence.numpy(), rgb, table, alpha, ALL)
            dev = render_device(labels.to(device), confidence.to(device), rgb, table, alpha, ALL)
            assert dev.keys() == host.keys() == ALL
            for name in ALL:
                assert dev[name].dtype == host[name].dtype and np.array_equal(dev[name], host[name]), (name, alpha)
            # the numpy path is the formulas `vltseg predict` and replay use
            assert np.array_equal(host["overlay"], overlay(rgb, host["color"], alpha))
        assert np.array_equal(host["mask"], labels.numpy()) and np.array_equal(host["probability"], confidence.numpy())
        assert np.array_equal(host["color"], table.colorize(labels.numpy()))
        assert np.array_equal(host["confidence"], confidence_mono8(confidence.numpy()))
        for wanted in ({"mask"}, {"overlay"}, {"confidence", "probability"}, set()):  # only what is wanted
            assert render_device(labels.to(device), confidence.to(device), rgb, table, 0.5,
                                 wanted).keys() == wanted == render(labels.numpy(), confidence.numpy(), rgb,
                                                                    table, 0.5, wanted).keys()


def test_render_device_on_cpu_tensors_is_identical_to_numpy(predictor, frames):
    _check_identical(predictor, frames, "cpu")


def test_overlay_is_the_rounded_blend():
    rgb = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    color = rgb[::-1].copy()
    for alpha in (0.0, 0.25, 0.5, 0.7, 1.0):
        expected = alpha * color.astype(float) + (1 - alpha) * rgb
        # rounding (0.5) + alpha in 1/256 steps (at most 255/512)
        assert np.abs(overlay(rgb, color, alpha) - expected).max() <= 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (not on this machine)")
def test_render_device_on_cuda_is_identical_to_numpy(predictor, frames):
    _check_identical(predictor, frames, "cuda")
