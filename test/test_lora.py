"""Low-rank adapters: an adapted layer starts as the original, trains only its factors, and folds back into the
state dict of the plain model, which computes the same function."""
import torch
from torch import nn

from vltseg_core.models import build_model
from vltseg_core.train.lora import LowRankUpdate, add_lora, merged_state_dict


def test_adapter_starts_as_the_base_layer_and_trains_only_its_factors():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8).requires_grad_(False)
    x = torch.randn(3, 5, 16)
    expected = layer(x)
    assert add_lora(layer, rank=4, alpha=8) == 1
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert sorted(n for n, p in layer.named_parameters() if p.requires_grad) == [
        "parametrizations.weight.0.lora_a", "parametrizations.weight.0.lora_b"]
    assert layer.parametrizations["weight"][0].scaling == 2.0


def test_adapters_on_every_block_linear_fold_into_the_same_function():
    torch.manual_seed(0)
    model = build_model("tiny-test").eval()
    blocks = model.backbone.vit.blocks
    linears = sum(isinstance(m, nn.Linear) for m in blocks.modules())
    images = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        plain = model(images)
        assert add_lora(blocks, rank=2, alpha=4) == linears > 0
        for m in model.modules():
            if isinstance(m, LowRankUpdate):
                m.lora_b.normal_(std=0.05)  # as if trained
        adapted = model(images)
        assert (adapted - plain).abs().max() > 1e-3  # the update reaches the output (EVA reads qkv.weight itself)
        plain_model = build_model("tiny-test").eval()
        plain_model.load_state_dict(merged_state_dict(model))  # strict: exactly the plain model's keys
        torch.testing.assert_close(plain_model(images), adapted, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model(images), adapted, rtol=0, atol=0)  # the adapted model is unchanged
