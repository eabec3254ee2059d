"""Every registered activation relaxation holds on sampled points of its interval."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bounds.graph.ir import Node
from bounds.ops import RULES
from bounds.ops.base import ActivationRule
from bounds.types import Interval

ACTIVATIONS = sorted(name for name, rule in RULES.items() if isinstance(rule, ActivationRule))
ATTRS = {"LeakyRelu": [{"alpha": 0.01}, {"alpha": 0.3}, {"alpha": 2.0}],
         "Gelu": [{"approximate": "none"}, {"approximate": "tanh"}],
         "nnverify.Clip": [{"min": -1.0, "max": 1.0}, {"min": 0.0, "max": 6.0}, {"max": 0.5}, {"min": -2.0}],
         "HardSigmoid": [{}, {"alpha": 1 / 6, "beta": 0.5}, {"alpha": -0.5, "beta": 0.2}],
         "ThresholdedRelu": [{}, {"alpha": 0.0}, {"alpha": -0.5}],
         # convex (alpha <= 1), concave kink on a convex exponential (alpha > 1, Selu),
         # concave exponential with a convex kink (alpha < 0), ReLU (alpha = 0)
         "Elu": [{}, {"alpha": 0.3}, {"alpha": 2.0}, {"alpha": -0.5}, {"alpha": 0.0}],
         "Selu": [{}, {"alpha": 1.0, "gamma": 2.0}],
         "Celu": [{}, {"alpha": 0.25}, {"alpha": 3.0}],
         "nnverify.Pow": [{"exponent": e} for e in (2.0, 3.0, 4.0, 5.0, 0.5, 1.5, -1.0, -2.0, 0.0, 1.0)]}


def _shift_right(lo: float, up: float, edge: float) -> tuple[float, float]:
    return (lo, up) if lo > edge + 1e-6 else (edge + 1e-3, up - lo + edge + 1e-3)


def _nonnegative(lo: float, up: float) -> tuple[float, float]:
    return (lo, up) if lo >= 0 else (0.0, up - lo)


def _off_zero(lo: float, up: float) -> tuple[float, float]:
    return (lo, up) if up < -1e-6 else _shift_right(lo, up, 0.0)


def _pow_domain(lo: float, up: float, attrs: dict) -> tuple[float, float]:
    e = attrs["exponent"]
    if e < 0:
        return _off_zero(lo, up) if e == int(e) else _shift_right(lo, up, 0.0)
    return _nonnegative(lo, up) if e != int(e) else (lo, up)


# Boxes moved to where the op is defined and finite (the rules' behaviour outside is tested
# in tests/bounds/test_ops_convex.py): op -> (lo, up, attrs) -> (lo, up)
DOMAINS = {
    "Exp": lambda lo, up, attrs: (lo, up) if up <= 80 else (lo - up + 80, 80.0),
    "Log": lambda lo, up, attrs: _shift_right(lo, up, 0.0),
    "Sqrt": lambda lo, up, attrs: _nonnegative(lo, up),
    "Reciprocal": lambda lo, up, attrs: _off_zero(lo, up),
    "nnverify.Pow": _pow_domain,
    # squeezed (order kept) into where they are finite: float32 overflows past ~89 (cosh, sinh),
    # asin / acos live on [-1, 1], tan's principal branch is (-pi/2, pi/2)
    "Sinh": lambda lo, up, attrs: (max(min(lo, 80.0), -80.0), max(min(up, 80.0), -80.0)),
    "Cosh": lambda lo, up, attrs: (max(min(lo, 80.0), -80.0), max(min(up, 80.0), -80.0)),
    "Asin": lambda lo, up, attrs: (math.tanh(lo / 4), math.tanh(up / 4)),
    "Acos": lambda lo, up, attrs: (math.tanh(lo / 4), math.tanh(up / 4)),
    "Tan": lambda lo, up, attrs: (1.5 * math.tanh(lo / 4), 1.5 * math.tanh(up / 4)),
    "Atanh": lambda lo, up, attrs: (0.99 * math.tanh(lo / 4), 0.99 * math.tanh(up / 4)),
    "Acosh": lambda lo, up, attrs: _shift_right(lo, up, 1.0),
}
# Box families named by the style guide: point, tiny, wide, one-sided, straddling, large.
KINDS = {
    "point": lambda c, w: (c, c),
    "tiny": lambda c, w: (c, c + 1e-6 * w),
    "wide": lambda c, w: (c - 10 * w, c + 10 * w),
    "negative": lambda c, w: (-abs(c) - w - 1e-3, -abs(c) - 1e-3),
    "positive": lambda c, w: (abs(c) + 1e-3, abs(c) + w + 1e-3),
    "straddling": lambda c, w: (-w - 1e-3, w * abs(c) + 1e-3),
    "large": lambda c, w: (c * 100 - 50 * w, c * 100 + 50 * w),
}


def _check(rule: ActivationRule, node: Node, lower: torch.Tensor, upper: torch.Tensor) -> None:
    r = rule.relax(node, Interval(lower, upper))
    t = torch.rand(lower.shape[0], 257, dtype=lower.dtype)
    t[:, 0], t[:, 1] = 0.0, 1.0
    xs = lower[:, None] + t * (upper - lower)[:, None]
    # float32 rounding can put a sample just outside the box, where steep functions (1/x) differ
    xs = torch.minimum(torch.maximum(xs, lower[:, None]), upper[:, None])
    fx = rule.fn(node, xs)
    lo = r.lw[:, None] * xs + r.lb[:, None]
    hi = r.uw[:, None] * xs + r.ub[:, None]
    tol = 1e-5 * (1 + fx.abs())
    assert (lo <= fx + tol).all(), f"lower relaxation above f: {(lo - fx).max()}"
    assert (hi >= fx - tol).all(), f"upper relaxation below f: {(fx - hi).max()}"
    ibp = rule.ibp(node, [Interval(lower[:, None], upper[:, None])])
    assert (ibp.lower <= fx.min(1, keepdim=True).values + tol.max()).all()
    assert (ibp.upper >= fx.max(1, keepdim=True).values - tol.max()).all()


@pytest.mark.parametrize("op", ACTIVATIONS)
@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=25, deadline=None)
@given(c=st.floats(-8, 8), w=st.floats(1e-3, 6))
def test_relaxation_sound_on_box_families(op: str, kind: str, c: float, w: float) -> None:
    torch.manual_seed(0)
    for attrs in ATTRS.get(op, [{}]):
        node = Node("y", op, ("x",), attrs)
        lo, up = KINDS[kind](c, w)
        lo, up = DOMAINS.get(op, lambda a, b, _: (a, b))(lo, max(lo, up), attrs)
        lower = torch.tensor([lo], dtype=torch.float32)
        upper = torch.tensor([max(lo, up)], dtype=torch.float32)
        _check(RULES[op], node, lower, upper)


@pytest.mark.parametrize("op", ACTIVATIONS)
def test_relaxation_sound_on_random_batches(op: str) -> None:
    torch.manual_seed(1)
    for attrs in ATTRS.get(op, [{}]):
        node = Node("y", op, ("x",), attrs)
        a, b = torch.randn(2000) * 4, torch.randn(2000) * 4
        lower, upper = torch.minimum(a, b), torch.maximum(a, b)
        if op in DOMAINS:
            pairs = [DOMAINS[op](lo, up, attrs) for lo, up in zip(lower.tolist(), upper.tolist())]
            lower, upper = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
        _check(RULES[op], node, lower, upper)


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh"])
def test_s_shaped_relaxation_is_not_trivial(op: str) -> None:
    """A relaxation that is sound but useless would pass the tests above; pin tightness."""
    rule = RULES[op]
    node = Node("y", op, ("x",))
    r = rule.relax(node, Interval(torch.tensor([-0.1]), torch.tensor([0.1])))
    xs = torch.linspace(-0.1, 0.1, 101)
    gap = (r.uw * xs + r.ub) - (r.lw * xs + r.lb)
    assert gap.max() < 1e-3


@pytest.mark.parametrize("op", ACTIVATIONS)
@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=10, deadline=None)
@given(c=st.floats(-8, 8), w=st.floats(1e-3, 6), seed=st.integers(0, 2**16))
@example(c=7.25, w=6.0, seed=0)   # wide Acos: ends within 1e-11 of +-1, where acos is steepest
def test_relaxation_sound_for_any_projected_alpha(op: str, kind: str, c: float, w: float, seed: int) -> None:
    """Optimisable parameters, however the optimiser moves them, give sound lines once projected."""
    gen = torch.Generator().manual_seed(seed)
    rule = RULES[op]
    for attrs in ATTRS.get(op, [{}]):
        node = Node("y", op, ("x",), attrs)
        lo, up = KINDS[kind](c, w)
        lo, up = DOMAINS.get(op, lambda a, b, _: (a, b))(lo, max(lo, up), attrs)
        x = Interval(torch.tensor([lo], dtype=torch.float64), torch.tensor([max(lo, up)], dtype=torch.float64))
        init = rule.init_alpha(node, x)
        if init is None:
            continue
        rows = 3
        alpha = init.unsqueeze(1).expand(init.shape[0], rows, *init.shape[1:]).clone()
        alpha = rule.project_alpha(node, alpha + 4 * torch.randn(alpha.shape, generator=gen, dtype=alpha.dtype))
        r = rule.relax(node, x, alpha)                                    # (1, rows, 1)
        t = torch.rand(257, generator=gen, dtype=torch.float64)
        t[0], t[1] = 0.0, 1.0
        xs = x.lower + t * (x.upper - x.lower)                            # (257,)
        # rounding can put a sample one ulp outside the box, where steep functions (acos at 1) differ
        xs = torch.minimum(torch.maximum(xs, x.lower), x.upper)
        fx = rule.fn(node, xs)
        def per_row(t: torch.Tensor) -> torch.Tensor:   # some parts need not differ per row
            return torch.broadcast_to(t.reshape(1, -1), (1, rows)).reshape(rows, 1)

        lo_line = per_row(r.lw) * xs + per_row(r.lb)
        hi_line = per_row(r.uw) * xs + per_row(r.ub)
        tol = 1e-9 * (1 + fx.abs())
        assert (lo_line <= fx + tol).all(), f"lower line above f by {(lo_line - fx).max()}"
        assert (hi_line >= fx - tol).all(), f"upper line below f by {(fx - hi_line).max()}"
