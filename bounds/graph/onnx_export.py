"""Graph -> ONNX: write the graph nnverify bounds as a model any ONNX runtime can run.

The IR keeps ONNX op types and opset-17 attribute conventions (see torch_import), so each
Node maps to one NodeProto and each Constant to an initializer. Used to hand a model that
was trained or imported from PyTorch to `verify` on the command line: the file holds the
very graph the bounds were computed on. Fused ops that are not standard ONNX are refused.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from bounds.graph.fuse_activations import unfuse_activations
from bounds.graph.fuse_minmax import unfuse
from bounds.graph.ir import CONSTANT, INPUT, Graph

#: opset whose conventions the IR follows (bounds.graph.torch_import.OPSET)
EXPORT_OPSET = 17

__all__ = ["to_onnx", "EXPORT_OPSET"]


def _array(value: torch.Tensor) -> np.ndarray:
    t = value.detach().cpu()
    if t.is_floating_point():
        t = t.to(torch.float32)
    return np.ascontiguousarray(t.numpy())


def to_onnx(graph: Graph, name: str | None = None) -> onnx.ModelProto:
    """An ONNX model computing `graph` (float32; inputs and outputs with the graph's shapes)."""
    schemas = {s.name for s in onnx.defs.get_all_schemas() if s.domain == ""}
    graph = unfuse(graph)  # nnverify.MaxMin / GroupSort -> standard ops (they fuse again on import)
    graph = unfuse_activations(graph)  # nnverify.Pow / SiLU, Gelu, Mish -> opset-17 ops (fused again on import)
    inits, nodes, inputs = [], [], []
    for node in graph.nodes:
        if node.op == INPUT:
            inputs.append(helper.make_tensor_value_info(node.name, TensorProto.FLOAT, list(node.shape)))
        elif node.op == CONSTANT:
            inits.append(numpy_helper.from_array(_array(node.value), node.name))
        else:
            if node.op not in schemas:
                raise ValueError(f"{node.describe()} is not a standard ONNX operator; it cannot be exported")
            attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in node.attrs.items()}
            nodes.append(helper.make_node(node.op, list(node.inputs), [node.name], name=node.name, **attrs))
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(graph[o].shape)) for o in graph.outputs]
    proto = helper.make_graph(nodes, name or graph.name, inputs, outputs, inits)
    model = helper.make_model(proto, opset_imports=[helper.make_opsetid("", EXPORT_OPSET)],
                              producer_name="nnverify")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
