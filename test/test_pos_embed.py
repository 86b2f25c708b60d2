"""The position-embedding resampler: timm's numbers (antialiased bicubic) for growing and shrinking grids, in eager
PyTorch and in a dynamic ONNX graph that has no Resize node (TensorRT's parser refuses antialiased Resize)."""
import numpy as np
import onnx
import pytest
import torch
from timm.layers import resample_abs_pos_embed as timm_resample

import vltseg_core.models.backbone  # noqa: F401  (binds the resampler into timm's ViT modules)
from vltseg_core.models.pos_embed import resample_abs_pos_embed, resample_weights

GRIDS = [(37, 37), (26, 36), (10, 7), (64, 80), (1, 1), (74, 20)]  # unchanged, shrinking, growing, mixed


@pytest.mark.parametrize("new", GRIDS)
def test_equals_timm_antialiased_bicubic(new):
    posemb = torch.randn(1, 1 + 37 * 37, 32, generator=torch.Generator().manual_seed(0))
    ref = timm_resample(posemb, list(new), old_size=[37, 37], num_prefix_tokens=1)
    got = resample_abs_pos_embed(posemb, list(new), old_size=[37, 37], num_prefix_tokens=1)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[:, :1], posemb[:, :1], atol=0, rtol=0)  # prefix token untouched


def test_weights_are_a_partition_of_unity_and_identity_at_the_same_size():
    torch.testing.assert_close(resample_weights(9, 9), torch.eye(9), atol=1e-7, rtol=0)
    for new, old in ((5, 37), (50, 37)):
        w = resample_weights(new, old)
        torch.testing.assert_close(w.sum(1), torch.ones(new), atol=1e-6, rtol=0)


def test_timm_vits_use_it():
    import timm.models.eva
    import timm.models.vision_transformer

    assert timm.models.eva.resample_abs_pos_embed is resample_abs_pos_embed
    assert timm.models.vision_transformer.resample_abs_pos_embed is resample_abs_pos_embed


class Resampled(torch.nn.Module):
    """A 6x5 embedding grid resampled to the patch grid of the input, as a ViT does."""

    def __init__(self):
        super().__init__()
        self.posemb = torch.nn.Parameter(torch.randn(1, 1 + 6 * 5, 4, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        return resample_abs_pos_embed(self.posemb, [x.shape[2], x.shape[3]], old_size=[6, 5])


def test_dynamic_graph_is_exact_without_resize(tmp_path):
    import onnxruntime as ort

    path = tmp_path / "pe.onnx"
    auto = torch.export.Dim.AUTO
    with torch.no_grad():
        program = torch.onnx.export(Resampled().eval(), (torch.zeros(1, 1, 8, 9),), dynamo=True, opset_version=18,
                                    input_names=["x"], dynamic_shapes={"x": {2: auto, 3: auto}})
    program.save(str(path))
    assert "Resize" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    module = Resampled()
    for hw in ((8, 9), (3, 2), (6, 5), (13, 4)):  # growing, shrinking, unchanged, mixed
        got = session.run(None, {"x": np.zeros((1, 1, *hw), np.float32)})[0]
        ref = timm_resample(module.posemb.detach(), list(hw), old_size=[6, 5], num_prefix_tokens=1)
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)
