"""Branch-and-bound by splitting unstable ReLU neurons (x >= 0 / x <= 0).

Every sub-problem keeps the whole input box of its case plus a sign decision per split
neuron; bounding clamps the split neurons' pre-activation intervals, so their relaxations
become exact and the layers after them tighten. Valid for the part of the box where the
decisions hold, hence sound; infeasible decision sets (an interval emptied by a clamp) are
refuted outright.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from bounds.alpha import (AlphaOptions, IntermediateSlopes, bound_with, graph_dtype, init_alphas, optimise_lower,
                          search_graph)
from bounds.crown import apply_splits, pre_activation_nodes, spec_lower_bounds
from bounds.cuts import affine_map, cuts_from_splits
from bounds.graph.interpret import run
from bounds.graph.ir import Graph
from bounds.ops import RULES
from bounds.ops.relu import LeakyRelu, Relu
from bounds.types import Interval
from branching.bab import (BaBOptions, BaBOutcome, _deciding_rows, input_coefficients,
                           memory_batch_size, new_queue, rate_children, requeue_smaller,
                           stop_reason)
from branching.problem import PolytopeSplit, SpecTensors
from branching.packing import BETAS, CODES, SplitLayout
from branching.queue import DomainQueue, get_intervals, put_intervals


@dataclass(frozen=True)
class ReluDomains:
    case: torch.Tensor                    # (N,) long
    score: torch.Tensor                   # (N,) worst margin of the parent
    depth: torch.Tensor                   # (N,) long
    splits: dict[str, torch.Tensor]       # pre-activation -> (N, numel) int8 in {-1, 0, 1}
    inter: dict[str, Interval] = field(default_factory=dict)  # parent's intervals (N, *shape)
    #: topological index of the newest split's pre-activation (what changed since the parent)
    newest: torch.Tensor | None = None
    #: the parent's optimised output-bound slopes and split multipliers (N, S, ...), keyed as
    #: bounds.alpha.optimise_lower returns them: warm starts, any values are sound
    params: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.case.shape[0]

    def take(self, idx: torch.Tensor) -> "ReluDomains":
        return ReluDomains(self.case[idx], self.score[idx], self.depth[idx],
                           {k: v[idx] for k, v in self.splits.items()},
                           {k: Interval(v.lower[idx], v.upper[idx]) for k, v in self.inter.items()},
                           None if self.newest is None else self.newest[idx],
                           {k: v[idx] for k, v in self.params.items()})

    def fields(self) -> dict[str, torch.Tensor]:
        """Every per-domain tensor by name, for a DomainQueue: the splits and warm starts
        packed (branching.packing), the intervals as they are (they must stay exact)."""
        out = {"case": self.case, "score": self.score, "depth": self.depth}
        if self.newest is not None:
            out["newest"] = self.newest
        out.update(SplitLayout.of(self.splits).pack(self.splits, self.params))
        put_intervals(out, self.inter)
        return out

    @staticmethod
    def from_fields(fields: dict[str, torch.Tensor], layout: SplitLayout) -> "ReluDomains":
        splits, params = layout.unpack(fields)
        return ReluDomains(fields["case"], fields["score"], fields["depth"], splits,
                           get_intervals(fields), fields.get("newest"), params)


def _rows(t: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Select sub-problems from a batched tensor that may still have batch dimension 1."""
    return t.expand(n, *t.shape[1:])[idx] if t.shape[0] != n else t[idx]


def _relu_layers(graph: Graph) -> list[tuple[str, str]]:
    """(relu node, its pre-activation) for every ReLU-like node, in topological order."""
    return [(n.name, n.inputs[0]) for n in graph.nodes
            if isinstance(RULES.get(n.op), (Relu, LeakyRelu)) and not graph[n.inputs[0]].is_constant]


def layer_search_applies(graph: Graph, options: BaBOptions) -> bool:
    """Whether ReLU splitting runs a "layer" search beside the usual one (BaBOptions.layer_search_share):
    enough ReLU layers for early splits to tighten many later ones, and layers narrow enough
    that re-deriving their intervals per sub-problem is affordable."""
    layers = _relu_layers(graph)
    if not 0 < options.layer_search_share < 1 or len(layers) < options.layer_search_min_layers:
        return False
    return all(math.prod(graph[pre].shape) <= options.layer_search_max_width for _, pre in layers)


def _branch_scores(layers, bounds: dict[str, Interval], record: dict[str, torch.Tensor],
                   splits: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """(N, total unstable candidates) BaBSR-style estimate of what splitting each neuron gains.

    A neuron's upper relaxation costs the bound its intercept wherever the output coefficient
    is negative; splitting removes it. A small width term breaks ties among the rest.
    """
    parts = []
    for relu, pre in layers:
        interval = bounds[pre]
        n = interval.lower.shape[0]
        l, u = interval.lower.reshape(n, -1), interval.upper.reshape(n, -1)
        unstable = (l < 0) & (u > 0) & (splits[pre] == 0)
        A = record.get(relu)
        if A is None:
            a = torch.zeros_like(l)
        else:
            a = A[torch.arange(A.shape[0], device=A.device), rows.expand(A.shape[0]) if rows.numel() == 1 else rows]
            a = a.reshape(a.shape[0], -1).expand_as(l)
        width = torch.where(unstable, u - l, torch.ones_like(u))
        intercept = torch.where(unstable, -l * u / width, torch.zeros_like(u))
        score = (-a).clamp(min=0) * intercept + 1e-3 * a.abs() * intercept
        parts.append(torch.where(unstable, score + 1e-9, torch.full_like(score, -1.0)))
    return torch.cat(parts, 1)


def _earliest_layer(scores: torch.Tensor, layers, offsets: dict[str, int]) -> torch.Tensor:
    """The scores with every candidate outside each sub-problem's earliest layer that still
    has one masked out (-1), so that the usual argmax picks within that layer."""
    bounds = [offsets[pre] for _, pre in layers] + [scores.shape[1]]
    out = torch.full_like(scores, -1.0)
    chosen = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    for start, end in zip(bounds[:-1], bounds[1:]):
        seg = scores[:, start:end]
        here = (seg >= 0).any(1) & ~chosen
        out[:, start:end] = torch.where(here.unsqueeze(1), seg, out[:, start:end])
        chosen |= here
    return out


def _with_split(splits: dict[str, torch.Tensor], best: torch.Tensor, sign: int, layers, offsets: dict[str, int],
                order: dict[str, int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Copies of the split decisions with candidate `best` (flat index over all layers, one
    per sub-problem) fixed to `sign`; also each sub-problem's newest split layer."""
    n = best.shape[0]
    new_splits = {k: v.clone() for k, v in splits.items()}
    newest = torch.zeros(n, dtype=torch.long, device=best.device)
    for _, pre in layers:
        off, width = offsets[pre], new_splits[pre].shape[1]
        here = (best >= off) & (best < off + width)
        if bool(here.any()):
            rows_here = here.nonzero().flatten()
            new_splits[pre][rows_here, best[rows_here] - off] = sign
            newest[rows_here] = order[pre]
    return new_splits, newest


def _child_betas(params: dict[str, torch.Tensor], record: dict[str, torch.Tensor], best: torch.Tensor,
                 sign: int, layers, offsets: dict[str, int]) -> dict[str, torch.Tensor]:
    """The parent's parameters with the new split's multiplier set so that the child starts
    where its parent ended rather than below it.

    Fixing a neuron's sign makes its relaxation exact (y = x, or y = 0), but the backward pass
    still lets x take either sign over the box, so with a zero multiplier the child's bound can
    drop below its parent's. Where the parent's bound used the lower line y >= alpha x (its
    output coefficient a > 0), beta = a (1 - alpha) on the active side and beta = a alpha on
    the inactive side give x exactly the parent's coefficient a alpha: everything upstream of
    it, hence the bound, is the parent's again. Any beta >= 0 is sound; this only starts the
    search better.
    """
    out = dict(params)
    for relu, pre in layers:
        key = f"beta:{pre}"
        A, alpha = record.get(relu), params.get(relu)
        if A is None or alpha is None:
            continue
        off = offsets[pre]
        width = A[0, 0].numel()
        rows = ((best >= off) & (best < off + width)).nonzero().flatten()
        if len(rows) == 0:
            continue
        j = best[rows] - off
        a = A.reshape(A.shape[0], A.shape[1], -1)[rows, :, j].to(alpha.dtype).clamp(min=0)
        slope = alpha.reshape(alpha.shape[0], alpha.shape[1], -1)[rows, :, j].to(a.dtype)
        beta = (params[key].clone() if key in params
                else alpha.new_zeros(alpha.shape[0], alpha.shape[1], width))
        beta[rows, :, j] = a * (1 - slope) if sign > 0 else a * slope
        out[key] = beta
    return out


def _fsb_choice(graph: Graph, problem: SpecTensors, kept: ReluDomains, bounds: dict[str, Interval],
                scores: torch.Tensor, layers,
                offsets: dict[str, int], order: dict[str, int], k: int, reduce: str = "min") -> torch.Tensor:
    """Filtered smart branching: of the k best candidates by the cheap score, the one whose
    worse child has the best bound, each child bounded once with the parent's parameters."""
    n = len(kept)
    top_val, top_idx = scores.topk(min(k, scores.shape[1]), dim=1)
    k = top_idx.shape[1]
    if k <= 1:
        return scores.argmax(1)
    variants = [_with_split(kept.splits, top_idx[:, c], sign, layers, offsets, order)[0]
                for c in range(k) for sign in (1, -1)]
    reps = len(variants)
    splits = {name: torch.cat([v[name] for v in variants]) for name in kept.splits}
    inter = {}
    for name, iv in bounds.items():
        rep = Interval(iv.lower.repeat(reps, *([1] * (iv.lower.dim() - 1))),
                       iv.upper.repeat(reps, *([1] * (iv.upper.dim() - 1))))
        inter[name] = apply_splits(rep, splits[name]) if name in splits else rep
    # a heuristic choice: float32 is precise enough and about twice as fast as float64
    low = torch.float32
    inter = {k: Interval(v.lower.to(low), v.upper.to(low)) for k, v in inter.items()}
    params = {name: v.to(low).repeat(reps, *([1] * (v.dim() - 1))) for name, v in kept.params.items()}
    case = kept.case.repeat(reps)
    C = problem.C[case].reshape(len(case), problem.C.shape[1], *graph.output.shape).to(low)
    with torch.no_grad():
        lower = bound_with(search_graph(graph) if graph_dtype(graph) == torch.float64 else graph,
                           graph.outputs[0], C, inter, params, splits)
    worse = rate_children(problem.margins(case, lower).reshape(k, 2, n), reduce, 1)   # (k, n)
    worse = torch.where(top_val.T >= 0, worse, torch.full_like(worse, -torch.inf))
    pick = worse.argmax(0)
    return top_idx[torch.arange(n, device=top_idx.device), pick]


def _solve_leaf(graph: Graph, problem: SpecTensors, domains: ReluDomains, i: int,
                bounds: dict[str, Interval], deadline) -> tuple[str, torch.Tensor | None]:
    """Decide one fully split sub-problem exactly (an LP, solved by HiGHS in float64)."""
    from branching.milp import MILP_SLACK, build_and_solve
    from specs import Polytope, SpecCase

    k = int(domains.case[i])
    C, d, group = problem.C[k], problem.d[k], problem.group[k]
    polys = []
    for p in range(int(problem.real[k].sum())):
        rows = (group == p).nonzero().flatten()
        polys.append(Polytope(C[rows].double().cpu().numpy(), d[rows].double().cpu().numpy()))
    case = SpecCase(problem.lower[k].reshape(-1).double().cpu().numpy(),
                    problem.upper[k].reshape(-1).double().cpu().numpy(), tuple(polys))
    leaf_bounds = {name: Interval(v.lower[i:i + 1].double(), v.upper[i:i + 1].double()) for name, v in bounds.items()}
    fixed = {name: v[i] for name, v in domains.splits.items()}
    for p in range(len(polys)):
        res = build_and_solve(graph, case, p, time_limit=max(0.01, min(30.0, deadline.remaining())),
                              bounds=leaf_bounds, fixed=fixed)
        if res.value is None:
            return "unknown", None
        if res.value <= 0:
            return "sat", torch.tensor(res.x, dtype=problem.lower.dtype)
        if res.lower is None or not res.lower > MILP_SLACK:
            return "unknown", None
    return "unsat", None


def _covers(graph: Graph, intervals: dict[str, Interval]) -> bool:
    """Whether `intervals` hold every variable value (a backward pass needs nothing else)."""
    return all(n.name in intervals for n in graph.nodes if not n.is_constant)


def _beta_round(graph: Graph, problem: SpecTensors, batch: ReluDomains, relaxed: set[str],
                beta_options: AlphaOptions, deadline):
    """_bound_round for sub-problems that keep their case's intervals (clamped by the splits)
    and carry their parent's parameters: the warm-started beta-CROWN search alone.

    A plain CROWN pass first would re-derive intervals that cannot change and a bound that
    the search's first step (from the parent's slopes) already beats.
    """
    n = len(batch)
    inter = {k: apply_splits(v, batch.splits[k]) if k in batch.splits else v for k, v in batch.inter.items()}
    infeasible = torch.zeros(n, dtype=torch.bool, device=problem.lower.device)
    for name in relaxed:
        iv = inter[name]
        infeasible |= (iv.lower > iv.upper).reshape(n, -1).any(1)
    if bool(infeasible.all()):
        return None
    idx = (~infeasible).nonzero().flatten()
    if len(idx) < n:
        inter = {k: Interval(v.lower[idx], v.upper[idx]) for k, v in inter.items()}
    return _search_open(graph, problem, batch, idx, inter, beta_options, deadline)


def _search_open(graph: Graph, problem: SpecTensors, batch: ReluDomains, idx: torch.Tensor,
                 intervals: dict[str, Interval], beta_options: AlphaOptions, deadline,
                 floor: torch.Tensor | None = None):
    """beta-CROWN on the sub-problems `idx` of the batch (`intervals` restricted to them),
    warm-started from their parents' parameters; `floor`: lower bounds known already, kept
    where better. None when all are refuted, else the still-open ones as _bound_round says."""
    case = batch.case[idx]
    C = problem.C[case].reshape(len(idx), problem.C.shape[1], *graph.output.shape)
    start = None
    if batch.params:
        start = init_alphas(graph, intervals, C.shape[1])
        start.update({k: v[idx].to(C.dtype) for k, v in batch.params.items()})
    record: dict[str, torch.Tensor] = {}
    lower, params = optimise_lower(graph, graph.outputs[0], C, intervals, beta_options, alphas=start,
                                   splits={k: v[idx] for k, v in batch.splits.items()}, deadline=deadline,
                                   record=record)
    if floor is not None:
        lower = torch.maximum(floor, lower)
    margins = problem.margins(case, lower)
    still = margins <= 0
    if not bool(still.any()):
        return None
    keep = still.nonzero().flatten()
    return (idx[keep], Interval(problem.lower[case[keep]], problem.upper[case[keep]]),
            {k: Interval(v.lower[keep], v.upper[keep]) for k, v in intervals.items()},
            # warm starts need no precision: any slopes and multipliers are sound, so they are
            # kept in float32 (half the memory and copying of float64 in the queue)
            lower[keep], margins[keep], {k: v[keep].float() for k, v in params.items()},
            {k: v[keep] for k, v in record.items()})


def _bound_round(graph: Graph, problem: SpecTensors, batch: ReluDomains, relaxed: set[str], order: dict[str, int],
                 options: BaBOptions, beta_options: AlphaOptions, deadline,
                 slopes: dict[str, IntermediateSlopes] | None = None, affine=None):
    """Bound a batch of sub-problems: CROWN first, then beta-CROWN on those still open.
    Re-derived intervals (options.refine_intermediate) use `slopes` where they have them, and
    with `affine` = (name, G, h), the first ReLU layer's pre-activations as an affine map of
    the input, are concretised over the box cut by the sub-problem's active splits there.

    Returns None when every sub-problem is refuted (or infeasible), else the still-open ones:
    (index into the batch, case boxes, intervals, lower bounds, margins, optimised
    parameters, recorded output-bound coefficients), all restricted to the open ones.
    """
    device = problem.lower.device
    # the warm search alone is only as good as its start: a child's parameters reproduce its
    # parent's bound (_child_betas), but a root sub-problem's come from alpha-CROWN on the
    # whole spec and can bound its single polytope worse than plain CROWN, so roots take the
    # CROWN pass as a floor (on vit that decided polytopes that the search alone left open)
    if (batch.params and not options.refine_intermediate and _covers(graph, batch.inter)
            and bool((batch.depth > 0).all())):
        return _beta_round(graph, problem, batch, relaxed, beta_options, deadline)
    frozen = None
    if batch.inter and not options.refine_intermediate:
        frozen = set(batch.inter)
    elif batch.newest is not None and batch.inter:
        first = int(batch.newest.min())
        frozen = {name for name in batch.inter if order[name] <= first}
    computed: dict[str, Interval] = {}
    box = Interval(problem.lower[batch.case], problem.upper[batch.case])
    C = problem.C[batch.case]
    batch_slopes = None
    if options.refine_intermediate and slopes:
        batch_slopes = {k: v.take(batch.case) for k, v in slopes.items()}
    cuts = None
    if options.refine_intermediate and affine is not None and affine[0] in batch.splits:
        cuts = cuts_from_splits(affine[1], affine[2], batch.splits[affine[0]], options.input_cuts)
    lower = spec_lower_bounds(graph, box, C, "crown", bounds=computed,
                              prior=batch.inter or None, splits=batch.splits, frozen=frozen, deadline=deadline,
                              slopes=batch_slopes, cuts=cuts)
    infeasible = torch.zeros(len(batch), dtype=torch.bool, device=device)
    for name in relaxed:
        iv = computed[name]
        infeasible |= (iv.lower > iv.upper).reshape(iv.lower.shape[0], -1).any(1).expand(len(batch))
    margins = problem.margins(batch.case, lower)
    open_ = (margins <= 0) & ~infeasible
    if not bool(open_.any()):
        return None
    idx = open_.nonzero().flatten()
    sub_bounds = {k: Interval(_rows(v.lower, idx, len(batch)), _rows(v.upper, idx, len(batch)))
                  for k, v in computed.items()}
    # beta-CROWN: make the output bound respect the split decisions, warm-started from the parent
    return _search_open(graph, problem, batch, idx, sub_bounds, beta_options, deadline, floor=lower[idx])


#: searches started from tightened root intervals (relu_split_bab's `tighten`) get this many
#: times the time of those already running: they usually decide sooner (eran 2954: the new
#: search in seconds where the old one stood at -13), but the old ones keep their progress
#: (mnist 256x6 prop_3 eps 0.05: unsat at 79 s with no tightening; 239 s when only a search
#: from the tightened root went on after it, 222 s with the old one going on beside it)
RESTART_WEIGHT = 2.0


#: tighter root intervals arriving with less time left than this are adopted by the running
#: searches only (no new ones launched)
LATE_LAUNCH_SECONDS = 10.0

#: a tightening that takes turns with the searches (relu_split_bab's `tighten` returning a
#: generator) gets this many times as much time as all running searches together: it is
#: worth most when it finishes (mnist_fc 256x4 prop_5 eps 0.05: the splitting of earlier
#: ReLUs refutes the spec once its last layer is done, 46 s on two threads), yet a search
#: about to finish still goes on
TIGHTEN_WEIGHT = 3.0


@dataclass
class TightenedRoot:
    """Tighter root intervals handed to a running ReLU search (relu_split_bab's `tighten`):
    intervals valid on each case's box, the output bound's slopes and the intermediate
    bounds' slopes found with them, and whether they refute the spec already."""
    bounds: dict[str, Interval]
    alphas: dict[str, torch.Tensor]
    slopes: dict[str, IntermediateSlopes]
    refutes: bool = False


def relu_split_bab(graph: Graph, problem: SpecTensors, deadline, options: BaBOptions = BaBOptions(),
                   progress: Callable[[BaBOutcome, int], None] | None = None,
                   root_bounds: dict[str, Interval] | None = None,
                   root_alphas: dict[str, torch.Tensor] | None = None,
                   falsify: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, int] | None] | None = None,
                   root_slopes: dict[str, IntermediateSlopes] | None = None,
                   tighten: Sequence[tuple[float, Callable[[], Any]]] = ()
                   ) -> BaBOutcome:
    """Decide the spec by splitting unstable ReLUs until every sub-problem is refuted.

    `root_bounds` (intervals valid on each case's whole box, e.g. from alpha-CROWN with
    optimised intermediate layers; batch 1 or K) tighten every sub-problem; `root_alphas`
    (the output bound's slopes from the same run, (K, S, *shape)) warm-start the first
    sub-problems, whose children then start from their parent's slopes and multipliers.
    Each polytope of each case is searched as its own sub-problem (see PolytopeSplit).
    `falsify(points, cases)`, called every `options.falsify_every` seconds with the input
    points that minimise the worst open sub-problems' deciding rows, may return a violating
    (x, case) found around them (e.g. by PGD); the search then stops with `sat`.
    `root_slopes` (the intermediate bounds' optimised slopes from the same alpha-CROWN run,
    batch 1 or K) bound the neurons of sub-problems whose intervals are re-derived
    (BaBOptions.refine_intermediate) in place of CROWN's default slopes.
    On deep narrow networks a second, layer-by-layer search takes turns with this one
    (BaBOptions.layer_search_share); the first to finish decides.
    `tighten`: (share, fn) pairs; each fn() is called once, after that share of the time left
    when the search began and once the tightening before it has finished. It returns tighter
    root intervals valid on each case's box (e.g. by splitting earlier ReLUs or by MILP, in
    the terms of `problem`), None, or a generator that returns one of those and meanwhile
    takes turns with the searches (TIGHTEN_WEIGHT times as much time as all of them
    together). The running searches adopt the tighter intervals (intersected with their
    own), and the same searches start again from them beside the running ones,
    each new generation RESTART_WEIGHT times as much time as the one before.
    """
    start = time.perf_counter()
    device = problem.lower.device
    layers = _relu_layers(graph)
    if not layers:
        return BaBOutcome("unknown", notes=["the network has no ReLU to split"])
    split = PolytopeSplit.of(problem)
    if split.problem.n_cases == 0:
        return BaBOutcome("unsat", elapsed=time.perf_counter() - start)
    problem, case_of = split.problem, split.case_of
    root_bounds, root_alphas, falsify = split.carry(root_bounds, root_alphas, falsify)
    root_slopes = {k: v.take(split.case_of) for k, v in (root_slopes or {}).items()}
    kinds, shares = [options], [1.0]
    if layer_search_applies(graph, options):
        # deep narrow nets: a layer-by-layer search with re-derived intervals runs beside the
        # usual one, the two taking turns by rounds (options.layer_search_share of the time to
        # it), each with half the queue memory; it decides what the usual search cannot there,
        # and can split in vain elsewhere (a random 3-layer net: 230k sub-problems undecided
        # where the usual search alone needs 12k), which taking turns bounds to a constant factor
        half = options.queue_memory_share / 2
        usual = dataclasses.replace(options, queue_memory_share=half)
        kinds = [usual, dataclasses.replace(usual, branching="layer", refine_intermediate=True)]
        shares = [1.0 - options.layer_search_share, options.layer_search_share]

    def switches() -> list:
        if len(kinds) == 1:
            return [None]
        remaining = deadline.remaining() if hasattr(deadline, "remaining") else 0.0
        # the layer search ends as the usual one, from its own sub-problems (each keeps its
        # re-derived intervals): once the early splits are made, the output-bound choice is better
        return [None, (options.layer_search_switch * options.layer_search_share * remaining, kinds[0])]

    outcomes: list[BaBOutcome] = []
    waiting: list[int] = []
    finished: list[bool] = []
    searches: list = []
    spent: list[float] = []
    weights: list[float] = []
    active: list[int] = []

    def report(i: int):
        def note(outcome: BaBOutcome, n: int) -> None:
            waiting[i] = n
            if progress is not None:
                progress(_combined(outcomes, finished, start), sum(waiting))
        return note

    def launch(bounds, alphas, slopes, weight: float) -> None:
        # newcomers start level with the running searches, so none of them gets the machine
        # to itself for long
        level = min((spent[j] / weights[j] for j in active), default=0.0)
        for kind, share, switch in zip(kinds, shares, switches()):
            i = len(searches)
            outcomes.append(BaBOutcome("unsat"))
            waiting.append(0)
            finished.append(False)
            weights.append(share * weight)
            spent.append(level * share * weight)
            searches.append(_search(graph, problem, case_of, layers, deadline, kind, outcomes[i], report(i), bounds,
                                    alphas, falsify, switch, slopes, tightest))
            active.append(i)

    # the tightest root intervals found while searching, which the running searches adopt too
    tightest: dict[str, Interval] = {}
    launch(root_bounds, root_alphas, root_slopes, 1.0)
    pending: list[tuple[float, Callable]] = []
    if hasattr(deadline, "remaining"):
        began, left = time.perf_counter(), deadline.remaining()
        pending = sorted(((began + share * left, fn) for share, fn in tighten), key=lambda p: p[0])
    # tightenings under way as generators: [steps, seconds spent, weight], taking turns with
    # the searches (TIGHTEN_WEIGHT times as much time as all of them together), so that a
    # search about to finish is not held up by a long tightening
    running: list[list] = []
    generation = 0

    def adopt(tighter: TightenedRoot | None) -> bool:
        """Start searches from a tightening's intervals; True when they refute the spec."""
        nonlocal generation
        if tighter is not None and tighter.refutes:
            return True
        if tighter is not None and not deadline.expired():
            bounds, alphas, _ = split.carry(tighter.bounds, tighter.alphas, None)
            K = problem.n_cases
            for k, v in bounds.items():
                v = Interval(v.lower.expand(K, *v.lower.shape[1:]), v.upper.expand(K, *v.upper.shape[1:]))
                tightest[k] = _intersect(tightest[k], v, None) if k in tightest else v
            # a new search needs a few rounds to size them to the time left; close to the
            # deadline the running ones (which adopted the intervals above) finish alone
            if deadline.remaining() >= LATE_LAUNCH_SECONDS:
                generation += 1
                launch(bounds, alphas, {k: v.take(split.case_of) for k, v in tighter.slopes.items()},
                       RESTART_WEIGHT ** generation)
        return False

    refuted = False
    while active and not refuted:
        # one tightening at a time: a later one starts from what the earlier one found
        if pending and not running and time.perf_counter() >= pending[0][0]:
            begun = pending.pop(0)[1]()
            if inspect.isgenerator(begun):
                weight = TIGHTEN_WEIGHT * sum(weights[j] for j in active)
                level = min(spent[j] / weights[j] for j in active)
                running.append([begun, level * weight, weight])
            else:
                refuted = adopt(begun)
                continue
        i = min(active, key=lambda j: spent[j] / max(weights[j], 1e-9))
        task = min(running, key=lambda r: r[1] / r[2], default=None)
        t = time.perf_counter()
        if task is not None and deadline.expired():
            running.clear()  # no step of a tightening past the deadline: the searches stop now
            task = None
        if task is not None and task[1] / task[2] <= spent[i] / max(weights[i], 1e-9):
            try:
                next(task[0])
                task[1] += time.perf_counter() - t
            except StopIteration as stop:
                running.remove(task)
                refuted = adopt(stop.value)
            continue
        try:
            next(searches[i])
        except StopIteration:
            active.remove(i)
            finished[i] = True
            if outcomes[i].status in ("unsat", "sat"):
                break
        spent[i] += time.perf_counter() - t
    if refuted:
        out = _combined(outcomes, finished, start)
        out.status, out.worst_margin = "unsat", None
        out.notes.append("the tightened root intervals refute the spec")
        return out
    return _combined(outcomes, finished, start)


def _intersect(interval: Interval, tighter: Interval, case: torch.Tensor | None) -> Interval:
    """`interval` (N, ...) cut by `tighter` (per case, (K, ...); rows `case` of it, or all when
    None): both hold the values, so their intersection does."""
    lo, up = (tighter.lower, tighter.upper) if case is None else (tighter.lower[case], tighter.upper[case])
    return Interval(torch.maximum(interval.lower, lo.to(interval.lower.dtype)),
                    torch.minimum(interval.upper, up.to(interval.upper.dtype)))


def _combined(outcomes: list[BaBOutcome], finished: list[bool], start: float) -> BaBOutcome:
    """One outcome of searches over the same problem: a finished search's verdict wins (a
    running one's status is only what it would say if its queue emptied now); otherwise each
    search's worst open margin bounds the spec, so the best of them is reported."""
    decided = [o for o, done in zip(outcomes, finished) if done and o.status in ("unsat", "sat")]
    first = decided[0] if decided else outcomes[0]
    out = BaBOutcome(first.status, first.witness, first.witness_case,
                     visited=sum(o.visited for o in outcomes), max_depth=max(o.max_depth for o in outcomes),
                     elapsed=time.perf_counter() - start, notes=[n for o in outcomes for n in o.notes])
    if not decided:
        out.status = "timeout" if any(o.status == "timeout" for o in outcomes) else "unknown"
        margins = [o.worst_margin for o in outcomes if o.worst_margin is not None]
        out.worst_margin = max(margins) if margins else None
    return out


def _search(graph: Graph, problem: SpecTensors, case_of: torch.Tensor, layers, deadline, options: BaBOptions,
            outcome: BaBOutcome, progress, root_bounds, root_alphas, falsify,
            switch: tuple[float, BaBOptions] | None = None, slopes: dict[str, IntermediateSlopes] | None = None,
            tightest: dict[str, Interval] | None = None):
    """One branch-and-bound search (relu_split_bab), a generator that yields after each round
    so that searches can take turns; its result is left in `outcome`. `switch` = (seconds,
    options): after that many seconds of its own rounds it goes on with those options.
    `tightest` (filled in by the caller while the search runs): intervals per case, valid on
    its box, that every popped sub-problem's intervals are intersected with."""
    device = problem.lower.device
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    relaxed = pre_activation_nodes(graph)
    sizes = {pre: graph[pre].shape for _, pre in layers}
    K = problem.n_cases
    splits = {pre: torch.zeros(K, int(torch.tensor(shape).prod()), dtype=torch.int8, device=device)
              for pre, shape in sizes.items()}
    inter = {}
    if root_bounds is not None:
        # every value's interval when they are shared per case (a round then needs no pass
        # that re-derives the unsplit ones); only the split-sensitive ones when stored per domain
        inter = {k: Interval(v.lower.expand(K, *v.lower.shape[1:]).clone(), v.upper.expand(K, *v.upper.shape[1:]).clone())
                 for k, v in root_bounds.items() if k in relaxed or not options.refine_intermediate}
    warm = {}
    if root_alphas:
        R = problem.C.shape[1]
        warm = {k: v.expand(K, R, *v.shape[2:]).float().clone() for k, v in root_alphas.items()
                if v.dim() >= 2 and v.shape[1] == R and v.shape[0] in (1, K)}
    # without per-sub-problem refinement every sub-problem's intervals are its case's root
    # intervals clamped by its splits, which each round re-applies: stored once per case, not
    # per sub-problem (most of a sub-problem's memory on conv nets)
    shared = {} if options.refine_intermediate else inter
    # waiting sub-problems keep their splits and multipliers as short lists and their slopes
    # in bfloat16 (branching.packing); zeros are "no split" and valid multipliers, so a batch
    # without multipliers, or with longer lists than those waiting, is padded with them
    layout = SplitLayout.of(splits)
    domains: DomainQueue[ReluDomains] = new_queue(lambda fields: ReluDomains.from_fields(fields, layout), device,
                                                  options, zero_fill=lambda name: name in (CODES, BETAS))
    domains.push(ReluDomains(torch.arange(K, device=device), torch.full((K,), -torch.inf, device=device),
                             torch.zeros(K, dtype=torch.long, device=device), splits,
                             {} if shared else inter, None, warm))
    offsets, total = {}, 0
    for _, pre in layers:
        offsets[pre] = total
        total += splits[pre].shape[1]
    # a round costs about sub-problems x rows; with one row each (PolytopeSplit) large rounds
    # amortise the per-round overhead (mnist 256x4: 26k -> 48k sub-problems in 52 s)
    rows = problem.C.shape[1]
    batch_size = memory_batch_size(graph, rows, problem.C.dtype, device, max(1, options.batch_size // rows))
    beta_options = AlphaOptions(iterations=options.beta_iterations, lr=0.05, stop_above=None)
    affine = None
    if options.refine_intermediate and options.input_cuts > 0 and root_bounds is not None and layers:
        first = min((pre for _, pre in layers), key=order.get)
        at_root = {k: Interval(v.lower[:1], v.upper[:1]) for k, v in root_bounds.items()}
        at_root[graph.inputs[0]] = Interval(problem.lower[:1], problem.upper[:1])
        found = affine_map(graph, first, at_root)
        affine = None if found is None else (first, *found)
    # seconds per sub-problem in the last round: rounds grow with the queue (and cost several
    # times more with re-derived intervals), so the next one is sized to the time left
    per_domain = 0.0
    last_attack = time.perf_counter()
    use_fsb = options.branching == "fsb"
    bound_seconds = 0.0
    own_seconds, resumed = 0.0, None
    while len(domains):
        if resumed is not None:
            own_seconds += time.perf_counter() - resumed
        yield
        resumed = time.perf_counter()
        if switch is not None and own_seconds >= switch[0]:
            options, switch = switch[1], None
            use_fsb, per_domain = options.branching == "fsb", 0.0
            outcome.notes.append(f"layer-by-layer choice until {outcome.visited} sub-problems, then the usual one")
        take = batch_size
        if per_domain > 0 and hasattr(deadline, "remaining"):
            take = max(1, min(batch_size, int(0.5 * deadline.remaining() / per_domain)))
        if stop_reason(outcome, deadline, domains, options, per_domain * min(take, len(domains)),
                       2 * min(take, len(domains))):
            break
        round_start = time.perf_counter()
        batch = domains.pop_worst(take)
        if shared:
            batch = dataclasses.replace(batch, inter={k: Interval(v.lower[batch.case], v.upper[batch.case])
                                                      for k, v in shared.items()})
        if tightest:
            # tighter root intervals found since (valid on the whole case box, like the old
            # ones): every waiting sub-problem gets them, its splits applied on top as usual
            batch = dataclasses.replace(batch, inter={k: _intersect(v, tightest[k], batch.case) if k in tightest else v
                                                      for k, v in batch.inter.items()})
        try:
            bounded = _bound_round(graph, problem, batch, relaxed, order, options, beta_options, deadline, slopes,
                                   affine)
            bound_seconds = time.perf_counter() - round_start
        except (RuntimeError, MemoryError) as exc:
            batch_size = requeue_smaller(exc, batch_size, domains, batch, device)
            continue
        outcome.visited += len(batch)
        outcome.max_depth = max(outcome.max_depth, int(batch.depth.max()))
        if bounded is None:
            continue
        idx, box, sub_bounds, lower_sub, margins_sub, params, record = bounded
        n = len(idx)
        rows = _deciding_rows(problem, batch.case[idx], lower_sub)
        # falsification: the input corner minimising the deciding row's linear bound
        A_in = input_coefficients(record, graph.inputs[0], n, problem.C.shape[1], box.lower)
        A_row = A_in[torch.arange(n, device=device), rows]
        corner = torch.where(A_row > 0, box.lower, box.upper)
        with torch.no_grad():
            y = run(graph, corner)
        hit = problem.violated(batch.case[idx], y)
        if bool(hit.any()):
            first = hit.nonzero()[0, 0]
            outcome.status, outcome.witness = "sat", corner[first]
            outcome.witness_case = int(case_of[batch.case[idx][first]])
            break
        if falsify is not None and time.perf_counter() - last_attack > options.falsify_every:
            worst = torch.argsort(margins_sub)[:16]
            found = falsify(corner[worst], batch.case[idx][worst])
            last_attack = time.perf_counter()
            if found is not None:
                outcome.status, outcome.witness, outcome.witness_case = "sat", found[0], found[1]
                break
        kept = ReluDomains(batch.case[idx], margins_sub, batch.depth[idx],
                           {k: v[idx] for k, v in batch.splits.items()},
                           {k: sub_bounds[k] for k in relaxed}, None, params)
        scores = _branch_scores(layers, kept.inter, record, kept.splits, rows)
        if options.branching == "layer":
            scores = _earliest_layer(scores, layers, offsets)
        leaves = scores.max(1).values < 0
        if bool(leaves.any()):
            # every unstable ReLU is decided: the sub-problem is a linear program, solve it exactly
            for i in leaves.nonzero().flatten().tolist():
                if deadline.expired():
                    outcome.status = "timeout"
                    break
                verdict, x = _solve_leaf(graph, problem, kept, i, sub_bounds, deadline)
                if verdict == "sat":
                    outcome.status, outcome.witness = "sat", x.reshape(graph.input.shape)
                    outcome.witness_case = int(case_of[kept.case[i]])
                    break
                if verdict != "unsat" and outcome.status == "unsat":
                    outcome.notes.append("the exact solver gave no answer on a fully split sub-problem")
                    outcome.status = "unknown"
                    break
            if outcome.status != "unsat":
                break
            rest = (~leaves).nonzero().flatten()
            kept, scores, idx = kept.take(rest), scores[rest], idx[rest]
            record = {k: v[rest] for k, v in record.items()}
            sub_bounds = {k: Interval(v.lower[rest], v.upper[rest]) for k, v in sub_bounds.items()}
            if len(rest) == 0:
                continue
        if use_fsb:
            fsb_start = time.perf_counter()
            best = _fsb_choice(graph, problem, kept, sub_bounds, scores, layers, offsets, order,
                               options.fsb_candidates, options.fsb_reduce)
            # trying candidates must stay cheaper than bounding: on nets with costly relaxations
            # (softmax) the cheap estimate with more rounds solves more
            if time.perf_counter() - fsb_start > options.fsb_max_cost * bound_seconds:
                use_fsb = False
        else:
            best = scores.argmax(1)
        children = []
        for sign in (1, -1):
            new_splits, newest = _with_split(kept.splits, best, sign, layers, offsets, order)
            children.append(ReluDomains(kept.case, kept.score, kept.depth + 1, new_splits,
                                        {} if shared else kept.inter, newest,
                                        _child_betas(kept.params, record, best, sign, layers, offsets)))
        for child in children:
            domains.push(child)
        if len(domains):  # the worst open sub-problem anywhere, not just in this batch
            outcome.worst_margin = domains.worst_score()
        per_domain = (time.perf_counter() - round_start) / len(batch)
        if progress is not None:
            progress(outcome, len(domains))
