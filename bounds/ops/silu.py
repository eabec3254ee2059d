"""SiLU / Swish x * sigmoid(x) as one op (`nnverify.SiLU`, fused from Mul(x, Sigmoid(x))), and
Softplus log(1 + e^x) (ONNX `Softplus`).

SiLU is GELU-like: a minimum near x = -1.28 and inflection points at +-c where
x * tanh(x / 2) = 2 (c ~ 2.3994); f' is monotone between them, so bounds.ops.curves.SlopeRule
finds the roots of f' = s by bisection and the offsets are exact. Softplus is convex and
increasing with f' = sigmoid, inverted in closed form.
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
