"""Functions that are convex or concave on each side of 0: Exp, Log, Sqrt, Reciprocal, Pow, Abs, Cosh.

All relaxed by bounds.ops.curves.SlopeRule (chord on one side, optimisable tangent on the
other); each family only says where f' = s. Domains: Log, Sqrt and fractional powers are
defined for x >= 0 only; inputs below give NaN outputs, which are no values (never
counterexamples), so the bounds hold on the part of the interval inside the domain. Where a
function is unbounded on the interval (1/x or Log reaching 0, Exp past the largest float) the
affected side is infinite, and the propagation keeps it from turning into NaN.

ONNX Pow takes its exponent as a second input; the bound rules need it as a number, so the
canonicalisation (bounds.graph.fuse_activations) rewrites Pow with a constant scalar exponent
into the unary `nnverify.Pow` (attr `exponent`). The binary `Pow` keeps an exact IBP rule.
"""
from __future__ import annotations

import math

import torch

from bounds.ops.base import OpRule, align_ranks
from bounds.ops.curves import SlopeRule, UnboundedOn
from bounds.types import Interval, Relaxation

POW = "nnverify.Pow"


class Exp(SlopeRule):
    monotone = 1

    def f(self, node, x):
        return torch.exp(x)

    df = f

    def solve(self, node, s, a, b):
        return torch.log(s), torch.zeros_like(s)

    def slope_bounds(self, node):
        return None  # unbounded


class Log(SlopeRule):
    domain = (0.0, math.inf)
    monotone = 1

    def f(self, node, x):
        return torch.log(x)

    def df(self, node, x):
        return 1.0 / x

    def solve(self, node, s, a, b):
        return 1.0 / s, torch.zeros_like(s)

    def slope_bounds(self, node):
        return None


class Sqrt(SlopeRule):
    domain = (0.0, math.inf)
    monotone = 1

    def f(self, node, x):
        return torch.sqrt(x)

    def df(self, node, x):
        return 0.5 / torch.sqrt(x)

    def solve(self, node, s, a, b):
        return 0.25 / (s * s), torch.zeros_like(s)

    def slope_bounds(self, node):
        return None


class Acosh(SlopeRule):
    """acosh(x) on [1, inf): concave and increasing, infinitely steep at 1 (like Sqrt at 0)."""

    domain = (1.0, math.inf)
    monotone = 1

    def f(self, node, x):
        return torch.acosh(x)

    def df(self, node, x):
        return torch.rsqrt(x * x - 1)

    def solve(self, node, s, a, b):
        # 1 / sqrt(x^2 - 1) = s  <=>  x = sqrt(1 + 1/s^2)
        return torch.sqrt(1 + 1 / (s * s)), torch.zeros_like(s)

    def slope_bounds(self, node):
        return None


class Reciprocal(UnboundedOn):
    """1/x: convex for x > 0, concave for x < 0; unbounded on intervals that reach 0."""

    monotone = -1

    def f(self, node, x):
        return 1.0 / x

    def df(self, node, x):
        return -1.0 / (x * x)

    def solve(self, node, s, a, b):
        side = torch.where(b > 0, 1.0, -1.0).to(s.dtype)
        return side / torch.sqrt(-s), torch.zeros_like(s)

    def unbounded(self, x):
        return (x.lower <= 0) & (x.upper >= 0)

    def slope_bounds(self, node):
        return None


class Cosh(SlopeRule):
    """Convex, smallest (1) at 0."""

    def f(self, node, x):
        return torch.cosh(x)

    def df(self, node, x):
        return torch.sinh(x)

    def solve(self, node, s, a, b):
        return torch.asinh(s), torch.zeros_like(s)

    def range_clip(self, node, lo, hi):
        return lo.clamp(min=1.0), hi

    def slope_bounds(self, node):
        return None


class Abs(SlopeRule):
    inflections = (0.0,)  # the kink

    def f(self, node, x):
        return torch.abs(x)

    def df(self, node, x):
        return torch.sign(x)

    def candidates(self, node, s, l, u):
        zero = torch.zeros((), dtype=l.dtype)
        kink = torch.zeros_like(l).clamp(min=l).minimum(u)
        return [(p, p.abs(), zero) for p in (l, u, kink)]

    def curvature(self, node, l, u):
        return ((l < 0) & (u > 0)).to(l.dtype)

    def exact_on(self, x):
        return (x.lower >= 0) | (x.upper <= 0)

    def ibp(self, node, xs):
        l, u = xs[0].lower, xs[0].upper
        straddle = (l < 0) & (u > 0)
        lo = torch.where(straddle, torch.zeros_like(l), torch.minimum(l.abs(), u.abs()))
        return Interval(lo, torch.maximum(l.abs(), u.abs()))

    def split_point(self, node, x):
        return torch.where((x.lower < 0) & (x.upper > 0), torch.zeros_like(x.lower), x.center)

    def slope_bounds(self, node):
        return (-1.0, 1.0)


# ----------------------------------------------------------------------------------------
# powers

def _pow_kind(p: float) -> str:
    if p == int(p):
        k = int(p)
        if k in (0, 1):
            return "linear"
        if k > 0:
            return "even" if k % 2 == 0 else "odd"
        return "neg_even" if k % 2 == 0 else "neg_odd"
    return "frac" if p > 0 else "neg_frac"


def pow_interval(x: Interval, p: float) -> Interval:
    """Exact enclosure of x**p (ends and 0 are the only candidates; NaN parts are no values)."""
    kind = _pow_kind(p)
    l, u = x.lower, torch.maximum(x.upper, x.lower)
    if kind in ("frac", "neg_frac"):
        l = l.clamp(min=0.0)
        u = torch.maximum(u, l)
    pl, pu = torch.pow(l, p), torch.pow(u, p)
    straddle = (l < 0) & (u > 0)
    zero = torch.pow(torch.zeros_like(l), p)
    lo = torch.minimum(pl, pu)
    hi = torch.maximum(pl, pu)
    if kind == "even":
        lo = torch.where(straddle, zero, lo)
    if kind.startswith("neg"):
        reach = (l <= 0) & (u >= 0) & (l < u) if kind != "neg_frac" else (l <= 0)
        lo = torch.where(reach, -math.inf if kind == "neg_odd" else lo, lo)
        hi = torch.where(reach, math.inf, hi)
    return Interval(lo, hi)


class UnaryPow(SlopeRule):
    """x ** exponent for a constant scalar exponent (attr), the form canonicalisation produces."""

    @staticmethod
    def exponent(node) -> float:
        return float(node.attrs["exponent"])

    def breakpoints(self, node):
        return (0.0,) if _pow_kind(self.exponent(node)) in ("odd", "neg_odd", "neg_even") else ()

    def _clip_domain(self, l, u):
        return l, u  # depends on the exponent: see relax / ibp

    def f(self, node, x):
        return torch.pow(x, self.exponent(node))

    def df(self, node, x):
        p = self.exponent(node)
        if p == 0:
            return torch.zeros_like(x)
        return p * torch.pow(x, p - 1)

    def solve(self, node, s, a, b):
        p = self.exponent(node)
        kind = _pow_kind(p)
        if kind == "linear":
            return a, torch.zeros_like(s)
        mag = torch.pow((s / p).abs(), 1.0 / (p - 1))
        if kind == "even":
            sign = torch.sign(s)
        elif kind in ("frac", "neg_frac"):
            sign = torch.ones_like(s)
        else:
            sign = torch.where(b > 0, 1.0, -1.0).to(s.dtype)
        return sign * mag, torch.zeros_like(s)

    def ibp(self, node, xs):
        return pow_interval(xs[0], self.exponent(node))

    def _in_domain(self, node, x: Interval) -> Interval:
        l, u = x.lower, torch.maximum(x.upper, x.lower)
        if _pow_kind(self.exponent(node)) in ("frac", "neg_frac"):
            l = l.clamp(min=0.0)
            u = torch.maximum(u, l)
        return Interval(l, u)

    def init_alpha(self, node, x):
        return super().init_alpha(node, self._in_domain(node, x))

    def relax(self, node, x, alpha=None):
        p = self.exponent(node)
        kind = _pow_kind(p)
        x = self._in_domain(node, x)
        l, u = x.lower, x.upper
        bad = ((l <= 0) & (u >= 0)) if kind.startswith("neg") else torch.zeros_like(l, dtype=torch.bool)
        if not bool(bad.any()):
            return super().relax(node, Interval(l, u), alpha)
        safe = Interval(torch.where(bad, 1.0, l), torch.where(bad, 2.0, u))
        r = super().relax(node, safe, alpha)
        ivl = pow_interval(Interval(l, u), p)
        lo, hi = ivl.lower, ivl.upper
        if alpha is not None:
            bad, lo, hi = bad.unsqueeze(1), lo.unsqueeze(1), hi.unsqueeze(1)
        zero = torch.zeros_like(r.lw)
        return Relaxation(torch.where(bad, zero, r.lw), torch.where(bad, lo, r.lb),
                          torch.where(bad, zero, r.uw), torch.where(bad, hi, r.ub))

    def split_point(self, node, x):
        kind = _pow_kind(self.exponent(node))
        straddle = (x.lower < 0) & (x.upper > 0)
        if kind in ("odd", "neg_odd", "neg_even"):
            return torch.where(straddle, torch.zeros_like(x.lower), x.center)
        return x.center

    def slope_bounds(self, node):
        return (0.0, 0.0) if self.exponent(node) == 0 else (1.0, 1.0) if self.exponent(node) == 1 else None


class Pow(OpRule):
    """ONNX Pow(x, e) with a constant exponent: evaluation and IBP. Bound propagation needs the
    unary form (canonicalisation rewrites scalar exponents); elsewhere the node is cut (IBP)."""

    constant_inputs = (1,)
    needs_input_bounds = True

    def forward(self, node, xs):
        x, e = align_ranks(*xs)
        return torch.pow(x, e.to(x.dtype))

    def ibp(self, node, xs):
        x, e = xs
        values = e.lower.reshape(-1).unique()
        if values.numel() == 1:
            return pow_interval(x, float(values[0]))
        # elementwise exponents: the enclosure for each distinct value, picked where it applies
        xl, xu, ev = align_ranks(x.lower, x.upper, e.lower)
        lo = torch.zeros(torch.broadcast_shapes(xl.shape, ev.shape), dtype=x.lower.dtype)
        hi = torch.zeros_like(lo)
        for v in values.tolist():
            part = pow_interval(Interval(xl, xu), v)
            lo = torch.where(ev == v, part.lower, lo)
            hi = torch.where(ev == v, part.upper, hi)
        return Interval(lo, hi)

    def backward(self, node, A, xs, is_const):
        raise NotImplementedError("Pow with a non-scalar exponent has no linear relaxation")
