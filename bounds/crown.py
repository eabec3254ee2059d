"""CROWN: backward linear bound propagation over the graph DAG.

All per-run state (intermediate intervals) lives in the caller's `bounds` dict.
"""
from __future__ import annotations

import math

import torch

from bounds.graph.ir import INPUT, Graph, Node
from bounds.ibp import propagate
from bounds.ops import RULES
from bounds.ops.base import ActivationRule, flat_sum
from bounds.types import Interval

#: elements of the largest linear-coefficient tensor one backward pass may hold
_MAX_COEFFICIENTS = 1 << 25


def concretize_lower(A: torch.Tensor, x: Interval) -> torch.Tensor:
    """min over x in the box of A·x; A (B, S, *shape), x (B|1, *shape) -> (B, S)."""
    mid, rad = x.center.unsqueeze(1), x.radius.unsqueeze(1)
    return flat_sum(A * mid) - flat_sum(A.abs() * rad)


def _interval_of(graph: Graph, name: str, bounds: dict[str, Interval]) -> Interval:
    if name in bounds:
        return bounds[name]
    return Interval.point(graph[name].value.unsqueeze(0))


def backward_lower(graph: Graph, target: str, C: torch.Tensor, bounds: dict[str, Interval],
                   alphas: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Lower bound of C·value(target), C (B, S, *target_shape), over the input box.

    `alphas` maps activation nodes to optimisable relaxation parameters (B, S, *shape).

    Nodes whose rule has no linear relaxation are cut: the coefficients reaching them are
    concretised with their interval, which is sound whatever lies behind them.
    """
    pending: dict[str, torch.Tensor] = {target: C}
    bias = C.new_zeros(C.shape[:2])
    for node in reversed(graph.nodes):
        A = pending.pop(node.name, None)
        if A is None:
            continue
        if node.op == INPUT:
            bias = bias + concretize_lower(A, bounds[node.name])
            continue
        xs = [_interval_of(graph, n, bounds) for n in node.inputs]
        is_const = [graph[n].is_constant for n in node.inputs]
        try:
            if alphas is not None and node.name in alphas:
                input_As, b = RULES[node.op].backward(node, A, xs, is_const, alpha=alphas[node.name])
            else:
                input_As, b = RULES[node.op].backward(node, A, xs, is_const)
        except NotImplementedError:
            bias = bias + concretize_lower(A, bounds[node.name])
            continue
        bias = bias + b
        for name, coeff in zip(node.inputs, input_As):
            if coeff is not None and not graph[name].is_constant:
                pending[name] = pending[name] + coeff if name in pending else coeff
    return bias


def _refine_rows(node: Node, interval: Interval, consumers: list[Node]) -> torch.Tensor:
    """Flat indices of neurons whose relaxation would change with tighter bounds (any batch)."""
    exact = torch.ones_like(interval.lower, dtype=torch.bool)
    for user in consumers:
        rule = RULES[user.op]
        if rule.needs_input_bounds:
            exact &= rule.exact_on(interval) if isinstance(rule, ActivationRule) else interval.lower == interval.upper
    need = (~exact).flatten(1).any(0)
    return need.nonzero().flatten()


def crown_interval(graph: Graph, name: str, bounds: dict[str, Interval], rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN lower/upper bounds of the selected flat neurons of `name`: (B, len(rows)) each."""
    ref = bounds[graph.inputs[0]].lower
    batch = max(b.lower.shape[0] for b in bounds.values())
    shape = graph[name].shape
    numel = math.prod(shape)
    widest = max(math.prod(graph[n].shape) for n in graph.ancestors(name))
    chunk = max(1, _MAX_COEFFICIENTS // max(1, 2 * batch * widest))
    lows, ups = [], []
    for start in range(0, len(rows), chunk):
        sel = rows[start:start + chunk]
        k = len(sel)
        eye = torch.zeros(k, numel, dtype=ref.dtype, device=ref.device)
        eye[torch.arange(k, device=ref.device), sel] = 1.0
        C = torch.cat([eye, -eye]).reshape(1, 2 * k, *shape).expand(batch, 2 * k, *shape)
        lb = backward_lower(graph, name, C, bounds)
        lows.append(lb[:, :k])
        ups.append(-lb[:, k:])
    return torch.cat(lows, 1), torch.cat(ups, 1)


def intermediate_bounds(graph: Graph, box: Interval, method: str = "crown",
                        bounds: dict[str, Interval] | None = None) -> dict[str, Interval]:
    """Intervals for every value; inputs of nonlinear ops tightened by CROWN when asked."""
    users = graph.consumers()
    relaxed = {n for node in graph.nodes if RULES.get(node.op) is not None and RULES[node.op].needs_input_bounds
               for n in node.inputs}

    def refine(node: Node, interval: Interval, known: dict[str, Interval]) -> Interval:
        if method != "crown" or node.name not in relaxed:
            return interval
        rows = _refine_rows(node, interval, users[node.name])
        if len(rows) == 0:
            return interval
        known[node.name] = interval  # CROWN may cut through this node's own consumers' inputs
        lo, up = crown_interval(graph, node.name, known, rows)
        flat_lo = interval.lower.flatten(1).clone()
        flat_up = interval.upper.flatten(1).clone()
        flat_lo = flat_lo.expand(lo.shape[0], -1).clone() if flat_lo.shape[0] != lo.shape[0] else flat_lo
        flat_up = flat_up.expand(lo.shape[0], -1).clone() if flat_up.shape[0] != lo.shape[0] else flat_up
        flat_lo[:, rows] = torch.maximum(flat_lo[:, rows], lo)
        flat_up[:, rows] = torch.minimum(flat_up[:, rows], up)
        shape = (flat_lo.shape[0], *interval.lower.shape[1:])
        return Interval(flat_lo.reshape(shape), flat_up.reshape(shape))

    with torch.no_grad():
        return propagate(graph, box, bounds, refine=refine)


def spec_lower_bounds(graph: Graph, box: Interval, C: torch.Tensor, method: str = "crown",
                      bounds: dict[str, Interval] | None = None) -> torch.Tensor:
    """Lower bounds of C·y over the box; C (B, S, n_outputs) over the flattened first output."""
    out = graph.outputs[0]
    shape = graph[out].shape
    with torch.no_grad():
        bounds = intermediate_bounds(graph, box, method, bounds)
        C = C.reshape(C.shape[0], C.shape[1], *shape)
        if method == "ibp":
            return concretize_lower(C, bounds[out])
        crown = backward_lower(graph, out, C, bounds)
        return torch.maximum(crown, concretize_lower(C, bounds[out]))
