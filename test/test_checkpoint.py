"""Our checkpoints round-trip exactly; external backbone layouts (OpenAI CLIP, open_clip/timm EVA02) load with
the same features; wrong files give one clear error and are never unpickled."""
import json

import pytest
import torch
from safetensors.torch import save_file

from vltseg_core.checkpoint import load_backbone_weights, load_checkpoint, save_checkpoint
from vltseg_core.errors import VLTSegError
from vltseg_core.models import build_model
from vltseg_core.models.backbone import ViTBackbone
from model_helpers import tiny_mask2former_preset


class NotATensor:
    """Pickled into a checkpoint: loading must refuse it rather than run pickle's object machinery."""


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    model = build_model("tiny-test").eval()
    path = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", step=7)
    return model, path


def test_saved_and_reloaded_checkpoint_predicts_identically(tiny_checkpoint):
    model, path = tiny_checkpoint
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["preset"]["name"] == "tiny-test" and meta["step"] == 7
    assert meta["class_names"][0] == "road" and len(meta["class_names"]) == 19
    reloaded = load_checkpoint(path)
    images = torch.rand(2, 3, 96, 160) * 255
    with torch.inference_mode():
        assert torch.equal(reloaded(images), model(images))


def test_checkpoint_of_another_architecture_is_one_clear_error(tiny_checkpoint):
    _, path = tiny_checkpoint
    preset = tiny_mask2former_preset()
    with pytest.raises(VLTSegError, match=r"does not match the model architecture: \d+ missing keys \(head\.pixel_decoder.*"
                                          r"\d+ unexpected keys \(head\.classifier"):
        load_checkpoint(path, model=build_model(preset))
    with pytest.raises(VLTSegError, match=r"2 mis-shaped keys \(file vs model\) \(head\.classifier\.bias \(19,\) vs \(11,\), "):
        load_checkpoint(path, model=build_model("tiny-test", num_classes=11))


def test_bad_checkpoint_files(tmp_path, tiny_checkpoint):
    _, path = tiny_checkpoint
    with pytest.raises(VLTSegError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(path.read_bytes())
    with pytest.raises(VLTSegError, match="has no sidecar lone.json"):
        load_checkpoint(lone)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    broken.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(VLTSegError, match="is not a readable safetensors file"):
        load_checkpoint(broken)
    with pytest.raises(VLTSegError, match="must end in .safetensors"):
        save_checkpoint(build_model("tiny-test"), tmp_path / "model.pt")


@pytest.mark.parametrize("key", ["num_classes", "preset"])
def test_sidecar_missing_a_key_is_one_clear_error(tmp_path, tiny_checkpoint, key):
    _, path = tiny_checkpoint
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    meta = json.loads(path.with_suffix(".json").read_text())
    del meta[key]
    copy.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(VLTSegError, match=r"copy.json has (no preset|num_classes None) \(expected ") as info:
        load_checkpoint(copy)
    assert "\n" not in str(info.value)


def test_corrupt_safetensors_backbone_weights_are_one_clear_error(tmp_path, tiny_checkpoint):
    _, path = tiny_checkpoint
    corrupt = tmp_path / "backbone.safetensors"
    corrupt.write_bytes(path.read_bytes()[:1000])  # truncated
    backbone = ViTBackbone("eva02-tiny", [0], timm_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2})
    with pytest.raises(VLTSegError, match="backbone.safetensors is not a readable safetensors file"):
        load_backbone_weights(backbone, corrupt)


def test_pickled_objects_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"visual.pos_embed": NotATensor()}, evil)
    with pytest.raises(VLTSegError, match="is not a tensor-only torch checkpoint"):
        load_backbone_weights(ViTBackbone("eva02-tiny", [0], timm_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2}), evil)


class OpenAIClip(torch.nn.Module):
    """OpenAI's released CLIP files are TorchScript archives of a model whose image tower is `visual`."""

    def __init__(self, visual: torch.nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


def test_openai_clip_layout_loads_with_same_features(tmp_path):
    """A (small) OpenAI-layout CLIP ViT (`visual.conv1`, `visual.transformer.resblocks...`, QuickGELU), saved as
    TorchScript like OpenAI's `ViT-B-16.pt`."""
    from open_clip.transformer import QuickGELU, VisionTransformer

    torch.manual_seed(2)
    openai = VisionTransformer(image_size=224, patch_size=16, width=64, layers=2, heads=2, mlp_ratio=4.0,
                               output_dim=32, act_layer=QuickGELU).eval()
    path = tmp_path / "ViT-tiny-16.pt"
    torch.jit.save(torch.jit.trace(OpenAIClip(openai), torch.randn(1, 3, 224, 224), check_trace=False), str(path))
    ours = ViTBackbone("clip-b16", [0, 1], img_size=224, timm_kwargs={"embed_dim": 64, "depth": 2, "num_heads": 2}).eval()
    assert load_backbone_weights(ours, path)["ignored"] == ["head.bias", "head.weight"]
    images = torch.randn(1, 3, 224, 224)
    tokens = []
    hook = openai.transformer.resblocks[1].register_forward_hook(lambda m, a, out: tokens.append(out))
    with torch.no_grad():
        openai(images)
        got = ours(images)[1]
    hook.remove()
    expected = tokens[0][:, 1:].transpose(1, 2).reshape(1, 64, 14, 14)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_open_clip_timm_trunk_layout_resamples_to_training_size(tmp_path):
    kwargs = {"embed_dim": 32, "depth": 2, "num_heads": 2}
    source = ViTBackbone("eva02-tiny", [1], img_size=224, patch_size=14, timm_kwargs=kwargs)
    path = tmp_path / "open_clip_eva.safetensors"
    save_file({f"visual.trunk.{k}": v.contiguous() for k, v in source.vit.state_dict().items()}, str(path))
    target = ViTBackbone("eva02-tiny", [1], img_size=512, patch_size=16, timm_kwargs=kwargs)
    load_backbone_weights(target, path)
    assert target.vit.pos_embed.shape == (1, 1 + 32 * 32, 32)  # 16x16 grid at 224/14 -> 32x32 at 512/16
    assert target.vit.patch_embed.proj.weight.shape[-2:] == (16, 16)
    torch.testing.assert_close(target.vit.blocks[1].mlp.fc2.weight, source.vit.blocks[1].mlp.fc2.weight)
