"""Linear constraints on the input that a sub-problem's split decisions imply, and lower bounds
of linear functions over the input box cut by them.

A ReLU split "z_j >= 0" of a neuron whose pre-activation is an affine function of the input,
z_j = g·x + h, keeps only the part of the box where g·x + h >= 0. CROWN concretises its linear
bounds over the whole box; over the cut box they can be much tighter (eran mnist_relu_9_200:
one first-layer split made 14 of the next layer's 63 unstable neurons stable). Any multiplier
lam >= 0 gives a valid bound, min over the cut box of a·x >= min over the box of
(a - lam·g)·x - lam·h, so the multipliers are chosen by a cheap search, never trusted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bounds.graph.ir import Graph
from bounds.types import Interval

#: multiples of each cut's least-squares multiplier tried, one cut after the other
_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class InputCuts:
    """G[b, k]·x + h[b, k] >= 0 holds on every point of sub-problem b.

    G (B, K, n_inputs) over the flattened input, h (B, K); rows of zeros are padding."""

    G: torch.Tensor
    h: torch.Tensor


def affine_map(graph: Graph, name: str, bounds: dict[str, Interval]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(G (numel, n_inputs), h (numel,)) with value(name) = G·x + h on the whole input box of
    `bounds` (intervals of every value on one box, batch 1), when only ops that need no
    intervals (linear ones) lie between the input and `name`, so the map is the same on every
    box; else None. h is loosened by a rounding allowance, so G·x + h >= value(name): a cut
    never takes away more than the split itself does."""
    from bounds.crown import backward_lower, concretize_lower
    from bounds.ops import RULES

    for value in graph.ancestors(name):
        node = graph[value]
        if value == graph.inputs[0]:
            continue
        rule = RULES.get(node.op)
        if rule is None or rule.needs_bounds(node, [graph[n].is_constant for n in node.inputs]):
            return None
    box = bounds[graph.inputs[0]]
    shape = graph[name].shape
    numel = math.prod(shape)
    eye = torch.eye(numel, dtype=box.lower.dtype, device=box.lower.device).reshape(1, numel, *shape)
    low_record: dict[str, torch.Tensor] = {}
    up_record: dict[str, torch.Tensor] = {}
    low = backward_lower(graph, name, eye, bounds, record=low_record)[0]
    up = -backward_lower(graph, name, -eye, bounds, record=up_record)[0]
    A_low = low_record.get(graph.inputs[0])
    A_up = up_record.get(graph.inputs[0])
    if A_low is None or A_up is None or not torch.equal(A_low, -A_up):
        return None
    h_low = low - concretize_lower(A_low, box)[0]
    h_up = up + concretize_lower(A_up, box)[0]
    G = A_low.reshape(numel, -1)
    # rounding allowance: far above the map's own rounding in either precision
    tol = max(1e-9, 1e3 * torch.finfo(G.dtype).eps)
    magnitude = 1.0 + h_low.abs() + G.abs() @ torch.maximum(box.lower.abs(), box.upper.abs()).reshape(-1)
    if not bool(((h_low - h_up).abs() <= tol * magnitude).all()):
        return None
    return G, torch.maximum(h_low, h_up) + tol * magnitude


def cuts_from_splits(G: torch.Tensor, h: torch.Tensor, split: torch.Tensor, max_cuts: int = 8) -> InputCuts | None:
    """The cuts of the neurons split active (+1) in `split` (B, numel); at most `max_cuts`
    per sub-problem (any subset of valid cuts is valid). None when no sub-problem has one.

    Inactive splits (-1) cut the box too, but the next layers' bounds do not depend on an
    inactive neuron, and on eran mnist_relu_9_200 they tightened nothing."""
    active = split > 0
    count = int(active.sum(1).max()) if active.numel() else 0
    if count == 0:
        return None
    K = min(count, max_cuts)
    order = torch.argsort(active.to(torch.int8), dim=1, descending=True, stable=True)[:, :K]
    valid = active.gather(1, order)
    Gk = G[order] * valid.unsqueeze(-1).to(G.dtype)            # (B, K, n_inputs)
    hk = h[order] * valid.to(h.dtype)
    return InputCuts(Gk, hk)


def concretize_with_cuts(A: torch.Tensor, box: Interval, cuts: InputCuts) -> torch.Tensor:
    """A lower bound of min A·x over the box cut by `cuts`; A (B, S, *input_shape) -> (B, S).

    Never below the plain box bound (lam = 0 is always a candidate). Boxes with infinite
    ends fall back to the plain bound."""
    from bounds.crown import concretize_lower

    if not bool(torch.isfinite(box.lower).all() and torch.isfinite(box.upper).all()):
        return concretize_lower(A, box)
    B, S = A.shape[:2]
    a = A.reshape(B, S, -1)
    radius = box.radius.reshape(box.lower.shape[0], 1, -1).to(a.dtype)

    def over_box(coeff: torch.Tensor) -> torch.Tensor:
        return concretize_lower(coeff.reshape(A.shape), box)

    best = over_box(a)
    offset = torch.zeros_like(best)
    G, h = cuts.G.to(a.dtype), cuts.h.to(a.dtype)
    for k in range(G.shape[1]):
        g = G[:, k].unsqueeze(1)                                  # (B, 1, n)
        hk = h[:, k].unsqueeze(1)                                 # (B, 1)
        norm = (g * g * radius).sum(-1)
        lam0 = ((a * g * radius).sum(-1) / norm.clamp(min=torch.finfo(a.dtype).tiny)).clamp(min=0)
        lam0 = torch.where(norm > 0, lam0, torch.zeros_like(lam0))
        chosen = torch.zeros_like(best)
        for m in _MULTIPLES:
            lam = m * lam0
            value = over_box(a - lam.unsqueeze(-1) * g) + offset - lam * hk
            better = value > best
            best = torch.where(better, value, best)
            chosen = torch.where(better, lam, chosen)
        a = a - chosen.unsqueeze(-1) * g
        offset = offset - chosen * hk
    return best
