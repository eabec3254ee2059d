"""SiLU / Swish x * sigmoid(x) as one op (`nnverify.SiLU`, fused from Mul(x, Sigmoid(x))),
Softplus log(1 + e^x) (ONNX `Softplus`) and Mish x * tanh(softplus(x)) (ONNX `Mish`, opset 18).

SiLU is GELU-like: a minimum near x = -1.28 and inflection points at +-c where
x * tanh(x / 2) = 2 (c ~ 2.3994); f' is monotone between them, so bounds.ops.curves.SlopeRule
finds the roots of f' = s by bisection and the offsets are exact. Softplus is convex and
increasing with f' = sigmoid, inverted in closed form.

Mish has the same shape as SiLU: concave, convex, concave. With s = sigmoid(x) and
t = tanh(softplus(x)), f'' = (1 - t^2) s (2 + x (1 - s - 2 t s)); the first two factors are
positive, so the inflection points are the two roots of h(x) = 2 + x (1 - s - 2 t s),
-2.2564 and 1.4905 (found by bisection at import; for x < -2.26 f ~ x e^x is concave, for
x > 1.49 f ~ x - 2x e^(-2x) is concave).
"""
from __future__ import annotations

import math

import torch

from bounds.ops.curves import SlopeRule
from bounds.ops.gelu import _root

SILU = "nnverify.SiLU"
#: inflection points of SiLU: x * tanh(x / 2) = 2
C_SILU = _root(lambda x: x * math.tanh(x / 2) - 2, 1.0, 4.0)


def _silu_df(x: float) -> float:
    s = 1 / (1 + math.exp(-x))
    return s * (1 + x * (1 - s))


class Silu(SlopeRule):
    inflections = (-C_SILU, C_SILU)

    def fn(self, node, x):
        return x * torch.sigmoid(x)   # exactly what the unfused Mul(x, Sigmoid(x)) computes

    def f(self, node, x):
        return x * torch.sigmoid(x)

    def df(self, node, x):
        s = torch.sigmoid(x)
        return s * (1 + x * (1 - s))

    def range_clip(self, node, lo, hi):
        return lo.clamp(min=-0.2785), hi    # global minimum ~ -0.27846

    def slope_bounds(self, node):
        return (_silu_df(-C_SILU) - 1e-9, _silu_df(C_SILU) + 1e-9)


class Softplus(SlopeRule):
    monotone = 1

    def fn(self, node, x):
        return torch.nn.functional.softplus(x)

    def f(self, node, x):
        return torch.logaddexp(x, torch.zeros_like(x))

    def df(self, node, x):
        return torch.sigmoid(x)

    def solve(self, node, s, a, b):
        return torch.log(s) - torch.log1p(-s), torch.zeros_like(s)

    def slope_bounds(self, node):
        return (0.0, 1.0)


def _mish_h(x: float) -> float:
    """The sign-deciding factor of Mish's f'' (see the module docstring)."""
    s = 1 / (1 + math.exp(-x))
    t = math.tanh(math.log1p(math.exp(x)))
    return 2 + x * (1 - s - 2 * t * s)


def _mish_df(x: float) -> float:
    s = 1 / (1 + math.exp(-x))
    t = math.tanh(math.log1p(math.exp(x)))
    return t + x * s * (1 - t * t)


#: inflection points of Mish
C_MISH = (_root(_mish_h, -3.0, -2.0), _root(_mish_h, 1.0, 2.0))
#: the global minimum of Mish, -0.308843 at x ~ -1.1924, rounded down
MISH_MIN = -0.30885


class Mish(SlopeRule):
    inflections = C_MISH

    def fn(self, node, x):
        return torch.nn.functional.mish(x)

    def f(self, node, x):
        # logaddexp is softplus without torch's threshold approximation (exact in float64)
        return x * torch.tanh(torch.logaddexp(x, torch.zeros_like(x)))

    def df(self, node, x):
        # tanh(softplus(x)) = q / (q + 2) with q = e^x (e^x + 2), so 1 - t^2 = 4 (q + 1) / (q + 2)^2:
        # one exp instead of exp, log and tanh (root searches call this most). Past x = 40,
        # t is 1 in float64 and x sigmoid(x) (1 - t^2) < 1e-30: clamping there changes nothing.
        n = torch.exp(x.clamp(max=40.0))
        if x.requires_grad and torch.is_grad_enabled():
            q = n * (n + 2)
            return q / (q + 2) + x * torch.sigmoid(x) * (4 * (q + 1) / ((q + 2) * (q + 2)))
        # the same without temporaries (no autograd to keep intermediate values for)
        q = (n + 2).mul_(n)
        q2 = q + 2
        t = q / q2
        return q.add_(1).mul_(4).div_(q2).div_(q2).mul_(torch.sigmoid(x)).mul_(x).add_(t)

    def range_clip(self, node, lo, hi):
        return lo.clamp(min=MISH_MIN), hi

    def slope_bounds(self, node):
        return (_mish_df(C_MISH[0]) - 1e-9, _mish_df(C_MISH[1]) + 1e-9)
