"""Tighter intermediate intervals for ReLU networks by splitting the earlier ReLUs that matter.

alpha-CROWN bounds each pre-activation neuron z_j through the relaxations of every unstable
ReLU before it, and on deep fully connected nets a handful of them cost most of the gap. For
each unstable z_j (its minimum and its maximum are separate rows), the K earlier unstable
ReLUs with the largest |coefficient| x triangle gap in z_j's CROWN bound are fixed to each of
their 2^K sign patterns; beta-CROWN bounds z_j on every pattern (a sub-problem of the box
where those signs hold), and the worst pattern bounds z_j on the whole box, since the patterns
cover it. Every row's 2^K sub-problems go through the batched bound propagation together, so
this costs seconds where one time-limited MILP per neuron costs minutes (mnist_fc 256x4 prop_5
eps 0.05, the second layer's 128 unstable neurons: the sum of triangle areas 217 -> 133 in
24 s with K = 8; HiGHS MILPs, 1 s per bound: 153 in 134 s).

Layers go in order, so each layer's rows use the earlier layers' refined intervals, and the
caller may re-run its bound propagation in between (`retighten`) so that fewer neurons of the
next layer remain unstable.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Generator

import torch

from bounds.alpha import AlphaOptions, optimise_lower
from bounds.crown import apply_splits, backward_lower, pre_activation_nodes
from bounds.graph.ir import Graph
from bounds.ops import RULES
from bounds.ops.relu import LeakyRelu, Relu
from bounds.types import Interval
from branching.bab import memory_batch_size
from branching.milp_refine import RefineReport, refine_layer_by_layer, run_to_end


@dataclass(frozen=True)
class SplitRefineOptions:
    #: earlier ReLUs fixed per row: 2^splits sub-problems bound each neuron's minimum and
    #: maximum (mnist_fc 256x4 prop_5 eps 0.05, the whole root tightening: worst row -0.94 ->
    #: -0.29 in 14 s with 6, -> +0.007 (refuted) in 46 s with 8)
    splits: int = 8
    #: gradient steps of the multiplier and slope search per sub-problem
    iterations: int = 20
    #: most sub-problems bounded in one propagation call (memory guard; fewer when the
    #: network's widest value needs it). A caller taking turns waits at most one such batch
    #: (about a second on mnist_fc 256x6, one thread)
    max_batch: int = 2048


def _relu_inputs(graph: Graph) -> dict[str, str]:
    """pre-activation -> ReLU-like node reading it (where splitting is exact: slope <= 1)."""
    out = {}
    for node in graph.nodes:
        rule = RULES.get(node.op)
        if isinstance(rule, (Relu, LeakyRelu)) and not graph[node.inputs[0]].is_constant:
            if isinstance(rule, LeakyRelu) and float(node.attrs.get("alpha", 0.01)) > 1.0:
                continue
            out[node.inputs[0]] = node.name
    return out


def relu_network(graph: Graph) -> bool:
    """Whether every relaxed value feeds a ReLU-like node that splitting makes exact (the
    networks refine_by_splits refines)."""
    relaxed = pre_activation_nodes(graph)
    return bool(relaxed) and relaxed <= set(_relu_inputs(graph))


def _split_choice(graph: Graph, target: str, C: torch.Tensor, bounds: dict[str, Interval],
                  earlier: list[str], relu_of: dict[str, str], k: int) -> tuple[torch.Tensor, dict[str, int], int]:
    """(rows, k) flat indices over the earlier pre-activations of each row's k most costly
    unstable ReLUs in its CROWN bound (|coefficient on the ReLU output| x triangle gap), the
    offset of each earlier pre-activation in that flat index, and the flat size."""
    record: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        backward_lower(graph, target, C, bounds, record=record)
    rows = C.shape[1]
    scores, offsets, total = [], {}, 0
    for pre in earlier:
        lower, upper = bounds[pre].lower.reshape(-1), bounds[pre].upper.reshape(-1)
        unstable = (lower < 0) & (upper > 0)
        gap = torch.where(unstable, -lower * upper / torch.where(unstable, upper - lower, torch.ones_like(upper)),
                          torch.zeros_like(lower))
        A = record.get(relu_of[pre])
        cost = (torch.zeros(rows, lower.numel(), dtype=lower.dtype) if A is None
                else A.reshape(rows, -1).abs().to(lower.dtype) * gap)
        # a tiny positive score for every unstable one: rows whose bound ignores them still
        # split real candidates (never a stable neuron, whose clamp could empty its interval)
        scores.append(torch.where(unstable, cost + 1e-12, torch.full_like(cost, -1.0)))
        offsets[pre] = total
        total += lower.numel()
    score = torch.cat(scores, 1)
    return score.topk(k, dim=1).indices, offsets, total


def _refine_layer(graph: Graph, target: str, bounds: dict[str, Interval], earlier: list[str],
                  relu_of: dict[str, str], options: SplitRefineOptions, deadline
                  ) -> Generator[None, None, tuple[Interval, int] | None]:
    """New interval of `target` (never wider) and the sub-problems bounded; None when it has
    no unstable neuron or no earlier unstable ReLU to split. Yields after each batch."""
    iv = bounds[target]
    lower, upper = iv.lower.reshape(-1), iv.upper.reshape(-1)
    unstable = (lower < 0) & (upper > 0)
    candidates = sum(int(((bounds[p].lower < 0) & (bounds[p].upper > 0)).sum()) for p in earlier)
    k = min(options.splits, candidates)
    if not bool(unstable.any()) or k == 0:
        return None
    # the widest triangles first: a deadline mid-layer still leaves the costliest refined
    idx = unstable.nonzero().flatten()
    idx = idx[torch.argsort(-lower[idx] * upper[idx] / (upper[idx] - lower[idx]), descending=True)]
    n = len(idx)
    dtype, device = lower.dtype, lower.device
    # row i < n minimises z_idx[i]; row n + i maximises it (minimises -z)
    C = torch.zeros(1, 2 * n, lower.numel(), dtype=dtype, device=device)
    C[0, torch.arange(n), idx] = 1.0
    C[0, n + torch.arange(n), idx] = -1.0
    C = C.reshape(1, 2 * n, *graph[target].shape)
    top, offsets, total = _split_choice(graph, target, C, bounds, earlier, relu_of, k)
    patterns = torch.tensor(list(itertools.product((1, -1), repeat=k)), dtype=torch.int8, device=device)
    P = patterns.shape[0]
    per_batch = max(P, memory_batch_size(graph, 1, dtype, device, options.max_batch) // P * P)
    rows_per_batch = per_batch // P
    best = torch.full((2 * n,), -torch.inf, dtype=dtype, device=device)
    bounded = 0
    for start in range(0, 2 * n, rows_per_batch):
        if deadline.expired():
            break
        rows = torch.arange(start, min(2 * n, start + rows_per_batch), device=device)
        m = len(rows) * P
        flat = torch.zeros(len(rows), P, total, dtype=torch.int8, device=device)
        flat.scatter_(2, top[rows].unsqueeze(1).expand(-1, P, -1), patterns.unsqueeze(0).expand(len(rows), -1, -1))
        flat = flat.reshape(m, total)
        splits = {p: flat[:, offsets[p]:offsets[p] + bounds[p].lower.numel()] for p in earlier}
        inter = {name: Interval(v.lower.expand(m, *v.lower.shape[1:]), v.upper.expand(m, *v.upper.shape[1:]))
                 for name, v in bounds.items()}
        for p in earlier:
            inter[p] = apply_splits(inter[p], splits[p])
        Cm = C[0, rows].repeat_interleave(P, 0).unsqueeze(1)
        search = AlphaOptions(iterations=options.iterations, stop_above=None)
        found, _ = optimise_lower(graph, target, Cm, inter, search, deadline=deadline, splits=splits)
        # the patterns cover the box: the worst of them bounds the row everywhere
        best[rows] = found.reshape(len(rows), P).min(1).values
        bounded += m
        yield
    new_lower, new_upper = lower.clone(), upper.clone()
    new_lower[idx] = torch.maximum(lower[idx], best[:n])
    new_upper[idx] = torch.minimum(upper[idx], -best[n:])
    return Interval(new_lower.reshape(iv.lower.shape), new_upper.reshape(iv.upper.shape)), bounded


def refine_by_splits(graph: Graph, box: Interval, bounds: dict[str, Interval], deadline,
                     options: SplitRefineOptions = SplitRefineOptions(),
                     retighten: Callable[[dict[str, Interval]], dict[str, Interval]] | None = None,
                     done: Callable[[], bool] | None = None) -> tuple[dict[str, Interval], RefineReport]:
    """Refine the unstable neurons of every ReLU input after the first (a linear function of
    the box, exact already), layer by layer. `bounds` (batch 1: one box) hold every value's
    interval on `box`; `deadline` ends the refinement early, keeping what was proven; `done()`
    (asked after each `retighten`) ends it once true. Returns new intervals, never wider, and
    a report (`solves`: sub-problems bounded)."""
    return run_to_end(refine_by_splits_steps(graph, box, bounds, deadline, options, retighten, done))


def refine_by_splits_steps(graph: Graph, box: Interval, bounds: dict[str, Interval], deadline,
                           options: SplitRefineOptions = SplitRefineOptions(),
                           retighten: Callable[[dict[str, Interval]], dict[str, Interval]] | None = None,
                           done: Callable[[], bool] | None = None
                           ) -> Generator[None, None, tuple[dict[str, Interval], RefineReport]]:
    """refine_by_splits as a generator that yields after each batch of sub-problems, so that
    a caller can take turns with other work (its result is the generator's return value)."""
    if not relu_network(graph):
        # another nonlinearity sits among the layers: the first ReLU layer need not be exact
        # and the splits would miss its relaxation; such nets are left as they are
        return dict(bounds), RefineReport(reason="not a ReLU network")
    relu_of = _relu_inputs(graph)

    def layer(name: str, earlier: list[str], bounds: dict[str, Interval]):
        return _refine_layer(graph, name, bounds, earlier, relu_of, options, deadline)

    return (yield from refine_layer_by_layer(graph, bounds, deadline, layer, retighten, done))


__all__ = ["SplitRefineOptions", "refine_by_splits", "refine_by_splits_steps", "relu_network"]
