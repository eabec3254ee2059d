"""GELU, x * Phi(x) (ONNX `Gelu`, opset 20; attr approximate = none | tanh).

Not monotone: a minimum near x = -0.75, and f' changes direction at the inflection points
+-c (c = sqrt 2 for the exact form, ~1.4 for the tanh form; GELU(x) - x/2 is even, so they
are symmetric). Relaxed by bounds.ops.curves.SlopeRule: on each of the three pieces f' is
monotone, so f' = s has at most one root there (found by bisection) and the offsets of lines
of any slope are exact; the optimisable parameters are the two slopes (the tangent points).
"""
from __future__ import annotations

import math

import torch

from bounds.ops.curves import SlopeRule

_K = math.sqrt(2 / math.pi)   # tanh form: 0.5 x (1 + tanh(K (x + A x^3)))
_A = 0.044715


def _tanh_parts(x: torch.Tensor):
    z = _K * (x + _A * x ** 3)
    dz = _K * (1 + 3 * _A * x * x)
    return torch.tanh(z), dz


def _tanh_second(x: float) -> float:
    """f'' of the tanh form (for its inflection point, at import)."""
    t = math.tanh(_K * (x + _A * x ** 3))
    dz, ddz = _K * (1 + 3 * _A * x * x), 6 * _K * _A * x
    return (1 - t * t) * (dz + 0.5 * x * (ddz - 2 * t * dz * dz))


def _root(fn, lo: float, hi: float) -> float:
    """Bisection for a sign change of fn on [lo, hi] (import-time constants)."""
    flo = fn(lo)
    for _ in range(200):
        mid = (lo + hi) / 2
        if (fn(mid) > 0) == (flo > 0):
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


#: inflection points of the exact and the tanh form
C_EXACT = math.sqrt(2.0)
C_TANH = _root(_tanh_second, 1.0, 2.0)


def _exact_df(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2))) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def _tanh_df(x: float) -> float:
    t = math.tanh(_K * (x + _A * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _K * (1 + 3 * _A * x * x)


#: global slope ranges [f'(-c), f'(c)], rounded outwards
SLOPES = {"none": (_exact_df(-C_EXACT) - 1e-9, _exact_df(C_EXACT) + 1e-9),
          "tanh": (_tanh_df(-C_TANH) - 1e-9, _tanh_df(C_TANH) + 1e-9)}


class Gelu(SlopeRule):
    @staticmethod
    def _approximate(node) -> str:
        mode = node.attrs.get("approximate", "none")
        if mode not in ("none", "tanh"):
            raise ValueError(f"Gelu approximate={mode!r} is not 'none' or 'tanh'")
        return mode

    def fn(self, node, x):
        return torch.nn.functional.gelu(x, approximate=self._approximate(node))

    def f(self, node, x):
        if self._approximate(node) == "tanh":
            t, _ = _tanh_parts(x)
            return 0.5 * x * (1 + t)
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    def df(self, node, x):
        if self._approximate(node) == "tanh":
            t, dz = _tanh_parts(x)
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * dz
        # Phi(x) + x phi(x) with few temporaries (root searches call this most; split tables too);
        # in place only on fresh results that autograd does not keep (erf saves its input)
        phi = torch.erf(x * (1 / math.sqrt(2))).mul_(0.5).add_(0.5)
        return torch.addcmul(phi, x, torch.exp(x * x * -0.5), value=1 / math.sqrt(2 * math.pi))

    def breakpoints(self, node):
        c = C_TANH if self._approximate(node) == "tanh" else C_EXACT
        return (-c, c)

    def range_clip(self, node, lo, hi):
        return lo.clamp(min=-0.1701), hi     # global minima: -0.16997 (exact), -0.17004 (tanh form)

    def slope_bounds(self, node):
        return SLOPES[self._approximate(node)]
