"""The official EVA-CLIP model code (PyPI `consisid-eva-clip`, BAAI's eva_clip package; no weights) builds the
EVA02-CLIP-B/16 visual tower with random weights; its state dict, saved in the official `.pt` layout (keys under
`visual.`), loads into our backbone and gives the same block features."""
import pytest
import torch

from vltseg_core.checkpoint import load_backbone_weights
from vltseg_core.errors import VLTSegError
from vltseg_core.models import build_model, load_preset
from vltseg_core.models.backbone import ViTBackbone

OUT_INDICES = [3, 5, 7, 11]


@pytest.fixture(scope="module")
def official_tower():
    # skipped here, not at import: launch_testing's pytest plugin (colcon test on a ROS 2 install) imports every
    # test module of the folder, and one module-level skip would skip them all
    eva_model = pytest.importorskip("consisid_eva_clip.model", reason="consisid-eva-clip (test extra) not installed")
    eva_factory = pytest.importorskip("consisid_eva_clip.factory")
    torch.manual_seed(0)
    cfg = eva_factory.get_model_config("EVA02-CLIP-B-16")
    vision = dict(cfg["vision_cfg"], xattn=False, fusedLN=False)  # xformers / apex kernels: same maths, not installed
    tower = eva_model._build_vision_tower(cfg["embed_dim"], vision).eval()
    with torch.no_grad():  # random, non-trivial values everywhere (zero-initialised biases would hide key mix-ups)
        for name, p in tower.named_parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return tower


@pytest.fixture(scope="module")
def official_checkpoint(official_tower, tmp_path_factory):
    path = tmp_path_factory.mktemp("eva") / "EVA02_CLIP_B_psz16_random.pt"
    state = {f"visual.{k}": v for k, v in official_tower.state_dict().items()}
    state["text.token_embedding.weight"] = torch.zeros(8, 4)  # a full CLIP checkpoint also holds the text tower
    torch.save(state, path)
    return path


def official_block_features(tower, images):
    feats = {}
    hooks = [tower.blocks[i].register_forward_hook(lambda m, a, out, i=i: feats.__setitem__(i, out))
             for i in OUT_INDICES]
    with torch.no_grad():
        tower(images)
    for h in hooks:
        h.remove()
    n, _, hgt, wid = images.shape
    grid = (hgt // 16, wid // 16)
    return [feats[i][:, 1:].transpose(1, 2).reshape(n, -1, *grid) for i in OUT_INDICES]


def test_official_checkpoint_gives_same_features(official_tower, official_checkpoint):
    ours = ViTBackbone("eva02-clip-b16", OUT_INDICES, img_size=224, patch_size=16).eval()
    report = load_backbone_weights(ours, official_checkpoint)
    assert "head.weight" in report["ignored"]  # the CLIP projection is reported, not silently dropped
    images = torch.randn(2, 3, 224, 224)
    expected = official_block_features(official_tower, images)
    with torch.no_grad():
        got = ours(images)
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_official_checkpoint_resamples_to_training_size(official_checkpoint):
    preset = load_preset("eva02-b16-m2f")
    preset["backbone"]["img_size"] = 512
    preset["head"] = {"type": "light", "channels": 32}  # the head plays no part in backbone loading
    model = build_model(preset)
    load_backbone_weights(model, official_checkpoint)
    assert model.backbone.vit.pos_embed.shape == (1, 1 + 32 * 32, 768)


def test_official_checkpoint_into_other_backbone_fails_clearly(official_checkpoint):
    other = ViTBackbone("clip-b16", OUT_INDICES, img_size=224, patch_size=16)
    with pytest.raises(VLTSegError, match="does not match the model architecture: .*missing keys"):
        load_backbone_weights(other, official_checkpoint)
