"""Functions concave left of 0 and convex right of it: Sinh, Tan, Asin, Atanh (increasing) and
Acos (decreasing: pi/2 - asin).

Relaxed by bounds.ops.curves.SlopeRule with the inflection point 0: for a slope s the extremes of
f(x) - s*x lie at the ends of the interval or where f' = s, one point on each side of 0, found
in closed form. Domains: Asin and Acos are defined on [-1, 1] (inputs outside give NaN, no
values, so the bounds hold on the part of an interval inside it, like Log). Tan is bounded only
on its principal branch (-pi/2, pi/2): an interval that reaches a pole, or lies on another
branch, gets infinite bounds (sound; such inputs are rare in practice). Atanh lives on
(-1, 1) and is unbounded at both ends: an interval reaching -1 or 1 gets infinite bounds.
"""
from __future__ import annotations

import math

import torch

from bounds.ops.curves import SlopeRule, UnboundedOn


def _one_per_side(root: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The root on the side of 0 where the piece [a, b] lies (f' is even for these functions)."""
    return torch.where(a + b >= 0, root, -root)


class Sinh(SlopeRule):
    inflections = (0.0,)
    monotone = 1

    def f(self, node, x):
        return torch.sinh(x)

    def df(self, node, x):
        return torch.cosh(x)

    def solve(self, node, s, a, b):
        return _one_per_side(torch.acosh(s.clamp(min=1.0)), a, b), torch.zeros_like(s)

    def slope_bounds(self, node):
        return None


class Asin(SlopeRule):
    inflections = (0.0,)
    domain = (-1.0, 1.0)
    monotone = 1

    def f(self, node, x):
        return torch.asin(x)

    def df(self, node, x):
        return torch.rsqrt(1 - x * x)

    def solve(self, node, s, a, b):
        # 1 / sqrt(1 - x^2) = s  <=>  x = +-sqrt(1 - 1/s^2)
        root = torch.sqrt((1 - 1 / (s * s).clamp(min=1.0)).clamp(min=0.0))
        return _one_per_side(root, a, b), torch.zeros_like(s)

    def slope_bounds(self, node):
        return None


class Acos(Asin):
    """pi/2 - asin(x): convex left of 0, concave right of it, decreasing."""

    monotone = -1

    def f(self, node, x):
        return torch.acos(x)

    def df(self, node, x):
        return -torch.rsqrt(1 - x * x)

    def solve(self, node, s, a, b):
        return super().solve(node, -s, a, b)


class Tan(UnboundedOn):
    inflections = (0.0,)
    monotone = 1
    stand_in = (0.0, 0.5)
    #: intervals reaching this close to a pole count as reaching it (tan is ~1e9 there)
    _POLE = math.pi / 2 - 1e-9

    def f(self, node, x):
        return torch.tan(x)

    def df(self, node, x):
        return 1 + torch.tan(x) ** 2

    def solve(self, node, s, a, b):
        return _one_per_side(torch.atan(torch.sqrt((s - 1).clamp(min=0.0))), a, b), torch.zeros_like(s)

    def unbounded(self, x):
        return (x.lower <= -self._POLE) | (x.upper >= self._POLE)

    def slope_bounds(self, node):
        return None


class Atanh(UnboundedOn):
    inflections = (0.0,)
    monotone = 1
    stand_in = (0.0, 0.5)
    #: intervals reaching this close to +-1 count as reaching it (float32 cannot tell them apart)
    _EDGE = 1.0 - 1e-6

    def f(self, node, x):
        return torch.atanh(x)

    def df(self, node, x):
        return 1.0 / (1.0 - x * x)

    def solve(self, node, s, a, b):
        # 1 / (1 - x^2) = s  <=>  x = +-sqrt(1 - 1/s)
        root = torch.sqrt((1 - 1 / s.clamp(min=1.0)).clamp(min=0.0))
        return _one_per_side(root, a, b), torch.zeros_like(s)

    def unbounded(self, x):
        return (x.lower <= -self._EDGE) | (x.upper >= self._EDGE)

    def slope_bounds(self, node):
        return None
