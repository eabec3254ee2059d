"""Softmax: difference-form IBP and relaxation contain samples; ONNX axis semantics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds.crown import spec_lower_bounds
from bounds.graph.interpret import run
from bounds.graph.ir import Node
from bounds.ops import RULES
from bounds.types import Interval
from tests.bounds import onnx_fixtures as fx
from tests.bounds.random_graphs import Builder

KINDS = ["tiny", "small", "wide", "huge", "point", "mixed"]


def _box(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> Interval:
    c = torch.randn(1, *shape, generator=gen) * (3.0 if kind != "huge" else 60.0)
    w = torch.rand(1, *shape, generator=gen)
    scale = {"tiny": 1e-3, "small": 0.3, "wide": 5.0, "huge": 40.0, "point": 0.0}.get(kind)
    if scale is None:  # mixed: some points, some wide
        w = w * 5 * (torch.rand(1, *shape, generator=gen) > 0.5)
    else:
        w = w * scale
    return Interval(c - w, c + w)


def _sample(x: Interval, n: int, gen: torch.Generator) -> torch.Tensor:
    t = torch.rand(n, *x.lower.shape[1:], generator=gen)
    t[: n // 3] = t[: n // 3].round()
    return x.lower + t * (x.upper - x.lower)


NODES = [Node("s", "Softmax", ("a",), {"axis": -1}, opset=13), Node("s", "Softmax", ("a",), {"axis": 1}, opset=13),
         Node("s", "Softmax", ("a",), {}, opset=11), Node("s", "Softmax", ("a",), {"axis": 2}, opset=9)]


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), which=st.integers(0, len(NODES) - 1), seed=st.integers(0, 10_000))
def test_softmax_ibp_and_step_sound(kind: str, which: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    node = NODES[which]
    rule = RULES["Softmax"]
    x = _box(kind, (2, 3, 4), gen)
    xs = _sample(x, 500, gen)
    out = rule.forward(node, [xs])
    box = rule.ibp(node, [x])
    assert (box.lower >= 0).all() and (box.upper <= 1 + 1e-6).all()
    tol = 1e-5
    assert (out >= box.lower - tol).all() and (out <= box.upper + tol).all(), "IBP misses a sample"
    A = torch.randn(1, 4, 2, 3, 4, generator=gen)
    (ax,), bias = rule.backward(node, A, [x], [False])
    lhs = (A[0].unsqueeze(0) * out.unsqueeze(1)).flatten(2).sum(-1)
    rhs = bias[0] + (ax[0].unsqueeze(0) * xs.unsqueeze(1)).flatten(2).sum(-1)
    slack = 1e-4 * (1 + A.abs().flatten(2).sum(-1)[0])
    assert (lhs >= rhs - slack).all(), f"relaxation unsound by {(rhs - lhs).max().item()}"


def test_ibp_exact_on_points_and_tighter_than_naive() -> None:
    rule = RULES["Softmax"]
    node = NODES[0]
    x = torch.tensor([[1.0, -2.0, 0.5]])
    box = rule.ibp(node, [Interval(x, x)])
    assert torch.allclose(box.lower, torch.softmax(x, -1)) and torch.allclose(box.upper, torch.softmax(x, -1))
    lo, up = x - 0.5, x + 0.5
    box = rule.ibp(node, [Interval(lo, up)])
    naive_lo = torch.exp(lo) / torch.exp(up).sum(-1, keepdim=True)
    assert (box.lower > naive_lo).all()  # the difference form knows x_i appears in both places


def test_relaxation_is_tight_on_small_boxes() -> None:
    """On a tiny box the affine bounds approach the function (first-order exact)."""
    rule = RULES["Softmax"]
    node = NODES[0]
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(1, 5, generator=gen)
    x = Interval(c - 1e-3, c + 1e-3)
    A = torch.eye(5).unsqueeze(0)
    (ax,), bias = rule.backward(node, A, [x], [False])
    lower_at_c = (ax[0] * c).sum(-1) + bias[0]
    assert torch.allclose(lower_at_c, torch.softmax(c, -1)[0], atol=1e-4)


def _attention_graph(seed: int):
    gen = torch.Generator().manual_seed(seed)
    b = Builder((4, 3), gen)
    q = b.op("MatMul", "x", b.const(b.randn(3, 3)))
    k = b.op("MatMul", "x", b.const(b.randn(3, 3)))
    v = b.op("MatMul", "x", b.const(b.randn(3, 2)))
    scores = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, perm=[1, 0])), b.const(torch.tensor(0.5)))
    attn = b.op("Softmax", scores, axis=-1)
    out = b.op("MatMul", attn, v)
    return b.graph(b.op("Flatten", b.op("Add", out, b.op("MatMul", "x", b.const(b.randn(3, 2)))), axis=0))


@pytest.mark.parametrize("seed,rad", [(0, 0.02), (1, 0.1), (2, 0.5)])
def test_crown_contains_samples_on_attention(seed: int, rad: float) -> None:
    graph = _attention_graph(seed)
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(2, 4, 3, generator=gen)
    box = Interval(centre - rad, centre + rad)
    C = torch.randn(2, 5, graph.output.shape[-1], generator=gen)
    xs = box.lower + torch.rand(400, *box.lower.shape, generator=gen) * (box.upper - box.lower)
    ys = run(graph, xs.reshape(-1, 4, 3)).reshape(400, 2, -1)
    values = torch.einsum("bso,nbo->nbs", C, ys)
    ibp = spec_lower_bounds(graph, box, C, "ibp")
    crown = spec_lower_bounds(graph, box, C, "crown")
    slack = 1e-4 * (1 + values.abs())
    assert (values >= ibp - slack).all()
    assert (values >= crown - slack).all(), f"CROWN unsound by {(crown - values).max().item()}"
    if rad <= 0.1:
        assert (crown > ibp + 1e-4).all()


@pytest.mark.parametrize("opset,axis", [(13, -1), (13, 1), (11, 1), (11, 2), (9, None)])
def test_interpreter_matches_onnxruntime(opset: int, axis: int | None) -> None:
    pytest.importorskip("onnxruntime")
    attrs = {} if axis is None else {"axis": axis}
    m = fx.single("Softmax", [2, 3, 4], opset=opset, **attrs)
    _, diff = fx.compare(m, batch=3, scale=3.0)
    assert diff < 1e-5


def test_large_logits_stay_finite_and_sound() -> None:
    rule = RULES["Softmax"]
    node = NODES[0]
    x = Interval(torch.tensor([[-200.0, 0.0, 150.0]]), torch.tensor([[-100.0, 80.0, 200.0]]))
    box = rule.ibp(node, [x])
    assert torch.isfinite(box.lower).all() and torch.isfinite(box.upper).all()
    (ax,), bias = rule.backward(node, torch.randn(1, 3, 3), [x], [False])
    assert torch.isfinite(ax).all() and torch.isfinite(bias).all()
    xs = x.lower + torch.rand(200, 3, dtype=torch.float64).float() * (x.upper - x.lower)
    assert np.isfinite(rule.forward(node, [xs]).numpy()).all()


# ----------------------------------------------------------------------------------------
# the shared vit networks (skipped when ../shared is absent)

VIT = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks" / "vit"


@pytest.mark.skipif(not (VIT / "onnx" / "pgd_2_3_16.onnx").exists(), reason=f"no vit benchmark under {VIT}")
def test_vit_loads_matches_onnxruntime_and_bounds_contain_samples() -> None:
    pytest.importorskip("onnxruntime")
    from bounds.graph.onnx_import import load_onnx
    from specs import parse_vnnlib

    path = VIT / "onnx" / "pgd_2_3_16.onnx"
    graph = load_onnx(path)
    assert {"Softmax", "MatMul"} <= {n.op for n in graph.nodes}
    case = parse_vnnlib(VIT / "vnnlib" / "pgd_2_3_16_4021.vnnlib.gz").cases[0]
    lo = torch.tensor(case.lower, dtype=torch.float32).reshape(1, *graph.input.shape)
    up = torch.tensor(case.upper, dtype=torch.float32).reshape(1, *graph.input.shape)
    gen = torch.Generator().manual_seed(0)
    xs = lo + torch.rand(64, *lo.shape[1:], generator=gen) * (up - lo)
    xs[:16] = torch.where(torch.rand(16, *lo.shape[1:], generator=gen) > 0.5, up, lo)  # corners
    ref = fx.ort_outputs(onnx.load(str(path)), xs[:3].numpy())[0].reshape(3, -1)
    ys = run(graph, xs).reshape(64, -1)
    assert np.abs(ys[:3].numpy() - ref).max() < 1e-4
    C = torch.cat([torch.eye(10), -torch.eye(10)]).unsqueeze(0)
    values = ys @ C[0].T
    box = Interval(lo, up)
    for method in ("ibp", "crown"):
        lower = spec_lower_bounds(graph, box, C, method)[0]
        assert (values >= lower - 1e-4 * (1 + values.abs())).all(), method
    width = -(lower[10:] + lower[:10])
    assert (width < 10).all()  # CROWN through attention is far tighter than IBP here


def test_softmax_relaxation_is_reused_only_for_the_same_unchanged_interval() -> None:
    from bounds.graph.ir import Node as _Node
    from bounds.ops import RULES as _RULES
    from bounds.types import Interval as _Interval

    rule = _RULES["Softmax"]
    node = _Node("sm_cache_test", "Softmax", ("x",), {"axis": -1}, (1, 4), opset=13)
    lo = torch.tensor([[[-1.0, 0.0, 0.5, 2.0]]], dtype=torch.float64)
    x = _Interval(lo, lo + 0.5)
    first = rule.relax(node, x)
    assert rule.relax(node, x) is first                         # same tensors, unchanged
    assert rule.relax(node, _Interval(lo.clone(), lo + 0.5)) is not first
    x2 = _Interval(lo.clone(), lo + 0.5)
    before = rule.relax(node, x2)
    x2.upper.add_(1.0)                                          # in place: a different box
    after = rule.relax(node, x2)
    assert after is not before and not torch.equal(after.ub, before.ub)
