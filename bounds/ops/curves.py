"""Shared relaxation for smooth (or piecewise) unary functions: pick slopes, compute exact offsets.

For any slope s, the tightest lower line of slope s on [l, u] is s*x + min_x (f(x) - s*x) and the
tightest upper line s*x + max_x (f(x) - s*x). The extremes of g(x) = f(x) - s*x lie at l, u or
where f'(x) = s. A function family only says where those points can be (its `candidates`):
for a smooth f, f' is monotone between consecutive inflection points, so each such piece holds
at most one root of f' = s (found in closed form or by bisection); for piecewise-linear f the
kinks are the only interior candidates. Taking the extremes over the candidates gives lines
that are sound for *every* slope, so

* the optimisable parameters (alpha) are the two slopes, each a fraction in [0, 1] of the range
  of f' over [l, u]: no choice of alpha can make a line unsound, projection is a clamp;
* the defaults reproduce the classic choices: on a convex stretch the upper line takes the chord
  slope (its offset then makes it the chord) and the lower line the slope at the midpoint (the
  tangent there, which minimises the area between the lines); concave stretches the other way
  round; stretches with an inflection point take the chord slope on both sides.

Computed in float64 and widened by a few ulps when cast back (like bounds.ops.s_shaped).
Offsets may be infinite (log near 0, exp overflowing the working precision): `backward` then
contributes -inf only where a coefficient actually uses that side, never NaN.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from bounds.graph.ir import Node
from bounds.ops.base import ActivationRule, flat_sum, relaxation_backward
from bounds.types import Interval, Relaxation

#: bisection steps for roots of f' = s without a closed form (the bracket error is accounted for)
BISECTION_STEPS = 32
_ULP = {torch.float64: 1e-13, torch.float32: 2e-7, torch.float16: 2e-3, torch.bfloat16: 2e-2}

Candidate = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(x, f(x), err): a point of [l, u], the function value there (or a one-sided limit, for
discontinuous functions), and a bound on how far the extreme of g it stands for may lie beyond
g(x) (root-finding error); all float64, broadcastable."""


def safe_relaxation_backward(A: torch.Tensor, relax: Relaxation) -> tuple[torch.Tensor, torch.Tensor]:
    """`relaxation_backward` that tolerates infinite offsets (0 * inf must count as 0)."""
    if bool(torch.isfinite(relax.lb).all() and torch.isfinite(relax.ub).all()):
        return relaxation_backward(A, relax)
    per_row = relax.lw.dim() == A.dim()
    lw, lb, uw, ub = (t if per_row else t.unsqueeze(1) for t in (relax.lw, relax.lb, relax.uw, relax.ub))
    pos = A.clamp(min=0)
    neg = A - pos
    new_A = pos * lw + neg * uw
    zero = A.new_zeros(())
    bias = torch.where(pos > 0, pos * lb, zero) + torch.where(neg < 0, neg * ub, zero)
    return new_A, flat_sum(bias)


def bisect_root(df, s: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                steps: int = BISECTION_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """A point of [a, b] near the root of df(x) = s, df monotone on [a, b]; and the bracket width.

    Without a root the result converges to the end where df is closest to s (still a point of
    [a, b], so a harmless extra candidate).

    Brackets with a == b (pieces an interval does not meet, point intervals) are answered
    (a, 0) without iterating, which is exactly what bisection gives them: most intervals meet
    one or two of the pieces the candidates search, so this saves most of the df calls."""
    if a.dim() > 0 and a.shape == b.shape == s.shape:
        active = a != b                        # NaN ends stay active, as before
        n = int(active.sum())
        if n < active.numel():
            x, r = a.clone(), torch.zeros_like(a)
            if n:
                x[active], r[active] = _bisect(df, s[active], a[active], b[active], steps)
            return x, r
    return _bisect(df, s, a, b, steps)


def _bisect(df, s: torch.Tensor, a: torch.Tensor, b: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    increasing = df(b) >= df(a)
    lo, hi = a, b
    for _ in range(steps):
        mid = (lo + hi) / 2
        right = (df(mid) < s) == increasing
        lo = torch.where(right, mid, lo)
        hi = torch.where(right, hi, mid)
    return (lo + hi) / 2, hi - lo


class SlopeRule(ActivationRule):
    """An elementwise function relaxed by lines of chosen slopes with exact offsets.

    Subclasses write `f` and `df` (float64 maths, torch ops), and describe the shape of f:
    `inflections` (sorted points where f' changes direction), `domain` (inputs outside it give
    no value: NaN outputs are never counterexamples, so bounds need only hold inside), and
    `monotone` (+1 / -1 when f is increasing / decreasing: IBP then evaluates the ends).
    `solve` may give f' = s in closed form; `candidates` may be replaced altogether.
    """

    inflections: tuple[float, ...] = ()
    domain: tuple[float, float] = (-math.inf, math.inf)
    monotone: int = 0

    # ---- the function --------------------------------------------------------------------
    def f(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def df(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fn(self, node, x):
        return self.f(node, x)

    def breakpoints(self, node: Node) -> tuple[float, ...]:
        """Inflection points (smooth f) or kinks (piecewise-linear f), sorted."""
        return self.inflections

    def solve(self, node: Node, s: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A point of [a, b] (where f' is monotone) near the root of f' = s; and how far the
        true root may be from it. Default: bisection."""
        return bisect_root(lambda x: self.df(node, x), s, a, b)

    # ---- interval pieces -----------------------------------------------------------------
    def _clip_domain(self, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.domain
        if lo > -math.inf:
            l = l.clamp(min=lo)
        if hi < math.inf:
            u = u.clamp(max=hi)
        return l, torch.maximum(u, l)

    def candidates(self, node: Node, s: torch.Tensor, l: torch.Tensor, u: torch.Tensor) -> list[Candidate]:
        """Points of [l, u] among which g(x) = f(x) - s*x takes its extremes."""
        zero = torch.zeros((), dtype=l.dtype)
        out = [(l, self.f(node, l), zero), (u, self.f(node, u), zero)]
        edges = self.breakpoints(node)
        # the pieces [a, b] clipped into [l, u] (a single end point where they do not meet),
        # stacked so that one root search serves all of them
        pas, pbs = [], []
        for a, b in zip((-math.inf, *edges), (*edges, math.inf)):
            pa = (l.clamp(min=a) if a > -math.inf else l).minimum(u)
            pbs.append((u.clamp(max=b) if b < math.inf else u).maximum(l).maximum(pa))
            pas.append(pa)
        pa, pb = torch.broadcast_tensors(torch.stack(pas), torch.stack(pbs), s.unsqueeze(0))[:2]
        with torch.no_grad():
            ss = s.detach().unsqueeze(0).expand_as(pa)
            x, r = self.solve(node, ss, pa.detach(), pb.detach())
            x = torch.minimum(torch.maximum(torch.nan_to_num(x, nan=0.0), pa), pb)
            err = torch.nan_to_num((self.df(node, x) - ss).abs() * r, nan=math.inf)
        fx = self.f(node, x)
        return out + [(x[k], fx[k], err[k]) for k in range(len(pas))]

    def slope_range(self, node: Node, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """min and max of f' over [l, u] (finite; any slope is sound, this only scales alpha)."""
        pts = [l, u] + [l.clamp(min=p).minimum(u) for p in self.breakpoints(node)]
        d = torch.stack([self.df(node, p) for p in pts])
        d = torch.nan_to_num(d, nan=0.0, posinf=1e12, neginf=-1e12).clamp(-1e12, 1e12)
        return d.min(0).values, d.max(0).values

    def curvature(self, node: Node, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """+1 where f is convex on [l, u], -1 where concave, 0 otherwise (or unknown)."""
        inside = torch.zeros_like(l, dtype=torch.bool)
        for p in self.breakpoints(node):
            inside |= (l < p) & (p < u)
        turn = torch.sign(self.df(node, u) - self.df(node, l))
        return torch.where(inside, torch.zeros_like(turn), torch.nan_to_num(turn, nan=0.0))

    # ---- relaxation ----------------------------------------------------------------------
    def extremes(self, node: Node, s: torch.Tensor, l: torch.Tensor,
                 u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """min and max of f(x) - s*x over [l, u], rounded outwards."""
        vals, errs, mags = [], [], []
        for x, fx, err in self.candidates(node, s, l, u):
            vals.append(fx - s * x)
            errs.append(err)
            mags.append(fx.abs() + (s * x).abs())
        vals_t = torch.stack(torch.broadcast_tensors(*vals))
        err = torch.stack(torch.broadcast_tensors(*errs)).max(0).values
        mag = torch.stack(torch.broadcast_tensors(*mags)).nan_to_num(nan=0.0, posinf=0.0).max(0).values
        slack = err + _ULP[torch.float64] * (1.0 + mag)
        return (vals_t.nan_to_num(nan=-math.inf).min(0).values - slack,
                vals_t.nan_to_num(nan=math.inf).max(0).values + slack)

    def offsets(self, node: Node, s: torch.Tensor, l: torch.Tensor, u: torch.Tensor, upper: bool) -> torch.Tensor:
        return self.extremes(node, s, l, u)[1 if upper else 0]

    def default_slopes(self, node: Node, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower slope, upper slope): chord on the bending-away side, midpoint tangent on the other."""
        width = u - l
        tiny = width <= 1e-12 * (1 + l.abs())
        fl, fu = self.f(node, l), self.f(node, u)
        chord = torch.where(tiny, torch.zeros_like(l), (fu - fl) / torch.where(tiny, torch.ones_like(width), width))
        mid = self.df(node, (l + u) / 2)
        chord = torch.where(tiny | ~torch.isfinite(chord), mid, chord)
        curv = self.curvature(node, l, u)
        lower = torch.where(curv > 0, mid, chord)
        upper = torch.where(curv < 0, mid, chord)
        return torch.nan_to_num(lower, nan=0.0), torch.nan_to_num(upper, nan=0.0)

    def _fraction(self, s, lo, hi):
        span = hi - lo
        ok = span > 1e-12
        return torch.where(ok, ((s - lo) / torch.where(ok, span, torch.ones_like(span))).clamp(0, 1),
                           torch.full_like(s, 0.5))

    def init_alpha(self, node, x: Interval) -> torch.Tensor:
        l, u = self._clip_domain(x.lower.double(), torch.maximum(x.upper, x.lower).double())
        s_lo, s_hi = self.slope_range(node, l, u)
        a, b = self.default_slopes(node, l, u)
        return torch.stack([self._fraction(a, s_lo, s_hi), self._fraction(b, s_lo, s_hi)], 1).to(x.lower.dtype)

    def project_alpha(self, node, alpha):
        return alpha.clamp(0.0, 1.0)

    def relax(self, node, x: Interval, alpha: torch.Tensor | None = None) -> Relaxation:
        dtype = x.lower.dtype
        l, u = self._clip_domain(x.lower.double(), torch.maximum(x.upper, x.lower).double())
        if alpha is not None:
            l, u = l.unsqueeze(1), u.unsqueeze(1)
        finite = torch.isfinite(l) & torch.isfinite(u)
        l = torch.where(finite, l, torch.zeros_like(l))
        u = torch.where(finite, u, torch.zeros_like(u))
        if alpha is None:
            s_l, s_u = self.default_slopes(node, l, u)
        else:
            s_lo, s_hi = self.slope_range(node, l, u)
            t = alpha.double()
            s_l = s_lo + t[:, :, 0] * (s_hi - s_lo)
            s_u = s_lo + t[:, :, 1] * (s_hi - s_lo)
        lb = self.offsets(node, s_l, l, u, upper=False)
        ub = self.offsets(node, s_u, l, u, upper=True)
        return self._finish(node, x, alpha is not None, finite, l, u, s_l, lb, s_u, ub, dtype)

    def _finish(self, node, x, per_row, finite, l, u, lw, lb, uw, ub, dtype) -> Relaxation:
        """Cast to the working precision; sides that do not survive the cast become constants."""
        mag = torch.maximum(l.abs(), u.abs())
        ulp = _ULP.get(dtype, 2e-7)
        lw_c, uw_c = lw.to(dtype), uw.to(dtype)
        lb_c = (lb - ulp * (1 + lb.abs() + mag * lw.abs())).to(dtype)
        ub_c = (ub + ulp * (1 + ub.abs() + mag * uw.abs())).to(dtype)
        ibp = self.ibp(node, [x])
        lo_c, hi_c = ibp.lower, ibp.upper
        if per_row:
            lo_c, hi_c, finite = lo_c.unsqueeze(1), hi_c.unsqueeze(1), finite
        ok_l = finite & torch.isfinite(lw_c) & ~torch.isnan(lb_c) & (lb_c < math.inf)
        ok_u = finite & torch.isfinite(uw_c) & ~torch.isnan(ub_c) & (ub_c > -math.inf)
        # an infinite lower offset with a nonzero slope would turn into NaN at x = 0
        ok_l &= torch.isfinite(lb_c) | (lw_c == 0)
        ok_u &= torch.isfinite(ub_c) | (uw_c == 0)
        zero = torch.zeros_like(lw_c)
        lo_c, hi_c = torch.broadcast_to(lo_c, lb_c.shape), torch.broadcast_to(hi_c, ub_c.shape)
        return Relaxation(torch.where(ok_l, lw_c, zero), torch.where(ok_l, lb_c, lo_c),
                          torch.where(ok_u, uw_c, zero), torch.where(ok_u, ub_c, hi_c))

    def backward(self, node, A, xs, is_const, alpha=None):
        new_A, bias = safe_relaxation_backward(A, self.relax(node, xs[0], alpha))
        return [new_A], bias

    # ---- intervals -----------------------------------------------------------------------
    def ibp(self, node: Node, xs: Sequence[Interval]) -> Interval:
        x = xs[0]
        if self.monotone:
            l, u = self._clip_domain(x.lower, torch.maximum(x.upper, x.lower))
            a, b = self.fn(node, l), self.fn(node, u)
            return Interval(a, b) if self.monotone > 0 else Interval(b, a)
        dtype = x.lower.dtype
        l, u = self._clip_domain(x.lower.double(), torch.maximum(x.upper, x.lower).double())
        lo, hi = self.extremes(node, torch.zeros_like(l), l, u)
        ulp = _ULP.get(dtype, 2e-7)
        lo, hi = lo - ulp * (1 + lo.abs()), hi + ulp * (1 + hi.abs())
        lo, hi = self.range_clip(node, lo, hi)
        return Interval(lo.to(dtype), hi.to(dtype))

    def range_clip(self, node: Node, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Intersect an enclosure with the function's global range (override when known)."""
        return lo, hi

    # ---- protocol for branching and LipSDP -----------------------------------------------
    def split_point(self, node: Node, x: Interval) -> torch.Tensor:
        """Split at the breakpoint inside the interval nearest its middle, else the middle."""
        l, u = x.lower, torch.maximum(x.upper, x.lower)
        mid = (l + u) / 2
        best, dist = mid, torch.full_like(mid, math.inf)
        for p in self.breakpoints(node):
            d = (mid - p).abs()
            take = (l < p) & (p < u) & (d < dist)
            best = torch.where(take, torch.full_like(mid, p), best)
            dist = torch.where(take, d, dist)
        return best


class UnboundedOn(SlopeRule):
    """A SlopeRule whose function is unbounded on some intervals (1/x reaching 0, tan reaching a
    pole): those get infinite bounds (zero slopes, infinite offsets), the rest the usual
    relaxation. `stand_in` is a harmless interval relaxed in their place, so that no NaN or
    overflow reaches the batch."""

    stand_in: tuple[float, float] = (1.0, 2.0)

    def unbounded(self, x: Interval) -> torch.Tensor:
        raise NotImplementedError

    def _stand_in(self, x: Interval, bad: torch.Tensor) -> Interval:
        return Interval(torch.where(bad, self.stand_in[0], x.lower), torch.where(bad, self.stand_in[1], x.upper))

    def ibp(self, node, xs):
        bad = self.unbounded(xs[0])
        r = super().ibp(node, [self._stand_in(xs[0], bad)])
        return Interval(torch.where(bad, -math.inf, r.lower), torch.where(bad, math.inf, r.upper))

    def relax(self, node, x, alpha=None):
        bad = self.unbounded(x)
        if not bool(bad.any()):
            return super().relax(node, x, alpha)
        r = super().relax(node, self._stand_in(x, bad), alpha)
        if alpha is not None:
            bad = bad.unsqueeze(1)
        zero = torch.zeros_like(r.lw)
        return Relaxation(torch.where(bad, zero, r.lw), torch.where(bad, -math.inf, r.lb),
                          torch.where(bad, zero, r.uw), torch.where(bad, math.inf, r.ub))

