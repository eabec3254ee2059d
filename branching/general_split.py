"""Branch-and-bound by splitting the input interval of any nonlinear neuron at a chosen point.

A sub-problem is the part of its case's input box where some pre-activations lie in narrower
intervals than the root's. Splitting neuron j's interval [l, u] at p gives children with
[l, p] and [p, u] (or k pieces): together they cover the parent, so refuting every child
refutes it. A child's interval enters the bound twice:

  * the neuron's relaxation is rebuilt on the narrower interval (tighter for any function);
  * the constraints l' <= x_j <= u' enter the output bound as Lagrangian terms
    -beta_lo (x_j - l') - beta_hi (u' - x_j), beta >= 0 optimised (beta-CROWN generalised
    from sign splits to interval splits): every such term is <= 0 on the sub-problem, so
    the bound stays a lower bound for any beta, and the layers before j feel the split.

The same code path handles sigmoid, tanh, ReLU (split at its kink) and any ActivationRule.
Which neuron: a BaBSR-like estimate from the coefficients that the deciding row's bound
puts on each activation's output, times how much the split would shrink the gap of the
relaxation side that coefficient uses (branching.split_points); optionally refined by
bounding the best few candidates' children once (filtered smart branching).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from bounds.alpha import _ascend, adam, exact_params, init_alphas, search_graph
from bounds.crown import backward_lower, intermediate_bounds, pre_activation_nodes
from bounds.graph.interpret import run
from bounds.graph.ir import Graph, Node
from bounds.ops import RULES
from bounds.ops.base import ActivationRule
from bounds.types import Interval
from branching.bab import (BaBOptions, BaBOutcome, _deciding_rows, input_coefficients,
                           memory_batch_size, new_queue, rate_children, requeue_smaller, stop_reason)
from branching.problem import PolytopeSplit, SpecTensors
from branching.queue import DomainQueue, get_group, get_intervals, put_group, put_intervals
from branching.split_points import SplitPoints, SplitTableOptions, mean_gap

_BETA_PREFIXES = ("lo:", "hi:")


@dataclass(frozen=True)
class GeneralSplitOptions:
    """Choices specific to splitting general nonlinearities (the rest is BaBOptions).

    branches     pieces per split (2: the published scheme; more cuts a neuron's interval
                 into k pieces at once, each chosen where the relaxation gap is largest)
    side_aware   pick each split point for the relaxation side (lower or upper line) that
                 the deciding row's bound actually uses, instead of the total gap
    min_width    neurons whose interval is narrower than this are not split
    lr           step size of the slopes and multipliers (Adam)
    tables       the split-point tables (branching.split_points)
    """

    branches: int = 2
    side_aware: bool = True
    min_width: float = 1e-6
    lr: float = 0.05
    tables: SplitTableOptions = field(default_factory=SplitTableOptions)

    def __post_init__(self) -> None:
        if not isinstance(self.branches, int) or self.branches < 2:
            raise ValueError(f"GeneralSplitOptions.branches must be an integer >= 2, got {self.branches!r}")


@dataclass(frozen=True)
class GeneralDomains:
    case: torch.Tensor                    # (N,) long
    score: torch.Tensor                   # (N,) a lower bound's margin known for it (worst first)
    depth: torch.Tensor                   # (N,) long
    inter: dict[str, Interval]            # every relaxed pre-activation -> (N, *shape)
    split: dict[str, torch.Tensor]        # pre-activation -> (N, numel) bool: narrowed by a split
    #: warm starts (N, S, ...) keyed like `_optimise` returns them; any values are sound
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    newest: torch.Tensor | None = None    # (N,) topological index of the newest split's node

    def __len__(self) -> int:
        return self.case.shape[0]

    def take(self, idx: torch.Tensor) -> "GeneralDomains":
        return GeneralDomains(self.case[idx], self.score[idx], self.depth[idx],
                              {k: Interval(v.lower[idx], v.upper[idx]) for k, v in self.inter.items()},
                              {k: v[idx] for k, v in self.split.items()},
                              {k: v[idx] for k, v in self.params.items()},
                              None if self.newest is None else self.newest[idx])

    @staticmethod
    def cat(parts: list["GeneralDomains"]) -> "GeneralDomains":
        parts = [p for p in parts if len(p)] or parts[:1]
        newest = None if any(p.newest is None for p in parts) else torch.cat([p.newest for p in parts])
        return GeneralDomains(torch.cat([p.case for p in parts]), torch.cat([p.score for p in parts]),
                              torch.cat([p.depth for p in parts]),
                              {k: Interval(torch.cat([p.inter[k].lower for p in parts]),
                                           torch.cat([p.inter[k].upper for p in parts])) for k in parts[0].inter},
                              {k: torch.cat([p.split[k] for p in parts]) for k in parts[0].split},
                              _cat_params(parts), newest)

    def fields(self) -> dict[str, torch.Tensor]:
        """Every per-domain tensor by name, for a DomainQueue."""
        out = {"case": self.case, "score": self.score, "depth": self.depth}
        if self.newest is not None:
            out["newest"] = self.newest
        put_intervals(out, self.inter)
        put_group(out, "split", self.split)
        put_group(out, "param", self.params)
        return out

    @staticmethod
    def from_fields(fields: dict[str, torch.Tensor]) -> "GeneralDomains":
        return GeneralDomains(fields["case"], fields["score"], fields["depth"], get_intervals(fields),
                              get_group(fields, "split"), get_group(fields, "param"), fields.get("newest"))

    @staticmethod
    def queue(device: torch.device, options: BaBOptions) -> DomainQueue["GeneralDomains"]:
        # multipliers of a layer without a split yet start at 0 (as _cat_params does)
        return new_queue(GeneralDomains.from_fields, device, options,
                         zero_fill=lambda key: key.startswith(tuple("param/" + p for p in _BETA_PREFIXES)))


def _cat_params(parts: list[GeneralDomains]) -> dict[str, torch.Tensor]:
    """Warm starts of several batches: slopes that some part lacks are dropped; multipliers
    that some part lacks (it has no split in that layer yet) start at 0 there."""
    out = {}
    for key in set().union(*(p.params for p in parts)):
        have = [p.params[key] for p in parts if key in p.params]
        if len(have) < len(parts) and not key.startswith(_BETA_PREFIXES):
            continue
        like = have[0]
        out[key] = torch.cat([p.params[key] if key in p.params else
                              like.new_zeros(len(p), *like.shape[1:]) for p in parts])
    return out


def nonlinear_layers(graph: Graph) -> list[tuple[Node, str]]:
    """(activation node, its pre-activation) for every elementwise activation, in topological order."""
    seen: set[str] = set()
    layers = []
    for node in graph.nodes:
        if isinstance(RULES.get(node.op), ActivationRule) and not graph[node.inputs[0]].is_constant:
            if node.inputs[0] not in seen:
                seen.add(node.inputs[0])
                layers.append((node, node.inputs[0]))
    return layers


def _lower(graph: Graph, C: torch.Tensor, bounds: dict[str, Interval], params: dict[str, torch.Tensor],
           split: dict[str, torch.Tensor], record: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Lower bound of C·y for given slopes and split multipliers (see the module docstring)."""
    alphas = {k: v for k, v in params.items() if not k.startswith(_BETA_PREFIXES)}
    extra, bias = {}, None
    for pre, mask in split.items():
        key_lo, key_hi = "lo:" + pre, "hi:" + pre
        if key_lo not in params or not bool(mask.any()):
            continue
        n, s = params[key_lo].shape[:2]
        m = mask.unsqueeze(1)                                               # (N, 1, numel)
        beta_lo = torch.where(m, params[key_lo], torch.zeros_like(params[key_lo]))
        beta_hi = torch.where(m, params[key_hi], torch.zeros_like(params[key_hi]))
        lo = torch.where(mask, bounds[pre].lower.reshape(mask.shape), torch.zeros_like(beta_lo[:, 0])).unsqueeze(1)
        hi = torch.where(mask, bounds[pre].upper.reshape(mask.shape), torch.zeros_like(beta_lo[:, 0])).unsqueeze(1)
        extra[pre] = (beta_hi - beta_lo).reshape(n, s, *graph[pre].shape)
        term = (beta_lo * lo - beta_hi * hi).sum(-1)
        bias = term if bias is None else bias + term
    out = backward_lower(graph, graph.outputs[0], C, bounds, alphas, record=record, extra=extra or None)
    return out if bias is None else out + bias


def _optimise(graph: Graph, problem: SpecTensors, case: torch.Tensor, C: torch.Tensor,
              bounds: dict[str, Interval], params: dict[str, torch.Tensor], split: dict[str, torch.Tensor],
              iterations: int, lr: float, deadline) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Best bound over a few Adam steps on slopes and multipliers (each step's bound is valid).

    On float64 bounds the steps run in float32 (see bounds.alpha) and the parameters found
    are evaluated once more in float64: only that value is returned."""
    if C.dtype == torch.float64 and iterations > 1:
        low = {k: Interval(v.lower.float(), v.upper.float()) for k, v in bounds.items()}
        _, found = _optimise(search_graph(graph), problem, case, C.float(), low,
                             {k: v.float() for k, v in params.items()}, split, iterations, lr, deadline)
        found = exact_params(found, params, C.dtype)
        with torch.no_grad():
            return _lower(graph, C, bounds, found, split), found
    ps = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    best, best_ps = None, {k: v.detach().clone() for k, v in ps.items()}
    opt = adam(ps.values(), lr) if ps else None
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.98) if opt is not None else None
    for step in range(max(1, iterations)):
        with torch.enable_grad():
            lb = _lower(graph, C, bounds, ps, split)
        cur = lb.detach()
        improved = torch.ones_like(cur, dtype=torch.bool) if best is None else cur > best
        best = cur.clone() if best is None else torch.maximum(best, cur)
        for k, v in ps.items():
            mask = improved.reshape(*improved.shape, *([1] * (v.dim() - 2)))
            best_ps[k] = torch.where(mask, v.detach(), best_ps[k])
        done = bool((problem.margins(case, best) > 0).all())
        if opt is None or done or step == iterations - 1 or (deadline is not None and deadline.expired()):
            break
        _ascend(opt, sched, lb)
        with torch.no_grad():
            for k, v in ps.items():
                if k.startswith(_BETA_PREFIXES):
                    v.clamp_(min=0)
                else:
                    v.copy_(RULES[graph[k].op].project_alpha(graph[k], v))
    return best, best_ps


@dataclass
class _Bounded:
    """The still-open sub-problems of one batch after bounding (all restricted to them)."""

    domains: GeneralDomains     # with their new intervals, margins as score and best parameters
    bounds: dict[str, Interval]  # every value's interval (N, *shape)
    lower: torch.Tensor          # (N, S)
    record: dict[str, torch.Tensor]


def _bound_batch(graph: Graph, problem: SpecTensors, batch: GeneralDomains, relaxed: set[str],
                 order: dict[str, int], options: BaBOptions, gen: GeneralSplitOptions, deadline) -> _Bounded | None:
    """Bound a batch; None when every sub-problem is refuted (or empty)."""
    frozen = set(batch.inter)
    if options.refine_intermediate and batch.newest is not None:
        first = int(batch.newest.min())
        frozen = {name for name in batch.inter if order[name] <= first}
    box = Interval(problem.lower[batch.case], problem.upper[batch.case])
    bounds = intermediate_bounds(graph, box, "crown", prior=batch.inter, frozen=frozen, deadline=deadline)
    n = len(batch)
    empty = torch.zeros(n, dtype=torch.bool, device=box.lower.device)
    for name in relaxed:
        iv = bounds[name]
        empty |= (iv.lower > iv.upper).reshape(iv.lower.shape[0], -1).any(1).expand(n)
    R = problem.C.shape[1]
    C = problem.C[batch.case].reshape(n, R, *graph.output.shape)
    params = init_alphas(graph, bounds, R)
    params.update({k: v.to(C.dtype) for k, v in batch.params.items() if not k.startswith(_BETA_PREFIXES)})
    for pre, mask in batch.split.items():
        if bool(mask.any()):
            for key in ("lo:" + pre, "hi:" + pre):
                warm = batch.params.get(key)
                params[key] = (warm.to(C.dtype) if warm is not None else
                               torch.zeros(n, R, mask.shape[1], dtype=C.dtype, device=C.device))
    lower, params = _optimise(graph, problem, batch.case, C, bounds, params, batch.split,
                              options.beta_iterations, gen.lr, deadline)
    margins = problem.margins(batch.case, lower)
    open_ = (margins <= 0) & ~empty
    if not bool(open_.any()):
        return None
    idx = open_.nonzero().flatten()
    record: dict[str, torch.Tensor] = {}
    sub_bounds = {k: Interval(_rows(v.lower, idx, n), _rows(v.upper, idx, n)) for k, v in bounds.items()}
    # warm starts need no precision (any values are sound): float32 halves the queue's memory
    sub_params = {k: v[idx].float() for k, v in params.items()}
    sub_split = {k: v[idx] for k, v in batch.split.items()}
    with torch.no_grad():
        _lower(graph, C[idx], sub_bounds, {k: v[idx] for k, v in params.items()}, sub_split, record=record)
    kept = GeneralDomains(batch.case[idx], margins[idx], batch.depth[idx], {k: sub_bounds[k] for k in relaxed},
                          sub_split, sub_params)
    return _Bounded(kept, sub_bounds, lower[idx], record)


def _rows(t: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Select sub-problems from a batched tensor that may still have batch dimension 1."""
    return t.expand(n, *t.shape[1:])[idx] if t.shape[0] != n else t[idx]


@dataclass
class _Candidates:
    """Every neuron's estimated gain and its cut points, flattened over the layers."""

    score: torch.Tensor                  # (N, total) estimated bound gain; -1 where not splittable
    cuts: list[torch.Tensor]             # per layer (k + 1, N, numel)
    offsets: list[int]                   # per layer: first flat index


def _candidates(layers, bounded: _Bounded, rows: torch.Tensor, points: SplitPoints,
                gen: GeneralSplitOptions) -> _Candidates:
    """BaBSR generalised: |coefficient on the activation's output| x the shrinkage, by the
    split, of the mean gap of the relaxation side that coefficient uses (worse piece)."""
    n = len(bounded.domains)
    scores, cuts, offsets, total = [], [], [], 0
    arange = torch.arange(n, device=rows.device)
    for node, pre in layers:
        rule = RULES[node.op]
        iv = bounded.domains.inter[pre]
        l, u = iv.lower.reshape(n, -1), iv.upper.reshape(n, -1)
        A = bounded.record.get(node.name)
        a = A[arange, rows].reshape(n, -1) if A is not None else torch.zeros_like(l)
        side = torch.where(a > 0, 1, 2) if gen.side_aware else torch.zeros_like(l, dtype=torch.long)
        splittable = ~rule.exact_on(Interval(l, u)) & (u - l > gen.min_width)
        safe_u = torch.where(splittable, u, l + 1)                 # keep the arithmetic finite
        c = points.children(node, l, safe_u, side, gen.branches)   # (k + 1, N, numel)
        parent = mean_gap(rule, node, l, safe_u, side)
        worst = torch.stack([mean_gap(rule, node, c[i], c[i + 1], side) for i in range(len(c) - 1)]).amax(0)
        gain = a.abs() * (parent - worst).clamp(min=0)
        # ties (no coefficient reaches the neuron) are broken towards wide intervals
        score = gain + 1e-9 * (safe_u - l)
        scores.append(torch.where(splittable, score, torch.full_like(score, -1.0)))
        cuts.append(c)
        offsets.append(total)
        total += l.shape[1]
    return _Candidates(torch.cat(scores, 1), cuts, offsets)


def _children_of(kept: GeneralDomains, layers, cand: _Candidates, best: torch.Tensor,
                 order: dict[str, int]) -> list[GeneralDomains]:
    """One GeneralDomains per piece: neuron `best` (flat index, one per sub-problem) narrowed."""
    n = len(kept)
    pieces = cand.cuts[0].shape[0] - 1
    out = []
    for piece in range(pieces):
        inter = dict(kept.inter)
        split = dict(kept.split)
        newest = torch.zeros(n, dtype=torch.long, device=best.device)
        for li, (node, pre) in enumerate(layers):
            off, width = cand.offsets[li], split[pre].shape[1]
            here = (best >= off) & (best < off + width)
            if not bool(here.any()):
                continue
            rows = here.nonzero().flatten()
            j = best[rows] - off
            lo = inter[pre].lower.reshape(n, -1).clone()
            hi = inter[pre].upper.reshape(n, -1).clone()
            lo[rows, j] = cand.cuts[li][piece, rows, j]
            hi[rows, j] = cand.cuts[li][piece + 1, rows, j]
            inter[pre] = Interval(lo.reshape(inter[pre].lower.shape), hi.reshape(inter[pre].upper.shape))
            mask = split[pre].clone()
            mask[rows, j] = True
            split[pre] = mask
            newest[rows] = order[pre]
        out.append(GeneralDomains(kept.case, kept.score, kept.depth + 1, inter, split, kept.params, newest))
    return out


def _fsb_choice(graph: Graph, problem: SpecTensors, bounded: _Bounded, layers, cand: _Candidates,
                order: dict[str, int], k: int, reduce: str = "min") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Of the k best candidates by the estimate, the one whose worst piece bounds best when
    bounded once with the parent's parameters; also those pieces' margins (pieces, N)."""
    n = len(bounded.domains)
    top_val, top_idx = cand.score.topk(min(k, cand.score.shape[1]), dim=1)
    if top_idx.shape[1] <= 1:
        return cand.score.argmax(1), None
    variants = [child for c in range(top_idx.shape[1])
                for child in _children_of(bounded.domains, layers, cand, top_idx[:, c], order)]
    pieces = len(variants) // top_idx.shape[1]
    joined = GeneralDomains.cat(variants)
    reps = len(variants)
    bounds = {name: Interval(iv.lower.repeat(reps, *([1] * (iv.lower.dim() - 1))),
                             iv.upper.repeat(reps, *([1] * (iv.upper.dim() - 1))))
              for name, iv in bounded.bounds.items()}
    bounds.update(joined.inter)
    R = problem.C.shape[1]
    C = problem.C[joined.case].reshape(len(joined), R, *graph.output.shape)
    params = {k_: v.to(C.dtype) for k_, v in joined.params.items()}
    for pre, mask in joined.split.items():
        if bool(mask.any()) and "lo:" + pre not in params:
            for key in ("lo:" + pre, "hi:" + pre):
                params[key] = torch.zeros(len(joined), R, mask.shape[1], dtype=C.dtype, device=C.device)
    with torch.no_grad():
        lower = _lower(graph, C, bounds, params, joined.split)
    margins = problem.margins(joined.case, lower).reshape(top_idx.shape[1], pieces, n)   # (k, pieces, N)
    worst = rate_children(margins, reduce, 1)
    worst = torch.where(top_val.T >= 0, worst, torch.full_like(worst, -torch.inf))
    pick = worst.argmax(0)
    arange = torch.arange(n, device=pick.device)
    return top_idx[arange, pick], margins[pick, :, arange].T


def _falsify_corner(graph: Graph, problem: SpecTensors, bounded: _Bounded, rows: torch.Tensor):
    """The input corner minimising each deciding row's linear bound, and whether it violates."""
    kept = bounded.domains
    n = len(kept)
    A_in = input_coefficients(bounded.record, graph.inputs[0], n, problem.C.shape[1], problem.lower)
    A = A_in[torch.arange(n, device=rows.device), rows]
    corner = torch.where(A > 0, problem.lower[kept.case], problem.upper[kept.case])
    with torch.no_grad():
        y = run(graph, corner)
    return corner, problem.violated(kept.case, y)


def _root_domains(graph: Graph, problem: SpecTensors, relaxed: set[str], layers,
                  root_bounds: dict[str, Interval] | None, root_alphas: dict[str, torch.Tensor] | None
                  ) -> GeneralDomains:
    K = problem.n_cases
    device = problem.lower.device
    inter = {}
    if root_bounds is None:
        with torch.no_grad():
            root_bounds = intermediate_bounds(graph, Interval(problem.lower, problem.upper), "crown")
    for k, v in root_bounds.items():
        if k in relaxed:
            inter[k] = Interval(v.lower.expand(K, *v.lower.shape[1:]).clone(), v.upper.expand(K, *v.upper.shape[1:]).clone())
    warm = {}
    R = problem.C.shape[1]
    for k, v in (root_alphas or {}).items():
        if v.dim() >= 2 and v.shape[1] == R and v.shape[0] in (1, K):
            warm[k] = v.expand(K, R, *v.shape[2:]).float().clone()
    split = {pre: torch.zeros(K, math.prod(graph[pre].shape), dtype=torch.bool, device=device) for _, pre in layers}
    return GeneralDomains(torch.arange(K, device=device), torch.full((K,), -torch.inf, device=device),
                          torch.zeros(K, dtype=torch.long, device=device), inter, split, warm)


def general_split_bab(graph: Graph, problem: SpecTensors, deadline, options: BaBOptions = BaBOptions(),
                      progress: Callable[[BaBOutcome, int], None] | None = None,
                      root_bounds: dict[str, Interval] | None = None,
                      root_alphas: dict[str, torch.Tensor] | None = None,
                      falsify: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, int] | None] | None = None,
                      split_options: GeneralSplitOptions = GeneralSplitOptions(),
                      root_lower: torch.Tensor | None = None) -> BaBOutcome:
    """Decide the spec by splitting nonlinear neurons' input intervals until every piece is refuted.

    `root_bounds` / `root_alphas` / `falsify` as for branching.relu_split.relu_split_bab:
    intervals valid on each case's box (batch 1 or K), the output bound's slopes to start
    from, and an attack called every `options.falsify_every` seconds at promising points
    (it gets and returns the spec's own case numbers). `root_lower` (K, R), the bounds of
    the same run, lets the polytopes it refutes be skipped. Each open polytope is searched
    as its own sub-problem (see by_polytope).
    """
    start = time.perf_counter()
    layers = nonlinear_layers(graph)
    if not layers:
        return BaBOutcome("unknown", notes=["the network has no nonlinear activation to split"])
    split = PolytopeSplit.of(problem, root_lower)
    if split.problem.n_cases == 0:
        return BaBOutcome("unsat", elapsed=time.perf_counter() - start)
    problem, case_of = split.problem, split.case_of
    root_bounds, root_alphas, falsify = split.carry(root_bounds, root_alphas, falsify)

    device = problem.lower.device
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    relaxed = pre_activation_nodes(graph)
    points = SplitPoints(split_options.tables)
    domains = GeneralDomains.queue(device, options)
    domains.push(_root_domains(graph, problem, relaxed, layers, root_bounds, root_alphas))
    outcome = BaBOutcome("unsat")
    batch_size = memory_batch_size(graph, problem.C.shape[1], problem.C.dtype, device, max(1, options.batch_size // 8))
    last_round, last_attack = 0.0, time.perf_counter()
    while len(domains):
        if stop_reason(outcome, deadline, domains, options, last_round,
                       split_options.branches * min(batch_size, len(domains))):
            break
        round_start = time.perf_counter()
        batch = domains.pop_worst(batch_size)
        try:
            bounded = _bound_batch(graph, problem, batch, relaxed, order, options, split_options, deadline)
            if bounded is not None:
                new = _expand(graph, problem, bounded, layers, points, order, options, split_options, outcome)
        except (RuntimeError, MemoryError) as exc:
            batch_size = requeue_smaller(exc, batch_size, domains, batch, device)
            continue
        outcome.visited += len(batch)
        outcome.max_depth = max(outcome.max_depth, int(batch.depth.max()))
        if bounded is None:
            continue
        if outcome.status != "unsat":
            if outcome.status == "sat":
                outcome.witness_case = int(case_of[outcome.witness_case])
            break
        kept = bounded.domains
        if falsify is not None and time.perf_counter() - last_attack > options.falsify_every:
            rows = _deciding_rows(problem, kept.case, bounded.lower)
            corner, _ = _falsify_corner(graph, problem, bounded, rows)
            worst = torch.argsort(kept.score)[:16]
            found = falsify(corner[worst], kept.case[worst])
            last_attack = time.perf_counter()
            if found is not None:
                outcome.status, outcome.witness, outcome.witness_case = "sat", found[0], found[1]
                break
        for part in new:
            domains.push(part)
        if len(domains):  # the worst open sub-problem anywhere, not just in this batch
            outcome.worst_margin = domains.worst_score()
        last_round = time.perf_counter() - round_start
        if progress is not None:
            progress(outcome, len(domains))
    outcome.elapsed = time.perf_counter() - start
    return outcome


def _expand(graph: Graph, problem: SpecTensors, bounded: _Bounded, layers, points: SplitPoints,
            order: dict[str, int], options: BaBOptions, gen: GeneralSplitOptions,
            outcome: BaBOutcome) -> list[GeneralDomains]:
    """Falsify at each open sub-problem's corner, then split it; the children still open.

    Sets the outcome's status (and witness) when a corner violates the spec or some
    sub-problem has nothing left to split."""
    kept = bounded.domains
    rows = _deciding_rows(problem, kept.case, bounded.lower)
    corner, hit = _falsify_corner(graph, problem, bounded, rows)
    if bool(hit.any()):
        first = hit.nonzero()[0, 0]
        outcome.status, outcome.witness, outcome.witness_case = "sat", corner[first], int(kept.case[first])
        return []
    cand = _candidates(layers, bounded, rows, points, gen)
    if bool((cand.score.max(1).values < 0).any()):
        outcome.status = "unknown"
        outcome.notes.append("a sub-problem has no neuron left to split (every relaxation exact or too narrow)")
        outcome.worst_margin = float(kept.score.min())
        return []
    child_margins = None
    if options.branching == "fsb":
        best, child_margins = _fsb_choice(graph, problem, bounded, layers, cand, order, options.fsb_candidates,
                                          options.fsb_reduce)
    else:
        best = cand.score.argmax(1)
    children = _children_of(kept, layers, cand, best, order)
    if child_margins is None:
        return children
    # pieces already refuted by the parent's parameters need no further work
    out = []
    for piece, child in enumerate(children):
        m = child_margins[piece]
        still = (m <= 0).nonzero().flatten()
        child = child.take(still)
        out.append(GeneralDomains(child.case, torch.maximum(child.score, m[still]), child.depth, child.inter,
                                  child.split, child.params, child.newest))
    return out
