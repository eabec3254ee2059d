"""Elu / Selu / Celu (bounds.ops.elu) and Mish (bounds.ops.silu): the shape facts the
relaxation relies on (derivatives, kink, inflection points, convexity, slope ranges),
tightness, soundness of IBP / CROWN / alpha-CROWN on small graphs over every box family, and
ONNX models with these ops loading and bounding onnxruntime's outputs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from bounds.crown import spec_lower_bounds
from bounds.graph import load_onnx
from bounds.graph.interpret import run
from bounds.graph.ir import Node, graph_to
from bounds.ops import RULES
from bounds.ops.elu import SELU_ALPHA, SELU_GAMMA
from bounds.types import Interval
from tests.bounds import onnx_fixtures as fx
from tests.bounds.op_soundness import BOX_KINDS, check_sound, random_box, sample_box
from tests.bounds.random_graphs import Builder

# Elu with alpha <= 1 and Celu with alpha > 0 are convex; Elu with alpha > 1 and Selu have a
# concave kink; Elu with alpha < 0 a concave exponential piece; Celu with alpha < 0 is concave.
EXP_LINEAR = [("Elu", {}), ("Elu", {"alpha": 0.5}), ("Elu", {"alpha": 2.0}), ("Elu", {"alpha": -0.5}),
              ("Selu", {}), ("Selu", {"alpha": 1.2, "gamma": 0.8}), ("Celu", {}), ("Celu", {"alpha": 0.3}),
              ("Celu", {"alpha": 2.5}), ("Celu", {"alpha": -1.5})]
ALL = EXP_LINEAR + [("Mish", {})]
IDS = [f"{op}-{attrs}" for op, attrs in ALL]


def _node(op: str, attrs: dict) -> Node:
    return Node("y", op, ("x",), attrs)


def _reference(op: str, attrs: dict, x: torch.Tensor) -> torch.Tensor:
    """The functions as torch defines them (float64), independently of the rules."""
    F = torch.nn.functional
    if op == "Elu":
        return F.elu(x, alpha=attrs.get("alpha", 1.0))
    if op == "Selu":
        a, g = attrs.get("alpha", SELU_ALPHA), attrs.get("gamma", SELU_GAMMA)
        return g * torch.where(x > 0, x, a * torch.expm1(x))
    if op == "Celu":
        a = attrs.get("alpha", 1.0)
        return x.clamp(min=0) + (a * torch.expm1(x / a)).clamp(max=0)
    return x * torch.tanh(F.softplus(x))


@pytest.mark.parametrize("op,attrs", ALL, ids=IDS)
def test_function_and_derivative_are_right(op: str, attrs: dict) -> None:
    rule, node = RULES[op], _node(op, attrs)
    x = torch.linspace(-12, 12, 4000, dtype=torch.float64)        # 0 is not a grid point
    want = _reference(op, attrs, x)
    assert torch.allclose(rule.f(node, x), want, atol=1e-12, rtol=1e-12)
    assert torch.allclose(rule.fn(node, x), want, atol=1e-9, rtol=1e-9)
    assert torch.allclose(rule.fn(node, x.float()).double(), want, atol=1e-5, rtol=1e-5)
    xg = x.clone().requires_grad_(True)
    (d1,) = torch.autograd.grad(_reference(op, attrs, xg).sum(), xg)
    assert torch.allclose(rule.df(node, x), d1, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("op,attrs", ALL, ids=IDS)
def test_second_derivative_keeps_its_sign_between_breakpoints(op: str, attrs: dict) -> None:
    rule, node = RULES[op], _node(op, attrs)
    x = torch.linspace(-12, 12, 4000, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(rule.f(node, x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    xd = x.detach()
    edges = (-np.inf, *rule.breakpoints(node), np.inf)
    for a, b in zip(edges[:-1], edges[1:]):
        piece = (xd > a + 1e-3) & (xd < b - 1e-3) & (d2.abs() > 1e-12)
        assert torch.sign(d2[piece]).unique().numel() <= 1, f"f'' changes sign inside ({a}, {b})"


def _second_differences(rule, node, lo: float, up: float) -> torch.Tensor:
    """f(x - h) - 2 f(x) + f(x + h) on a grid of [lo, up] (>= 0 where f is convex)."""
    x = torch.linspace(lo, up, 2001, dtype=torch.float64)
    h = 1e-3
    return rule.f(node, x - h) - 2 * rule.f(node, x) + rule.f(node, x + h)


@pytest.mark.parametrize("op,attrs,convex,concave", [
    ("Elu", {}, True, False), ("Elu", {"alpha": 0.5}, True, False), ("Elu", {"alpha": 0.0}, True, False),
    ("Elu", {"alpha": 2.0}, False, False), ("Elu", {"alpha": -0.5}, False, False),
    ("Selu", {}, False, False), ("Celu", {}, True, False), ("Celu", {"alpha": 2.5}, True, False),
    ("Celu", {"alpha": -1.5}, False, True)])
def test_curvature_across_the_kink_is_what_the_shape_says(op: str, attrs: dict, convex: bool, concave: bool) -> None:
    """The derivation in bounds.ops.elu's docstring, checked numerically: alpha > 1 (and
    Selu) puts a concave kink on a convex exponential, so the unit is not convex across 0."""
    rule, node = RULES[op], _node(op, attrs)
    d = _second_differences(rule, node, -3.0, 3.0)
    assert bool((d >= -1e-12).all()) == convex
    assert bool((d <= 1e-12).all()) == concave
    curv = float(rule.curvature(node, torch.tensor([-1.0], dtype=torch.float64),
                                torch.tensor([1.0], dtype=torch.float64)))
    assert curv == (1.0 if convex else -1.0 if concave else 0.0)


@pytest.mark.parametrize("op,attrs", ALL, ids=IDS)
def test_slope_bounds_are_the_range_of_the_derivative(op: str, attrs: dict) -> None:
    rule, node = RULES[op], _node(op, attrs)
    bounds = rule.slope_bounds(node)
    if op == "Celu" and attrs.get("alpha", 1.0) < 0:
        assert bounds is None          # f' = e^(x / alpha) grows without bound as x -> -inf
        return
    lo, hi = bounds
    x = torch.cat([torch.linspace(-30, 30, 200001, dtype=torch.float64),
                   torch.tensor([-1e-12, 0.0, 1e-12], dtype=torch.float64)])   # both sides of the kink
    d = rule.df(node, x)
    assert lo <= d.min() and d.max() <= hi
    # Elu-like units approach their infimum / supremum 0 only as x -> -inf
    assert d.min() - lo < 1e-6 or lo == 0.0
    assert hi - d.max() < 1e-6 or hi == 0.0


@pytest.mark.parametrize("op,attrs", ALL, ids=IDS)
@pytest.mark.parametrize("lo,up", [(-0.8, -0.7), (1.3, 1.5), (-3.0, -2.9), (0.0, 0.1), (-0.1, 0.0)])
def test_narrow_intervals_give_tight_lines(op: str, attrs: dict, lo: float, up: float) -> None:
    rule, node = RULES[op], _node(op, attrs)
    r = rule.relax(node, Interval(torch.tensor([lo], dtype=torch.float64), torch.tensor([up], dtype=torch.float64)))
    xs = torch.linspace(lo, up, 201, dtype=torch.float64)
    gap = (r.uw * xs + r.ub) - (r.lw * xs + r.lb)
    assert gap.max() < 5e-3 * max(1.0, abs(attrs.get("alpha", 1.0)))


def test_convex_elu_straddling_zero_gets_chord_and_tangent() -> None:
    """Convex: the upper line is the chord, the lower line touches f (no gap at its tangent point)."""
    rule, node = RULES["Elu"], _node("Elu", {})
    lo, up = torch.tensor([-2.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    r = rule.relax(node, Interval(lo, up))
    f_lo, f_up = rule.f(node, lo), rule.f(node, up)
    assert torch.allclose(r.uw * lo + r.ub, f_lo, atol=1e-9) and torch.allclose(r.uw * up + r.ub, f_up, atol=1e-9)
    xs = torch.linspace(-2, 1, 3001, dtype=torch.float64)
    assert float((rule.f(node, xs) - (r.lw * xs + r.lb)).min()) < 1e-6


def test_kink_is_a_candidate_for_concave_kinks() -> None:
    """Selu's upper line of a slope between the one-sided derivatives touches f at the kink."""
    rule, node = RULES["Selu"], _node("Selu", {})
    lo, up = torch.tensor([-0.5], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    s = torch.tensor([1.3], dtype=torch.float64)                  # between gamma 1.05 and 1.76 * e^-0.5
    _, hi = rule.extremes(node, s, lo, up)
    assert abs(float(hi) - 0.0) < 1e-9                            # max of f(x) - s x is f(0) = 0


def test_mish_minimum_is_found_by_ibp() -> None:
    rule, node = RULES["Mish"], _node("Mish", {})
    ibp = rule.ibp(node, [Interval(torch.tensor([-3.0]), torch.tensor([2.0]))])
    assert abs(float(ibp.lower) - (-0.3088434)) < 1e-5
    assert abs(float(ibp.upper) - float(torch.nn.functional.mish(torch.tensor(2.0)))) < 1e-5


def test_split_point_is_the_kink_or_an_inflection_point() -> None:
    x = Interval(torch.tensor([-1.0, 0.5, -4.0]), torch.tensor([3.0, 2.0, 0.0]))
    for op in ("Elu", "Selu", "Celu"):
        assert RULES[op].split_point(_node(op, {}), x).tolist() == [0.0, 1.25, -2.0]
    mish = RULES["Mish"].split_point(_node("Mish", {}), x)
    assert abs(float(mish[0]) - 1.4905712) < 1e-6 and abs(float(mish[2]) + 2.2563764) < 1e-6


@pytest.mark.parametrize("op,attrs", ALL, ids=IDS)
def test_relaxation_sound_for_random_alpha_on_every_box_kind(op: str, attrs: dict) -> None:
    """Lines from initial and arbitrary (projected) alpha hold on point, tiny, straddling,
    wide, one-sided and large intervals (Celu with alpha < 0 overflows past |x| ~ 700 alpha:
    its large boxes are scaled into range)."""
    rule, node = RULES[op], _node(op, attrs)
    gen = torch.Generator().manual_seed(0)
    for k, kind in enumerate(BOX_KINDS):
        box = random_box((64,), k, kind)
        if op == "Celu" and attrs.get("alpha", 1.0) < 0:
            box = Interval(box.lower.clamp(min=-200), box.upper.clamp(min=-200))
        init = rule.init_alpha(node, box)
        rows = 4
        alpha = init.unsqueeze(1).expand(init.shape[0], rows, *init.shape[1:]).clone()
        alpha[:, 1:] += 3 * torch.randn(alpha[:, 1:].shape, generator=gen, dtype=alpha.dtype)
        alpha = rule.project_alpha(node, alpha)
        for r_alpha in (None, alpha):
            r = rule.relax(node, box, r_alpha)
            xs = sample_box(box, 200, k)                                   # (400, 64)
            fx = rule.f(node, xs)
            lw, lb, uw, ub = (t.reshape(-1, 64) for t in (r.lw, r.lb, r.uw, r.ub))  # (rows|1, 64)
            lo_line = lw[:, None] * xs + lb[:, None]
            hi_line = uw[:, None] * xs + ub[:, None]
            tol = 1e-9 * (1 + fx.abs())
            assert bool((lo_line <= fx + tol).all()), f"{kind}: lower line above f by {(lo_line - fx).max()}"
            assert bool((hi_line >= fx - tol).all()), f"{kind}: upper line below f by {(fx - hi_line).max()}"
        ibp = rule.ibp(node, [box])
        fx = rule.f(node, sample_box(box, 200, k))
        tol = 1e-9 * (1 + fx.abs())
        assert bool((ibp.lower <= fx + tol).all() and (ibp.upper >= fx - tol).all()), kind


def _net(seed: int, acts: list[tuple[str, dict]], width: int = 6):
    gen = torch.Generator().manual_seed(seed)
    b = Builder((width,), gen)
    h = "x"
    for op, attrs in acts:
        h = b.op("Add", b.op("MatMul", h, b.const(b.randn(width, width, scale=1.5 * width ** -0.5))),
                 b.const(b.randn(width, scale=0.5)))
        h = b.op(op, h, **attrs)
    return b.graph(b.op("MatMul", h, b.const(b.randn(width, 3, scale=width ** -0.5))))


NETS = [[("Elu", {}), ("Mish", {})], [("Selu", {}), ("Celu", {"alpha": 0.5})],
        [("Mish", {}), ("Elu", {"alpha": 2.0}), ("Selu", {})], [("Celu", {"alpha": 3.0}), ("Elu", {"alpha": -0.5})]]


@pytest.mark.parametrize("net", range(len(NETS)))
@pytest.mark.parametrize("kind", BOX_KINDS)
def test_crown_contains_sampled_outputs(net: int, kind: str) -> None:
    graph = graph_to(_net(net, NETS[net]), dtype=torch.float64)
    check_sound(graph, random_box(graph.input.shape, net, kind), seed=net, n=200)


@pytest.mark.parametrize("net", range(len(NETS)))
def test_alpha_crown_sound_and_at_least_crown(net: int) -> None:
    from bounds.alpha import AlphaOptions, alpha_spec_lower_bounds

    graph = graph_to(_net(net, NETS[net]), dtype=torch.float64)
    box = random_box(graph.input.shape, net + 7, "straddle")
    C = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(net), dtype=torch.float64)
    crown = spec_lower_bounds(graph, box, C, "crown")
    alpha = alpha_spec_lower_bounds(graph, box, C, AlphaOptions(iterations=20, stop_above=None))
    assert (alpha >= crown - 1e-6).all() and (alpha > crown + 1e-5).any()
    ys = run(graph, sample_box(box, 500, net))
    values = torch.einsum("so,no->ns", C[0], ys)
    assert (values >= alpha[0] - 1e-7 * (1 + values.abs())).all()


def _onnx_net() -> onnx.ModelProto:
    """Gemm -> Elu -> Gemm -> Selu -> Gemm -> Mish -> Gemm -> Celu (opset 18 for Mish)."""
    nodes, consts, h = [], {}, "x"
    acts = [("Elu", {"alpha": 0.8}), ("Selu", {}), ("Mish", {}), ("Celu", {"alpha": 1.5})]
    for k, (op, attrs) in enumerate(acts):
        consts[f"w{k}"], consts[f"b{k}"] = fx.f32(5, 5, seed=k, scale=0.7), fx.f32(5, seed=10 + k, scale=0.3)
        nodes.append(fx.node("Gemm", [h, f"w{k}", f"b{k}"], f"g{k}"))
        nodes.append(fx.node(op, [f"g{k}"], f"a{k}", **attrs))
        h = f"a{k}"
    nodes.append(fx.node("Identity", [h], "y"))
    return fx.model(nodes, [1, 5], "y", consts, opset=18)


def test_onnx_model_loads_and_bounds_contain_onnxruntime_outputs() -> None:
    m = _onnx_net()
    graph, worst = fx.compare(m, batch=6, scale=3.0)
    assert worst < 1e-5
    assert {"Elu", "Selu", "Mish", "Celu"} <= {n.op for n in graph.nodes}
    graph = graph_to(graph, dtype=torch.float64)
    rng = np.random.default_rng(0)
    for radius in (0.01, 0.5, 3.0):
        centre = rng.normal(0, 1, (1, 1, 5))
        box = Interval(torch.from_numpy(centre - radius), torch.from_numpy(centre + radius))
        xs = sample_box(box, 100, 0)
        ys = torch.from_numpy(fx.ort_outputs(m, xs.float().numpy())[0]).double().reshape(xs.shape[0], -1)
        C = torch.cat([torch.eye(5), -torch.eye(5)]).to(torch.float64)[None]
        for method in ("ibp", "crown"):
            lower = spec_lower_bounds(graph, box, C, method)[0]
            values = torch.einsum("so,no->ns", C[0], ys)
            # onnxruntime runs in float32: its outputs may differ from the real ones by ~1e-6
            assert bool((values >= lower - 1e-5 * (1 + values.abs())).all()), (method, radius)
