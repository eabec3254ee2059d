"""Sin and Cos on arbitrary intervals.

Relaxed by bounds.ops.curves.SlopeRule: for a slope s, g(x) = sin(x) - s*x has its extremes at
the ends of [l, u] or where cos(x) = s, i.e. x = +-acos(s) + 2*pi*k, a few points on an
interval shorter than a period, so the offsets are exact for every slope. Intervals of a
period or more get the constant bounds [-1, 1] (slope 0). Narrow intervals inside a convex
or concave stretch get chord + tangent; stretches across an inflection point (a multiple of
pi) get parallel lines of the chord's slope; alpha moves both slopes within the range of f'.
"""
from __future__ import annotations

import math

import torch

from bounds.ops.curves import SlopeRule
from bounds.types import Interval, Relaxation

TWO_PI = 2 * math.pi
#: intervals at least this wide get the constant bounds [-1, 1]
_WIDE = TWO_PI


class Sin(SlopeRule):
    #: f(x) = sin(x + phase): 0 for Sin, pi/2 for Cos
    phase = 0.0

    def f(self, node, x):
        return torch.sin(x)

    def df(self, node, x):
        return torch.cos(x)

    def _stationary(self, s: torch.Tensor, l: torch.Tensor) -> list[torch.Tensor]:
        """Points at or right of l where f' = s (two families, first two members of each)."""
        a = torch.acos(s.clamp(-1.0, 1.0))
        out = []
        for c in (a - self.phase, -a - self.phase):
            k = torch.ceil((l - c) / TWO_PI)
            x = c + TWO_PI * k
            out += [x, x + TWO_PI]
        return out

    def candidates(self, node, s, l, u):
        zero = torch.zeros((), dtype=l.dtype)
        out = [(l, self.f(node, l), zero), (u, self.f(node, u), zero)]
        with torch.no_grad():
            pts = self._stationary(s.detach(), l.detach())
        for x in pts:
            x = torch.minimum(torch.maximum(x, l.detach()), u.detach())
            # acos and the 2*pi*k shift are accurate to ~1e-15 relative; the tangent bound of
            # g's error is |g'(x)| times that distance
            err = (self.df(node, x) - s).abs().detach() * 1e-12 * (1 + x.abs())
            out.append((x, self.f(node, x), err))
        return out

    def _inflection_inside(self, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether a zero of f (an inflection point, x + phase = k*pi) lies strictly inside; the first."""
        k = torch.floor((l + self.phase) / math.pi) + 1
        p = k * math.pi - self.phase
        return (l < p) & (p < u), p

    def curvature(self, node, l, u):
        inside, _ = self._inflection_inside(l, u)
        turn = -torch.sign(self.f(node, (l + u) / 2))     # f'' = -f
        return torch.where(inside, torch.zeros_like(turn), turn)

    def slope_range(self, node, l, u):
        # f' is f shifted by a quarter period: its range is the IBP range of that function
        deriv = Cos() if self.phase == 0.0 else _NegSin()
        r = deriv.ibp(node, [Interval(l, u)])
        return r.lower.clamp(-1, 1), r.upper.clamp(-1, 1)

    def range_clip(self, node, lo, hi):
        return lo.clamp(min=-1.0), hi.clamp(max=1.0)

    def relax(self, node, x: Interval, alpha=None) -> Relaxation:
        l, u = x.lower, torch.maximum(x.upper, x.lower)
        wide = ~(u - l < _WIDE)     # also catches non-finite ends
        if not bool(wide.any()):
            return super().relax(node, x, alpha)
        safe = Interval(torch.where(wide, 0.0, l), torch.where(wide, 1.0, u))
        r = super().relax(node, safe, alpha)
        if alpha is not None:
            wide = wide.unsqueeze(1)
        zero, one = torch.zeros_like(r.lw), torch.ones_like(r.lw)
        return Relaxation(torch.where(wide, zero, r.lw), torch.where(wide, -one, r.lb),
                          torch.where(wide, zero, r.uw), torch.where(wide, one, r.ub))

    def ibp(self, node, xs):
        x = xs[0]
        l, u = x.lower, torch.maximum(x.upper, x.lower)
        wide = ~(u - l < _WIDE)
        safe = Interval(torch.where(wide, 0.0, l), torch.where(wide, 1.0, u))
        r = super().ibp(node, [safe])
        return Interval(torch.where(wide, -1.0, r.lower).to(l.dtype), torch.where(wide, 1.0, r.upper).to(l.dtype))

    def split_point(self, node, x):
        l, u = x.lower, torch.maximum(x.upper, x.lower)
        inside, p = self._inflection_inside(l.double(), u.double())
        mid = (l + u) / 2
        narrow = (u - l) < _WIDE
        return torch.where(inside & narrow, p.to(l.dtype).clamp(min=l).minimum(u), mid)

    def slope_bounds(self, node):
        return (-1.0, 1.0)


class Cos(Sin):
    phase = math.pi / 2

    def f(self, node, x):
        return torch.cos(x)

    def df(self, node, x):
        return -torch.sin(x)


class _NegSin(Sin):
    """-sin(x) = sin(x + pi): the derivative of Cos, used for its slope range only."""

    phase = math.pi

    def f(self, node, x):
        return -torch.sin(x)

    def df(self, node, x):
        return -torch.cos(x)
