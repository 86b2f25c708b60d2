"""The float16 graph: one conversion, run by the FP16 check in ONNX Runtime and parsed by TensorRT as a strongly
typed network, so the precision that was checked is the precision that runs.

Every float tensor becomes float16 except explicit FP32 islands, the places where half precision loses what the
model needs:
- normalisation and softmax (LayerNormalization, InstanceNormalization, Softmax, ReduceSum/ReduceMean/ReduceMax
  and the Exp of a hand-written softmax): long reductions whose sums overflow or lose the small terms;
- geometry computed from shapes alone (nodes that depend on no pixel value: RoPE angles and their Sin/Cos,
  the position-embedding resampling weights, sine position encodings): angles of large grids need fp32 mantissas;
- the output tail (every node between the last matmul/convolution and a graph output: mask upsampling, sigmoid,
  class/mask combination's normalisation), so the probabilities, their argmax and the confidence are fp32.
Inputs and outputs stay float32. The graph is deterministic for a given fp32 graph and this module's code.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

FP32_OPS = {"LayerNormalization", "InstanceNormalization", "GroupNormalization", "Softmax", "LogSoftmax",
            "ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2", "Exp", "Sin", "Cos"}
# Ops that end the output tail going backwards: the last weighted sums of the network.
COMPUTE_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "GridSample"}


def _shape_only_nodes(graph) -> set[str]:
    """Names of nodes none of whose inputs depend on the values of a graph input (only on shapes/constants)."""
    value_dependent = {i.name for i in graph.input}
    shape_only = set()
    for node in graph.node:  # topological order (ONNX requires it)
        depends = node.op_type != "Shape" and any(name in value_dependent for name in node.input)
        if depends:
            value_dependent.update(node.output)
        else:
            shape_only.add(node.name)
    return shape_only


def _output_tail(graph) -> set[str]:
    """Names of nodes reachable backwards from a graph output without crossing a COMPUTE_OPS node."""
    producer = {out: node for node in graph.node for out in node.output}
    tail, stack = set(), [o.name for o in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in tail or node.op_type in COMPUTE_OPS:
            continue
        tail.add(node.name)
        stack.extend(node.input)
    return tail


def fp32_islands(model) -> list[str]:
    """Names of the nodes the float16 graph keeps in float32 (see the module docstring)."""
    graph = model.graph
    keep = _shape_only_nodes(graph) | _output_tail(graph)
    keep |= {n.name for n in graph.node if n.op_type in FP32_OPS}
    return sorted(name for name in keep if name)


def convert_to_fp16(onnx_path: Path):
    """float16 copy of the graph (onnx ModelProto) with fp32 inputs, outputs and islands."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(onnx_path))
    for i, node in enumerate(model.graph.node):  # the converter addresses nodes by name
        node.name = node.name or f"node_{i}_{node.op_type}"
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    with warnings.catch_warnings():  # one warning per tiny weight clamped to fp16 range: noise, not news
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=fp32_islands(model))
    _restore_float_outputs(converted, outputs)
    return converted


def _restore_float_outputs(model, original: dict[str, int]) -> None:
    """keep_io_types misses outputs produced by a blocked (fp32) node: the converter casts them to fp16 on the way
    out. Make those final Casts cast to fp32 again, so the probabilities leave the graph as they were computed."""
    from onnx import TensorProto

    producer = {out: node for node in model.graph.node for out in node.output}
    for output in model.graph.output:
        was, now = original.get(output.name), output.type.tensor_type.elem_type
        if was == TensorProto.FLOAT and now == TensorProto.FLOAT16:
            node = producer[output.name]
            if node.op_type != "Cast":
                raise ValueError(f"float16 conversion left output {output.name} as fp16 after a {node.op_type}")
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = TensorProto.FLOAT
            output.type.tensor_type.elem_type = TensorProto.FLOAT


def fp16_graph_bytes(onnx_path: Path) -> tuple[bytes, str]:
    """The serialized float16 graph and its sha256 (what the FP16 check ran and the engine records)."""
    data = convert_to_fp16(onnx_path).SerializeToString()
    return data, hashlib.sha256(data).hexdigest()


def fp16_storage_graph(onnx_path: Path):
    """fp32 graph in which weights and every float tensor between nodes are rounded through float16.

    This is what an FP16 engine stores between layers (each layer computing internally at higher precision).
    ONNX Runtime's CPU provider runs ops without fp16 kernels of the converted graph in fp32 and removes the
    casts between them, which hides activation overflow; explicit Cast pairs in an unoptimised session do not.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    graph = model.graph
    floats = {v.name for v in [*graph.value_info, *graph.output] if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            with np.errstate(over="ignore"):
                rounded = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for i, name in enumerate(node.output):
            if name in floats and node.op_type != "Cast":
                node.output[i] = f"{name}__fp32"
                nodes += [helper.make_node("Cast", [f"{name}__fp32"], [f"{name}__fp16"], to=TensorProto.FLOAT16),
                          helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT)]
    del graph.node[:]
    graph.node.extend(nodes)
    return model
