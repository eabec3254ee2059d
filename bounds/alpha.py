"""alpha-CROWN: optimise the free parts of the relaxations (e.g. ReLU lower slopes).

Every iteration's bound is a valid CROWN bound for the current parameters, so keeping the
elementwise best over iterations is sound.

When the bounds are float64 (the CPU default) the gradient search runs in float32, about
twice as fast; the parameters it finds are then evaluated once more in float64 and only
that evaluation is reported. The search precision decides how good the slopes are, never
whether the reported bound is sound.
"""
from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass

import torch

from bounds.crown import (_refine_mask, backward_lower, concretize_lower, intermediate_bounds, pre_activation_nodes,
                          prepare_relaxations)
from bounds.graph.ir import Graph, graph_to
from bounds.ops import RULES
from bounds.ops.base import ActivationRule
from bounds.receptive import neuron_rows_lower
from bounds.types import CentredBox, Interval, single_if_repeated


@dataclass(frozen=True)
class AlphaOptions:
    iterations: int = 20
    lr: float = 0.1
    #: optimise_all: step size of the ReLU / LeakyReLU slopes (None: `lr`). They take larger
    #: steps well: 20 iterations of benchmarks/compare_alpha_crown.py with the passes below
    #: starting from the given intervals: 0.5 gives mnist 256x6 -395.2, eran ReLU 9x200 0.405,
    #: oval21 deep -0.1032 against -391.0, 0.402, -0.1045 with 0.3 (and -1.694 / -2.447 /
    #: 0.351 on 256x2 / 256x4 / 9x200 with 0.1, on the older passes), while sigmoid / tanh
    #: tangent points do best at 0.1 (eran sigmoid 6x200: -0.240 vs 0.110)
    relu_lr: float | None = 0.5
    lr_decay: float = 0.98
    #: stop early once every row is proven (lower bound above this)
    stop_above: float | None = 0.0
    #: optimise_all: weight of the intermediate bounds' own tightness in the objective. Each
    #: intermediate neuron's bound has its own slopes, which the output bound alone moves
    #: only as far as that neuron matters to it; pulling on every bound directly tightens
    #: the intervals that all later relaxations are built on.
    intermediate_weight: float = 1.0
    #: search in float32 when the bounds are float64 (see the module docstring)
    search_float32: bool = True
    #: optimise_all with a deadline: optimise the intermediate bounds only when the time left
    #: allows this many passes over them (else only the output bound's slopes are searched)
    min_full_passes: int = 8
    #: optimise_all: stop once the summed output bound rose by less than stall_tol * (1 + |sum|)
    #: over the last stall_window iterations (the slopes have settled; branching does better).
    #: 5 stopped oval21 wide / deep at -0.4537 / -0.1047 where 10 goes on to -0.4533 / -0.1032
    stall_window: int = 10
    stall_tol: float = 5e-4
    #: optimise_all: each search iteration bounds the intermediate values starting from the
    #: best intervals so far (True) or from the intervals it was given (False). The best are
    #: kept either way and the final pass uses them; but a pass built on them passes no
    #: gradient to a neuron's slopes while its bound is worse than its best, so the search of
    #: deep nets stalls (eran ReLU 9x200, 20 iterations: 0.385 with True, 0.405 with False)
    search_on_best: bool = False


_SEARCH_GRAPHS: "weakref.WeakKeyDictionary[Graph, Graph]" = weakref.WeakKeyDictionary()


def search_graph(graph: Graph) -> Graph:
    """The float32 copy of a float64 graph, made once per graph."""
    copy = _SEARCH_GRAPHS.get(graph)
    if copy is None:
        copy = _SEARCH_GRAPHS[graph] = graph_to(graph, dtype=torch.float32)
    return copy


def graph_dtype(graph: Graph) -> torch.dtype | None:
    """The floating dtype of the graph's constants (None when it has none)."""
    for node in graph.nodes:
        if node.is_constant and node.value.is_floating_point():
            return node.value.dtype
    return None


def _searches_low(C: torch.Tensor, options: AlphaOptions) -> bool:
    return options.search_float32 and C.dtype == torch.float64


def _as(dtype: torch.dtype, bounds: dict[str, Interval]) -> dict[str, Interval]:
    return {k: Interval(_cast(v.lower, dtype), _cast(v.upper, dtype)) for k, v in bounds.items()}


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in dtype; one entry expanded along the batch (the one box of many sub-problems)
    stays an expanded view, not a copy per sub-problem."""
    single = single_if_repeated(t)
    return single.to(dtype).expand_as(t) if single is not t else t.to(dtype)


def exact_params(params: dict, fallback: dict, dtype: torch.dtype) -> dict:
    """Search results in the bound precision; a parameter the float32 search spoiled (NaN,
    e.g. from a constant float32 cannot hold) falls back to its starting value."""
    out = {}
    for k, v in params.items():
        v = v.detach().to(dtype)
        bad = torch.isnan(v)
        out[k] = torch.where(bad, fallback[k].detach().to(dtype).expand_as(v), v) if bool(bad.any()) else v
    return out


def init_alphas(graph: Graph, bounds: dict[str, Interval], rows: int) -> dict[str, torch.Tensor]:
    """One parameter tensor (B, rows, *shape) per optimisable activation, at the CROWN choice."""
    alphas = {}
    for node in graph.nodes:
        rule = RULES.get(node.op)
        init = None
        if isinstance(rule, ActivationRule) and node.inputs[0] in bounds:
            init = rule.init_alpha(node, bounds[node.inputs[0]])
        elif hasattr(rule, "init_alpha_for"):  # multi-input rules (bounds.ops.bilinear)
            is_const = [graph[n].is_constant for n in node.inputs]
            if all(c or n in bounds for n, c in zip(node.inputs, is_const)):
                xs = [Interval.point(graph[n].value.unsqueeze(0)) if c else bounds[n]
                      for n, c in zip(node.inputs, is_const)]
                init = rule.init_alpha_for(node, xs, is_const, node.shape)
        if init is not None:
            alphas[node.name] = init.unsqueeze(1).expand(init.shape[0], rows, *init.shape[1:]).clone()
    return alphas


def _beta_terms(betas: dict[str, torch.Tensor], splits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Lagrangian coefficients -beta * sign on split pre-activations.

    On a sub-problem where sign_j * x_j >= 0 holds, C·y >= C·y - beta_j * sign_j * x_j for any
    beta_j >= 0, so lower-bounding the right-hand side is sound and beta can be optimised.
    """
    out = {}
    for name, beta in betas.items():
        s = splits[name].to(beta.dtype).unsqueeze(1)          # (B, 1, numel)
        out[name] = (-beta * s).reshape(beta.shape[0], beta.shape[1], *beta.shape[2:])
    return out


def bound_with(graph: Graph, target: str, C: torch.Tensor, bounds: dict[str, Interval],
               params: dict[str, torch.Tensor], splits: dict[str, torch.Tensor] | None = None,
               record: dict[str, torch.Tensor] | None = None, prepared: dict | None = None) -> torch.Tensor:
    """The CROWN lower bound for given alphas and betas (as returned by optimise_lower);
    `prepared`: see crown.backward_lower."""
    acts = {k: v for k, v in params.items() if not k.startswith("beta:")}
    betas = {k[5:]: v for k, v in params.items() if k.startswith("beta:")}
    extra = None
    if betas:
        extra = {k: t.reshape(t.shape[0], t.shape[1], *graph[k].shape)
                 for k, t in _beta_terms(betas, splits or {}).items()}
    return backward_lower(graph, target, C, bounds, acts, record=record, extra=extra, prepared=prepared)


def optimise_lower(graph: Graph, target: str, C: torch.Tensor, bounds: dict[str, Interval],
                   options: AlphaOptions = AlphaOptions(), alphas: dict[str, torch.Tensor] | None = None,
                   deadline=None, splits: dict[str, torch.Tensor] | None = None,
                   record: dict[str, torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Best lower bound of C·value(target) over the iterations, and the best parameters.

    With `splits` (pre-activation -> (B, numel) signs), a multiplier beta >= 0 per split
    neuron and row is optimised too (beta-CROWN): it makes the bound respect the splits.
    Parameters come back keyed by node name, betas under "beta:" + name. A `record` dict
    receives the coefficients of the returned bound (see crown.backward_lower).
    """
    if alphas is not None:
        # a warm start may come from anywhere (a parent's rounded slopes, a caller): the first
        # evaluation counts as a bound, so it is projected into the sound set first
        alphas = {k: _projected(graph, k, v) for k, v in alphas.items()}
    if _searches_low(C, options):
        start = alphas if alphas is not None else init_alphas(graph, bounds, C.shape[1])
        _, found = optimise_lower(search_graph(graph), target, C.float(), _as(torch.float32, bounds), options,
                                  {k: v.float() for k, v in start.items()}, deadline, splits)
        found = exact_params(found, {**start, **{k: torch.zeros_like(v) for k, v in found.items()
                                                  if k not in start}}, C.dtype)
        with torch.no_grad():
            return bound_with(graph, target, C, bounds, found, splits, record=record), found
    if alphas is None:
        alphas = init_alphas(graph, bounds, C.shape[1])
    alphas = dict(alphas)
    for name, s in (splits or {}).items():
        if bool((s != 0).any()) and f"beta:{name}" not in alphas:
            B = max(s.shape[0], C.shape[0])
            alphas[f"beta:{name}"] = torch.zeros(B, C.shape[1], s.shape[1], dtype=C.dtype, device=C.device)
    if not alphas:
        with torch.no_grad():
            return backward_lower(graph, target, C, bounds), alphas

    # the relaxations' parts that the parameters do not change, and the input box's centre
    # and radius, derived once for all steps
    prepared = prepare_relaxations(graph, bounds, [k for k in alphas if not k.startswith("beta:")])
    if graph.inputs[0] in bounds:
        bounds = {**bounds, graph.inputs[0]: CentredBox.of(bounds[graph.inputs[0]])}

    def evaluate(ps: dict[str, torch.Tensor]) -> torch.Tensor:
        return bound_with(graph, target, C, bounds, ps, splits, prepared=prepared)

    params = {k: v.detach().clone().requires_grad_(True) for k, v in alphas.items()}
    opt = adam(params.values(), options.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, options.lr_decay)
    best = None
    best_params = {k: v.detach().clone() for k, v in params.items()}
    for _ in range(max(1, options.iterations)):
        with torch.enable_grad():
            lb = evaluate(params)
        current = lb.detach()
        if best is None:
            best = current.clone()
        improved = current > best
        best = torch.where(improved, current, best)
        for k, v in params.items():
            mask = improved.reshape(*improved.shape, *([1] * (v.dim() - 2)))
            best_params[k] = torch.where(mask, v.detach(), best_params[k])
        if _finished(best, options, deadline):
            break
        _ascend(opt, sched, lb)
        with torch.no_grad():
            for name, v in params.items():
                v.copy_(_projected(graph, name, v))
    if record is not None:
        with torch.no_grad():
            bound_with(graph, target, C, bounds, best_params, splits, record=record, prepared=prepared)
    return best, best_params


def _projected(graph: Graph, name: str, value: torch.Tensor) -> torch.Tensor:
    """A parameter mapped into the set where the bound stays sound (multipliers >= 0)."""
    if name.startswith("beta:"):
        return value.clamp(min=0)
    return RULES[graph[name].op].project_alpha(graph[name], value)


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam over the slopes / multipliers, fused into one kernel per step where torch has
    that kernel for the tensors' device and dtype (CPU, 2 threads: a step over 4.7 million
    parameters 220 -> 8 ms, while the loop over elementwise ops is memory-bound). The update
    is the same Adam; only the rounding of the steps may differ."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def _stalled(history: list[float], options: AlphaOptions) -> bool:
    w = options.stall_window
    if w <= 0 or len(history) <= w or not all(map(math.isfinite, history[-w - 1:])):
        return False
    return history[-1] - history[-w - 1] < options.stall_tol * (1 + abs(history[-1]))


def _finished(best: torch.Tensor, options: AlphaOptions, deadline) -> bool:
    stop = options.stop_above is not None and bool((best > options.stop_above).all())
    return stop or (deadline is not None and deadline.expired())


def _ascend(opt: torch.optim.Optimizer, sched, lower: torch.Tensor) -> None:
    """One gradient step that raises the sum of the lower bounds."""
    if not lower.requires_grad:
        return  # no slope reaches the bound (e.g. cut by an IBP-only op): nothing to optimise
    opt.zero_grad()
    (-lower.sum()).backward()
    opt.step()
    sched.step()


def alpha_spec_lower_bounds(graph: Graph, box: Interval, C: torch.Tensor, options: AlphaOptions = AlphaOptions(),
                            bounds: dict[str, Interval] | None = None, deadline=None) -> torch.Tensor:
    """Like crown.spec_lower_bounds, with the output bound's relaxations optimised."""
    out = graph.outputs[0]
    shape = graph[out].shape
    bounds = intermediate_bounds(graph, box, "crown", bounds)
    C = C.reshape(C.shape[0], C.shape[1], *shape)
    lower, _ = optimise_lower(graph, out, C, bounds, options, deadline=deadline)
    with torch.no_grad():
        return torch.maximum(lower, concretize_lower(C, bounds[out]))


def optimise_all(graph: Graph, box: Interval, C: torch.Tensor, options: AlphaOptions = AlphaOptions(),
                 deadline=None, final_alphas: dict[str, torch.Tensor] | None = None,
                 initial: tuple[dict[str, Interval], float] | None = None,
                 intermediate_slopes: dict[str, "IntermediateSlopes"] | None = None
                 ) -> tuple[torch.Tensor, dict[str, Interval]]:
    """alpha-CROWN with every intermediate bound optimised too (each pre-activation gets its
    own slopes), the final bound as the objective.

    Returns the best lower bounds of C·y (B, S) and the best interval of every value. Every
    iteration's bounds are valid, so the elementwise best over iterations is kept.
    A `final_alphas` dict passed in receives the output bound's slopes (B, S, *shape) of the
    best iteration per row, to warm-start sub-problems of the same boxes.
    `initial`: the CROWN intervals of every value on these boxes (or boxes containing them)
    and the seconds they took, when the caller has them already.
    """
    out = graph.outputs[0]
    C = C.reshape(C.shape[0], C.shape[1], *graph[out].shape)
    if initial is None:
        start = time.monotonic()
        with torch.no_grad():
            bounds = intermediate_bounds(graph, box, "crown")
        initial = (bounds, time.monotonic() - start)
    bounds, crown_seconds = initial
    plans = _plans(graph, bounds, C)
    # a pass over the intermediate bounds costs about what CROWN took; when the deadline
    # leaves too few of them, the slopes of the output bound alone are searched
    if deadline is not None and crown_seconds * options.min_full_passes > deadline.remaining():
        plans = []
    B = max(v.lower.shape[0] for v in bounds.values())
    params: dict[tuple[str, str], torch.Tensor] = {}
    for name, _, C_p in plans + [(out, None, C)]:
        upstream = graph.ancestors(name)
        for act, init in init_alphas(graph, bounds, C_p.shape[1]).items():
            if act in upstream and act != name:
                params[(name, act)] = init.expand(B, *init.shape[1:]).clone()
    if not params:
        with torch.no_grad():
            return backward_lower(graph, out, C, bounds), bounds
    if _searches_low(C, options):
        low_plans = [(name, rows, C_p.float()) for name, rows, C_p in plans]
        # the float32 search's intervals are not kept: only the final float64 pass over the
        # intermediate bounds makes them count, so the search stops early enough for it (cut
        # off, the output bound would be re-evaluated over the CROWN intervals alone: eran
        # sigmoid 6x200 idx 1211 then stayed open at a 60 s cap where the pass proves it)
        search_deadline = _before(deadline, _FINAL_PASS_COST * crown_seconds) if plans else deadline
        _, kept, _ = _search_all(search_graph(graph), _as(torch.float32, bounds), low_plans, C.float(),
                                 {k: v.float() for k, v in params.items()}, options, search_deadline)
        kept = exact_params(kept, params, C.dtype)
        best, best_out = bounds, None
    else:
        best, kept, best_out = _search_all(graph, bounds, plans, C, params, options, deadline)
    with torch.no_grad():
        # each target's best parameters per row, together in one pass: often tighter than
        # any single iteration (and, after a float32 search, the only bound reported); past
        # the deadline only the output bound is re-evaluated (the intermediate passes cost most)
        late = deadline is not None and deadline.expired()
        combined, lbs = _one_pass(graph, best, [] if late else plans, C, kept)
        best = {k: best[k].intersect(v) if k in best else v for k, v in combined.items()}
        best_out = lbs[out] if best_out is None else torch.maximum(best_out, lbs[out])
        final = backward_lower(graph, out, C, best)
        best_out = torch.maximum(best_out, torch.maximum(final, concretize_lower(C, best[out])))
    if final_alphas is not None:
        final_alphas.update({act: v for (t, act), v in kept.items() if t == out})
    if intermediate_slopes is not None:
        for name, rows, _ in plans:
            slopes = {act: v for (t, act), v in kept.items() if t == name and graph[act].op in _ANY_INTERVAL}
            if slopes:
                intermediate_slopes[name] = IntermediateSlopes(rows, slopes)
    return best_out, best


#: activations whose projected slopes stay sound on every sub-interval of the one searched on
_ANY_INTERVAL = frozenset({"Relu", "LeakyRelu"})


@dataclass(frozen=True)
class IntermediateSlopes:
    """The optimised slopes of one pre-activation's bound, as optimise_all found them: its
    neurons `rows` (k,) and, per activation upstream, parameters (B, 2k, *shape) whose first
    k rows belong to the lower bounds of those neurons and the last k to the upper bounds.

    Only the slopes of activations in _ANY_INTERVAL are kept: a ReLU's lower line may have
    any slope in [0, 1] on any interval, so sub-problems (narrower intervals) may bound these
    neurons with them instead of CROWN's default choice."""
    rows: torch.Tensor
    params: dict[str, torch.Tensor]

    def take(self, cases: torch.Tensor) -> "IntermediateSlopes":
        """The slopes of the given cases (parameters with batch 1 are shared by all)."""
        return IntermediateSlopes(self.rows, {act: v if v.shape[0] == 1 else v[cases]
                                              for act, v in self.params.items()})

    def for_neurons(self, idx: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Parameters for the rows [lower of idx..., upper of idx...] of a bound of the
        neurons idx (B, k) (flat indices, per sub-problem), or None when some of them were
        not bounded by the search (then CROWN's choice is used for all)."""
        k = len(self.rows)
        numel = int(idx.max()) + 1 if idx.numel() else 0
        position = torch.full((max(numel, int(self.rows.max()) + 1),), -1, dtype=torch.long, device=idx.device)
        position[self.rows.to(idx.device)] = torch.arange(k, device=idx.device)
        pos = position[idx]
        if bool((pos < 0).any()):
            return None
        out = {}
        for act, v in self.params.items():
            if v.shape[0] == 1:
                v0 = v[0]
                out[act] = torch.cat([v0[pos], v0[pos + k]], dim=1)
            else:
                batch = torch.arange(v.shape[0], device=idx.device).unsqueeze(1)
                out[act] = torch.cat([v[batch, pos], v[batch, pos + k]], dim=1)
        return out


#: time kept for the final float64 pass over every intermediate bound, in units of the CROWN
#: pass that produced the starting intervals (the same passes with per-row slopes; a margin,
#: not a measured ratio: eran sigmoid 6x200 keeps 0.3 s of its 15 s and the pass fits)
_FINAL_PASS_COST = 3.0


class _Until:
    """A deadline at a fixed monotonic time (expired / remaining, as callers here use)."""

    def __init__(self, end: float) -> None:
        self.end = end

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())


def _before(deadline, seconds: float):
    """`deadline` moved `seconds` earlier (unchanged when it cannot say what is left)."""
    if deadline is None or seconds <= 0 or not hasattr(deadline, "remaining"):
        return deadline
    return _Until(time.monotonic() + max(0.0, deadline.remaining() - seconds))


def _plans(graph: Graph, bounds: dict[str, Interval], C: torch.Tensor) -> list:
    """(name, flat rows (k,), C_p (B, 2k, *shape)) for every pre-activation with neurons
    whose bounds matter: both sides of each such neuron become rows of its own bound."""
    targets = [n.name for n in graph.nodes if n.name in pre_activation_nodes(graph) and n.op != "Input"]
    users = graph.consumers()
    B = max(v.lower.shape[0] for v in bounds.values())
    plans = []
    for name in targets:
        mask = _refine_mask(bounds[name], users[name]).any(0)
        rows = mask.nonzero().flatten()
        if len(rows) == 0:
            continue
        numel = mask.numel()
        eye = torch.zeros(len(rows), numel, dtype=C.dtype, device=C.device)
        eye[torch.arange(len(rows), device=C.device), rows] = 1.0
        C_p = torch.cat([eye, -eye]).reshape(1, 2 * len(rows), *graph[name].shape).expand(B, -1, *graph[name].shape)
        plans.append((name, rows, C_p))
    return plans


def _one_pass(graph: Graph, base: dict[str, Interval], plans: list, C: torch.Tensor,
              params: dict[tuple[str, str], torch.Tensor]) -> tuple[dict[str, Interval], dict[str, torch.Tensor]]:
    """Bound every planned pre-activation in order (each tightening `base`, later ones built
    on earlier ones), then the output: the intervals and each target's lower bounds."""
    out = graph.outputs[0]
    cur = dict(base)
    lbs = {}
    for name, rows, C_p in plans:
        alphas = {act: p for (t, act), p in params.items() if t == name}
        lb = neuron_rows_lower(graph, name, rows, cur, alphas, batch=C_p.shape[0])
        if lb is None:
            lb = backward_lower(graph, name, C_p, cur, alphas)
        lbs[name] = lb
        k = len(rows)
        B = lb.shape[0]
        flat_lo = base[name].lower.reshape(base[name].lower.shape[0], -1).expand(B, -1).clone()
        flat_up = base[name].upper.reshape(base[name].upper.shape[0], -1).expand(B, -1).clone()
        flat_lo[:, rows] = torch.maximum(flat_lo[:, rows], lb[:, :k])
        flat_up[:, rows] = torch.minimum(flat_up[:, rows], -lb[:, k:])
        shape = (B, *base[name].lower.shape[1:])
        cur[name] = Interval(flat_lo.reshape(shape), flat_up.reshape(shape))
    alphas = {act: p for (t, act), p in params.items() if t == out}
    lbs[out] = backward_lower(graph, out, C, cur, alphas)
    return cur, lbs


def _param_groups(graph: Graph, params: dict[tuple[str, str], torch.Tensor], options: AlphaOptions) -> list[dict]:
    """Adam parameter groups: ReLU-like slopes at `relu_lr`, every other parameter at `lr`."""
    relu = [v for (_, act), v in params.items() if graph[act].op in ("Relu", "LeakyRelu")]
    other = [v for (_, act), v in params.items() if graph[act].op not in ("Relu", "LeakyRelu")]
    lr_relu = options.lr if options.relu_lr is None else options.relu_lr
    return [g for g in ({"params": relu, "lr": lr_relu}, {"params": other, "lr": options.lr}) if g["params"]]


def _search_all(graph: Graph, bounds: dict[str, Interval], plans: list, C: torch.Tensor,
                start: dict[tuple[str, str], torch.Tensor], options: AlphaOptions, deadline):
    """The gradient search of optimise_all: the elementwise best intervals, the parameters of
    each target's best iteration per row, and the best output bounds."""
    out = graph.outputs[0]
    params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    kept = {k: v.detach().clone() for k, v in params.items()}
    best = {k: Interval(v.lower.clone(), v.upper.clone()) for k, v in bounds.items()}
    best_lb: dict[str, torch.Tensor] = {}
    history: list[float] = []
    opt = adam(_param_groups(graph, params, options), options.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, options.lr_decay)
    for _ in range(max(1, options.iterations)):
        with torch.enable_grad():
            cur, lbs = _one_pass(graph, best if options.search_on_best else bounds, plans, C, params)
        with torch.no_grad():
            for name, _, _ in plans:
                best[name] = best[name].intersect(Interval(cur[name].lower.detach(), cur[name].upper.detach()))
            for target, lb in lbs.items():
                current = lb.detach()
                improved = (torch.ones_like(current, dtype=torch.bool) if target not in best_lb
                            else current > best_lb[target])
                best_lb[target] = current if target not in best_lb else torch.maximum(best_lb[target], current)
                for (t, act), kept_v in kept.items():
                    if t == target:
                        mask = improved.reshape(*improved.shape, *([1] * (kept_v.dim() - 2)))
                        kept[(t, act)] = torch.where(mask, params[(t, act)].detach(), kept_v)
        history.append(float(best_lb[out].sum()))
        if _finished(best_lb[out], options, deadline) or _stalled(history, options):
            break
        pull = sum((lbs[name].sum() for name, _, _ in plans if lbs[name].requires_grad), torch.zeros(()))
        _ascend(opt, sched, lbs[out].sum() + options.intermediate_weight * pull)
        with torch.no_grad():
            for (_, act), v in params.items():
                v.copy_(RULES[graph[act].op].project_alpha(graph[act], v))
    return best, kept, best_lb[out]
