"""alpha-CROWN: optimise the free parts of the relaxations (e.g. ReLU lower slopes).

Every iteration's bound is a valid CROWN bound for the current parameters, so keeping the
elementwise best over iterations is sound.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bounds.crown import _refine_mask, backward_lower, concretize_lower, intermediate_bounds, pre_activation_nodes
from bounds.graph.ir import Graph
from bounds.ops import RULES
from bounds.ops.base import ActivationRule
from bounds.types import Interval


@dataclass(frozen=True)
class AlphaOptions:
    iterations: int = 20
    lr: float = 0.1
    lr_decay: float = 0.98
    #: stop early once every row is proven (lower bound above this)
    stop_above: float | None = 0.0
    #: optimise_all: weight of the intermediate bounds' own tightness in the objective. Each
    #: intermediate neuron's bound has its own slopes, which the output bound alone moves
    #: only as far as that neuron matters to it; pulling on every bound directly tightens
    #: the intervals that all later relaxations are built on.
    intermediate_weight: float = 1.0


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
               record: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The CROWN lower bound for given alphas and betas (as returned by optimise_lower)."""
    acts = {k: v for k, v in params.items() if not k.startswith("beta:")}
    betas = {k[5:]: v for k, v in params.items() if k.startswith("beta:")}
    extra = None
    if betas:
        extra = {k: t.reshape(t.shape[0], t.shape[1], *graph[k].shape)
                 for k, t in _beta_terms(betas, splits or {}).items()}
    return backward_lower(graph, target, C, bounds, acts, record=record, extra=extra)


def optimise_lower(graph: Graph, target: str, C: torch.Tensor, bounds: dict[str, Interval],
                   options: AlphaOptions = AlphaOptions(), alphas: dict[str, torch.Tensor] | None = None,
                   deadline=None, splits: dict[str, torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Best lower bound of C·value(target) over the iterations, and the best parameters.

    With `splits` (pre-activation -> (B, numel) signs), a multiplier beta >= 0 per split
    neuron and row is optimised too (beta-CROWN): it makes the bound respect the splits.
    Parameters come back keyed by node name, betas under "beta:" + name.
    """
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

    def evaluate(ps: dict[str, torch.Tensor]) -> torch.Tensor:
        return bound_with(graph, target, C, bounds, ps, splits)

    params = {k: v.detach().clone().requires_grad_(True) for k, v in alphas.items()}
    opt = torch.optim.Adam(params.values(), lr=options.lr)
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
                if name.startswith("beta:"):
                    v.clamp_(min=0)
                else:
                    v.copy_(RULES[graph[name].op].project_alpha(graph[name], v))
    return best, best_params


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
                 deadline=None, final_alphas: dict[str, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, dict[str, Interval]]:
    """alpha-CROWN with every intermediate bound optimised too (each pre-activation gets its
    own slopes), the final bound as the objective.

    Returns the best lower bounds of C·y (B, S) and the best interval of every value. Every
    iteration's bounds are valid, so the elementwise best over iterations is kept.
    A `final_alphas` dict passed in receives the output bound's slopes (B, S, *shape) of the
    best iteration per row, to warm-start sub-problems of the same boxes.
    """
    out = graph.outputs[0]
    C = C.reshape(C.shape[0], C.shape[1], *graph[out].shape)
    with torch.no_grad():
        bounds = intermediate_bounds(graph, box, "crown")
    best = {k: Interval(v.lower.clone(), v.upper.clone()) for k, v in bounds.items()}
    targets = [n.name for n in graph.nodes if n.name in pre_activation_nodes(graph) and n.op != "Input"]
    users = graph.consumers()
    plans = []  # (name, flat rows (k,), C_p (B, 2k, *shape))
    B = max(v.lower.shape[0] for v in bounds.values())
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
    params: dict[tuple[str, str], torch.Tensor] = {}
    for name, _, C_p in plans + [(out, None, C)]:
        upstream = graph.ancestors(name)
        for act, init in init_alphas(graph, bounds, C_p.shape[1]).items():
            if act in upstream and act != name:
                params[(name, act)] = init.expand(B, *init.shape[1:]).clone().requires_grad_(True)
    if not params:
        with torch.no_grad():
            return backward_lower(graph, out, C, bounds), bounds
    opt = torch.optim.Adam(params.values(), lr=options.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, options.lr_decay)
    best_out = None
    out_alphas = {act: p.detach().clone() for (t, act), p in params.items() if t == out}
    for _ in range(max(1, options.iterations)):
        with torch.enable_grad():
            cur = dict(best)
            pull = 0.0
            for name, rows, C_p in plans:
                alphas = {act: p for (t, act), p in params.items() if t == name}
                lb = backward_lower(graph, name, C_p, cur, alphas)
                if options.intermediate_weight and lb.requires_grad:
                    pull = pull + lb.sum()
                k = len(rows)
                flat_lo = best[name].lower.reshape(B, -1).clone()
                flat_up = best[name].upper.reshape(B, -1).clone()
                flat_lo[:, rows] = torch.maximum(flat_lo[:, rows], lb[:, :k])
                flat_up[:, rows] = torch.minimum(flat_up[:, rows], -lb[:, k:])
                shape = (B, *best[name].lower.shape[1:])
                cur[name] = Interval(flat_lo.reshape(shape), flat_up.reshape(shape))
            alphas = {act: p for (t, act), p in params.items() if t == out}
            lb_out = backward_lower(graph, out, C, cur, alphas)
        with torch.no_grad():
            for name, _, _ in plans:
                best[name] = best[name].intersect(Interval(cur[name].lower.detach(), cur[name].upper.detach()))
            current = lb_out.detach()
            improved = torch.ones_like(current, dtype=torch.bool) if best_out is None else current > best_out
            for act, kept in out_alphas.items():
                mask = improved.reshape(*improved.shape, *([1] * (kept.dim() - 2)))
                out_alphas[act] = torch.where(mask, params[(out, act)].detach(), kept)
            best_out = current if best_out is None else torch.maximum(best_out, current)
        if _finished(best_out, options, deadline):
            break
        _ascend(opt, sched, lb_out.sum() + options.intermediate_weight * pull)
        with torch.no_grad():
            for (_, act), v in params.items():
                v.copy_(RULES[graph[act].op].project_alpha(graph[act], v))
    with torch.no_grad():
        final = backward_lower(graph, out, C, best)
        best_out = torch.maximum(best_out, torch.maximum(final, concretize_lower(C, best[out])))
    if final_alphas is not None:
        final_alphas.update(out_alphas)
    return best_out, best
