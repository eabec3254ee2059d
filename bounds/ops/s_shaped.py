"""S-shaped activations (sigmoid, tanh): convex left of 0, concave right of 0."""
from __future__ import annotations

import torch

from bounds.ops.base import ActivationRule
from bounds.types import Interval, Relaxation

_BISECTION_STEPS = 40


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

    def relax(self, node, x: Interval, alpha=None) -> Relaxation:
        dtype = x.lower.dtype
        l, u = x.lower.double(), x.upper.double()
        u = torch.maximum(u, l)
        fl, fu = self.f(l), self.f(u)
        width = u - l
        tiny = width < 1e-9
        chord_w = torch.where(tiny, self.df(l), (fu - fl) / torch.where(tiny, torch.ones_like(width), width))
        chord_b = fl - chord_w * l
        mid = (l + u) / 2
        tan_w = self.df(mid)
        tan_b = self.f(mid) - tan_w * mid

        # upper bound
        d_up = self._tangent_through(torch.minimum(l, torch.zeros_like(l)), torch.maximum(u, torch.zeros_like(u)), True)
        # tangent at u below f(l): the tangent point through l lies beyond u, so the chord is valid
        use_chord = self.f(u) + self.df(u) * (l - u) - fl < 0
        # every tangent point in [d_up, u] gives a valid upper line; the steepest (d_up) is
        # tight only near l, so move it to the midpoint when that lies further right
        d_up = torch.minimum(torch.maximum(d_up, mid), torch.maximum(u, torch.zeros_like(u)))
        up_cross_w = torch.where(use_chord, chord_w, self.df(d_up))
        up_cross_b = torch.where(use_chord, chord_b, self.f(d_up) - self.df(d_up) * d_up)
        # lower bound
        d_lo = self._tangent_through(torch.maximum(u, torch.zeros_like(u)), torch.minimum(l, torch.zeros_like(l)), False)
        use_chord = self.f(l) + self.df(l) * (u - l) - fu > 0
        d_lo = torch.maximum(torch.minimum(d_lo, mid), torch.minimum(l, torch.zeros_like(l)))
        lo_cross_w = torch.where(use_chord, chord_w, self.df(d_lo))
        lo_cross_b = torch.where(use_chord, chord_b, self.f(d_lo) - self.df(d_lo) * d_lo)

        convex, concave = u <= 0, l >= 0
        uw = torch.where(convex, chord_w, torch.where(concave, tan_w, up_cross_w))
        ub = torch.where(convex, chord_b, torch.where(concave, tan_b, up_cross_b))
        lw = torch.where(convex, tan_w, torch.where(concave, chord_w, lo_cross_w))
        lb = torch.where(convex, tan_b, torch.where(concave, chord_b, lo_cross_b))
        # float64 -> working precision: widen the offsets by a few ulps of the values involved
        ulp = 2e-7 if dtype != torch.float64 else 1e-13
        slack = ulp * (1.0 + fl.abs() + fu.abs() + torch.maximum(l.abs(), u.abs()) * torch.maximum(lw.abs(), uw.abs()))
        return Relaxation(lw.to(dtype), (lb - slack).to(dtype), uw.to(dtype), (ub + slack).to(dtype))


class Sigmoid(SShaped):
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
