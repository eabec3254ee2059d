"""GELU (bounds.ops.gelu), SiLU and Softplus (bounds.ops.silu): the shape facts the relaxation
relies on (derivatives, inflection points, slope ranges), tightness, and soundness of CROWN /
alpha-CROWN on small graphs; the fused GELU bounds beat the unfused pattern's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bounds.crown import spec_lower_bounds
from bounds.graph import load_onnx
from bounds.graph.interpret import run
from bounds.graph.ir import Node, graph_to
from bounds.ops import RULES
from bounds.types import Interval
from tests.bounds.op_soundness import check_sound, random_box, sample_box
from tests.bounds.random_graphs import Builder

SMOOTH = [("Gelu", {"approximate": "none"}), ("Gelu", {"approximate": "tanh"}), ("nnverify.SiLU", {}),
          ("Softplus", {})]


def _node(op: str, attrs: dict) -> Node:
    return Node("y", op, ("x",), attrs)


@pytest.mark.parametrize("op,attrs", SMOOTH)
def test_derivative_and_inflection_points_are_right(op: str, attrs: dict) -> None:
    rule, node = RULES[op], _node(op, attrs)
    x = torch.linspace(-12, 12, 4001, dtype=torch.float64, requires_grad=True)
    f = rule.f(node, x)
    (d1,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    assert torch.allclose(rule.df(node, x.detach()), d1.detach(), atol=1e-12)
    assert torch.allclose(rule.f(node, x.detach()), rule.fn(node, x.detach()), atol=1e-9)
    # f'' keeps one sign on each piece between breakpoints (where it is not negligible)
    edges = (-np.inf, *rule.breakpoints(node), np.inf)
    xd = x.detach()
    for a, b in zip(edges[:-1], edges[1:]):
        piece = (xd > a + 1e-3) & (xd < b - 1e-3) & (d2.abs() > 1e-12)
        signs = torch.sign(d2[piece]).unique()
        assert signs.numel() <= 1, f"f'' changes sign inside ({a}, {b})"


@pytest.mark.parametrize("op,attrs", SMOOTH)
def test_slope_bounds_are_the_range_of_the_derivative(op: str, attrs: dict) -> None:
    rule, node = RULES[op], _node(op, attrs)
    lo, hi = rule.slope_bounds(node)
    d = rule.df(node, torch.linspace(-30, 30, 200001, dtype=torch.float64))
    assert lo <= d.min() and d.max() <= hi
    assert d.min() - lo < 1e-6 and hi - d.max() < 1e-6


@pytest.mark.parametrize("op,attrs", SMOOTH)
@pytest.mark.parametrize("lo,up", [(-0.8, -0.7), (1.3, 1.5), (-3.0, -2.9), (0.0, 0.1)])
def test_narrow_intervals_give_tight_lines(op: str, attrs: dict, lo: float, up: float) -> None:
    rule, node = RULES[op], _node(op, attrs)
    r = rule.relax(node, Interval(torch.tensor([lo], dtype=torch.float64), torch.tensor([up], dtype=torch.float64)))
    xs = torch.linspace(lo, up, 201, dtype=torch.float64)
    gap = (r.uw * xs + r.ub) - (r.lw * xs + r.lb)
    assert gap.max() < 5e-3


def test_gelu_minimum_is_found_by_ibp() -> None:
    rule = RULES["Gelu"]
    for mode, want in (("none", -0.169971), ("tanh", -0.170041)):
        ibp = rule.ibp(_node("Gelu", {"approximate": mode}), [Interval(torch.tensor([-3.0]), torch.tensor([2.0]))])
        assert abs(float(ibp.lower) - want) < 1e-5
        assert abs(float(ibp.upper) - float(torch.nn.functional.gelu(torch.tensor(2.0)))) < 1e-3


def _net(seed: int, acts: list[tuple[str, dict]], width: int = 6):
    gen = torch.Generator().manual_seed(seed)
    b = Builder((width,), gen)
    h = "x"
    for op, attrs in acts:
        h = b.op("Add", b.op("MatMul", h, b.const(b.randn(width, width, scale=1.5 * width ** -0.5))),
                 b.const(b.randn(width, scale=0.5)))
        h = b.op(op, h, **attrs)
    return b.graph(b.op("MatMul", h, b.const(b.randn(width, 3, scale=width ** -0.5))))


NETS = [[SMOOTH[0], SMOOTH[2]], [SMOOTH[1], SMOOTH[3]], [SMOOTH[2], SMOOTH[0], SMOOTH[3]]]


@pytest.mark.parametrize("net", range(len(NETS)))
@pytest.mark.parametrize("kind", ["tiny", "straddle", "large"])
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
    assert (alpha >= crown - 1e-6).all() and (alpha > crown + 1e-4).any()
    ys = run(graph, sample_box(box, 500, net))
    values = torch.einsum("so,no->ns", C[0], ys)
    assert (values >= alpha[0] - 1e-7 * (1 + values.abs())).all()


def test_fused_gelu_bounds_beat_the_unfused_pattern() -> None:
    from tests.bounds import onnx_fixtures as fx
    from tests.bounds.test_fuse_activations import C as CONSTS
    from tests.bounds.test_fuse_activations import GELU_PATTERNS, _dense

    nodes, _ = GELU_PATTERNS["torch"]
    m = fx.model(_dense() + nodes, [4], consts=CONSTS)
    fused = graph_to(load_onnx(m.SerializeToString()), dtype=torch.float64)
    raw = graph_to(load_onnx(m.SerializeToString(), canonical=False), dtype=torch.float64)
    assert "Gelu" in {n.op for n in fused.nodes} and "Gelu" not in {n.op for n in raw.nodes}
    box = random_box((4,), 3, "straddle")
    C = torch.cat([torch.eye(6), -torch.eye(6)]).to(torch.float64)[None]
    b_fused = spec_lower_bounds(fused, box, C, "crown")
    b_raw = spec_lower_bounds(raw, box, C, "crown")
    assert (b_fused >= b_raw - 1e-6).all() and (b_fused.sum() > b_raw.sum() + 0.1)
    ys = run(fused, sample_box(box, 300, 0))
    assert (torch.einsum("so,no->ns", C[0], ys) >= b_fused[0] - 1e-7).all()
