"""A rule's `prepare` (its relaxation as a function of alpha alone) equals `relax` with that
alpha, and the slope search gives the same bounds through it."""
from __future__ import annotations

import pytest
import torch

from bounds.alpha import AlphaOptions, optimise_lower
from bounds.crown import intermediate_bounds, prepare_relaxations
from bounds.graph.ir import Node, graph_to
from bounds.ops.relu import LeakyRelu, Relu
from bounds.types import Interval
from tests.bounds.random_graphs import random_mlp


@pytest.mark.parametrize("rule, attrs", [(Relu(), {}), (LeakyRelu(), {"alpha": 0.1}), (LeakyRelu(), {"alpha": 0.5})])
def test_prepared_relaxation_is_relax_with_that_alpha(rule, attrs):
    gen = torch.Generator().manual_seed(1)
    node = Node("act", "Relu" if isinstance(rule, Relu) else "LeakyRelu", ["x"], attrs)
    lower = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    upper = lower + torch.rand(3, 5, 4, generator=gen, dtype=torch.float64) * 3
    lower[0, 0, 0] = upper[0, 0, 0] = 0.0          # a point interval at the kink
    x = Interval(lower, upper)
    fn = rule.prepare(node, x)
    for _ in range(3):
        alpha = torch.rand(3, 2, 5, 4, generator=gen, dtype=torch.float64)
        got, want = fn(alpha), rule.relax(node, x, alpha)
        for part in ("lw", "lb", "uw", "ub"):
            g, w = getattr(got, part), getattr(want, part)
            torch.testing.assert_close(g.expand_as(w), w, rtol=0, atol=0)


def test_slope_search_bounds_do_not_change_with_prepared_relaxations(monkeypatch):
    graph = graph_to(random_mlp(7, width=12, depth=3, n_in=4, n_out=3, acts=["Relu", "LeakyRelu"]), "cpu", torch.float64)
    box = Interval(-torch.ones(2, 1, 4, dtype=torch.float64), torch.ones(2, 1, 4, dtype=torch.float64))
    bounds = intermediate_bounds(graph, box)
    C = torch.randn(2, 3, *graph[graph.outputs[0]].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    options = AlphaOptions(iterations=6, stop_above=None, search_float32=False)
    assert prepare_relaxations(graph, bounds, [n.name for n in graph.nodes if n.op in ("Relu", "LeakyRelu")])
    with_prepared, _ = optimise_lower(graph, graph.outputs[0], C, bounds, options)
    monkeypatch.setattr("bounds.alpha.prepare_relaxations", lambda *a, **k: {})
    without, _ = optimise_lower(graph, graph.outputs[0], C, bounds, options)
    torch.testing.assert_close(with_prepared, without, rtol=0, atol=1e-12)
