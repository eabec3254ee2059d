"""ReLU and LeakyReLU: the piecewise-linear activations of classic verification benchmarks."""
from __future__ import annotations

from typing import Callable

import torch

from bounds.ops.base import ActivationRule
from bounds.types import Interval, Relaxation


def leaky_relu_relaxation(x: Interval, slope: float, lower_slope: torch.Tensor | None = None) -> Relaxation:
    """Bounds for max(x, slope*x) (slope <= 1): chord above, a line through 0 below.

    `lower_slope` (alpha, in [slope, 1]) is the optimisable lower line; by default the
    CROWN choice 1 if u > -l else slope, which minimises the area between the bounds.
    """
    unstable, stable, chord, chord_b = _leaky_relu_parts(x, slope)
    if lower_slope is None:
        lower_slope = (x.upper > -x.lower).to(x.upper.dtype) * (1.0 - slope) + slope
    lw = torch.where(unstable, lower_slope, stable)
    return Relaxation(lw, torch.zeros_like(x.upper), chord, chord_b)


def _leaky_relu_parts(x: Interval, slope: float):
    """What leaky_relu_relaxation needs besides the lower slope: the unstable mask, the
    stable neurons' slope, the chord's slope and intercept."""
    l, u = x.lower, x.upper
    active = l >= 0
    # NaN ends count as unstable, so that they reach the bound instead of vanishing
    unstable = ~(active | (u <= 0))
    # stable neurons are linear: slope 1 where active, `slope` where inactive (l = u = 0 counts
    # as active); arithmetic on the masks and few selections (this runs on every sub-problem)
    stable = active.to(u.dtype) * (1.0 - slope) + slope
    width = torch.where(unstable, u - l, 1.0)
    chord = torch.where(unstable, (u - slope * l) / width, stable)
    chord_b = torch.where(unstable, (slope - chord) * l, 0.0)
    return unstable, stable, chord, chord_b


def leaky_relu_prepared(x: Interval, slope: float) -> Callable[[torch.Tensor], Relaxation]:
    """leaky_relu_relaxation's per-row form (alpha (B, S, *shape)) as a function of alpha
    alone, the rest derived once: a slope search evaluates it every step on fixed intervals."""
    x = Interval(x.lower.unsqueeze(1), x.upper.unsqueeze(1))
    unstable, stable, chord, chord_b = _leaky_relu_parts(x, slope)
    zero = torch.zeros_like(x.upper)
    return lambda alpha: Relaxation(torch.where(unstable, alpha, stable), zero, chord, chord_b)


class Relu(ActivationRule):
    def exact_on(self, x):
        return (x.lower >= 0) | (x.upper <= 0)

    def fn(self, node, x):
        return torch.relu(x)

    def relax(self, node, x, alpha=None):
        if alpha is not None:
            x = Interval(x.lower.unsqueeze(1), x.upper.unsqueeze(1))
        return leaky_relu_relaxation(x, 0.0, alpha)

    def init_alpha(self, node, x):
        return (x.upper > -x.lower).to(x.lower.dtype)

    def prepare(self, node, x):
        return leaky_relu_prepared(x, 0.0)

    def project_alpha(self, node, alpha):
        return alpha.clamp(0.0, 1.0)

    def split_point(self, node, x):
        return kink_split(x)

    def slope_bounds(self, node):
        return (0.0, 1.0)


def kink_split(x: Interval) -> torch.Tensor:
    """0 where the interval straddles the kink (both children become exact), else the middle."""
    return torch.where((x.lower < 0) & (x.upper > 0), torch.zeros_like(x.lower), x.center)


class LeakyRelu(ActivationRule):
    exact_on = Relu.exact_on

    def fn(self, node, x):
        return torch.nn.functional.leaky_relu(x, node.attrs.get("alpha", 0.01))

    def _slope(self, node) -> float:
        return float(node.attrs.get("alpha", 0.01))

    def init_alpha(self, node, x):
        slope = self._slope(node)
        if slope > 1.0:
            return None
        return torch.where(x.upper > -x.lower, torch.ones_like(x.lower), torch.full_like(x.lower, slope))

    def project_alpha(self, node, alpha):
        return alpha.clamp(self._slope(node), 1.0)

    def split_point(self, node, x):
        return kink_split(x)

    def slope_bounds(self, node):
        slope = self._slope(node)
        return (min(slope, 1.0), max(slope, 1.0))

    def prepare(self, node, x):
        slope = self._slope(node)
        return leaky_relu_prepared(x, slope) if slope <= 1.0 else None

    def relax(self, node, x, alpha=None):
        slope = self._slope(node)
        if alpha is not None:
            x = Interval(x.lower.unsqueeze(1), x.upper.unsqueeze(1))
        if slope <= 1.0:
            return leaky_relu_relaxation(x, slope, alpha)
        # slope > 1 makes the function concave: mirror the convex case.
        r = leaky_relu_relaxation(Interval(-x.upper, -x.lower), 1.0 / slope)
        # f(x) = -slope * g(-x) with g the convex leaky ReLU of slope 1/slope
        return Relaxation(r.uw * slope, -slope * r.ub, r.lw * slope, -slope * r.lb)

