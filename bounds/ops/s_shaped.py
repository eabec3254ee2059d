"""S-shaped activations (sigmoid, tanh, erf, atan, softsign, asinh): convex left of 0, concave right of 0."""
from __future__ import annotations

import math

import torch

from bounds.ops.base import ActivationRule
from bounds.types import Interval, Relaxation

_BISECTION_STEPS = 24


class SShaped(ActivationRule):
    """Relaxation shared by functions with one inflection point at 0 (convex for x < 0).

    Computed in float64: the tangent-point search subtracts nearly equal numbers.
    """

    def f(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def df(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fn(self, node, x):
        return self.f(x)

    def _tangent_through(self, anchor: torch.Tensor, far: torch.Tensor, upper: bool) -> torch.Tensor:
        """Tangent point d between 0 and `far` whose tangent passes above/below (anchor, f(anchor)).

        For an upper bound the anchor is l < 0 and d in [0, far]; for a lower bound the anchor
        is u > 0 and d in [far, 0]. Returns the end of the bisection bracket at which the
        tangent line is still on the safe side of f(anchor).
        """
        fa = self.f(anchor)
        safe, unsafe = far.clone(), torch.zeros_like(far)
        for _ in range(_BISECTION_STEPS):
            mid = (safe + unsafe) / 2
            gap = self.f(mid) + self.df(mid) * (anchor - mid) - fa
            # an upper tangent is safe when it passes above f(anchor), a lower one below
            ok = gap >= 0 if upper else gap <= 0
            safe = torch.where(ok, mid, safe)
            unsafe = torch.where(ok, unsafe, mid)
        return safe

    def _tangent_ranges(self, l: torch.Tensor, u: torch.Tensor):
        """Where the tangent point of each bounding line may lie (float64).

        Returns (lower range, upper range, lower uses chord, upper uses chord): any tangent
        point inside a range gives a sound line, so the ranges are what alpha-CROWN searches.
        """
        zero = torch.zeros_like(l)
        fl, fu = self.f(l), self.f(u)
        convex, concave = u <= 0, l >= 0
        # upper: tangent in the concave part, above f(l) when l < 0
        d_up = self._tangent_through(torch.minimum(l, zero), torch.maximum(u, zero), True)
        up_chord = convex | (~concave & (self.f(u) + self.df(u) * (l - u) - fl < 0))
        up_lo = torch.where(concave, l, d_up)
        up_hi = torch.maximum(u, zero)
        # lower: tangent in the convex part, below f(u) when u > 0
        d_lo = self._tangent_through(torch.maximum(u, zero), torch.minimum(l, zero), False)
        lo_chord = concave | (~convex & (self.f(l) + self.df(l) * (u - l) - fu > 0))
        lo_lo = torch.minimum(l, zero)
        lo_hi = torch.where(convex, u, d_lo)
        return (lo_lo, lo_hi), (up_lo, torch.maximum(up_hi, up_lo)), lo_chord, up_chord

    def _default_fractions(self, l, u, ranges) -> tuple[torch.Tensor, torch.Tensor]:
        """Tangent points at the interval's midpoint, moved into their ranges, as fractions."""
        mid = (l + u) / 2
        out = []
        for a, b in ranges:
            span = b - a
            frac = (mid.clamp(min=a, max=b) - a) / torch.where(span > 1e-12, span, torch.ones_like(span))
            out.append(torch.where(span > 1e-12, frac, torch.full_like(frac, 0.5)))
        return out[0], out[1]

    def init_alpha(self, node, x: Interval) -> torch.Tensor:
        l, u = x.lower.double(), torch.maximum(x.upper, x.lower).double()
        lo_range, up_range, _, _ = self._tangent_ranges(l, u)
        t_lo, t_up = self._default_fractions(l, u, (lo_range, up_range))
        return torch.stack([t_lo, t_up], dim=1).to(x.lower.dtype)       # (B, 2, *shape)

    def project_alpha(self, node, alpha):
        return alpha.clamp(0.0, 1.0)

    #: the largest slope, f'(0)
    max_slope = 1.0

    def slope_bounds(self, node):
        return (0.0, self.max_slope)

    def split_point(self, node, x: Interval) -> torch.Tensor:
        """The inflection point 0 when the interval straddles it, else the middle."""
        return torch.where((x.lower < 0) & (x.upper > 0), torch.zeros_like(x.lower), x.center)

    def relax(self, node, x: Interval, alpha=None) -> Relaxation:
        """Chords where the function bends towards the line, tangents elsewhere. With `alpha`
        (B, S, 2, *shape) the lower / upper tangent points are those fractions of their
        ranges (see _tangent_ranges), per spec row."""
        dtype = x.lower.dtype
        l, u = x.lower.double(), x.upper.double()
        u = torch.maximum(u, l)
        if alpha is not None:
            l, u = l.unsqueeze(1), u.unsqueeze(1)
        fl, fu = self.f(l), self.f(u)
        width = u - l
        tiny = width < 1e-9
        chord_w = torch.where(tiny, self.df(l), (fu - fl) / torch.where(tiny, torch.ones_like(width), width))
        chord_b = fl - chord_w * l
        (lo_a, lo_b), (up_a, up_b), lo_chord, up_chord = self._tangent_ranges(l, u)
        if alpha is None:
            t_lo, t_up = self._default_fractions(l, u, ((lo_a, lo_b), (up_a, up_b)))
        else:
            t_lo, t_up = alpha[:, :, 0].double(), alpha[:, :, 1].double()
        d_lo = lo_a + t_lo * (lo_b - lo_a)
        d_up = up_a + t_up * (up_b - up_a)
        uw = torch.where(up_chord, chord_w, self.df(d_up))
        ub = torch.where(up_chord, chord_b, self.f(d_up) - self.df(d_up) * d_up)
        lw = torch.where(lo_chord, chord_w, self.df(d_lo))
        lb = torch.where(lo_chord, chord_b, self.f(d_lo) - self.df(d_lo) * d_lo)
        # float64 -> working precision: widen the offsets by a few ulps of the values involved
        ulp = 2e-7 if dtype != torch.float64 else 1e-13
        slack = ulp * (1.0 + fl.abs() + fu.abs() + torch.maximum(l.abs(), u.abs()) * torch.maximum(lw.abs(), uw.abs()))
        return Relaxation(lw.to(dtype), (lb - slack).to(dtype), uw.to(dtype), (ub + slack).to(dtype))


class Sigmoid(SShaped):
    max_slope = 0.25

    def f(self, x):
        return torch.sigmoid(x)

    def df(self, x):
        s = torch.sigmoid(x)
        return s * (1 - s)


class Tanh(SShaped):
    def f(self, x):
        return torch.tanh(x)

    def df(self, x):
        return 1 - torch.tanh(x) ** 2


class Erf(SShaped):
    """The Gauss error function (what exported GELUs are built from)."""

    max_slope = 2 / math.sqrt(math.pi) + 1e-12

    def f(self, x):
        return torch.erf(x)

    def df(self, x):
        return (2 / math.sqrt(math.pi)) * torch.exp(-x * x)


class Atan(SShaped):
    def f(self, x):
        return torch.atan(x)

    def df(self, x):
        return 1 / (1 + x * x)


class Softsign(SShaped):
    """x / (1 + |x|)."""

    def f(self, x):
        return x / (1 + x.abs())

    def df(self, x):
        return 1 / (1 + x.abs()) ** 2


class Asinh(SShaped):
    def f(self, x):
        return torch.asinh(x)

    def df(self, x):
        return torch.rsqrt(1 + x * x)
