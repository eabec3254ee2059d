"""Interval bound propagation over the graph."""
from __future__ import annotations

from typing import Callable

from bounds.graph.ir import CONSTANT, INPUT, Graph, Node
from bounds.ops import RULES
from bounds.types import Interval


class UnsupportedBoundError(NotImplementedError):
    """An op on the path from the input has no bound rule (named in the message)."""


def node_interval(graph: Graph, node: Node, bounds: dict[str, Interval]) -> Interval:
    """IBP of one node from the bounds of its inputs (constants enter as points)."""
    xs = [bounds[n] if n in bounds else Interval.point(graph[n].value.unsqueeze(0)) for n in node.inputs]
    rule = RULES[node.op]
    try:
        return rule.ibp(node, xs)
    except NotImplementedError as exc:
        raise UnsupportedBoundError(f"no interval rule for {node.describe()}: {exc}") from exc


def propagate(graph: Graph, box: Interval, bounds: dict[str, Interval] | None = None,
              refine: Callable[[Node, Interval, dict[str, Interval]], Interval] | None = None,
              upto: str | None = None) -> dict[str, Interval]:
    """Bounds of every variable value; `bounds` may hold tighter ones already (kept).

    `refine(node, ibp_interval, bounds)` may tighten a node's interval (CROWN uses it).
    """
    bounds = {} if bounds is None else bounds
    if tuple(box.lower.shape[1:]) != tuple(graph.input.shape) or box.lower.shape != box.upper.shape:
        # a box without its batch dimension would broadcast silently into wrong bounds
        raise ValueError(f"the input box must have shape (batch, *{tuple(graph.input.shape)}), "
                         f"got {tuple(box.lower.shape)} / {tuple(box.upper.shape)}")
    for node in graph.nodes:
        if node.op == CONSTANT:
            continue
        if node.op == INPUT:
            bounds.setdefault(node.name, box)
        elif node.name not in bounds:
            if all(graph[n].is_constant for n in node.inputs):
                continue
            interval = node_interval(graph, node, bounds)
            if refine is not None:
                interval = refine(node, interval, bounds)
            bounds[node.name] = interval
        if node.name == upto:
            break
    return bounds
