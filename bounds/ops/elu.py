"""The exponential linear units: ONNX `Elu` (alpha), `Selu` (alpha, gamma) and `Celu` (alpha).

All three are one family, linear for x > 0 and a scaled exponential for x <= 0:

    f(x) = gamma * x                          for x > 0
    f(x) = gamma * alpha * (exp(beta x) - 1)  for x <= 0

Elu: gamma = beta = 1. Selu: beta = 1. Celu: gamma = 1, beta = 1 / alpha (so f' is continuous
at 0). With k = gamma * alpha * beta, f' is gamma on the right and k * exp(beta x) on the left,
where f'' = k * beta * exp(beta x) has the sign of gamma * alpha. Hence the shape:

* the exponential piece is convex when gamma * alpha > 0 (every usual setting) and concave when
  gamma * alpha < 0;
* the kink at 0 is convex when f' grows across it (gamma >= k) and concave otherwise. Elu with
  alpha > 1 and Selu (alpha * gamma ~ 1.76 > gamma ~ 1.05) have a *concave* kink on top of a
  convex exponential, so they are not convex across 0; Elu with 0 <= alpha <= 1 and Celu with
  alpha > 0 are convex everywhere; Celu with alpha < 0 is concave.

Relaxed by bounds.ops.curves.SlopeRule with the kink at 0 as the one breakpoint: on the
exponential piece f' = s has the closed-form root log(s / k) / beta, the linear piece has a
constant slope, and the kink itself is added as a candidate, so the offsets of lines of any
slope are exact on any interval whatever the shape. Only the default slopes use the shape.
"""
from __future__ import annotations

import math

import torch

from bounds.ops.curves import SlopeRule
from bounds.types import Interval

#: ONNX Selu defaults (the float32 values of the constants of Klambauer et al.)
SELU_ALPHA = 1.67326319217681884765625
SELU_GAMMA = 1.05070102214813232421875


class ExpLinear(SlopeRule):
    """The shared rule; subclasses say how the node's attributes give (gamma, alpha, beta)."""

    def params(self, node) -> tuple[float, float, float]:
        raise NotImplementedError

    def _k(self, node) -> float:
        gamma, alpha, beta = self.params(node)
        return gamma * alpha * beta

    # ---- the function --------------------------------------------------------------------
    def fn(self, node, x):
        gamma, alpha, beta = self.params(node)
        # clamping before expm1 keeps exp of large positive inputs (and their gradients) out
        neg = torch.expm1(x.clamp(max=0) * beta) * alpha
        y = x.clamp(min=0) + neg
        return y if gamma == 1.0 else y * gamma

    f = fn

    def df(self, node, x):
        gamma, _, beta = self.params(node)
        left = self._k(node) * torch.exp(x.clamp(max=0) * beta)
        # at 0 itself the left derivative: the kink is a candidate of its own anyway
        return torch.where(x > 0, torch.full_like(x, gamma), left)

    def breakpoints(self, node):
        return (0.0,)

    def solve(self, node, s, a, b):
        """f' = s on the exponential piece: x = log(s / k) / beta (NaN where there is no root:
        the caller then keeps an end of the piece, which is a harmless extra candidate). On the
        linear piece f' is constant and any point of it is as good as another."""
        _, _, beta = self.params(node)
        k = self._k(node)
        with torch.no_grad():
            x = torch.log(s / k) / beta if k != 0 else torch.full_like(s, math.nan)
        return x, torch.zeros_like(s)

    def candidates(self, node, s, l, u):
        # the kink: where g(x) = f(x) - s*x has its extreme when f' jumps over s at 0
        kink = torch.zeros_like(l).clamp(min=l).minimum(u)
        zero = torch.zeros((), dtype=l.dtype)
        return super().candidates(node, s, l, u) + [(kink, self.f(node, kink), zero)]

    # ---- shape -----------------------------------------------------------------------------
    def slope_range(self, node, l, u):
        """min / max of f' on [l, u]: k e^(beta x) at the ends of the exponential part, gamma
        where the interval reaches x > 0."""
        gamma, _, beta = self.params(node)
        k = self._k(node)
        e1 = k * torch.exp(l.clamp(max=0) * beta)
        e2 = k * torch.exp(u.clamp(max=0) * beta)
        g = torch.full_like(l, gamma)
        has_exp, has_lin = l < 0, (u > 0) | (l >= 0)
        big = torch.full_like(l, math.inf)
        lo = torch.minimum(torch.where(has_exp, torch.minimum(e1, e2), big), torch.where(has_lin, g, big))
        hi = torch.maximum(torch.where(has_exp, torch.maximum(e1, e2), -big), torch.where(has_lin, g, -big))
        clean = lambda t: torch.nan_to_num(t, nan=0.0, posinf=1e12, neginf=-1e12).clamp(-1e12, 1e12)  # noqa: E731
        return clean(lo), clean(hi)

    def _shape_signs(self, node) -> tuple[float, float]:
        """(curvature of the exponential piece, of the kink): +1 convex, -1 concave, 0 flat."""
        gamma, alpha, _ = self.params(node)
        sign = lambda v: float((v > 0) - (v < 0))  # noqa: E731
        return sign(gamma * alpha), sign(gamma - self._k(node))

    def curvature(self, node, l, u):
        c_exp, c_kink = self._shape_signs(node)
        if c_exp >= 0 and c_kink >= 0:
            across = max(c_exp, c_kink)
        elif c_exp <= 0 and c_kink <= 0:
            across = min(c_exp, c_kink)
        else:
            across = 0.0
        out = torch.where(u <= 0, torch.full_like(l, c_exp), torch.full_like(l, across))
        return torch.where(l >= 0, torch.zeros_like(l), out)   # the linear piece alone

    # ---- intervals and protocol ---------------------------------------------------------------
    def ibp(self, node, xs):
        gamma, _, _ = self.params(node)
        if gamma >= 0 and self._k(node) >= 0:      # increasing: the ends
            x = xs[0]
            u = torch.maximum(x.upper, x.lower)
            return Interval(self.fn(node, x.lower), self.fn(node, u))
        return super().ibp(node, xs)                # extremes of f over the candidates

    def slope_bounds(self, node):
        gamma, _, beta = self.params(node)
        if beta < 0:                                 # Celu with alpha < 0: f' grows without bound
            return None
        k = self._k(node)
        return (min(0.0, k, gamma), max(0.0, k, gamma))


class Elu(ExpLinear):
    """alpha * (e^x - 1) for x <= 0, x above (ONNX default alpha 1)."""

    def params(self, node):
        return 1.0, float(node.attrs.get("alpha", 1.0)), 1.0


class Selu(ExpLinear):
    """gamma * (alpha * (e^x - 1)) for x <= 0, gamma * x above."""

    def params(self, node):
        return float(node.attrs.get("gamma", SELU_GAMMA)), float(node.attrs.get("alpha", SELU_ALPHA)), 1.0


class Celu(ExpLinear):
    """max(0, x) + min(0, alpha * (e^(x / alpha) - 1)) (ONNX default alpha 1; alpha != 0)."""

    def params(self, node):
        alpha = float(node.attrs.get("alpha", 1.0))
        if alpha == 0:
            raise ValueError("Celu needs alpha != 0")
        return 1.0, alpha, 1.0 / alpha


__all__ = ["Elu", "Selu", "Celu", "ExpLinear", "SELU_ALPHA", "SELU_GAMMA"]
