"""Every registered activation relaxation holds on sampled points of its interval."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds.graph.ir import Node
from bounds.ops import RULES
from bounds.ops.base import ActivationRule
from bounds.types import Interval

ACTIVATIONS = sorted(name for name, rule in RULES.items() if isinstance(rule, ActivationRule))
ATTRS = {"LeakyRelu": [{"alpha": 0.01}, {"alpha": 0.3}, {"alpha": 2.0}]}
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
        lower = torch.tensor([lo], dtype=torch.float32)
        upper = torch.tensor([max(lo, up)], dtype=torch.float32)
        _check(RULES[op], node, lower, upper)


@pytest.mark.parametrize("op", ACTIVATIONS)
def test_relaxation_sound_on_random_batches(op: str) -> None:
    torch.manual_seed(1)
    for attrs in ATTRS.get(op, [{}]):
        node = Node("y", op, ("x",), attrs)
        a, b = torch.randn(2000) * 4, torch.randn(2000) * 4
        _check(RULES[op], node, torch.minimum(a, b), torch.maximum(a, b))


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
def test_relaxation_sound_for_any_projected_alpha(op: str, kind: str, c: float, w: float, seed: int) -> None:
    """Optimisable parameters, however the optimiser moves them, give sound lines once projected."""
    gen = torch.Generator().manual_seed(seed)
    rule = RULES[op]
    for attrs in ATTRS.get(op, [{}]):
        node = Node("y", op, ("x",), attrs)
        lo, up = KINDS[kind](c, w)
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
        fx = rule.fn(node, xs)
        def per_row(t: torch.Tensor) -> torch.Tensor:   # some parts need not differ per row
            return torch.broadcast_to(t.reshape(1, -1), (1, rows)).reshape(rows, 1)

        lo_line = per_row(r.lw) * xs + per_row(r.lb)
        hi_line = per_row(r.uw) * xs + per_row(r.ub)
        tol = 1e-9 * (1 + fx.abs())
        assert (lo_line <= fx + tol).all(), f"lower line above f by {(lo_line - fx).max()}"
        assert (hi_line >= fx - tol).all(), f"upper line below f by {(fx - hi_line).max()}"
