"""Piecewise elementwise functions: Clip, HardSigmoid, HardSwish, Sign, ThresholdedRelu.

Relaxed by bounds.ops.curves.SlopeRule: for lines of slope s the extremes of f(x) - s*x on
[l, u] lie at l, u or at the kinks (the quadratic piece of HardSwish adds its one stationary
point), so the offsets are exact for every slope. Discontinuous functions (Sign at 0,
ThresholdedRelu at alpha) add the one-sided limits at the jump, for each side the interval
reaches, so the lines hold right up to the jump whatever value the jump point itself gets.

ONNX Clip (opset 11+) takes min / max as inputs; canonicalisation rewrites Clip with constant
scalar bounds (or the old min / max attributes) into `nnverify.Clip` with attributes, which
is what the relaxation needs. The raw `Clip` keeps evaluation and IBP.
"""
from __future__ import annotations

import math

import torch

from bounds.ops.base import MonotoneRule, align_ranks
from bounds.ops.curves import SlopeRule
from bounds.types import Interval

CLIP = "nnverify.Clip"


class Piecewise(SlopeRule):
    """A function given by its kinks: `jumps(node)` -> [(position, (left limit, right limit))],
    the limits empty where f is continuous."""

    def jumps(self, node) -> list[tuple[float, tuple[float, ...]]]:
        return [(p, ()) for p in self.breakpoints(node)]

    def candidates(self, node, s, l, u):
        zero = torch.zeros((), dtype=l.dtype)
        out = [(l, self.f(node, l), zero), (u, self.f(node, u), zero)]
        for p, limits in self.jumps(node):
            x = torch.full_like(l, p).clamp(min=l).minimum(u)
            fx = self.f(node, x)
            out.append((x, fx, zero))
            if limits:              # the one-sided limits at a jump, where the interval reaches that side
                left, right = limits
                from_left = (l < p) & (p <= u)
                from_right = (l <= p) & (p < u)
                out.append((x, torch.where(from_left, torch.full_like(fx, left), fx), zero))
                out.append((x, torch.where(from_right, torch.full_like(fx, right), fx), zero))
        return out

    def slope_range(self, node, l, u):
        pts = [(x, fx) for x, fx, _ in self.candidates(node, torch.zeros_like(l), l, u)]
        lo = hi = None
        for i, (xa, fa) in enumerate(pts):
            for xb, fb in pts[i + 1:]:
                dx = xb - xa
                ok = dx.abs() > 1e-12 * (1 + xa.abs())
                c = torch.where(ok, (fb - fa) / torch.where(ok, dx, torch.ones_like(dx)), torch.zeros_like(dx))
                lo = c if lo is None else torch.minimum(lo, c)
                hi = c if hi is None else torch.maximum(hi, c)
        return lo.clamp(-1e12, 1e12), hi.clamp(-1e12, 1e12)

    def curvature(self, node, l, u):
        """One continuous kink inside: convex if the slope grows across it (ReLU-like)."""
        count = torch.zeros_like(l)
        jumpy = torch.zeros_like(l, dtype=torch.bool)
        for p, values in self.jumps(node):
            inside = (l < p) & (p < u)
            count = count + inside.to(l.dtype)
            if values:
                jumpy |= (l <= p) & (p <= u)
        turn = torch.sign(self.df(node, u) - self.df(node, l))
        return torch.where((count == 1) & ~jumpy, turn, torch.zeros_like(turn))

    def split_point(self, node, x):
        l, u = x.lower, torch.maximum(x.upper, x.lower)
        best, dist = (l + u) / 2, torch.full_like(l, math.inf)
        for p, _ in self.jumps(node):
            d = ((l + u) / 2 - p).abs()
            take = (l < p) & (p < u) & (d < dist)
            best, dist = torch.where(take, torch.full_like(l, p), best), torch.where(take, d, dist)
        return best


class Clip(Piecewise):
    """nnverify.Clip: min(max(x, min), max) with attrs min / max (either may be absent)."""

    monotone = 1

    @staticmethod
    def _limits(node) -> tuple[float, float]:
        lo = float(node.attrs.get("min", -math.inf))
        hi = float(node.attrs.get("max", math.inf))
        return lo, max(lo, hi)

    def fn(self, node, x):
        lo, hi = self._limits(node)
        return torch.clamp(x, min=None if lo == -math.inf else lo, max=None if hi == math.inf else hi)

    f = fn

    def df(self, node, x):
        lo, hi = self._limits(node)
        return ((x > lo) & (x < hi)).to(x.dtype)

    def breakpoints(self, node):
        return tuple(v for v in self._limits(node) if math.isfinite(v))

    def slope_bounds(self, node):
        return (0.0, 1.0)


class ClipInputs(MonotoneRule):
    """ONNX Clip with min / max inputs (or old-style attributes): evaluation and IBP; the
    canonical form nnverify.Clip carries the relaxation."""

    constant_inputs = (1, 2)
    needs_input_bounds = True

    def forward(self, node, xs):
        x = xs[0]
        lo = xs[1] if len(xs) > 1 else None
        hi = xs[2] if len(xs) > 2 else None
        if lo is None and "min" in node.attrs:      # opset < 11: attributes
            lo = torch.tensor([float(node.attrs["min"])], dtype=x.dtype)
        if hi is None and "max" in node.attrs:
            hi = torch.tensor([float(node.attrs["max"])], dtype=x.dtype)
        if lo is not None:
            x = torch.maximum(*align_ranks(x, lo.to(x.dtype)))
        if hi is not None:
            x = torch.minimum(*align_ranks(x, hi.to(x.dtype)))
        return x

    def ibp(self, node, xs):
        rest = [r.lower for r in xs[1:]]
        return Interval(self.forward(node, [xs[0].lower, *rest]), self.forward(node, [xs[0].upper, *rest]))


class HardSigmoid(Piecewise):
    """max(0, min(1, alpha * x + beta)) (ONNX defaults alpha 0.2, beta 0.5)."""

    @staticmethod
    def _ab(node) -> tuple[float, float]:
        return float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))

    def fn(self, node, x):
        a, b = self._ab(node)
        return torch.clamp(a * x + b, 0.0, 1.0)

    f = fn

    def df(self, node, x):
        a, b = self._ab(node)
        y = a * x + b
        return torch.where((y > 0) & (y < 1), torch.full_like(x, a), torch.zeros_like(x))

    def breakpoints(self, node):
        a, b = self._ab(node)
        return () if a == 0 else tuple(sorted((-b / a, (1 - b) / a)))

    def ibp(self, node, xs):
        x = xs[0]
        ends = (self.fn(node, x.lower), self.fn(node, x.upper))
        return Interval(torch.minimum(*ends), torch.maximum(*ends))

    def slope_bounds(self, node):
        a, _ = self._ab(node)
        return (min(a, 0.0), max(a, 0.0))


class HardSwish(Piecewise):
    """x * HardSigmoid(x) with alpha 1/6, beta 1/2: 0 below -3, x above 3, x (x + 3) / 6 between."""

    def fn(self, node, x):
        return x * torch.clamp(x / 6 + 0.5, 0.0, 1.0)

    f = fn

    def df(self, node, x):
        return torch.where(x < -3, torch.zeros_like(x), torch.where(x > 3, torch.ones_like(x), (2 * x + 3) / 6))

    def breakpoints(self, node):
        return (-3.0, 3.0)

    def candidates(self, node, s, l, u):
        out = super().candidates(node, s, l, u)
        stat = (3 * s - 1.5).clamp(min=-3.0, max=3.0)     # f' = s on the quadratic piece
        stat = torch.minimum(torch.maximum(stat, l), u).detach()
        return out + [(stat, self.f(node, stat), torch.zeros((), dtype=l.dtype))]

    def slope_range(self, node, l, u):
        pts = [l, u, l.clamp(min=-3.0).minimum(u), u.clamp(max=3.0).maximum(l)]
        d = torch.stack(torch.broadcast_tensors(*[self.df(node, p) for p in pts]))
        return d.min(0).values, d.max(0).values

    def curvature(self, node, l, u):
        inner = (l >= -3) & (u <= 3) & (l < u)
        return inner.to(l.dtype)

    def slope_bounds(self, node):
        return (-0.5, 1.5)


class Sign(Piecewise):
    """-1, 0, 1 (binarised networks). Discontinuous at 0: the relaxation holds for each value."""

    monotone = 1

    def fn(self, node, x):
        return torch.sign(x)

    f = fn

    def df(self, node, x):
        return torch.zeros_like(x)

    def jumps(self, node):
        return [(0.0, (-1.0, 1.0))]


class ThresholdedRelu(Piecewise):
    """x where x > alpha, else 0 (ONNX default alpha 1). Discontinuous at alpha."""

    @staticmethod
    def _alpha(node) -> float:
        return float(node.attrs.get("alpha", 1.0))

    def fn(self, node, x):
        return torch.where(x > self._alpha(node), x, torch.zeros_like(x))

    f = fn

    def df(self, node, x):
        return (x > self._alpha(node)).to(x.dtype)

    def jumps(self, node):
        a = self._alpha(node)
        return [(a, (0.0, a))]
