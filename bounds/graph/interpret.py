"""Concrete evaluation of a Graph on batched inputs, freeing values after their last use."""
from __future__ import annotations

import torch

from bounds.graph.ir import CONSTANT, INPUT, Graph
from bounds.ops import RULES


class EvaluationError(RuntimeError):
    pass


def evaluate(graph: Graph, x: torch.Tensor, keep: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Run the graph on x (B, *input_shape); returns the outputs (and any `keep` values)."""
    env: dict[str, torch.Tensor] = {}
    last = graph.last_uses()
    keep = set(keep or ()) | set(graph.outputs)
    for i, node in enumerate(graph.nodes):
        if node.op == INPUT:
            env[node.name] = x
        elif node.op == CONSTANT:
            env[node.name] = node.value.unsqueeze(0)
        else:
            try:
                env[node.name] = RULES[node.op].forward(node, [env[n] for n in node.inputs])
            except Exception as exc:  # name the node: the user must know where it broke
                raise EvaluationError(f"evaluating {node.describe()} failed: {exc}") from exc
        for inp in node.inputs:
            if last.get(inp) == i and inp not in keep:
                env.pop(inp, None)
    return {k: v for k, v in env.items() if k in keep}


def run(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """The first output of the graph for a batch of inputs."""
    return evaluate(graph, x)[graph.outputs[0]]
