"""The optimiser recipe: parameter groups by name (lr, weight decay) and the poly schedule values."""
import math

import pytest
import torch

from vltseg_core.errors import VLTSegError
from vltseg_core.models import build_model, load_preset
from vltseg_core.train.optim import build_optimizer, build_scheduler, clip_gradients, param_groups, poly_factor


@pytest.fixture(scope="module")
def model():
    return build_model("tiny-test")


def _group_of(groups, name):
    for g in groups:
        if any(p is name for p in g["params"]):
            return g
    raise AssertionError("parameter not in any group")


def test_groups_by_name(model):
    groups = {g["name"]: g for g in param_groups(model)}
    assert set(groups) == {"backbone", "backbone_no_decay", "neck", "neck_no_decay", "head", "head_no_decay"}
    assert groups["neck"]["lr"] == pytest.approx(1e-4) and groups["neck_no_decay"]["weight_decay"] == 0
    assert groups["backbone"]["lr"] == pytest.approx(1e-5) and groups["backbone"]["weight_decay"] == 0.05
    assert groups["backbone_no_decay"]["lr"] == pytest.approx(1e-5) and groups["backbone_no_decay"]["weight_decay"] == 0
    assert groups["head"]["lr"] == pytest.approx(1e-4) and groups["head"]["weight_decay"] == 0.05
    assert groups["head_no_decay"]["weight_decay"] == 0
    named = dict(model.named_parameters())
    flat = list(groups.values())
    # spot checks by name: position embedding / cls token / norms of the backbone, a block weight, a head conv
    assert _group_of(flat, named["backbone.vit.pos_embed"])["name"] == "backbone_no_decay"
    assert _group_of(flat, named["backbone.vit.cls_token"])["name"] == "backbone_no_decay"
    assert _group_of(flat, named["backbone.vit.blocks.0.norm1.weight"])["name"] == "backbone_no_decay"
    assert _group_of(flat, named["backbone.vit.blocks.0.attn.proj.weight"])["name"] == "backbone"
    assert _group_of(flat, named["head.classifier.weight"])["name"] == "head"
    # every trainable parameter exactly once
    ids = [id(p) for g in flat for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)


def tiny_m2f_preset() -> dict:
    preset = load_preset("tiny-test")
    preset["head"] = {"type": "mask2former", "hidden_dim": 32, "num_queries": 8, "dec_layers": 2, "dec_heads": 2,
                      "dec_ffn_dim": 64, "enc_layers": 1, "enc_heads": 2, "enc_ffn_dim": 64}
    return preset


def test_queries_and_level_embeddings_get_no_decay():
    m2f = build_model(tiny_m2f_preset())
    groups = param_groups(m2f)
    for name, param in m2f.named_parameters():
        if any(k in name for k in ("query_feat", "query_embed", "level_embed")):
            assert _group_of(groups, param)["name"] == "head_no_decay", name
    assert sum("query_feat" in n for n, _ in m2f.named_parameters()) == 1


def test_neck_at_the_backbone_lr_as_the_reimplementation(model):
    """neck_lr_mult 0.1: the reimplementation's pyramid sits in its backbone (lr x0.1); norms still no decay."""
    groups = param_groups(model, {"neck_lr_mult": 0.1})
    named = dict(model.named_parameters())
    conv = _group_of(groups, named["neck.proj.0.conv1.weight"])
    assert (conv["name"], conv["lr"], conv["weight_decay"]) == ("neck", pytest.approx(1e-5), 0.05)
    norm = _group_of(groups, named["neck.proj.0.norm1.weight"])
    assert (norm["name"], norm["lr"], norm["weight_decay"]) == ("neck_no_decay", pytest.approx(1e-5), 0.0)
    assert _group_of(groups, named["head.classifier.weight"])["lr"] == pytest.approx(1e-4)


def test_frozen_parameters_are_left_out(model):
    model.backbone.requires_grad_(False)
    try:
        names = {g["name"] for g in param_groups(model)}
        assert names == {"neck", "neck_no_decay", "head", "head_no_decay"}
    finally:
        model.backbone.requires_grad_(True)


def test_schedule_values():
    cfg = {"iterations": 2500, "constant_iterations": 500, "power": 0.9}
    assert poly_factor(0, cfg) == 1.0
    assert poly_factor(499, cfg) == 1.0
    assert poly_factor(500, cfg) == 1.0
    assert poly_factor(1500, cfg) == pytest.approx(0.5 ** 0.9)
    assert poly_factor(2000, cfg) == pytest.approx(0.25 ** 0.9)
    assert poly_factor(2500, cfg) == 0.0


def test_scheduler_drives_every_group(model):
    opt = build_optimizer(model, {"lr": 1e-4})
    sched = build_scheduler(opt, {"iterations": 1000, "constant_iterations": 500})
    lrs = []
    for _ in range(750):
        opt.step()
        sched.step()
    for g in opt.param_groups:
        base = 1e-5 if g["name"].startswith("backbone") else 1e-4
        lrs.append(g["lr"])
        assert g["lr"] == pytest.approx(base * 0.5 ** 0.9)
    assert len(set(lrs)) == 2


def test_gradient_clipping_to_l2_norm():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    clip_gradients([p], 0.01)
    assert math.isclose(float(p.grad.norm()), 0.01, rel_tol=1e-4)


def test_unknown_option_is_a_clear_error(model):
    with pytest.raises(VLTSegError, match="lr_mult"):
        param_groups(model, {"lr_mult": 0.1})
