"""Sliding windows average the model's unnormalised class scores and the predictor normalises once, last, as
mmseg's slide_inference does: the issue-14 two-class example where per-window normalisation flips the answer."""
import numpy as np
import torch

from vltseg_core.classes import load_class_table
from vltseg_core.models import build_model
from vltseg_core.predictor import InferenceSettings, Predictor
from model_helpers import tiny_mask2former_preset

# window score by the red value of its first pixel: window 0 sees red 0, window 1 sees red 1
WINDOW_SCORES = {0: [0.05, 0.01], 1: [0.40, 0.50]}


class WindowScoreBackend:
    """A two-class backend whose output is one constant score vector per window, chosen by the window's own
    pixels: the smallest backend for which the averaging order matters."""

    name, num_classes, input_size = "window-scores", 2, None

    def infer_device(self, batch: np.ndarray) -> torch.Tensor:
        scores = [torch.tensor(WINDOW_SCORES[int(tile[0, 0, 0])], dtype=torch.float32) for tile in batch]
        return torch.stack(scores)[:, :, None, None].expand(-1, -1, *batch.shape[2:]).contiguous()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.infer_device(batch).numpy()

    def identity(self) -> dict:
        return {"backend": self.name}


def test_overlap_of_two_windows_is_decided_on_raw_scores():
    image = np.zeros((1, 3, 3), np.uint8)
    image[0, 1, 0] = 1  # x = 1 starts window 1 and is the last pixel of window 0
    settings = InferenceSettings(mode="slide", crop_size=(1, 2), stride=(1, 1))
    predictor = Predictor(WindowScoreBackend(), load_class_table("cityscapes"), settings)
    probs = predictor.predict_probs(image)
    # x=0: window 0 alone; x=1: both windows, mean scores [0.225, 0.255]; x=2: window 1 alone
    expected = np.array([[0.05, 0.01], [0.225, 0.255], [0.40, 0.50]], np.float32)
    np.testing.assert_allclose(probs[:, 0].T, expected / expected.sum(1, keepdims=True), rtol=1e-6)
    assert predictor.predict(image).labels.tolist() == [[0, 1, 1]]  # mmseg: class 1 where the windows overlap
    # averaging per-window distributions instead gives class 0 there: [0.639, 0.361]
    per_window = (np.array(WINDOW_SCORES[0]) / 0.06 + np.array(WINDOW_SCORES[1]) / 0.90) / 2
    assert per_window.argmax() == 0


def test_mask2former_forward_gives_unnormalised_scores_and_the_predictor_normalises():
    from vltseg_core.backends.torch_backend import TorchBackend

    torch.manual_seed(0)
    model = build_model(tiny_mask2former_preset(), num_classes=19).eval()
    images = torch.rand(1, 3, 64, 96) * 255
    with torch.inference_mode():
        scores = model(images)
        outputs = model.forward_train(images)
    cls = outputs["pred_logits"].softmax(-1)[..., :-1]
    masks = torch.nn.functional.interpolate(outputs["pred_masks"], size=(64, 96), mode="bilinear").sigmoid()
    torch.testing.assert_close(scores, torch.einsum("bqc,bqhw->bchw", cls, masks))
    assert not torch.allclose(scores.sum(1), torch.ones(1, 64, 96), atol=1e-2)  # really unnormalised
    frame = images[0].permute(1, 2, 0).to(torch.uint8).numpy()
    probs = Predictor(TorchBackend(model), load_class_table("cityscapes")).predict_probs(frame)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    raw = model(torch.from_numpy(frame).permute(2, 0, 1)[None].float())[0]
    np.testing.assert_array_equal(probs.argmax(0), raw.argmax(0).numpy())
