"""Mul / Div / MatMul of two variable tensors: IBP and McCormick CROWN steps contain samples."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds.crown import pre_activation_nodes, spec_lower_bounds
from bounds.graph.interpret import run
from bounds.graph.ir import Node
from bounds.ops import RULES
from bounds.types import Interval
from tests.bounds import onnx_fixtures as fx
from tests.bounds.random_graphs import Builder

#: interval families: (centre, half-width) generators covering one-sided, straddling, wide
KINDS = ["straddle", "positive", "negative", "tiny", "wide", "point"]


def _interval(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> Interval:
    c = torch.randn(1, *shape, generator=gen)
    w = torch.rand(1, *shape, generator=gen)
    if kind == "positive":
        c, w = c.abs() + 0.5, w * 0.5
    elif kind == "negative":
        c, w = -c.abs() - 0.5, w * 0.5
    elif kind == "tiny":
        w = w * 1e-3
    elif kind == "wide":
        c, w = c * 10, w * 20
    elif kind == "point":
        w = w * 0
    else:
        w = w + c.abs()          # straddles 0
    return Interval(c - w, c + w)


def _sample(x: Interval, n: int, gen: torch.Generator) -> torch.Tensor:
    t = torch.rand(n, *x.lower.shape[1:], generator=gen)
    t[: n // 4] = t[: n // 4].round()  # corners are where products peak
    return x.lower + t * (x.upper - x.lower)


def _check_step(op: str, node: Node, x: Interval, y: Interval, gen: torch.Generator,
                alpha: bool, is_const=(False, False)) -> None:
    rule = RULES[op]
    n = 600
    xs = _sample(x, n, gen)
    ys = _sample(y, n, gen)
    out = rule.forward(node, [xs, ys])
    box = rule.ibp(node, [x, y])
    tol = 1e-4 * (1 + out.abs())
    assert (out >= box.lower - tol).all() and (out <= box.upper + tol).all(), "IBP misses a sample"
    S = 3
    A = torch.randn(1, S, *out.shape[1:], generator=gen)
    a = None
    if alpha:
        a = rule.project_alpha(node, torch.rand(1, S, *out.shape[1:], generator=gen) * 1.4 - 0.2)
    (ax, ay), bias = rule.backward(node, A, [x, y], list(is_const), alpha=a)
    lhs = (A[0].unsqueeze(0) * out.unsqueeze(1)).flatten(2).sum(-1)         # (n, S)
    rhs = bias[0]
    if ax is not None:
        rhs = rhs + (ax[0].unsqueeze(0) * xs.unsqueeze(1)).flatten(2).sum(-1)
    if ay is not None:
        rhs = rhs + (ay[0].unsqueeze(0) * ys.unsqueeze(1)).flatten(2).sum(-1)
    slack = 1e-4 * (1 + lhs.abs() + rhs.abs())
    assert (lhs >= rhs - slack).all(), f"CROWN step unsound by {(rhs - lhs).max().item()}"


SHAPES_MUL = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 5)), ((4,), (2, 3, 4))]


@settings(max_examples=30, deadline=None)
@given(kx=st.sampled_from(KINDS), ky=st.sampled_from(KINDS), shapes=st.sampled_from(SHAPES_MUL),
       seed=st.integers(0, 10_000), alpha=st.booleans())
def test_mul_sound(kx: str, ky: str, shapes, seed: int, alpha: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    sx, sy = shapes
    _check_step("Mul", Node("m", "Mul", ("a", "b")), _interval(kx, sx, gen), _interval(ky, sy, gen), gen, alpha)


SHAPES_MM = [((3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 2)), ((4,), (4, 3)), ((3, 4), (4,)),
             ((4,), (4,)), ((1, 3, 4), (2, 4, 5))]


@settings(max_examples=30, deadline=None)
@given(kx=st.sampled_from(KINDS), ky=st.sampled_from(KINDS), shapes=st.sampled_from(SHAPES_MM),
       seed=st.integers(0, 10_000), alpha=st.booleans())
def test_matmul_sound(kx: str, ky: str, shapes, seed: int, alpha: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    sx, sy = shapes
    _check_step("MatMul", Node("m", "MatMul", ("a", "b")), _interval(kx, sx, gen), _interval(ky, sy, gen),
                gen, alpha)


@settings(max_examples=30, deadline=None)
@given(kx=st.sampled_from(KINDS), ky=st.sampled_from(["positive", "negative", "tiny"]),
       seed=st.integers(0, 10_000), alpha=st.booleans(), const_num=st.booleans())
def test_div_sound(kx: str, ky: str, seed: int, alpha: bool, const_num: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = _interval("point" if const_num else kx, (3, 4), gen)
    y = _interval(ky, (4,), gen)
    if ky == "tiny":  # keep the divisor away from 0
        lo, hi = y.lower.abs(), y.upper.abs()
        y = Interval(torch.minimum(lo, hi) + 0.1, torch.maximum(lo, hi) + 0.1)
    _check_step("Div", Node("d", "Div", ("a", "b")), x, y, gen, alpha, is_const=(const_num, False))


def test_div_by_interval_containing_zero() -> None:
    x = Interval(torch.ones(1, 3), torch.ones(1, 3) * 2)
    y = Interval(-torch.ones(1, 3), torch.ones(1, 3))
    node = Node("d", "Div", ("a", "b"))
    box = RULES["Div"].ibp(node, [x, y])
    assert torch.isinf(box.lower).all() and torch.isinf(box.upper).all()
    with pytest.raises(NotImplementedError):
        RULES["Div"].backward(node, torch.ones(1, 1, 3), [x, y], [False, False])


def test_matmul_ibp_exact_when_one_side_has_a_sign() -> None:
    x = Interval(torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[2.0, 3.0]]]))
    y = Interval(torch.tensor([[[-1.0], [-2.0]]]), torch.tensor([[[3.0], [1.0]]]))
    box = RULES["MatMul"].ibp(Node("m", "MatMul", ("a", "b")), [x, y])
    # x0*y0 in [-2, 6], x1*y1 in [-6, 3]
    assert box.lower.item() == pytest.approx(-8.0) and box.upper.item() == pytest.approx(9.0)


def test_mcormick_exact_at_corners() -> None:
    """Both plane pairs are tight on the box edges: at a corner the bound is the value."""
    x = Interval(torch.tensor([[1.0]]), torch.tensor([[3.0]]))
    y = Interval(torch.tensor([[-2.0]]), torch.tensor([[5.0]]))
    node = Node("m", "Mul", ("a", "b"))
    for a in (0.0, 1.0):
        (ax, ay), bias = RULES["Mul"].backward(node, torch.ones(1, 1, 1), [x, y], [False, False],
                                               alpha=torch.full((1, 1, 1), a))
        corner = (1.0, -2.0) if a == 1.0 else (3.0, 5.0)
        assert (ax * corner[0] + ay * corner[1]).item() + bias.item() == pytest.approx(corner[0] * corner[1])


# ----------------------------------------------------------------------------------------
# graph level: attention-like block and gating through bounds.crown

def _attention_graph(seed: int):
    gen = torch.Generator().manual_seed(seed)
    b = Builder((3, 4), gen)
    q = b.op("MatMul", "x", b.const(b.randn(4, 4, scale=0.5)))
    k = b.op("MatMul", "x", b.const(b.randn(4, 4, scale=0.5)))
    v = b.op("MatMul", "x", b.const(b.randn(4, 2, scale=0.5)))
    s = b.op("MatMul", q, b.op("Transpose", k, perm=[1, 0]))
    gate = b.op("Mul", s, b.op("Sigmoid", s))
    out = b.op("MatMul", gate, v)
    ratio = b.op("Div", out, b.op("Add", b.op("Mul", v, v), b.const(torch.tensor(1.0))))
    return b.graph(b.op("Flatten", ratio, axis=0))


@pytest.mark.parametrize("seed", range(4))
def test_crown_contains_samples_on_attention_block(seed: int) -> None:
    graph = _attention_graph(seed)
    assert pre_activation_nodes(graph)  # the variable products ask for input bounds
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(2, 3, 4, generator=gen)
    rad = [0.01, 0.1, 0.3, 1.0][seed]
    box = Interval(centre - rad, centre + rad)
    n_out = graph.output.shape[-1]
    C = torch.randn(2, 4, n_out, generator=gen)
    xs = box.lower + torch.rand(300, *box.lower.shape, generator=gen) * (box.upper - box.lower)
    ys = run(graph, xs.reshape(-1, 3, 4)).reshape(300, 2, -1)
    values = torch.einsum("bso,nbo->nbs", C, ys)
    ibp = spec_lower_bounds(graph, box, C, "ibp")
    crown = spec_lower_bounds(graph, box, C, "crown")
    slack = 1e-4 * (1 + values.abs())
    assert (values >= ibp - slack).all()
    assert (values >= crown - slack).all(), f"CROWN unsound by {(crown - values).max().item()}"
    assert (crown >= ibp - 1e-5).all()
    if rad <= 0.1:
        assert (crown > ibp + 1e-6).any()  # the relaxation earns its keep on small boxes


def test_constant_operand_stays_affine() -> None:
    gen = torch.Generator().manual_seed(0)
    b = Builder((1, 4), gen)
    y = b.op("Div", b.op("Mul", b.op("MatMul", "x", b.const(b.randn(4, 3))), b.const(b.randn(3))),
             b.const(torch.tensor(2.0)))
    graph = b.graph(y)
    assert not pre_activation_nodes(graph)
    from branching.milp import milp_encodable
    assert milp_encodable(graph)
    assert not milp_encodable(_attention_graph(0))


# ----------------------------------------------------------------------------------------
# interpreter vs onnxruntime

@pytest.mark.parametrize("op,shape_b", [("Mul", [3, 4]), ("Div", [4]), ("MatMul", [4, 2])])
def test_interpreter_matches_onnxruntime(op: str, shape_b: list[int]) -> None:
    pytest.importorskip("onnxruntime")
    # y = op(x, g(x)) with g a linear map of x, so both operands are variable
    w = np.random.default_rng(0).normal(size=(4, int(np.prod(shape_b)))).astype(np.float32)
    nodes = [fx.node("Flatten", ["x"], "f", axis=0), fx.node("MatMul", ["f", "w"], "g"),
             fx.node("Reshape", ["g", "s"], "h")]
    extra = "h"
    if op == "Div":  # a divisor >= 1: h*h + 1
        nodes += [fx.node("Mul", ["h", "h"], "hh"), fx.node("Add", ["hh", "one"], "e")]
        extra = "e"
    nodes.append(fx.node(op, ["x", extra], "y"))
    consts = {"w": np.tile(w, (3, 1))[:12] / 4, "s": np.array(shape_b, dtype=np.int64),
              "one": np.array(1.0, dtype=np.float32)}
    m = fx.model(nodes, [3, 4], "y", consts)
    _, diff = fx.compare(m, batch=4)
    assert diff < 1e-4


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000), alpha=st.booleans())
def test_square_sound(kind: str, seed: int, alpha: bool) -> None:
    """Mul(v, v) of one value is a square: non-negative IBP, convex relaxation."""
    gen = torch.Generator().manual_seed(seed)
    x = _interval(kind, (3, 4), gen)
    node = Node("m", "Mul", ("v", "v"))
    rule = RULES["Mul"]
    xs = _sample(x, 500, gen)
    out = xs * xs
    box = rule.ibp(node, [x, x])
    assert (box.lower >= 0).all()
    assert (out >= box.lower - 1e-5 * (1 + out)).all() and (out <= box.upper + 1e-5 * (1 + out)).all()
    A = torch.randn(1, 3, 3, 4, generator=gen)
    a = rule.project_alpha(node, torch.rand(1, 3, 3, 4, generator=gen)) if alpha else None
    (ax, ay), bias = rule.backward(node, A, [x, x], [False, False], alpha=a)
    assert ay is None
    lhs = (A[0].unsqueeze(0) * out.unsqueeze(1)).flatten(2).sum(-1)
    rhs = bias[0] + (ax[0].unsqueeze(0) * xs.unsqueeze(1)).flatten(2).sum(-1)
    assert (lhs >= rhs - 1e-4 * (1 + lhs.abs() + rhs.abs())).all()
