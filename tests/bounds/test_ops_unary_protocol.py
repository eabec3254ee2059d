"""The ActivationRule protocol for branching and LipSDP, on every registered activation:
`split_point` lies in the interval and splitting there shrinks the relaxation's area;
`slope_bounds` (where given) contains every difference quotient of the function."""
from __future__ import annotations

import pytest
import torch

from bounds.graph.ir import Node
from bounds.ops import RULES
from bounds.ops.base import ActivationRule
from bounds.types import Interval
from tests.bounds.test_relaxations import ATTRS, DOMAINS

ACTIVATIONS = sorted(name for name, rule in RULES.items() if isinstance(rule, ActivationRule))


def _variants(op: str):
    for attrs in ATTRS.get(op, [{}]):
        yield Node("y", op, ("x",), attrs), attrs


def _intervals(op: str, attrs: dict, n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, generator=g, dtype=torch.float64) * 3
    b = a + torch.rand(n, generator=g, dtype=torch.float64) * 6
    if op in DOMAINS:
        pairs = [DOMAINS[op](lo, up, attrs) for lo, up in zip(a.tolist(), b.tolist())]
        a = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
        b = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    return a, b


def _area(rule: ActivationRule, node: Node, lo: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Integral of (upper line - lower line) over [lo, up] (exact for lines: width * mid gap)."""
    r = rule.relax(node, Interval(lo, up))
    mid = (lo + up) / 2
    return (up - lo) * ((r.uw - r.lw) * mid + r.ub - r.lb)


@pytest.mark.parametrize("op", ACTIVATIONS)
def test_split_point_inside_and_splitting_there_helps(op: str) -> None:
    rule = RULES[op]
    for node, attrs in _variants(op):
        lo, up = _intervals(op, attrs)
        p = rule.split_point(node, Interval(lo, up))
        assert p.shape == lo.shape and bool(((p >= lo) & (p <= up)).all()), f"{op} {attrs}: split point outside"
        parent = _area(rule, node, lo, up)
        children = _area(rule, node, lo, p) + _area(rule, node, p, up)
        ok = torch.isfinite(parent) & torch.isfinite(children)
        assert bool((children[ok] <= parent[ok] * (1 + 1e-6) + 1e-9).all()), f"{op} {attrs}: split made it worse"
        loose = ok & (parent > 1e-6)
        if bool(loose.any()):
            helped = (children[loose] < parent[loose] * (1 - 1e-3)).float().mean()
            assert helped > 0.5, f"{op} {attrs}: split helps only {float(helped):.2f} of loose intervals"


@pytest.mark.parametrize("op", ACTIVATIONS)
def test_slope_bounds_contain_difference_quotients(op: str) -> None:
    rule = RULES[op]
    for node, attrs in _variants(op):
        bounds = rule.slope_bounds(node)
        if op in ("Sign", "ThresholdedRelu"):
            assert bounds is None, f"{op} is discontinuous: it has no slope bounds"
        if bounds is None:
            continue
        lo, hi = bounds
        x = torch.linspace(-20, 20, 40001, dtype=torch.float64)
        fx = rule.fn(node, x)
        q = torch.diff(fx) / torch.diff(x)
        q = q[torch.isfinite(q)]
        assert bool((q >= lo - 1e-6).all() and (q <= hi + 1e-6).all()), \
            f"{op} {attrs}: [{lo}, {hi}] vs [{q.min()}, {q.max()}]"


def test_existing_activations_answer_the_protocol() -> None:
    x = Interval(torch.tensor([-1.0, 0.5]), torch.tensor([2.0, 1.5]))
    for op, want in (("Relu", (0.0, 1.0)), ("Sigmoid", (0.0, 0.25)), ("Tanh", (0.0, 1.0))):
        node = Node("y", op, ("x",))
        assert RULES[op].slope_bounds(node) == want
        assert RULES[op].split_point(node, x).tolist() == [0.0, 1.0]
    leaky = Node("y", "LeakyRelu", ("x",), {"alpha": 0.1})
    assert RULES["LeakyRelu"].slope_bounds(leaky) == (0.1, 1.0)
