"""LayerNormalization: IBP and CROWN contain sampled outputs; tight on small boxes;
the interpreter agrees with onnxruntime (opset 17)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds.crown import backward_lower, intermediate_bounds
from bounds.graph.ir import graph_to
from bounds.ops.norm import LayerNormalization
from bounds.types import Interval
from tests.bounds import onnx_fixtures as fx
from tests.bounds.op_soundness import BOX_KINDS, check_sound, random_box, sample_box
from tests.bounds.random_graphs import Builder


def _ln_graph(seed: int, shape: tuple[int, ...], axis: int, with_bias: bool, mix: bool):
    b = Builder(shape, torch.Generator().manual_seed(seed))
    h = "x"
    if mix:   # correlated inputs, as after a linear layer
        h = b.op("MatMul", "x", b.const(b.randn(shape[-1], shape[-1], scale=0.6)))
    norm_shape = shape[axis % len(shape):]
    scale = b.const(b.randn(*norm_shape))                   # mixed signs on purpose
    args = [h, scale] + ([b.const(b.randn(*norm_shape, scale=0.5))] if with_bias else [])
    ln = b.op("LayerNormalization", *args, axis=axis, epsilon=1e-3)
    out = b.op("MatMul", ln, b.const(b.randn(shape[-1], 3)))
    return graph_to(b.graph(out), dtype=torch.float64)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10 ** 6), kind=st.sampled_from(BOX_KINDS),
       case=st.sampled_from([((1, 5), -1), ((2, 4), -1), ((2, 4), 0), ((3, 2, 3), 1)]),
       with_bias=st.booleans(), mix=st.booleans())
def test_layernorm_sound(seed: int, kind: str, case, with_bias: bool, mix: bool) -> None:
    shape, axis = case
    graph = _ln_graph(seed, shape, axis, with_bias, mix)
    check_sound(graph, random_box(shape, seed, kind), seed)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10 ** 6), lo=st.floats(-3, 3), w=st.floats(0, 4), rl=st.floats(0.01, 3), rw=st.floats(0, 3))
def test_product_relaxation_bounds_every_r(seed: int, lo: float, w: float, rl: float, rw: float) -> None:
    """min/max over r of c * r lie between the lines, for c on the whole interval."""
    rule = LayerNormalization()
    c = Interval(torch.tensor([lo], dtype=torch.float64), torch.tensor([lo + w], dtype=torch.float64))
    r = Interval(torch.tensor([rl], dtype=torch.float64), torch.tensor([rl + rw], dtype=torch.float64))
    relax = rule.relax_product(c, r)
    cs = torch.linspace(lo, lo + w, 101, dtype=torch.float64)
    rs = torch.linspace(rl, rl + rw, 11, dtype=torch.float64)
    z = cs[:, None] * rs[None, :]
    low = relax.lw * cs + relax.lb
    up = relax.uw * cs + relax.ub
    assert bool((z >= low[:, None] - 1e-12).all()) and bool((z <= up[:, None] + 1e-12).all())


def test_single_feature_layernorm_is_its_bias() -> None:
    b = Builder((3, 1), torch.Generator().manual_seed(0))
    graph = graph_to(b.graph(b.op("LayerNormalization", "x", b.const(torch.tensor([2.0])),
                                  b.const(torch.tensor([0.7])), axis=-1)), dtype=torch.float64)
    box = random_box((3, 1), 0, "wide")
    bounds = intermediate_bounds(graph, box, "ibp")
    out = bounds[graph.outputs[0]]
    assert torch.allclose(out.lower, torch.full_like(out.lower, 0.7))
    assert torch.allclose(out.upper, torch.full_like(out.upper, 0.7))


def test_crown_is_tight_on_small_boxes() -> None:
    """With a narrow box r hardly varies: CROWN's bound is within 10% of IBP's gap to the sampled
    extreme, and much tighter than IBP."""
    graph = _ln_graph(7, (1, 8), -1, True, True)
    centre = torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    box = Interval(centre - 0.01, centre + 0.01)
    bounds = intermediate_bounds(graph, box, "crown")
    C = torch.eye(3, dtype=torch.float64).reshape(1, 3, 1, 3)
    lb = backward_lower(graph, graph.outputs[0], C, bounds)
    y = graph_run(graph, sample_box(box, 500, 0))
    sampled = y.reshape(-1, 3).min(0).values
    ibp = bounds[graph.outputs[0]].lower.reshape(3)
    assert bool((lb[0] <= sampled + 1e-9).all())
    assert float((sampled - lb[0]).max()) < 0.1 * float((sampled - ibp).max()) + 1e-6


def graph_run(graph, x):
    from bounds.graph.interpret import run
    return run(graph, x)


@pytest.mark.parametrize("shape,axis,bias", [([2, 5], -1, True), ([2, 3, 4], 1, False), ([4], 0, True)])
def test_layernorm_matches_onnxruntime(shape, axis: int, bias: bool) -> None:
    norm = shape[axis % len(shape):]
    consts = {"s": fx.f32(*norm)} | ({"b": fx.f32(*norm, seed=3)} if bias else {})
    m = fx.model([fx.node("LayerNormalization", ["x", "s"] + (["b"] if bias else []), "y", axis=axis,
                          epsilon=1e-4)], shape, consts=consts, opset=17)
    graph, _ = fx.compare(m, rtol=1e-4, atol=1e-5)
    assert [n.op for n in graph.nodes if n.op not in ("Input", "Constant")] == ["LayerNormalization"]
