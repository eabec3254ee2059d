"""Static shapes by evaluation: run the graph once on zeros and record every value's shape."""
from __future__ import annotations

import torch

from bounds.graph.interpret import evaluate
from bounds.graph.ir import Graph, Node


def infer_shapes(graph: Graph, input_shape: tuple[int, ...] | None = None) -> Graph:
    """The same graph with every Node.shape filled in (the input keeps its declared shape)."""
    shape = tuple(input_shape or graph.input.shape)
    x = torch.zeros((1, *shape), dtype=torch.float32)
    values = evaluate(graph, x, keep={n.name for n in graph.nodes})
    nodes = []
    for node in graph.nodes:
        got = tuple(values[node.name].shape[1:]) if node.name in values else node.shape
        if node.is_constant:
            got = tuple(node.value.shape)
        nodes.append(Node(node.name, node.op, node.inputs, node.attrs, got, node.source, node.opset))
    return graph.replace(nodes)
