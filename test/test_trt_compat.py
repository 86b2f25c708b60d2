"""The TensorRT pre-flight check (vltseg_core.export.trt_compat): hand-built graphs that break one rule each are
caught with that rule's id, a clean graph that uses what the parser allows passes, a failure is one line, and the
graphs `export_onnx` writes for every preset family (tiny widths; light head and Mask2Former; fixed and dynamic;
with and without deployment outputs) pass."""
import copy

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper, save

from model_helpers import TINY_M2F_HEAD
from vltseg_core.errors import VLTSegError
from vltseg_core.export.onnx_export import export_onnx
from vltseg_core.export.trt_compat import check_graph, require_trt_compatible, rules
from vltseg_core.models import build_model, load_preset

F = TensorProto.FLOAT


def value(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def model(nodes, inputs, outputs, inits=(), opset=18, domains=(), functions=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


X = value("x", [1, 3, 8, 8])
AXES = value("axes", [1], TensorProto.INT64)  # a run-time tensor where the parser needs a constant


def unary(op, opset=18, out_shape=None, x=X, **attrs):
    return model([helper.make_node(op, ["x"], ["y"], **attrs)], [x], [value("y", out_shape)], opset=opset)


def resize(**attrs):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", **attrs)
    return model([node], [X], [value("y", None)], [const("scales", [1, 1, 2, 2], np.float32)])


def resize_to_sizes(**attrs):
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **attrs)
    return model([node], [X], [value("y", None)], [const("sizes", [1, 3, 16, 16])])


def grid_sample(x_shape=(1, 3, 8, 8), grid_shape=(1, 4, 4, 2), **attrs):
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], **attrs)
    return model([node], [value("x", list(x_shape)), value("grid", list(grid_shape))], [value("y", None)], opset=20)


def two_casts(dtype):
    nodes = [helper.make_node("Cast", ["x"], ["q"], to=dtype), helper.make_node("Cast", ["q"], ["y"], to=F)]
    return model(nodes, [X], [value("y", [1, 3, 8, 8])])


def runtime_input(op, index, extra_inits=(), **attrs):
    """`op` with its input `index` fed by the graph input `axes` (the other inputs constants)."""
    names = ["x"] + [init.name for init in extra_inits]
    names.insert(index, "axes")
    node = helper.make_node(op, names, ["y"], **attrs)
    return model([node], [X, AXES], [value("y", None)], list(extra_inits))


def if_with_resize_in_branch():
    branch_out = [value("b", None)]
    then = helper.make_graph([helper.make_node("Resize", ["x", "", "scales"], ["b"], mode="cubic", antialias=1)],
                             "then", [], branch_out)
    other = helper.make_graph([helper.make_node("Resize", ["x", "", "scales"], ["b"], mode="cubic")],
                              "else", [], branch_out)
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)
    return model([node], [X, value("cond", [], TensorProto.BOOL)], [value("y", None)],
                 [const("scales", [1, 1, 2, 2], np.float32)])


def local_function(body_antialias):
    body = [helper.make_node("Resize", ["a", "", "s"], ["b"], mode="cubic", antialias=body_antialias)]
    func = helper.make_function("local", "Upscale", ["a", "s"], ["b"], body, [helper.make_opsetid("", 18)])
    node = helper.make_node("Upscale", ["x", "scales"], ["y"], domain="local")
    return model([node], [X], [value("y", None)], [const("scales", [1, 1, 2, 2], np.float32)],
                 domains=["local"], functions=[func])


BROKEN = {  # rule id(s) expected -> a graph that breaks exactly that rule
    "opset.range": lambda: unary("Relu", opset=21),
    "input.rank": lambda: unary("Relu", x=value("x", None)),
    "dtype.unsupported": lambda: unary("Identity", x=value("x", [4], TensorProto.UINT16)),
    "dtype.double": lambda: unary("Identity", x=value("x", [4], TensorProto.DOUBLE)),
    "dtype.quantized": lambda: two_casts(TensorProto.INT8),
    "dtype.uint8": lambda: two_casts(TensorProto.UINT8),
    "op.unsupported": lambda: unary("Det", x=value("x", [2, 3, 3])),
    "op.unsupported/absent": lambda: unary("Frobnicate"),
    "op.custom_domain": lambda: model([helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft")],
                                      [X], [value("y", None)], domains=["com.microsoft"]),
    "resize.antialias": lambda: resize(mode="cubic", antialias=1),  # timm's position-embedding resampling
    "resize.mode": lambda: resize(mode="area"),
    "resize.coordinate_transformation_mode": lambda: resize(mode="linear",
                                                            coordinate_transformation_mode="tf_crop_and_resize"),
    "resize.keep_aspect_ratio_policy": lambda: resize_to_sizes(mode="linear", keep_aspect_ratio_policy="not_larger"),
    "gridsample.mode": lambda: grid_sample(mode="linear"),  # opset 20's spelling of bilinear
    "gridsample.mode/cubic": lambda: grid_sample(mode="cubic"),
    "gridsample.padding_mode": lambda: grid_sample(padding_mode="wrap"),
    "gridsample.input_rank gridsample.grid_rank": lambda: grid_sample((1, 3, 4, 8, 8), (1, 2, 4, 4, 3)),
    "gridsample.grid_rank": lambda: grid_sample(grid_shape=(1, 16, 2)),
    "einsum.equation": lambda: model([helper.make_node("Einsum", ["x", "x"], ["y"], equation="BCHW,BCHW->BC")],
                                     [X], [value("y", None)]),
    "topk.sorted": lambda: model([helper.make_node("TopK", ["x", "k"], ["y", "i"], sorted=0)], [X],
                                 [value("y", None), value("i", None, TensorProto.INT64)], [const("k", [2])]),
    "cast.to dtype.unsupported": lambda: model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E5M2)],
                                               [X], [value("y", None, TensorProto.FLOAT8E5M2)]),
    "batchnorm.training_mode": lambda: model(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], training_mode=1)], [X],
        [value("y", None)], [const(n, [1, 1, 1], np.float32) for n in "sbmv"]),
    "maxpool.indices": lambda: model([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2])], [X],
                                     [value("y", None), value("i", None, TensorProto.INT64)]),
    "layernorm.outputs": lambda: model([helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean", "inv"])],
                                       [X], [value("y", None)], [const("s", np.ones(8), np.float32)]),
    "reduce.axes": lambda: runtime_input("ReduceMean", 1),
    "pad.axes": lambda: runtime_input("Pad", 3, [const("pads", [1, 1]), const("value", 0.0, np.float32)]),
    "squeeze.axes": lambda: runtime_input("Squeeze", 1),
    "unsqueeze.axes": lambda: runtime_input("Unsqueeze", 1),
    "slice.axes": lambda: runtime_input("Slice", 3, [const("starts", [0]), const("ends", [2])]),
    "cumsum.axis": lambda: runtime_input("CumSum", 1),
    "resize.antialias/in If branch": if_with_resize_in_branch,
    "resize.antialias/in local function": lambda: local_function(1),
}


@pytest.mark.parametrize("expected", list(BROKEN))
def test_each_rule_is_caught(expected):
    found = check_graph(BROKEN[expected]())
    assert {v.rule for v in found} == set(expected.split("/")[0].split()), [v.line() for v in found]
    assert all(v.source and v.message for v in found)


def test_every_rule_in_the_table_has_a_breaking_graph():
    table = rules()
    ids = {table["opset"]["id"], table["graph_inputs"]["id"]}
    ids |= {r["id"] for r in table["dtypes"].values()} | {r["id"] for r in table["ops"].values()}
    ids |= {r["id"] for kind in ("attributes", "outputs", "constant_inputs", "ranks") for r in table[kind]}
    assert ids == {rule for key in BROKEN for rule in key.split("/")[0].split()}


def test_clean_graph_passes():
    """What the parser allows, next to each rule: constants from Constant nodes, a Q/DQ pair (INT8 between them),
    UINT8 as a graph output, cubic Resize, bilinear 4-D GridSample, lower-case Einsum, one-output LayerNormalization,
    sorted TopK, a dynamic input dim, and a clean local function of a custom domain."""
    func = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                [helper.make_opsetid("", 18)])
    nodes = [
        helper.make_node("Constant", [], ["axes"], value=const("axes_value", [2, 3])),
        helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="cubic"),
        helper.make_node("GridSample", ["up", "grid"], ["gs"], mode="bilinear", padding_mode="border"),
        helper.make_node("Einsum", ["gs", "gs"], ["e"], equation="bchw,bchw->bc"),
        helper.make_node("LayerNormalization", ["gs", "ln_scale"], ["ln"]),
        helper.make_node("ReduceMean", ["ln", "axes"], ["mean"], keepdims=0),
        helper.make_node("Twice", ["mean"], ["mean2"], domain="local"),
        helper.make_node("QuantizeLinear", ["mean2", "q_scale", "q_zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zero"], ["dq"]),
        helper.make_node("TopK", ["dq", "k"], ["top", "top_i"], axis=1),
        helper.make_node("Cast", ["top"], ["top_u8"], to=TensorProto.UINT8),
    ]
    inits = [const("scales", [1, 1, 2, 2], np.float32), const("ln_scale", np.ones(4), np.float32),
             const("q_scale", 0.1, np.float32), const("q_zero", 0, np.int8), const("k", [2])]
    graph = model(nodes, [value("x", ["n", 3, 8, 8]), value("grid", ["n", 4, 4, 2])],
                  [value("top_u8", None, TensorProto.UINT8), value("top_i", None, TensorProto.INT64),
                   value("e", None)], inits, domains=["local"], functions=[func])
    assert check_graph(graph) == []


def test_failure_is_one_line_naming_node_and_rule(tmp_path):
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], name="/backbone/Resize_3", mode="cubic",
                              antialias=1),
             helper.make_node("GridSample", ["r", "grid"], ["g"], mode="linear"),
             helper.make_node("TopK", ["g", "k"], ["y", "i"], sorted=0)]
    graph = model(nodes, [X, value("grid", [1, 4, 4, 2])], [value("y", None), value("i", None, TensorProto.INT64)],
                  [const("scales", [1, 1, 2, 2], np.float32), const("k", [2])], opset=20)
    path = tmp_path / "graph.onnx"
    save(graph, str(path))
    with pytest.raises(VLTSegError) as caught:
        require_trt_compatible(path, "model.onnx")
    assert str(caught.value) == (
        "model.onnx: TensorRT pre-flight check failed: node '/backbone/Resize_3' (Resize) breaks resize.antialias: "
        "antialias=1 is not supported by TensorRT 10's ONNX parser, which allows 0 "
        "(onnx-tensorrt release/10.1-GA onnxOpCheckers.cpp:587); 2 more violations (expected a TensorRT-clean graph)")
    clean = tmp_path / "clean.onnx"
    save(unary("Relu"), str(clean))
    assert require_trt_compatible(clean, "clean.onnx") is None
    with pytest.raises(VLTSegError, match="ONNX file not found: .*missing.onnx"):
        require_trt_compatible(tmp_path / "missing.onnx", "missing.onnx")


SMALL_VIT = {"embed_dim": 32, "depth": 4, "num_heads": 2}
LIGHT = {"type": "light", "channels": 32}
M2F = dict(TINY_M2F_HEAD, hidden_dim=32, dec_layers=1, enc_layers=1)


def tiny_preset(base: str, backbone: dict, head: dict) -> dict:
    """A shipped preset at tiny width; the position-embedding grid (img_size) differs from the export size, so
    the graph resamples it (shrinking one axis, growing the other)."""
    preset = copy.deepcopy(load_preset(base))
    preset["backbone"] = {**backbone, "out_indices": [0, 1, 2, 3], "timm_kwargs": SMALL_VIT}
    preset["neck"] = {"out_channels": 32}
    preset["head"] = head
    return preset


PRESET_GRAPHS = [  # (family, preset, export size, dynamic, deploy outputs): each factor both ways, few exports
    pytest.param(tiny_preset("eva02-b16-m2f", {"type": "eva02-tiny", "img_size": 80, "patch_size": 16}, M2F),
                 (64, 96), False, False, id="eva02-mask2former-fixed"),
    pytest.param(tiny_preset("clip-b16-m2f", {"type": "clip-b16", "img_size": 80, "patch_size": 16}, LIGHT),
                 (64, 96), True, False, id="clip-light-dynamic"),
    pytest.param(tiny_preset("demo", {"type": "dinov2", "img_size": 70}, LIGHT),
                 (56, 84), False, True, id="dinov2-demo-light-fixed-deploy"),
    pytest.param(tiny_preset("clip-b16-m2f", {"type": "clip-b16", "img_size": 80, "patch_size": 16}, M2F),
                 (64, 96), True, True, id="clip-mask2former-dynamic-deploy", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("preset, size, dynamic, deploy", PRESET_GRAPHS)
def test_exported_preset_graphs_are_trt_clean(tmp_path, preset, size, dynamic, deploy):
    torch.manual_seed(0)
    path = export_onnx(build_model(preset), tmp_path / "graph.onnx", size, dynamic=dynamic, deploy_outputs=deploy)
    assert [v.line() for v in check_graph(path)] == []
