"""The predictor contract on the real tiny-test model (torch backend): shapes, dtypes, resolution, whole vs
slide, overlap averaging, batching, timings, and one clear error per bad input. Synthetic frames, so nothing here
skips without CamVid; the contract is also checked on a real CamVid frame where one is present."""
import cv2
import numpy as np
import pytest
import torch

from vltseg_core.backends.torch_backend import TorchBackend
from vltseg_core.classes import load_class_table
from vltseg_core.errors import VLTSegError
from vltseg_core.models import build_model
from vltseg_core.predictor import InferenceSettings, Predictor, fit_size, load_predictor, window_starts


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    torch.manual_seed(0)
    return TorchBackend(build_model("tiny-test"), model_id="tiny-test seed 0")


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """A smooth synthetic 360x480 RGB frame (structure, not noise): the contract holds for any image."""
    rng = np.random.default_rng(4)
    return cv2.resize(rng.integers(0, 256, (6, 8, 3), np.uint8), (480, 360), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def real_frame(camvid_root) -> np.ndarray:
    """A real CamVid frame (360x480 RGB)."""
    name = (camvid_root / "val.txt").read_text().split()[0].lstrip("/").split("CamVid/")[-1]
    return cv2.cvtColor(cv2.imread(str(camvid_root / name)), cv2.COLOR_BGR2RGB)


def make(backend, **settings) -> Predictor:
    return Predictor(backend, load_class_table("cityscapes"), InferenceSettings(**settings))


@pytest.mark.parametrize("source", ["frame", "real_frame"])
def test_prediction_contract_at_input_resolution(request, backend, source):
    predictor = make(backend)
    frame = request.getfixturevalue(source)
    for image in (frame, frame[:97, :131]):
        result = predictor.predict(image)
        assert result.labels.shape == image.shape[:2] and result.labels.dtype == np.uint8
        assert result.confidence.shape == image.shape[:2] and result.confidence.dtype == np.float32
        assert result.labels.max() < 19 and 0 < result.confidence.min() <= result.confidence.max() <= 1
        probs = predictor.predict_probs(image)
        assert probs.shape == (19, *image.shape[:2])
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
        np.testing.assert_array_equal(probs.argmax(0), result.labels)
    assert set(predictor.last_timings) == {"preprocess", "inference", "postprocess"}
    assert all(v >= 0 for v in predictor.last_timings.values()) and predictor.last_timings["inference"] > 0


def test_resize_to_test_size_returns_input_resolution(backend, frame):
    assert fit_size((360, 480), (1024, 2048)) == (1024, 1365)
    assert fit_size((1024, 2048), (1024, 2048)) == (1024, 2048)
    result = make(backend, size=(128, 256)).predict(frame)  # network sees 128x171, labels come back 360x480
    assert result.labels.shape == (360, 480)


def test_min_confidence_marks_unknown(backend, frame):
    result = make(backend, min_confidence=1.1).predict(frame)
    assert (result.labels == 255).all()


def test_window_starts_cover_the_image():
    assert window_starts(2048, 1024, 768) == [0, 768, 1024]  # the paper's 2048x1024, 1024 crops, stride 768
    assert window_starts(1024, 1024, 768) == [0]
    assert window_starts(500, 1024, 768) == [0]
    starts = window_starts(1000, 256, 192)
    assert starts[0] == 0 and starts[-1] == 1000 - 256 and all(b - a <= 192 for a, b in zip(starts, starts[1:]))


def test_slide_equals_whole_when_one_crop_covers_the_image(backend, frame):
    whole = make(backend).predict_probs(frame)
    slide = make(backend, mode="slide", crop_size=(512, 512), stride=(384, 384)).predict_probs(frame)
    np.testing.assert_allclose(slide, whole, atol=1e-5)


def test_slide_averages_probabilities_in_overlaps(backend, frame):
    image = frame[:200, :400]
    got = make(backend, mode="slide", crop_size=(200, 256), stride=(200, 128), crops_per_batch=2).predict_probs(image)
    # reference: crops at x = 0, 128, 144 (last aligned to the edge), each pixel averaged over its crops
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))[None].astype(np.float32)
    total, count = np.zeros((19, 200, 400), np.float32), np.zeros((1, 200, 400), np.float32)
    for x in (0, 128, 144):
        total[:, :, x:x + 256] += backend.infer(chw[:, :, :, x:x + 256])[0]
        count[:, :, x:x + 256] += 1
    np.testing.assert_allclose(got, total / count, atol=1e-5)
    assert not np.allclose(got, make(backend).predict_probs(image), atol=1e-3)  # really not the whole-image pass


def test_predict_batch_matches_single_images(backend, frame):
    predictor = make(backend)
    images = [frame, frame[:, ::-1].copy(), frame[:120, :200]]
    batch = predictor.predict_batch(images)
    for image, result in zip(images, batch):
        single = predictor.predict(image)
        assert (single.labels == result.labels).mean() > 0.999
        np.testing.assert_allclose(single.confidence, result.confidence, atol=1e-4)


@pytest.mark.parametrize("image, message", [
    (np.zeros((32, 32), np.uint8), "expected HxWx3 RGB"),
    (np.zeros((32, 32, 4), np.uint8), "expected HxWx3 RGB"),
    (np.zeros((32, 32, 3), np.float32), "dtype float32"),
    (np.zeros((0, 32, 3), np.uint8), "image is empty"),
    ([[0, 0, 0]], "numpy array"),
])
def test_bad_images_raise_one_clear_error(backend, image, message):
    with pytest.raises(VLTSegError, match=message) as info:
        make(backend).predict(image)
    assert "\n" not in str(info.value)


def test_load_predictor_factory_and_errors(tmp_path):
    predictor = load_predictor("tiny-test", mode="slide")
    assert predictor.mode == "slide" and predictor.identity()["backend"] == "torch"
    assert predictor.class_table.num_classes == 19
    with pytest.raises(VLTSegError, match="model preset 'no-such-model' not found"):
        load_predictor("no-such-model")
    with pytest.raises(VLTSegError, match="model file not found"):
        load_predictor(str(tmp_path / "missing.onnx"))
    with pytest.raises(VLTSegError, match="model preset '.*missing.yaml' not found"):  # a preset by path
        load_predictor(str(tmp_path / "missing.yaml"))
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(VLTSegError, match="weights.pt is not a checkpoint"):
        load_predictor(str(tmp_path / "weights.pt"))
    with pytest.raises(VLTSegError, match="unknown backend 'tflite'"):
        load_predictor("tiny-test", backend="tflite")
    with pytest.raises(VLTSegError, match="unknown inference mode 'tiles'"):
        load_predictor("tiny-test", mode="tiles")
    with pytest.raises(VLTSegError, match="precision 'int8' is not supported"):
        load_predictor("tiny-test", backend="torch", precision="int8")


def test_checkpoint_loads_and_predicts_identically(backend, frame, tmp_path):
    from vltseg_core.checkpoint import save_checkpoint

    path = save_checkpoint(backend.model, tmp_path / "tiny.safetensors")
    reloaded = load_predictor(str(path))
    assert "sha256:" in reloaded.identity()["model"]
    np.testing.assert_array_equal(reloaded.predict(frame).labels, make(backend).predict(frame).labels)
