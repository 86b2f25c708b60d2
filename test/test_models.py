"""VLTSeg models: every preset builds and maps raw RGB to per-pixel class scores at any size (the light head's
sum to 1, Mask2Former's are unnormalised); the Mask2Former head gives the raw outputs the losses need; deformable
attention samples where it should."""
import pytest
import torch

from vltseg_core.errors import VLTSegError
from vltseg_core.models import build_model, list_presets, load_preset
from vltseg_core.models.msdeform_attn import ms_deform_attn_sample
from vltseg_core.predictor import fit_size
from model_helpers import tiny_mask2former_preset

PAPER_PRESETS = ["eva02-l14-m2f", "eva02-b16-m2f", "clip-l14-m2f", "clip-b16-m2f"]


def assert_scores(scores: torch.Tensor, n: int, h: int, w: int, c: int = 19) -> None:
    """Mask2Former's semantic scores: non-negative, each pixel's sum at most the number of queries."""
    assert scores.shape == (n, c, h, w)
    assert torch.isfinite(scores).all() and (scores >= 0).all() and (scores.sum(1) > 0).all()


def assert_probabilities(probs: torch.Tensor, n: int, h: int, w: int, c: int = 19) -> None:
    assert_scores(probs, n, h, w, c)
    torch.testing.assert_close(probs.sum(1), torch.ones(n, h, w), rtol=0, atol=1e-4)


def test_presets_listed():
    assert set(PAPER_PRESETS + ["tiny-test", "eva02-l14p16-m2f"]) <= set(list_presets())


@pytest.mark.parametrize("name, divisor, grids", [
    ("eva02-l14-m2f", 28, [(152, 296), (76, 148), (38, 74), (19, 37)]),  # native /14: strides 3.5/7/14/28
    ("eva02-l14p16-m2f", 32, [(128, 256), (64, 128), (32, 64), (16, 32)]),  # deploy variant: 4/8/16/32
])
def test_l14_patch_grids(name, divisor, grids):
    """The paper model keeps EVA02-L's 14-pixel patches (a 512x1024 input pads to 532x1036, 38x74 tokens); the
    deploy variant resamples them to 16. Built on the meta device: shapes only, no 300M-parameter init."""
    with torch.device("meta"):
        model = build_model(name)
        feats = model.forward_features(torch.zeros(1, 3, 512, 1024))
    assert model.size_divisor == divisor and [tuple(f.shape[-2:]) for f in feats] == grids


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_preset_predicts_any_size(name):
    """512x1024 for all; the L presets (304M params) get that one forward only, the B presets also an odd size
    (padding to the size divisor and cropping back is shared code, also covered by tiny-test)."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    assert model.num_classes == 19 and model.class_table == "cityscapes"
    with torch.inference_mode():
        assert_scores(model(torch.rand(1, 3, 512, 1024) * 255), 1, 512, 1024)
        if "-l14-" not in name:
            assert_scores(model(torch.rand(1, 3, 70, 101) * 255), 1, 70, 101)


def test_paper_backbone_settings():
    preset = load_preset("eva02-l14-m2f")
    assert preset["backbone"]["out_indices"] == [9, 14, 19, 23]
    assert preset["backbone"]["patch_size"] == 14 and preset["backbone"]["drop_path_rate"] == 0.2
    assert preset["test"] == {"mode": "slide", "size": [1024, 2048], "crop_size": [1024, 1024], "stride": [768, 768]}
    # as mmseg's test pipeline: a BDD frame is resized to fit 2048x1024 first, a Cityscapes frame stays as it is
    assert fit_size((720, 1280), tuple(preset["test"]["size"])) == (1024, 1820)
    assert fit_size((1024, 2048), tuple(preset["test"]["size"])) == (1024, 2048)
    head = preset["head"]
    assert (head["num_queries"], head["dec_layers"], head["enc_layers"], head["enc_heads"], head["enc_points"]) == (100, 9, 6, 8, 4)


def test_tiny_preset_contract():
    torch.manual_seed(0)
    model = build_model("tiny-test").eval()
    images = torch.rand(1, 3, 512, 1024) * 255
    with torch.inference_mode():
        probs = model(images)
        assert_probabilities(probs, 1, 512, 1024)
        feats = model.forward_features(images)
        assert [f.shape[-2:] for f in feats] == [(512 // s, 1024 // s) for s in (4, 8, 16, 32)]
        assert model.forward_head(feats)["seg_logits"].shape == (1, 19, 128, 256)
        odd = model(torch.rand(1, 3, 97, 203) * 255)
    assert_probabilities(odd, 1, 97, 203)
    # Normalisation is inside the model: a constant image equal to the mean is the all-zero input.
    assert model._normalise_and_pad(model.pixel_mean.expand(1, 3, 32, 32).clone()).abs().max() < 1e-5


def test_mask2former_raw_outputs_and_gradients():
    torch.manual_seed(0)
    preset = tiny_mask2former_preset()
    model = build_model(preset, num_classes=11)
    out = model.forward_train(torch.rand(2, 3, 128, 192) * 255)
    assert out["pred_logits"].shape == (2, 10, 12)
    assert out["pred_masks"].shape == (2, 10, 32, 48)
    assert len(out["aux_outputs"]) == 3  # one per decoder layer before the last + the query-only prediction
    loss = out["pred_logits"].sum() + out["pred_masks"].sum() + sum(a["pred_masks"].sum() for a in out["aux_outputs"])
    loss.backward()
    assert model.backbone.vit.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.head.predictor.query_feat.weight.grad.abs().sum() > 0
    model.eval()
    with torch.inference_mode():
        assert_scores(model(torch.rand(1, 3, 75, 140) * 255), 1, 75, 140, c=11)


def test_dinov2_backbone_keeps_timm_keys():
    import timm

    preset = load_preset("tiny-test")
    preset["backbone"] = {"type": "dinov2", "img_size": 224, "patch_size": 14, "out_indices": [2, 5, 8, 11]}
    model = build_model(preset).eval()
    reference = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224)
    ours = {k.removeprefix("backbone.vit."): v.shape for k, v in model.state_dict().items() if k.startswith("backbone.vit.")}
    assert ours == {k: v.shape for k, v in reference.state_dict().items()}
    with torch.inference_mode():
        assert_probabilities(model(torch.rand(1, 3, 90, 130) * 255), 1, 90, 130)


def test_backbone_maps_follow_out_indices_order_with_repeats():
    """[3, 3, 0] gives block 3, block 3, block 0: a frozen backbone feeds its last block to every pyramid level."""
    from vltseg_core.models.backbone import ViTBackbone

    torch.manual_seed(0)
    vit = ViTBackbone("dinov2", out_indices=[3, 3, 0], img_size=56, timm_kwargs={"depth": 4}).eval()
    x = torch.randn(1, 3, 56, 70)
    with torch.inference_mode():
        maps = vit(x)
        blocks = vit.vit.forward_intermediates(x, indices=[0, 3], norm=False, output_fmt="NCHW", intermediates_only=True)
    assert len(maps) == 3 and maps[0].shape == (1, 384, 4, 5)
    torch.testing.assert_close(maps[0], blocks[1], rtol=0, atol=0)
    torch.testing.assert_close(maps[1], blocks[1], rtol=0, atol=0)
    torch.testing.assert_close(maps[2], blocks[0], rtol=0, atol=0)
    assert not torch.equal(maps[0], maps[2])


def test_deformable_sampling_at_pixel_centres_reads_those_pixels():
    torch.manual_seed(0)
    n, m, d, points = 1, 2, 3, 2
    values = [torch.randn(n, m, d, 4, 6), torch.randn(n, m, d, 2, 3)]
    # query 0: level 0 pixel (y=1, x=2) and level 1 pixel (y=0, x=1); weights 0.25/0.75 on the first point
    loc = torch.zeros(n, 1, m, 2, points, 2)
    loc[..., 0, 0, :] = torch.tensor([(2 + 0.5) / 6, (1 + 0.5) / 4])
    loc[..., 1, 0, :] = torch.tensor([(1 + 0.5) / 3, (0 + 0.5) / 2])
    weights = torch.zeros(n, 1, m, 2, points)
    weights[..., 0, 0], weights[..., 1, 0] = 0.25, 0.75
    out = ms_deform_attn_sample(values, loc, weights)
    expected = 0.25 * values[0][:, :, :, 1, 2] + 0.75 * values[1][:, :, :, 0, 1]  # (n, m, d)
    torch.testing.assert_close(out, expected.reshape(n, 1, m * d))


@pytest.mark.parametrize("preset, match", [
    ("no-such-preset", "model preset 'no-such-preset' not found"),
    ({"name": "x", "head": {"type": "light"}, "input": {}}, r"lacks keys \['backbone'\]"),
])
def test_bad_presets_give_one_clear_error(preset, match):
    with pytest.raises(VLTSegError, match=match):
        build_model(preset)


def test_bad_backbone_settings_give_one_clear_error():
    preset = load_preset("tiny-test")
    preset["backbone"]["out_indices"] = [0, 1, 2, 9]
    with pytest.raises(VLTSegError, match=r"out_indices \[9\] out of range .* 4 blocks"):
        build_model(preset)
    preset["backbone"]["type"] = "resnet50"
    with pytest.raises(VLTSegError, match="unknown backbone type 'resnet50'"):
        build_model(preset)
