"""Exp / Log / Sqrt / Reciprocal / Pow / Abs (bounds.ops.convex) and Sin / Cos (bounds.ops.periodic):
onnxruntime agreement, behaviour at the edges of their domains, tightness, and soundness of
IBP / CROWN / alpha-CROWN on small graphs built from them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds.crown import backward_lower, intermediate_bounds
from bounds.graph.ir import Node, graph_to
from bounds.ops import RULES
from bounds.ops.curves import safe_relaxation_backward
from bounds.types import Interval
from tests.bounds import onnx_fixtures as fx
from tests.bounds.op_soundness import check_sound, random_box, sample_box
from tests.bounds.random_graphs import Builder

FAST = settings(max_examples=20, deadline=None)


def _node(op: str, **attrs) -> Node:
    return Node("y", op, ("x",), attrs)


def _iv(lo, up, dtype=torch.float64) -> Interval:
    return Interval(torch.tensor(lo, dtype=dtype), torch.tensor(up, dtype=dtype))


# ---------------------------------------------------------------------------------------
# onnxruntime

@pytest.mark.parametrize("op,low,scale", [("Exp", -5.0, 10.0), ("Log", 0.01, 5.0), ("Sqrt", 0.0, 9.0),
                                          ("Reciprocal", 0.1, 3.0), ("Abs", -3.0, 6.0), ("Sin", -20.0, 40.0),
                                          ("Cos", -20.0, 40.0), ("Erf", -3.0, 6.0), ("Atan", -9.0, 18.0),
                                          ("Softsign", -9.0, 18.0), ("Asinh", -9.0, 18.0), ("Sinh", -5.0, 10.0),
                                          ("Cosh", -5.0, 10.0), ("Tan", -1.5, 3.0), ("Asin", -1.0, 2.0),
                                          ("Acos", -1.0, 2.0), ("Atanh", -0.99, 1.98), ("Acosh", 1.0, 9.0)])
def test_interpreter_matches_onnxruntime(op: str, low: float, scale: float) -> None:
    fx.compare(fx.single(op, [2, 5]), batch=6, low=low, scale=scale)


@pytest.mark.parametrize("exponent", [2.0, 3.0, 0.5, -1.0, 4.0])
def test_pow_fused_and_matches_onnxruntime(exponent: float) -> None:
    m = fx.single("Pow", [6], consts={"e": np.array(exponent, dtype=np.float32)}, extra_inputs=["e"])
    graph, _ = fx.compare(m, batch=5, low=0.2 if exponent != int(exponent) or exponent < 0 else -2.0, scale=3.0)
    assert [n.op for n in graph.nodes if n.op not in ("Input", "Constant")] == ["nnverify.Pow"]


def test_pow_with_elementwise_exponent_keeps_ibp() -> None:
    e = np.array([2.0, 3.0, 0.5], dtype=np.float32)
    graph, _ = fx.compare(fx.single("Pow", [3], consts={"e": e}, extra_inputs=["e"]), low=0.1, scale=2.0)
    node = next(n for n in graph.nodes if n.op == "Pow")
    x = Interval(torch.tensor([[-2.0, -2.0, 0.0]]), torch.tensor([[1.0, 1.0, 4.0]]))
    got = RULES["Pow"].ibp(node, [x, Interval.point(torch.from_numpy(e)[None])])
    assert torch.allclose(got.lower, torch.tensor([[0.0, -8.0, 0.0]]))
    assert torch.allclose(got.upper, torch.tensor([[4.0, 1.0, 2.0]]))


# ---------------------------------------------------------------------------------------
# domains and infinities

def test_log_reaching_zero_keeps_a_finite_upper_line() -> None:
    rule, node = RULES["Log"], _node("Log")
    x = _iv([-1.0, 0.0], [2.0, 3.0])
    r = rule.relax(node, x)
    ibp = rule.ibp(node, [x])
    assert torch.isinf(ibp.lower).all() and torch.isfinite(ibp.upper).all()
    assert torch.isfinite(r.uw).all() and torch.isfinite(r.ub).all()
    xs = torch.linspace(1e-9, 2.0, 1001, dtype=torch.float64)
    assert (r.uw[0] * xs + r.ub[0] >= torch.log(xs)).all()
    # only the upper line is used by a negative coefficient: the bound stays finite
    A = torch.tensor([[[-1.0, -1.0]]], dtype=torch.float64)
    new_A, bias = safe_relaxation_backward(A, r)
    assert torch.isfinite(new_A).all() and torch.isfinite(bias).all()
    new_A, bias = safe_relaxation_backward(-A, r)
    assert not torch.isnan(bias).any() and (bias == -math.inf).all()


def test_reciprocal_across_zero_is_unbounded_not_nan() -> None:
    rule, node = RULES["Reciprocal"], _node("Reciprocal")
    x = _iv([-1.0, 0.5, -3.0], [1.0, 2.0, -0.5])
    ibp = rule.ibp(node, [x])
    assert ibp.lower[0] == -math.inf and ibp.upper[0] == math.inf
    assert torch.allclose(ibp.lower[1:], torch.tensor([0.5, -2.0], dtype=torch.float64))
    r = rule.relax(node, x)
    assert (r.lw[0] == 0) and r.lb[0] == -math.inf and r.ub[0] == math.inf
    alpha = rule.init_alpha(node, x)
    ra = rule.relax(node, x, alpha.unsqueeze(1))
    assert not any(torch.isnan(t).any() for t in (ra.lw, ra.lb, ra.uw, ra.ub))


def test_exp_overflow_falls_back_to_constant_side() -> None:
    rule, node = RULES["Exp"], _node("Exp")
    x = _iv([0.0, -5.0], [200.0, 1.0], dtype=torch.float32)
    r = rule.relax(node, x)
    assert r.uw[0] == 0 and r.ub[0] == math.inf          # exp(200) is past float32
    assert torch.isfinite(r.lw).all() and torch.isfinite(r.lb).all()
    assert torch.isfinite(r.uw[1]) and torch.isfinite(r.ub[1])


@pytest.mark.parametrize("op,attrs", [("Sqrt", {}), ("Log", {}), ("nnverify.Pow", {"exponent": 0.5}),
                                      ("nnverify.Pow", {"exponent": 1.5})])
def test_bounds_hold_on_the_domain_part_of_an_interval(op: str, attrs: dict) -> None:
    """Inputs below 0 give NaN (no value); the bounds must hold for the rest of the interval."""
    rule, node = RULES[op], _node(op, **attrs)
    x = _iv([-2.0, -0.5], [3.0, 0.25])
    r = rule.relax(node, x)
    ibp = rule.ibp(node, [x])
    xs = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)[:, None] * x.upper
    fx = rule.fn(node, xs)
    keep = torch.isfinite(fx)
    lo, hi = r.lw * xs + r.lb, r.uw * xs + r.ub
    assert (lo <= fx + 1e-12)[keep].all() and (hi >= fx - 1e-12)[keep].all()
    assert (ibp.lower <= fx + 1e-12)[keep].all() and (ibp.upper >= fx - 1e-12)[keep].all()


# ---------------------------------------------------------------------------------------
# tightness

@pytest.mark.parametrize("op,attrs,lo,up", [("Exp", {}, 0.3, 0.4), ("Log", {}, 2.0, 2.1), ("Sqrt", {}, 1.0, 1.1),
                                            ("Reciprocal", {}, -1.1, -1.0), ("Sin", {}, 0.9, 1.0),
                                            ("Cos", {}, -0.05, 0.05), ("Sin", {}, -0.05, 0.05),
                                            ("nnverify.Pow", {"exponent": 3.0}, -0.05, 0.05),
                                            ("nnverify.Pow", {"exponent": 2.0}, 0.5, 0.6)])
def test_narrow_intervals_give_tight_lines(op: str, attrs: dict, lo: float, up: float) -> None:
    rule, node = RULES[op], _node(op, **attrs)
    r = rule.relax(node, _iv([lo], [up]))
    xs = torch.linspace(lo, up, 101, dtype=torch.float64)
    gap = (r.uw * xs + r.ub) - (r.lw * xs + r.lb)
    assert gap.max() < 4e-3     # ~ max|f"| * width^2 / 8 for chord + midpoint tangent


def test_sin_wide_interval_is_the_unit_band() -> None:
    rule, node = RULES["Sin"], _node("Sin")
    r = rule.relax(node, _iv([-10.0, 0.0], [10.0, 2 * math.pi]))
    assert torch.equal(r.lw, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(r.ub, torch.ones(2, dtype=torch.float64))
    ibp = rule.ibp(node, [_iv([0.0, 1.0], [1.0, 2.0])])
    assert torch.allclose(ibp.lower, torch.tensor([0.0, math.sin(1.0)], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(ibp.upper, torch.tensor([math.sin(1.0), 1.0], dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("op,attrs", [("Sin", {}), ("Cos", {}), ("Abs", {}), ("nnverify.Pow", {"exponent": 2.0}),
                                      ("nnverify.Pow", {"exponent": 3.0}), ("nnverify.Pow", {"exponent": -2.0})])
@FAST
@given(lo=st.floats(-7, 7), width=st.floats(0, 7))
def test_ibp_is_exact_for_non_monotone_functions(op: str, attrs: dict, lo: float, width: float) -> None:
    rule, node = RULES[op], _node(op, **attrs)
    x = _iv([lo], [lo + width])
    ibp = rule.ibp(node, [x])
    xs = torch.linspace(lo, lo + width, 20001, dtype=torch.float64)
    fx = rule.fn(node, xs)
    fx = fx[torch.isfinite(fx)]
    if fx.numel() == 0 or not torch.isfinite(ibp.lower).all() or not torch.isfinite(ibp.upper).all():
        return
    assert ibp.lower <= fx.min() + 1e-9 and ibp.upper >= fx.max() - 1e-9
    assert ibp.lower >= fx.min() - 1e-3 * (1 + fx.abs().max()) and ibp.upper <= fx.max() + 1e-3 * (1 + fx.abs().max())


# ---------------------------------------------------------------------------------------
# graphs

def _unary_net(seed: int, ops: list[tuple[str, dict]], width: int = 5) -> object:
    """x -> dense -> op -> dense -> op ... -> dense, keeping domain-limited ops in their domain."""
    gen = torch.Generator().manual_seed(seed)
    b = Builder((width,), gen)
    h = "x"
    for op, attrs in ops:
        h = b.op("MatMul", h, b.const(b.randn(width, width, scale=width ** -0.5)))
        h = b.op("Add", h, b.const(b.randn(width, scale=0.3)))
        fractional = op == "nnverify.Pow" and attrs["exponent"] != int(attrs["exponent"])
        if op in ("Log", "Sqrt", "Reciprocal") or fractional:
            h = b.op("Add", b.op("Exp", h), b.const(torch.full((width,), 0.2)))   # positive
        if op in ("Asin", "Acos", "Atanh"):
            h = b.op("Tanh", h)                                                   # in (-1, 1)
        if op == "Acosh":
            h = b.op("Add", b.op("Exp", h), b.const(torch.full((width,), 1.0)))   # above 1
        if op == "Tan":
            h = b.op("Mul", b.op("Tanh", h), b.const(torch.full((width,), 1.4)))  # principal branch
        h = b.op(op, h, **attrs)
    h = b.op("MatMul", h, b.const(b.randn(width, 3, scale=width ** -0.5)))
    return b.graph(h)


NETS = [[("Sin", {}), ("Cos", {})], [("nnverify.Pow", {"exponent": 2.0}), ("Sin", {})],
        [("Exp", {}), ("Log", {})], [("Sqrt", {}), ("Abs", {})], [("Reciprocal", {}), ("Atan", {})],
        [("nnverify.Pow", {"exponent": 3.0}), ("Erf", {})], [("nnverify.Pow", {"exponent": 0.5}), ("Cos", {})],
        [("Softsign", {}), ("Sinh", {})], [("Asinh", {}), ("Cosh", {})], [("Asin", {}), ("Tan", {})],
        [("Acos", {}), ("Softsign", {})], [("Atanh", {}), ("Acosh", {})]]


@pytest.mark.parametrize("net", range(len(NETS)))
@pytest.mark.parametrize("kind", ["tiny", "straddle", "wide"])
def test_crown_contains_sampled_outputs(net: int, kind: str) -> None:
    graph = graph_to(_unary_net(net, NETS[net]), dtype=torch.float64)
    box = random_box(graph.input.shape, net, kind)
    if kind == "wide":
        box = Interval(box.center - box.radius / 5, box.center + box.radius / 5)
    check_sound(graph, box, seed=net, n=200)


@pytest.mark.parametrize("net", [0, 1, 5, 7, 8, 9, 10])
def test_alpha_crown_sound_and_at_least_crown(net: int) -> None:
    from bounds.alpha import AlphaOptions, alpha_spec_lower_bounds
    from bounds.crown import spec_lower_bounds

    graph = graph_to(_unary_net(net, NETS[net]), dtype=torch.float64)
    box = random_box(graph.input.shape, net, "straddle")
    C = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(net), dtype=torch.float64)
    crown = spec_lower_bounds(graph, box, C, "crown")
    alpha = alpha_spec_lower_bounds(graph, box, C, AlphaOptions(iterations=15, stop_above=None))
    assert (alpha >= crown - 1e-6).all()
    from bounds.graph.interpret import run
    xs = sample_box(box, 500, net)
    ys = run(graph, xs)
    values = torch.einsum("so,no->ns", C[0], ys)
    assert (values >= alpha[0] - 1e-7 * (1 + values.abs())).all()


def test_crown_beats_ibp_on_a_sin_cos_net() -> None:
    graph = graph_to(_unary_net(0, NETS[0]), dtype=torch.float64)
    box = random_box(graph.input.shape, 0, "tiny")
    box = Interval(box.center - 0.05, box.center + 0.05)
    C = torch.eye(3, dtype=torch.float64)[None]
    ibp = intermediate_bounds(graph, box, "ibp")
    crown = backward_lower(graph, graph.outputs[0], C, intermediate_bounds(graph, box, "crown"))
    ibp_lower = ibp[graph.outputs[0]].lower
    assert (crown >= ibp_lower - 1e-9).all() and (crown > ibp_lower + 1e-3).any()


def test_tan_near_a_pole_holds_and_past_it_is_unbounded() -> None:
    rule, node = RULES["Tan"], _node("Tan")
    near = _iv([1.0, -1.5707], [1.5707, -1.0])
    r = rule.relax(node, near)
    xs = near.lower[:, None] + torch.linspace(0, 1, 2001, dtype=torch.float64)[None] * (near.upper - near.lower)[:, None]
    fx = torch.tan(xs)
    tol = 1e-9 * (1 + fx.abs())
    assert bool((r.lw[:, None] * xs + r.lb[:, None] <= fx + tol).all())
    assert bool((r.uw[:, None] * xs + r.ub[:, None] >= fx - tol).all())
    for lo, up in ((1.0, 1.6), (-1.6, 0.0), (2.0, 2.5)):  # across a pole, or on another branch
        box = _iv([lo], [up])
        ibp = rule.ibp(node, [box])
        assert ibp.lower.item() == -math.inf and ibp.upper.item() == math.inf
        r = rule.relax(node, box)
        assert r.lb.item() == -math.inf and r.ub.item() == math.inf and r.lw.item() == 0 and r.uw.item() == 0
