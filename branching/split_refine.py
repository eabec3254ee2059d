"""Tighter intermediate intervals for ReLU networks by splitting the earlier ReLUs that matter.

alpha-CROWN bounds each pre-activation neuron z_j through the relaxations of every unstable
ReLU before it, and on deep fully connected nets a handful of them cost most of the gap. For
each unstable z_j (its minimum and its maximum are separate rows) a tree of sub-problems is
grown best first: the row's worst leaves are split on the earlier unstable ReLU with the
largest |coefficient| x triangle gap in their own bound, and beta-CROWN, warm-started from the
parent, bounds z_j on each child. The leaves cover the box, so the worst of them bounds z_j
on the whole box at any moment, and the trees of all rows grow together, one batched bound
propagation per round. The splits go where a row's bound is worst: mnist_fc 256x4 prop_0 eps
0.05 (the whole root tightening, 2 threads): -2.23 -> +0.01, refuted, in 25 s, where fixing
the same 8 top-ranked ReLUs per row to all 256 sign patterns reached -1.02 in 32 s.

A neuron's two rows share its splits by which side stabilises it soonest, and both stop once
either shows it stable: a stable neuron's relaxation is exact, which tightens every later layer
(mnist_fc 256x6 prop_10 eps 0.05, 100 s: the fifth layer 202 -> 32 unstable, the spec's worst
row -996 -> -4.4; with equal shares 250 -> 161 and -29.5).

Layers go in order, each with the share of the time left that its unstable neurons are of
those still to come, so each layer's rows use the earlier layers' refined intervals; the caller
may re-run its bound propagation in between (`retighten`) so that fewer neurons of the next
layer remain unstable, and with a `done` test each layer also tries its intervals so far on
the spec now and then, ending once they settle it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Generator

import torch

from bounds.alpha import AlphaOptions, init_alphas, optimise_lower
from bounds.crown import apply_splits, backward_lower, pre_activation_nodes
from bounds.graph.ir import Graph
from bounds.ops import RULES
from bounds.ops.relu import LeakyRelu, Relu
from bounds.types import Interval
from branching.bab import memory_batch_size
from branching.milp_refine import RefineReport, refine_layer_by_layer, run_to_end


_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitRefineOptions:
    #: gradient steps of the multiplier and slope search per sub-problem, warm-started from
    #: its parent's (mnist_fc 256x4 prop_0 eps 0.05, 25 s: 4 steps refute the spec; 2 and 8
    #: leave it at -0.29 and -0.21)
    iterations: int = 4
    #: most sub-problems bounded in one propagation call (memory guard; fewer when the
    #: network's widest value needs it). A caller taking turns waits at most one such batch
    #: (about a second on mnist_fc 256x6, one thread)
    max_batch: int = 2048
    #: memory for the open leaves of one layer's split trees (their signs and warm-start
    #: parameters); a layer whose trees outgrow it ends there
    leaf_memory: int = 1 << 30
    #: most leaves per row's tree (None: as many as time and memory allow)
    max_leaves: int | None = None
    #: with a `done` test (refine_by_splits), a layer's intervals so far are tried on the spec
    #: at most this often (and at most a tenth of the time goes to trying): a tree grows as long
    #: as it may, yet mnist 256x4 prop_0 eps 0.05 was refuted by 25 s of a 170 s stage
    check_every: float = 10.0
    #: share each round's splits among a neuron's two rows by which side stabilises it soonest
    #: (_side_weights) instead of equally
    by_side: bool = True


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


def _triangle_gaps(bounds: dict[str, Interval], earlier: list[str]) -> torch.Tensor:
    """The triangle relaxation's gap (-l·u / (u - l)) of every earlier pre-activation, flat in
    the order of `earlier`; -1 for stable neurons (never split: a clamp could empty them)."""
    gaps = []
    for pre in earlier:
        lower, upper = bounds[pre].lower.reshape(-1), bounds[pre].upper.reshape(-1)
        unstable = (lower < 0) & (upper > 0)
        width = torch.where(unstable, upper - lower, torch.ones_like(upper))
        gaps.append(torch.where(unstable, -lower * upper / width, torch.full_like(lower, -1.0)))
    return torch.cat(gaps)


def _next_split(record: dict[str, torch.Tensor], gaps: torch.Tensor, sizes: dict[str, int],
                relu_of: dict[str, str], flat: torch.Tensor) -> torch.Tensor:
    """Per sub-problem, the flat index of the earlier unstable ReLU not yet split there that
    costs its bound most (|coefficient| x triangle gap; `gaps` from _triangle_gaps, `sizes`:
    the earlier pre-activations' sizes in order); -1 where none is left."""
    m = flat.shape[0]
    coefficients = [record[relu_of[pre]].reshape(m, -1).abs().to(gaps.dtype) if relu_of[pre] in record
                    else gaps.new_zeros(m, size) for pre, size in sizes.items()]
    # a tiny positive score for every unstable one: leaves whose bound ignores them still
    # split real candidates
    score = torch.cat(coefficients, 1) * gaps.clamp(min=0) + 1e-12
    score = torch.where((gaps < 0) | (flat != 0), torch.full_like(score, -1.0), score)
    best, index = score.max(1)
    return torch.where(best > 0, index, torch.full_like(index, -1))


def _pick_parents(candidates: torch.Tensor, row: torch.Tensor, bound: torch.Tensor, weight: torch.Tensor,
                  most: int) -> torch.Tensor:
    """At most `most` of the `candidates` (leaf slots) to split next: each row's worst leaves
    first, the rows taking turns by `weight` (per row, >= 0: a row of twice the mean weight
    gives two leaves a turn; none gives less than a tenth of the mean, so no row stalls)."""
    order = candidates[torch.argsort(bound[candidates])]
    order = order[torch.sort(row[order], stable=True).indices]
    row_of = row[order]
    rank = torch.arange(len(order), device=order.device) - torch.searchsorted(row_of, row_of)
    rows = torch.unique(row_of)
    mean = weight[rows].to(torch.float64).mean()
    share = weight.to(torch.float64) / mean if bool(mean > 0) else torch.ones_like(weight, dtype=torch.float64)
    turn = (rank + 1).to(torch.float64) / share.clamp(min=0.1)[row_of]
    return order[torch.argsort(turn, stable=True)[:most]]


def _side_weights(worst: torch.Tensor, n: int) -> torch.Tensor:
    """Per row, how much the neuron's triangle gap g = -l·u / (u - l) shrinks as the row's
    bound moves, relative to its other side: the minimum's row gets u / (u - l), the
    maximum's -l / (u - l) (the square roots of |dg/dl| and |dg/du|), so the side nearer 0, the
    one that stabilises the neuron soonest, gets most of the neuron's splits. `worst` (2n,):
    each row's bound now (l for the first n rows, -u for the others)."""
    l, u = worst[:n], -worst[n:]
    width = (u - l).clamp(min=1e-30)
    return torch.cat([u / width, -l / width]).clamp(min=0)


class _Leaves:
    """The open leaves of one layer's split trees, kept in slots that are reused: a round
    touches only the leaves it splits instead of copying all of them (signs and warm-start
    parameters, hundreds of megabytes once a layer's trees hold 100k leaves). Per slot: the
    row it bounds, its signs, its bound, the next earlier ReLU to split there, its slopes and
    multipliers (float32: warm starts need no precision) and whether it is open."""

    def __init__(self, row: torch.Tensor, signs: torch.Tensor, bound: torch.Tensor, next_split: torch.Tensor,
                 params: dict[str, torch.Tensor]) -> None:
        self.row, self.signs, self.bound, self.next = row, signs, bound, next_split
        self.params = params
        self.open = torch.ones(len(row), dtype=torch.bool, device=row.device)
        self.size = len(row)

    def bytes_per_leaf(self) -> int:
        return self.signs[0].numel() + sum(4 * v[0].numel() for v in self.params.values()) + 32

    def slots(self, count: int, most: int) -> torch.Tensor | None:
        """`count` slots for new leaves (free ones first, then new ones); None when that needs
        more than `most` slots in all."""
        free = (~self.open[:self.size]).nonzero().flatten()[:count]
        extra = count - len(free)
        if extra <= 0:
            return free
        if self.size + extra > most:
            return None
        capacity = len(self.row)
        if self.size + extra > capacity:
            grown = min(most, max(2 * capacity, self.size + extra))

            def grow(t: torch.Tensor) -> torch.Tensor:
                return torch.cat([t, t.new_zeros(grown - capacity, *t.shape[1:])])
            self.row, self.signs, self.bound, self.next, self.open = (
                grow(self.row), grow(self.signs), grow(self.bound), grow(self.next), grow(self.open))
            self.params = {k: grow(v) for k, v in self.params.items()}
        new = torch.arange(self.size, self.size + extra, device=self.row.device)
        self.size += extra
        return torch.cat([free, new])

    def put(self, slots: torch.Tensor, row: torch.Tensor, signs: torch.Tensor, bound: torch.Tensor,
            next_split: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        self.row[slots], self.signs[slots], self.bound[slots], self.next[slots] = row, signs, bound, next_split
        for k, v in self.params.items():
            v[slots] = params[k].to(v.dtype)
        self.open[slots] = True


def _refine_layer(graph: Graph, target: str, bounds: dict[str, Interval], earlier: list[str],
                  relu_of: dict[str, str], options: SplitRefineOptions, deadline,
                  settles: Callable[[Interval], bool] | None = None
                  ) -> Generator[None, None, tuple[Interval, int] | None]:
    """New interval of `target` (never wider) and the sub-problems bounded; None when it has
    no unstable neuron or no earlier unstable ReLU to split. Yields after each round.
    `settles(interval so far)`, asked every options.check_every seconds or so, ends the layer
    once true.

    Every row (an unstable neuron's minimum or maximum) grows its own tree of sub-problems:
    each round splits its worst open leaves on the earlier ReLU that costs their own bound
    most, and each child is bounded by beta-CROWN warm-started from its parent. The leaves
    of a row cover the box, so their worst bound bounds the row at any time. A leaf is
    closed once its bound shows the neuron stable there (>= 0) or nothing is left to split.
    """
    iv = bounds[target]
    lower, upper = iv.lower.reshape(-1), iv.upper.reshape(-1)
    unstable = (lower < 0) & (upper > 0)
    if not bool(unstable.any()) or not any(bool(((bounds[p].lower < 0) & (bounds[p].upper > 0)).any())
                                           for p in earlier):
        return None
    idx = unstable.nonzero().flatten()
    n = len(idx)
    dtype, device = lower.dtype, lower.device
    rows = 2 * n
    # row i < n minimises z_idx[i]; row n + i maximises it (minimises -z)
    C = torch.zeros(1, rows, lower.numel(), dtype=dtype, device=device)
    C[0, torch.arange(n), idx] = 1.0
    C[0, n + torch.arange(n), idx] = -1.0
    C = C.reshape(1, rows, *graph[target].shape)
    sizes = {p: bounds[p].lower.numel() for p in earlier}
    offsets, total = {}, 0
    for p in earlier:
        offsets[p] = total
        total += sizes[p]
    gaps = _triangle_gaps(bounds, earlier)
    signs = torch.zeros(rows, total, dtype=torch.int8, device=device)
    record: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        backward_lower(graph, target, C, bounds, record=record)
    init = init_alphas(graph, bounds, 1)
    params = {relu_of[p]: init[relu_of[p]].expand(rows, *init[relu_of[p]].shape[1:]).float().clone()
              for p in earlier if relu_of[p] in init}
    for p in earlier:
        params[f"beta:{p}"] = torch.zeros(rows, 1, sizes[p], dtype=torch.float32, device=device)
    leaves = _Leaves(torch.arange(rows, device=device), signs, torch.cat([lower[idx], -upper[idx]]),
                     _next_split({k: v[0] for k, v in record.items()}, gaps, sizes, relu_of, signs), params)
    most = max(rows, options.leaf_memory // leaves.bytes_per_leaf())
    # the worst bound of each row's closed leaves
    closed = torch.full((rows,), torch.inf, dtype=dtype, device=device)
    count = torch.ones(rows, dtype=torch.long, device=device)
    batch = max(2, memory_batch_size(graph, 1, dtype, device, options.max_batch) // 2 * 2)
    search = AlphaOptions(iterations=options.iterations, stop_above=None)
    bounded = 0
    began = last_check = time.monotonic()
    check_cost = 0.0

    def row_bounds() -> torch.Tensor:
        # each row's bound now: the worst of its closed and open leaves
        size = leaves.size
        is_open = leaves.open[:size]
        return closed.scatter_reduce(0, leaves.row[:size][is_open], leaves.bound[:size][is_open], "amin")

    def interval_now() -> Interval:
        best = row_bounds()
        new_lower, new_upper = lower.clone(), upper.clone()
        new_lower[idx] = torch.maximum(lower[idx], best[:n])
        new_upper[idx] = torch.minimum(upper[idx], -best[n:])
        return Interval(new_lower.reshape(iv.lower.shape), new_upper.reshape(iv.upper.shape))

    while not deadline.expired():
        if settles is not None and time.monotonic() - last_check >= max(options.check_every, 9 * check_cost):
            t = time.monotonic()
            if settles(interval_now()):
                break
            last_check = time.monotonic()
            check_cost = last_check - t
        size = leaves.size
        is_open = leaves.open[:size]
        row, bound = leaves.row[:size], leaves.bound[:size]
        done = is_open & ((bound >= 0) | (leaves.next[:size] < 0))
        if bool(done.any()):
            closed.scatter_reduce_(0, row[done], bound[done], "amin")
            is_open &= ~done
        ids = is_open.nonzero().flatten()
        # rows are finished once a closed leaf is their worst (no split can raise the row),
        # and both rows of a neuron once either shows it stable (its relaxation is exact then)
        worst = row_bounds()
        live = (closed > worst) & (worst < 0) & ((worst[:n] < 0) & (worst[n:] < 0)).repeat(2)
        if options.max_leaves is not None:
            live &= count < options.max_leaves
        candidates = ids[live[row[ids]]]
        if len(candidates) == 0:
            break
        # the live rows' worst open leaves, a batch of them, shared out by side weight (the
        # module's docstring has the figures)
        weight = _side_weights(worst, n) if options.by_side else torch.ones_like(worst)
        parents = _pick_parents(candidates, row, bound, weight * live, batch // 2)
        # the first child of each parent takes its slot, the second a free or new one
        second = leaves.slots(len(parents), most)
        if second is None:
            break
        m = 2 * len(parents)
        child_signs = leaves.signs[parents].repeat_interleave(2, 0)
        child_signs[torch.arange(m, device=device), leaves.next[parents].repeat_interleave(2)] = torch.tensor(
            [1, -1], dtype=torch.int8, device=device).repeat(len(parents))
        splits = {p: child_signs[:, offsets[p]:offsets[p] + sizes[p]] for p in earlier}
        inter = {name: Interval(v.lower.expand(m, *v.lower.shape[1:]), v.upper.expand(m, *v.upper.shape[1:]))
                 for name, v in bounds.items()}
        for p in earlier:
            inter[p] = apply_splits(inter[p], splits[p])
        child_row = leaves.row[parents].repeat_interleave(2)
        start = {k: v[parents].repeat_interleave(2, 0) for k, v in leaves.params.items()}
        child_record: dict[str, torch.Tensor] = {}
        found, found_params = optimise_lower(graph, target, C[0, child_row].unsqueeze(1), inter, search,
                                             alphas=start, deadline=deadline, splits=splits, record=child_record)
        # a child lies inside its parent: the parent's bound holds for it too
        found = torch.maximum(found.reshape(-1), leaves.bound[parents].repeat_interleave(2))
        child_next = _next_split({k: v[:, 0] for k, v in child_record.items()}, gaps, sizes, relu_of, child_signs)
        for half, slots in ((0, parents), (1, second)):
            leaves.put(slots, child_row[half::2], child_signs[half::2], found[half::2], child_next[half::2],
                       {k: v[half::2] for k, v in found_params.items()})
        count += torch.bincount(child_row, minlength=rows) // 2
        bounded += m
        yield
    refined = interval_now()
    _log.debug("%s: %d rows, %d sub-problems in %.1f s, %d leaves open; unstable %d -> %d", target, rows,
               bounded, time.monotonic() - began, int(leaves.open[:leaves.size].sum()), n,
               int(((refined.lower < 0) & (refined.upper > 0)).sum()))
    return refined, bounded


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
    relaxed = pre_activation_nodes(graph)
    order = [n.name for n in graph.nodes if n.name in relaxed]

    def unstable(name: str, bounds: dict[str, Interval]) -> int:
        return int(((bounds[name].lower < 0) & (bounds[name].upper > 0)).sum())

    def layer(name: str, earlier: list[str], bounds: dict[str, Interval]):
        # a split tree grows as long as it may: each layer gets the share of the time left
        # that its unstable neurons are of those here and after (what it leaves unused goes to
        # the later ones). mnist 256x4 prop_0 eps 0.05: 86, 1 and 45 unstable in the three
        # layers refined, where equal shares spent a third of the time on the one neuron
        here = unstable(name, bounds)
        later = sum(unstable(n, bounds) for n in order[len(earlier):])
        share = here / later if later else 1.0
        settles = None
        if retighten is not None and done is not None:
            def settles(interval: Interval) -> bool:
                retighten({**bounds, name: interval})
                return done()
        return _refine_layer(graph, name, bounds, earlier, relu_of, options,
                             deadline.within(deadline.remaining() * share), settles)

    return (yield from refine_layer_by_layer(graph, bounds, deadline, layer, retighten, done))


__all__ = ["SplitRefineOptions", "refine_by_splits", "refine_by_splits_steps", "relu_network"]
