"""Softmax with a relaxation built on differences of its inputs.

Write s_i = 1 / E_i with E_i = sum_j exp(x_j - x_i) (the j = i term is exactly 1). Going
through the differences d_ij = x_j - x_i, whose ranges [l_j - u_i, u_j - l_i] the box gives
directly, keeps the correlation between numerator and denominator that an exp / sum /
reciprocal composition loses:

* IBP: s_i in [1 / sum_j exp(u_j - l_i), 1 / sum_j exp(l_j - u_i)], computed by logsumexp,
  always within [0, 1] and exact on point boxes.
* CROWN: exp(d) is convex, so on [dl, du] it lies below its chord and above its tangent at
  the midpoint; summing gives affine bounds L(x) <= E_i(x) <= U(x) over the box. 1/E is
  convex and decreasing for E > 0:
      lower: 1/E >= 2/p - E/p^2 (tangent at p > 0) >= 2/p - U(x)/p^2
      upper: 1/E <= (E_lo + E_hi - E) / (E_lo E_hi) (chord on [E_lo, E_hi]) <= that with L(x)
  The tangent point p is U at the box centre. Each s_i gets one dense affine bound over the
  n entries of its softmax group: (n x n) weights per group, formed by batched products.

Where some quantity is not finite (huge logits), the affected rows fall back to the IBP
constants with zero weights, which is always sound.

ONNX semantics: opset >= 13 normalises along `axis` (default -1); before that the input is
coerced to 2-D at `axis` (default 1) and normalised over everything behind it.
"""
from __future__ import annotations

import math
import weakref

import torch

from bounds.graph.ir import Node
from bounds.ops.base import OpRule, flat_sum
from bounds.types import Interval, Relaxation


def _layout(node: Node, rank: int) -> tuple[bool, int]:
    """(per_axis, axis as a sample dimension index in 0..rank-1)."""
    per_axis = node.opset == 0 or node.opset >= 13
    axis = int(node.attrs.get("axis", -1 if per_axis else 1))
    if axis < 0:
        axis += rank
    if not 0 <= axis < rank:
        raise ValueError(f"Softmax axis {node.attrs.get('axis')} out of range for rank {rank}")
    return per_axis, axis


def to_groups(node: Node, t: torch.Tensor, lead: int) -> torch.Tensor:
    """(*lead dims, *shape) -> (*lead dims, G, n): one row per softmax group."""
    shape = t.shape[lead:]
    per_axis, axis = _layout(node, len(shape))
    if per_axis:
        t = t.movedim(lead + axis, -1)
        return t.reshape(*t.shape[:lead], -1, shape[axis])
    return t.reshape(*t.shape[:lead], -1, math.prod(shape[axis:]))


def from_groups(node: Node, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of to_groups for a value of sample shape `shape`."""
    lead = t.dim() - 2
    per_axis, axis = _layout(node, len(shape))
    if per_axis:
        moved = [*shape[:axis], *shape[axis + 1:], shape[axis]]
        return t.reshape(*t.shape[:lead], *moved).movedim(-1, lead + axis)
    return t.reshape(*t.shape[:lead], *shape)


def _diff_ranges(low: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranges of d_ij = x_j - x_i: (..., n, n) with [i, j]; the diagonal is exactly 0."""
    dl = low.unsqueeze(-2) - up.unsqueeze(-1)
    du = up.unsqueeze(-2) - low.unsqueeze(-1)
    eye = torch.eye(low.shape[-1], dtype=torch.bool, device=low.device)
    return dl.masked_fill(eye, 0.0), du.masked_fill(eye, 0.0)


def softmax_interval(low: torch.Tensor, up: torch.Tensor) -> Interval:
    """Difference-form IBP over the last dimension."""
    dl, du = _diff_ranges(low, up)
    return Interval(torch.exp(-torch.logsumexp(du, -1)), torch.exp(-torch.logsumexp(dl, -1)))


def softmax_relaxation(low: torch.Tensor, up: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affine bounds of softmax over the last dim of (..., n) intervals.

    Returns (WL, bL, WU, bU): WL (..., n, n) with s_i >= sum_j WL[i, j] x_j + bL[i], and
    likewise s_i <= WU x + bU, valid on the box.
    """
    dl, du = _diff_ranges(low, up)
    width = du - dl
    e_dl = torch.exp(dl)
    # chord slope of exp on [dl, du], via expm1 so that narrow ranges keep their precision
    narrow = width < 1e-6
    k = torch.where(narrow, e_dl, e_dl * torch.expm1(width) / torch.where(narrow, torch.ones_like(width), width))
    upper_const = flat_last(e_dl - k * dl)                 # U(x) = sum_j k_ij d_ij + this
    t = (dl + du) / 2                                      # tangent points, 0 on the diagonal
    g = torch.exp(t)
    lower_const = flat_last(g * (1 - t))                   # L(x) = sum_j g_ij d_ij + this
    e_lo, e_hi = torch.exp(torch.logsumexp(dl, -1)), torch.exp(torch.logsumexp(du, -1))
    centre = (low + up) / 2
    dc = centre.unsqueeze(-2) - centre.unsqueeze(-1)
    p = flat_last(k * dc) + upper_const                    # U at the centre, >= E there >= 1
    # lower: 2/p - U(x)/p^2
    WL = -_diff_weights(k) / (p * p).unsqueeze(-1)
    bL = 2 / p - upper_const / (p * p)
    # upper: 1/E_lo + 1/E_hi - L(x)/(E_lo E_hi)
    denom = e_lo * e_hi
    WU = -_diff_weights(g) / denom.unsqueeze(-1)
    bU = 1 / e_lo + 1 / e_hi - lower_const / denom
    box = softmax_interval(low, up)
    ok_l = torch.isfinite(WL).all(-1) & torch.isfinite(bL)
    ok_u = torch.isfinite(WU).all(-1) & torch.isfinite(bU)
    WL = torch.where(ok_l.unsqueeze(-1), WL, torch.zeros_like(WL))
    bL = torch.where(ok_l, bL, box.lower)
    WU = torch.where(ok_u.unsqueeze(-1), WU, torch.zeros_like(WU))
    bU = torch.where(ok_u, bU, box.upper)
    return WL, bL, WU, bU


def flat_last(t: torch.Tensor) -> torch.Tensor:
    return t.sum(-1)


def _diff_weights(k: torch.Tensor) -> torch.Tensor:
    """Coefficients of sum_j k_ij (x_j - x_i) on x: k_im - [i = m] sum_j k_ij."""
    return k - torch.diag_embed(k.sum(-1))


class Softmax(OpRule):
    needs_input_bounds = True

    def forward(self, node, xs):
        x = xs[0]
        g = to_groups(node, x, 1)
        return from_groups(node, torch.softmax(g, dim=-1), x.shape[1:])

    def ibp(self, node, xs):
        x = xs[0]
        box = softmax_interval(to_groups(node, x.lower, 1), to_groups(node, x.upper, 1))
        shape = x.lower.shape[1:]
        return Interval(from_groups(node, box.lower, shape), from_groups(node, box.upper, shape))

    def __init__(self) -> None:
        # node name -> (weak refs to the interval's tensors, their versions, relaxation): the
        # relaxation is the costliest part of a backward step and slope searches repeat the
        # step many times on the same intervals
        self._last: dict[str, tuple] = {}

    def relax(self, node: Node, x: Interval) -> Relaxation:
        """Grouped affine bounds (lw (B, G, n, n), lb (B, G, n), uw, ub) on the input box."""
        cacheable = not (x.lower.requires_grad or x.upper.requires_grad)
        if cacheable:
            hit = self._last.get(node.name)
            if (hit is not None and hit[0]() is x.lower and hit[1]() is x.upper
                    and hit[2] == (x.lower._version, x.upper._version)):
                return hit[3]
        WL, bL, WU, bU = softmax_relaxation(to_groups(node, x.lower, 1), to_groups(node, x.upper, 1))
        relax = Relaxation(WL, bL, WU, bU)
        if cacheable:
            self._last[node.name] = (weakref.ref(x.lower), weakref.ref(x.upper),
                                     (x.lower._version, x.upper._version), relax)
        return relax

    def backward(self, node, A, xs, is_const):
        x = xs[0]
        shape = x.lower.shape[1:]
        r = self.relax(node, x)
        a = to_groups(node, A, 2)                          # (B, S, G, n)
        pos = a.clamp(min=0)
        neg = a - pos
        # (B, G, S, n) @ (B, G, n, n): one (S, n) x (n, n) product per group, no S-fold copies
        new = (pos.transpose(1, 2) @ r.lw + neg.transpose(1, 2) @ r.uw).transpose(1, 2)
        bias = flat_sum(pos * r.lb.unsqueeze(1)) + flat_sum(neg * r.ub.unsqueeze(1))
        return [from_groups(node, new, shape)], bias
