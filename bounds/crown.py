"""CROWN: backward linear bound propagation over the graph DAG.

All per-run state (intermediate intervals) lives in the caller's `bounds` dict.
"""
from __future__ import annotations

import contextlib
import math

import torch

from bounds.graph.ir import INPUT, Graph, Node
from bounds.ibp import propagate
from bounds.ops import RULES
from bounds.ops.base import ActivationRule, flat_sum, relaxation_backward, row_dot
from bounds.types import CentredBox, Interval, Relaxation, single_if_repeated

#: elements of the largest linear-coefficient tensor one backward pass may hold
_MAX_COEFFICIENTS = 1 << 25
#: crown_interval packs (sub-problem, neuron) pairs instead of padding every sub-problem to
#: the busiest one's count once the pairs fill less than this share of the padded rows
_PACK_BELOW = 0.5


def concretize_lower(A: torch.Tensor, x: Interval) -> torch.Tensor:
    """min over x in the box of A·x; A (B, S, *shape), x (B|1, *shape) -> (B, S).

    Boxes may have infinite ends (intervals of unbounded values, e.g. 1/x near 0). There the
    centre-radius form would give NaN (inf - inf, 0 * inf), so each term is taken at the end
    its coefficient picks: a 0 coefficient contributes exactly 0 whatever the end, a nonzero
    one on an infinite end contributes -inf, so the bound is -inf (sound), never NaN.
    """
    batch = max(A.shape[0], x.lower.shape[0], x.upper.shape[0])
    if isinstance(x, CentredBox):
        bound = row_dot(A, x.mid) - row_dot(A.abs(), x.half)
        return bound.expand(batch, -1).contiguous() if bound.shape[0] < batch else bound
    # one box for many sub-problems: its checks, centre and radius cost one box
    x = Interval(single_if_repeated(x.lower), single_if_repeated(x.upper))
    bound = _concretize(A, x)
    return bound.expand(batch, -1).contiguous() if bound.shape[0] < batch else bound


def _concretize(A: torch.Tensor, x: Interval) -> torch.Tensor:
    if bool(torch.isfinite(x.lower).all() and torch.isfinite(x.upper).all()):
        return row_dot(A, x.center) - row_dot(A.abs(), x.radius)
    lower, upper = x.lower.unsqueeze(1), x.upper.unsqueeze(1)
    low_inf, up_inf = ~torch.isfinite(lower), ~torch.isfinite(upper)
    # finite parts with the infinite ends replaced by 0, so that no 0 * inf enters the sum (or
    # the gradient w.r.t. A, which alpha-CROWN follows); a NaN coefficient still gives NaN
    lo = torch.where(low_inf, torch.zeros_like(lower), lower)
    up = torch.where(up_inf, torch.zeros_like(upper), upper)
    finite = flat_sum(torch.where(A < 0, A * up, A * lo))
    unbounded = ((A > 0) & low_inf) | ((A < 0) & up_inf)
    return torch.where(unbounded.flatten(2).any(-1), torch.full_like(finite, -math.inf), finite)


def _grad_mode(grad: bool) -> contextlib.AbstractContextManager:
    """Bounds are constants for verification; certified training differentiates them."""
    return contextlib.nullcontext() if grad else torch.no_grad()


def _interval_of(graph: Graph, name: str, bounds: dict[str, Interval]) -> Interval:
    if name in bounds:
        return bounds[name]
    return Interval.point(graph[name].value.unsqueeze(0))


class RecordOnly(dict):
    """A `record` for backward_lower that keeps only the named nodes' coefficients (a plain
    dict keeps every node's coefficient tensor alive until the pass ends)."""

    def __init__(self, names) -> None:
        super().__init__()
        self.names = frozenset(names)

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if key in self.names:
            super().__setitem__(key, value)


def backward_lower(graph: Graph, target: str, C: torch.Tensor, bounds: dict[str, Interval],
                   alphas: dict[str, torch.Tensor] | None = None,
                   record: dict[str, torch.Tensor] | None = None,
                   extra: dict[str, torch.Tensor] | None = None, cuts=None,
                   relaxations: dict[str, Relaxation] | None = None,
                   prepared: dict | None = None) -> torch.Tensor:
    """Lower bound of C·value(target), C (B, S, *target_shape), over the input box (cut by
    `cuts`, a bounds.cuts.InputCuts, when given).

    `alphas` maps activation nodes to optimisable relaxation parameters (B, S, *shape).
    `extra` adds coefficients (B, S, *shape) to named nodes as the pass reaches them: the
    Lagrangian terms of split constraints (beta-CROWN) enter this way.
    When `record` is given, the coefficients reaching every node are stored in it by name
    (at an input they say which dimensions the bound is most sensitive to; at an
    activation's output, which neurons' relaxations cost the most).

    Nodes whose rule has no linear relaxation are cut: the coefficients reaching them are
    concretised with their interval, which is sound whatever lies behind them.
    `relaxations` maps activation nodes to relaxations computed already (their rule's own
    default one, on the same intervals): the pass uses them instead of deriving them again.
    `prepared` maps activation nodes with `alphas` to their rule's `prepare` on the same
    intervals (alpha -> relaxation), which the pass then uses.
    """
    pending: dict[str, torch.Tensor] = {target: C}
    bias = C.new_zeros(C.shape[:2])
    for node in reversed(graph.nodes):
        A = pending.pop(node.name, None)
        if extra is not None and node.name in extra:
            A = extra[node.name] if A is None else A + extra[node.name]
        if A is None:
            continue
        if record is not None:
            record[node.name] = A
        if node.op == INPUT:
            if cuts is not None:
                from bounds.cuts import concretize_with_cuts

                bias = bias + concretize_with_cuts(A, bounds[node.name], cuts)
            else:
                bias = bias + concretize_lower(A, bounds[node.name])
            continue
        relax = None
        if relaxations is not None and node.name in relaxations:
            relax = relaxations[node.name]
        elif prepared is not None and node.name in prepared and alphas is not None and node.name in alphas:
            relax = prepared[node.name](alphas[node.name])
        if relax is not None:
            new_A, b = relaxation_backward(A, relax)
            bias = bias + b
            source = node.inputs[0]
            pending[source] = pending[source] + new_A if source in pending else new_A
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


def _refine_mask(interval: Interval, consumers: list[Node], graph: Graph | None = None) -> torch.Tensor:
    """(B, numel) neurons whose relaxation would change with tighter bounds.

    Without `graph`, consumers whose nonlinearity depends on constness (a Mul of two
    variables) are assumed nonlinear: refining too much is only slower."""
    exact = torch.ones_like(interval.lower, dtype=torch.bool)
    for user in consumers:
        rule = RULES[user.op]
        is_const = [graph is not None and graph[n].is_constant for n in user.inputs]
        if rule.needs_bounds(user, is_const):
            exact &= rule.exact_on(interval) if isinstance(rule, ActivationRule) else interval.lower == interval.upper
    return (~exact).flatten(1)


def crown_interval(graph: Graph, name: str, bounds: dict[str, Interval],
                   mask: torch.Tensor, slopes=None, cuts=None) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN bounds of the neurons of `name` selected by mask (B, numel).

    Each sub-problem gets its own rows (as many as the busiest one needs), so a batch of
    mostly-stable domains is cheap. Returns flat (B, numel) lower/upper, -inf/+inf where
    nothing was computed. `slopes` (bounds.alpha.IntermediateSlopes): optimised relaxation
    slopes for these neurons' bounds, used instead of CROWN's default where they cover them.
    Neurons of a convolution chain are bounded over their receptive fields (bounds.receptive).
    """
    from bounds.receptive import conv_chain, neuron_rows_lower   # they build on this module

    ref = bounds[graph.inputs[0]].lower
    batch = max(mask.shape[0], max(b.lower.shape[0] for b in bounds.values()))
    mask = mask.expand(batch, -1)
    shape = graph[name].shape
    numel = mask.shape[1]
    k_total = int(mask.sum(1).max())
    if (slopes is None and cuts is None and batch > 1 and conv_chain(graph, name) is None
            and int(mask.sum()) <= _PACK_BELOW * batch * k_total):
        return _packed_rows(graph, name, bounds, mask, batch)
    order = torch.argsort(mask.to(torch.int8), dim=1, descending=True, stable=True)[:, :k_total]
    widest = max(math.prod(graph[n].shape) for n in graph.ancestors(name))
    chunk = max(1, _MAX_COEFFICIENTS // max(1, 2 * batch * widest))
    low = torch.full((batch, numel), -torch.inf, dtype=ref.dtype, device=ref.device)
    up = torch.full((batch, numel), torch.inf, dtype=ref.dtype, device=ref.device)
    for start in range(0, k_total, chunk):
        idx = order[:, start:start + chunk]
        k = idx.shape[1]
        alphas = None
        if slopes is not None:
            alphas = slopes.for_neurons(idx)
            if alphas is not None:
                alphas = {act: v.to(ref.dtype).expand(batch, *v.shape[1:]) for act, v in alphas.items()}
        lb = None if cuts is not None else neuron_rows_lower(graph, name, idx, bounds, alphas, batch)
        if lb is None:
            C = torch.zeros(batch, 2 * k, numel, dtype=ref.dtype, device=ref.device)
            C[:, :k].scatter_(2, idx.unsqueeze(2), 1.0)
            C[:, k:].scatter_(2, idx.unsqueeze(2), -1.0)
            lb = backward_lower(graph, name, C.reshape(batch, 2 * k, *shape), bounds, alphas, cuts=cuts)
        low.scatter_(1, idx, lb[:, :k])
        up.scatter_(1, idx, -lb[:, k:])
    return low, up


class _RowsOf(dict):
    """The intervals of `bounds` at the given sub-problems, each gathered when first read
    (a pass given precomputed relaxations reads few of them)."""

    def __init__(self, bounds: dict[str, Interval], rows: torch.Tensor, batch: int) -> None:
        super().__init__()
        self._bounds, self._rows, self._batch = bounds, rows, batch

    def __contains__(self, key) -> bool:
        return key in self._bounds

    def __getitem__(self, key: str) -> Interval:
        if not dict.__contains__(self, key):
            v = self._bounds[key]
            if v.lower.shape[0] == self._batch:
                v = Interval(v.lower.index_select(0, self._rows), v.upper.index_select(0, self._rows))
            dict.__setitem__(self, key, v)
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        return self[key] if key in self else default


def _packed_rows(graph: Graph, name: str, bounds: dict[str, Interval], mask: torch.Tensor,
                 batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """crown_interval's result with one sub-problem per selected neuron: every (sub-problem,
    neuron) pair becomes its own batch entry, carrying its sub-problem's activation
    relaxations (and any interval the pass reads), so the pass costs what the neurons asked
    for rather than the busiest sub-problem's count times the batch (input splitting deep in
    the tree: most sub-problems have a few unstable neurons, a few have many)."""
    ref = bounds[graph.inputs[0]].lower
    shape = graph[name].shape
    numel = mask.shape[1]
    owner, neuron = mask.nonzero(as_tuple=True)
    low = torch.full((batch, numel), -torch.inf, dtype=ref.dtype, device=ref.device)
    up = torch.full((batch, numel), torch.inf, dtype=ref.dtype, device=ref.device)
    ancestors = graph.ancestors(name)
    per_row = sum(math.prod(graph[n].shape) for n in ancestors) + numel
    chunk = max(1, _MAX_COEFFICIENTS // (2 * per_row))
    # each sub-problem's activation relaxations, derived once here rather than once per row
    # of it in the pass (rules with their own backward step keep it)
    relaxations = {n: rule.relax(graph[n], bounds[graph[n].inputs[0]])
                   for n in ancestors if n != name and (rule := _shared_step_rule(graph, n, bounds)) is not None}
    for start in range(0, len(owner), chunk):
        rows, cols = owner[start:start + chunk], neuron[start:start + chunk]
        r = len(rows)
        picked = _RowsOf(bounds, rows, batch)
        relax_rows = {n: Relaxation(*(t.index_select(0, rows) if t.dim() > 0 and t.shape[0] == batch else t
                                      for t in (v.lw, v.lb, v.uw, v.ub)))
                      for n, v in relaxations.items()}
        C = torch.zeros(r, 2, numel, dtype=ref.dtype, device=ref.device)
        at = torch.arange(r, device=ref.device)
        C[at, 0, cols] = 1.0
        C[at, 1, cols] = -1.0
        lb = backward_lower(graph, name, C.reshape(r, 2, *shape), picked, relaxations=relax_rows)
        low[rows, cols] = lb[:, 0]
        up[rows, cols] = -lb[:, 1]
    return low, up


def _shared_step_rule(graph: Graph, name: str, bounds: dict[str, Interval]) -> ActivationRule | None:
    """The node's activation rule when its backward step is the shared relaxation step (so a
    relaxation computed ahead can stand in for it) and its input's interval is known."""
    node = graph[name]
    rule = RULES.get(node.op)
    if (isinstance(rule, ActivationRule) and type(rule).backward is ActivationRule.backward
            and node.inputs[0] in bounds):
        return rule
    return None


def prepare_relaxations(graph: Graph, bounds: dict[str, Interval], names) -> dict:
    """backward_lower's `prepared` for the named activation nodes whose rule offers it (and
    keeps the shared backward step), on the intervals of `bounds`."""
    out = {}
    for name in names:
        rule = _shared_step_rule(graph, name, bounds)
        fn = None if rule is None else rule.prepare(graph[name], bounds[graph[name].inputs[0]])
        if fn is not None:
            out[name] = fn
    return out


def pre_activation_nodes(graph: Graph) -> set[str]:
    """Variable values whose intervals some nonlinear op's relaxation reads."""
    return {n for node in graph.nodes if node.op in RULES
            and RULES[node.op].needs_bounds(node, [graph[n].is_constant for n in node.inputs])
            for n in node.inputs if not graph[n].is_constant}


def apply_splits(interval: Interval, split: torch.Tensor) -> Interval:
    """Clamp pre-activation intervals to the side each split decision (+1 / -1 / 0) fixes."""
    s = split.reshape(split.shape[0], *interval.lower.shape[1:])
    lower = torch.where(s > 0, interval.lower.clamp(min=0), interval.lower)
    upper = torch.where(s < 0, interval.upper.clamp(max=0), interval.upper)
    return Interval(lower, upper)


def intermediate_bounds(graph: Graph, box: Interval, method: str = "crown",
                        bounds: dict[str, Interval] | None = None,
                        prior: dict[str, Interval] | None = None,
                        splits: dict[str, torch.Tensor] | None = None,
                        frozen: set[str] | None = None, grad: bool = False,
                        deadline=None, slopes: dict | None = None, cuts=None) -> dict[str, Interval]:
    """Intervals for every value; inputs of nonlinear ops tightened by CROWN when asked.

    `prior` holds intervals known to be valid already (e.g. a parent sub-problem's, whose
    box contains this one): they are intersected in before deciding what to refine.
    `splits` maps pre-activation nodes to per-neuron sign decisions (B, numel) in {-1, 0, 1}
    (ReLU branch-and-bound): the sub-problem is the part of the box where those hold, so the
    intervals are clamped accordingly. Nodes in `frozen` keep their prior without CROWN (the
    caller knows nothing upstream of them changed). `grad=True` keeps the autograd graph
    (certified training: the intervals are differentiated w.r.t. the graph's constants).
    Once `deadline` (anything with .expired()) has passed, the remaining values keep their
    interval-arithmetic bounds: looser but sound, and the call returns within one layer.
    `slopes` maps pre-activations to optimised slopes for their bounds (see crown_interval).
    `cuts` (bounds.cuts.InputCuts): constraints on the input each sub-problem satisfies; CROWN
    bounds are concretised over the box cut by them.
    """
    users = graph.consumers()
    relaxed = pre_activation_nodes(graph)

    def refine(node: Node, interval: Interval, known: dict[str, Interval]) -> Interval:
        if prior is not None and node.name in prior:
            interval = interval.intersect(prior[node.name])
        if splits is not None and node.name in splits:
            interval = apply_splits(interval, splits[node.name])
        if method != "crown" or node.name not in relaxed or (frozen is not None and node.name in frozen):
            return interval
        if deadline is not None and deadline.expired():
            return interval
        mask = _refine_mask(interval, users[node.name], graph)
        if not bool(mask.any()):
            return interval
        known[node.name] = interval  # CROWN may cut through this node's own consumers' inputs
        low, up = crown_interval(graph, node.name, known, mask, (slopes or {}).get(node.name), cuts)
        shape = (low.shape[0], *interval.lower.shape[1:])
        return interval.intersect(Interval(low.reshape(shape), up.reshape(shape)))

    with _grad_mode(grad):
        return propagate(graph, box, bounds, refine=refine)


def spec_lower_bounds(graph: Graph, box: Interval, C: torch.Tensor, method: str = "crown",
                      bounds: dict[str, Interval] | None = None,
                      record: dict[str, torch.Tensor] | None = None,
                      prior: dict[str, Interval] | None = None,
                      splits: dict[str, torch.Tensor] | None = None,
                      frozen: set[str] | None = None, grad: bool = False, deadline=None,
                      slopes: dict | None = None, cuts=None) -> torch.Tensor:
    """Lower bounds of C·y over the box; C (B, S, n_outputs) over the flattened first output.

    A `bounds` dict passed in is filled with every intermediate interval (callers keep them
    as `prior` for sub-problems of this box). `grad=True`: differentiable (certified training).
    `deadline`, `slopes`, `cuts`: see intermediate_bounds.
    """
    out = graph.outputs[0]
    shape = graph[out].shape
    with _grad_mode(grad):
        bounds = intermediate_bounds(graph, box, method, bounds, prior, splits, frozen, grad=grad, deadline=deadline,
                                     slopes=slopes, cuts=cuts)
        C = C.reshape(C.shape[0], C.shape[1], *shape)
        if method == "ibp":
            return concretize_lower(C, bounds[out])
        crown = backward_lower(graph, out, C, bounds, record=record, cuts=cuts)
        return torch.maximum(crown, concretize_lower(C, bounds[out]))
