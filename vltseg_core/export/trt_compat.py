"""TensorRT-compatibility pre-flight check of an ONNX graph that runs without TensorRT.

The restrictions of the TensorRT 10 ONNX parser (onnx-tensorrt) that matter for our graphs live as data in
trt_rules.yaml, each with the parser source line it was read from; this module applies them node by node, so a
graph the parser would refuse (or silently change, e.g. an unknown GridSample mode) is caught where TensorRT is
not installed. It is a pre-flight check, not a TensorRT parse: passing it does not prove that TensorRT accepts the
graph (the parser also checks shapes and values while it builds the network, and engine building can still fail).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import onnx
import yaml

from vltseg_core.errors import VLTSegError

log = logging.getLogger(__name__)

RULES_FILE = Path(__file__).with_name("trt_rules.yaml")
PARSER = "TensorRT 10's ONNX parser"


@dataclass(frozen=True)
class Violation:
    """One broken rule. `node` is the node's name (its first output where unnamed, as the parser names nodes) or,
    for `op_type` "graph input" / "initializer" / "model", that tensor's name or the model."""

    node: str
    op_type: str
    rule: str
    message: str
    source: str  # FILE:LINE in onnx-tensorrt at rules()["tag"]

    def line(self) -> str:
        subject = {"model": "the model", "graph input": f"graph input '{self.node}'",
                   "initializer": f"initializer '{self.node}'"}.get(self.op_type, f"node '{self.node}' ({self.op_type})")
        return f"{subject} breaks {self.rule}: {self.message} (onnx-tensorrt {rules()['tag']} {self.source})"


@lru_cache(maxsize=1)
def rules() -> dict[str, Any]:
    """The rule table (trt_rules.yaml)."""
    return yaml.safe_load(RULES_FILE.read_text())


def check_graph(model_or_path: onnx.ModelProto | str | Path) -> list[Violation]:
    """Every rule of trt_rules.yaml the graph breaks (empty: it passed the pre-flight check), in node order."""
    model = model_or_path if isinstance(model_or_path, onnx.ModelProto) else _load(Path(model_or_path))
    try:  # ranks and dtypes of intermediate tensors; a graph shape inference cannot handle keeps what it declares
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # onnx raises several types (InferenceError, ValidationError, RuntimeError)
        log.warning("ONNX shape inference failed (%s); checking with the graph's own type information", exc)
    table = rules()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    functions = {(f.domain, f.name): f for f in model.functions}
    violations = _check_opset(opset, table["opset"])
    graph = _GraphFacts(model, functions)
    violations += graph.input_violations(table["graph_inputs"])
    for node in graph.nodes:
        violations += _check_node(node, graph, opset, functions, table)
    violations += graph.dtype_violations(table["dtypes"])
    return violations


def require_trt_compatible(path: Path, where: str) -> None:
    """Raise one VLTSegError line naming the first violation (node and rule) and how many more there are;
    `where` names the graph for the user (e.g. the output path while a temp file is checked)."""
    violations = check_graph(path)
    if not violations:
        log.info("TensorRT pre-flight check passed for %s (rules of onnx-tensorrt %s; not a TensorRT parse)",
                 where, rules()["tag"])
        return
    more = len(violations) - 1
    tail = f"; {more} more violation{'s' if more != 1 else ''}" if more else ""
    raise VLTSegError(f"{where}: TensorRT pre-flight check failed: {violations[0].line()}{tail} "
                      "(expected a TensorRT-clean graph)")


def _load(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise VLTSegError(f"ONNX file not found: {path} (expected a graph from `vltseg export onnx`)")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise VLTSegError(f"{path} is not a readable ONNX file ({type(exc).__name__}; expected an ONNX graph)") from exc


def _name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _dtype_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type)


class _GraphFacts:
    """What the rules look up: all nodes (subgraphs and local functions included), the constants the parser holds
    as weights, tensor types and ranks, and each tensor's producer and consumers."""

    def __init__(self, model: onnx.ModelProto, functions: dict[tuple[str, str], onnx.FunctionProto]):
        graph = model.graph
        self.initializers = {t.name for t in graph.initializer}
        self.inputs = [i for i in graph.input if i.name not in self.initializers]
        self.outputs = {o.name for o in graph.output}
        self.nodes = list(_walk(graph.node, functions, set()))
        self.constants = set(self.initializers)
        self.types: dict[str, tuple[int, int | None]] = {}  # name -> (elem_type, rank or None)
        for value in [*graph.input, *graph.output, *graph.value_info, *_subgraph_values(self.nodes)]:
            tensor = value.type.tensor_type
            if value.type.HasField("tensor_type") and tensor.elem_type:
                self.types[value.name] = (tensor.elem_type, len(tensor.shape.dim) if tensor.HasField("shape") else None)
        for init in [*graph.initializer, *_subgraph_initializers(self.nodes)]:
            self.constants.add(init.name)
            self.types[init.name] = (init.data_type, len(init.dims))
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                self.consumers.setdefault(inp, []).append(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                self.constants.add(node.output[0])
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.types.setdefault(node.output[0], (value.data_type, len(value.dims)))

    def rank(self, name: str) -> int | None:
        return self.types.get(name, (0, None))[1]

    def input_violations(self, rule: dict) -> list[Violation]:
        found = []
        for value in self.inputs:
            tensor = value.type.tensor_type
            if not tensor.HasField("shape"):
                found.append(Violation(value.name, "graph input", rule["id"], "has no shape: the parser imports an "
                                       "input of unknown rank as a 0-D tensor (dynamic dims are fine)", rule["source"]))
            elif len(tensor.shape.dim) > rule["max_rank"]:
                found.append(Violation(value.name, "graph input", rule["id"], f"rank {len(tensor.shape.dim)} exceeds "
                                       f"the parser's {rule['max_rank']} dimensions", rule["source"]))
        return found

    def dtype_violations(self, table: dict) -> list[Violation]:
        supported, quantized, io_only = (set(table[k]["types"]) for k in ("supported", "quantized", "io_only"))
        found = []
        for name, (elem_type, _) in self.types.items():
            dtype = _dtype_name(elem_type)
            node = self.producer.get(name)
            subject = (_name(node), node.op_type) if node else (
                name, "initializer" if name in self.constants else "graph input")
            if dtype not in supported:
                found.append(Violation(*subject, table["supported"]["id"], f"tensor '{name}' is {dtype}, which "
                                       f"{PARSER} does not support", table["supported"]["source"]))
            elif dtype == "DOUBLE":
                found.append(Violation(*subject, table["double"]["id"], f"tensor '{name}' is DOUBLE, which {PARSER} "
                                       "casts down to FLOAT (clamped to +-FLT_MAX)", table["double"]["source"]))
            elif dtype in quantized and not self._quantized_edge(name, node):
                found.append(Violation(*subject, table["quantized"]["id"], f"tensor '{name}' is {dtype}, which "
                                       f"{PARSER} supports only between QuantizeLinear and DequantizeLinear",
                                       table["quantized"]["source"]))
            elif dtype in io_only and name not in self.outputs and node is not None:
                found.append(Violation(*subject, table["io_only"]["id"], f"tensor '{name}' is {dtype}, which "
                                       f"{PARSER} supports only as a graph input or output", table["io_only"]["source"]))
        return found

    def _quantized_edge(self, name: str, producer: onnx.NodeProto | None) -> bool:
        """A Q/DQ edge: made by QuantizeLinear, or read only by QuantizeLinear/DequantizeLinear (quantized
        weights, zero points)."""
        if producer is not None and producer.op_type == "QuantizeLinear":
            return True
        readers = self.consumers.get(name, [])
        return bool(readers) and all(r.op_type in ("QuantizeLinear", "DequantizeLinear") for r in readers)


def _walk(nodes, functions: dict, seen: set) -> Iterator[onnx.NodeProto]:
    """Nodes in order, then those of If/Loop/Scan bodies and of each local function called (once each)."""
    for node in nodes:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _walk(sub.node, functions, seen)
        key = (node.domain, node.op_type)
        if key in functions and key not in seen:
            seen.add(key)
            yield from _walk(functions[key].node, functions, seen)


def _subgraphs(nodes: list[onnx.NodeProto]) -> Iterator[onnx.GraphProto]:
    for node in nodes:
        for attr in node.attribute:
            yield from ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs)


def _subgraph_values(nodes) -> Iterator[onnx.ValueInfoProto]:
    for sub in _subgraphs(nodes):
        yield from (*sub.input, *sub.output, *sub.value_info)


def _subgraph_initializers(nodes) -> Iterator[onnx.TensorProto]:
    for sub in _subgraphs(nodes):
        yield from sub.initializer


def _check_opset(opset: int, rule: dict) -> list[Violation]:
    if rule["min"] <= opset <= rule["max"]:
        return []
    return [Violation("model", "model", rule["id"], f"default-domain opset {opset} is outside the {rule['min']}.."
                      f"{rule['max']} that {PARSER} supports", rule["source"])]


def _check_node(node: onnx.NodeProto, graph: _GraphFacts, opset: int, functions: dict, table: dict) -> list[Violation]:
    name, op = _name(node), node.op_type
    if (node.domain, op) in functions:
        return []  # a local function: the parser imports its body, which _walk yields
    domain_rule, ops_rule = table["ops"]["custom_domain"], table["ops"]["supported"]
    if node.domain not in domain_rule["domains"]:
        return [Violation(name, op, domain_rule["id"], f"op of custom domain '{node.domain}' would need a TensorRT "
                          "plugin (the parser dispatches on the op type alone)", domain_rule["source"])]
    if op not in ops_rule["types"]:
        return [Violation(name, op, ops_rule["id"], f"{op} is not supported by {PARSER} (it would need a plugin)",
                          ops_rule["source"])]
    found = []
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    for rule in table["attributes"]:
        if rule["op"] == op and opset >= rule.get("min_opset", 0):
            message = _attribute_problem(rule, attrs)
            if message:
                found.append(Violation(name, op, rule["id"], message, rule["source"]))
    for rule in table["outputs"]:
        if rule["op"] == op and len(node.output) > rule["max"]:
            found.append(Violation(name, op, rule["id"], f"declares {len(node.output)} outputs; {PARSER} produces "
                                   f"only {rule['max']}", rule["source"]))
    for rule in table["constant_inputs"]:
        i = rule["input"]
        if op in rule["ops"] and len(node.input) > i and node.input[i] and node.input[i] not in graph.constants:
            found.append(Violation(name, op, rule["id"], f"input {rule['name']} ('{node.input[i]}') is computed at run "
                                   f"time; {PARSER} needs an initializer or Constant there", rule["source"]))
    for rule in table["ranks"]:
        i = rule["input"]
        rank = graph.rank(node.input[i]) if rule["op"] == op and len(node.input) > i else None
        if rank is not None and rank != rule["rank"]:
            found.append(Violation(name, op, rule["id"], f"input {rule['name']} has rank {rank}; {PARSER} needs "
                                   f"rank {rule['rank']}", rule["source"]))
    return found


def _attribute_problem(rule: dict, attrs: dict[str, Any]) -> str | None:
    """Why the attribute's value breaks `rule`, or None."""
    value = attrs.get(rule["name"], rule.get("default"))
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if rule.get("kind") == "dtype":
        value = _dtype_name(value)
    if "pattern" in rule:
        bad = sorted({c for c in value if not re.fullmatch(rule["pattern"], c)})
        return (f"{rule['name']}={value!r} has characters {PARSER} refuses: {', '.join(map(repr, bad))}"
                if bad else None)
    if value in rule["allowed"]:
        return None
    shown = f"'{value}'" if isinstance(value, str) else value
    note = f"; {rule['note']}" if "note" in rule else ""
    allowed = ", ".join(map(str, rule["allowed"]))
    return f"{rule['name']}={shown} is not supported by {PARSER}, which allows {allowed}{note}"
