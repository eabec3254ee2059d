"""Optimised intermediate slopes (bounds.alpha.IntermediateSlopes) reused on sub-problems:
which parameter rows serve which neuron, and that intervals re-derived with them on sub-boxes
and under ReLU split decisions hold every sampled point of the sub-problem."""
from __future__ import annotations

import pytest
import torch

from bounds.alpha import AlphaOptions, IntermediateSlopes, optimise_all
from bounds.crown import intermediate_bounds, pre_activation_nodes
from bounds.graph.interpret import evaluate
from bounds.graph.ir import graph_to
from bounds.types import Interval
from tests.bounds.random_graphs import random_mlp


def test_rows_follow_the_neurons_asked_for() -> None:
    rows = torch.tensor([3, 7, 9])
    params = torch.arange(6, dtype=torch.float64).reshape(1, 6, 1) * torch.ones(1, 6, 10)
    slopes = IntermediateSlopes(rows, {"act": params})
    got = slopes.for_neurons(torch.tensor([[7, 3], [9, 9]]))["act"][..., 0]
    # lower rows first (positions 1, 0 and 2, 2), then the upper rows (k = 3 further on)
    assert got.tolist() == [[1.0, 0.0, 4.0, 3.0], [2.0, 2.0, 5.0, 5.0]]
    assert slopes.for_neurons(torch.tensor([[7, 4]])) is None     # 4 was not searched
    per_case = IntermediateSlopes(rows, {"act": torch.stack([params[0], params[0] + 10])})
    assert per_case.take(torch.tensor([1, 1, 0])).params["act"][:, 0, 0].tolist() == [10.0, 10.0, 0.0]


@pytest.mark.parametrize("seed", range(6))
def test_intervals_with_root_slopes_hold_sampled_points(seed: int) -> None:
    graph = random_mlp(seed, width=12, depth=4, n_in=5, acts=["Relu"])
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(graph.input.shape)             # (1, 5): the graph's own batch axis
    center = torch.randn(1, *shape, generator=gen, dtype=torch.float64)
    box = Interval(center - 1.0, center + 1.0)
    C = torch.randn(1, 3, 3, generator=gen, dtype=torch.float64)
    graph = graph_to(graph, dtype=torch.float64)
    slopes: dict[str, IntermediateSlopes] = {}
    _, root = optimise_all(graph, box, C, AlphaOptions(iterations=10), intermediate_slopes=slopes)
    assert slopes, "the search optimised no intermediate bound"
    pre = [n.name for n in graph.nodes if n.name in pre_activation_nodes(graph)]
    # sub-problems: a random sub-box, with the signs a point inside takes at the first
    # unstable neurons of the first two layers as split decisions
    B = 8
    t = torch.rand(B, 2, *shape, generator=gen, dtype=torch.float64).sort(1).values
    sub = Interval(box.lower + t[:, 0] * 2.0, box.lower + t[:, 1] * 2.0)
    anchor = sub.lower + torch.rand(B, *shape, generator=gen, dtype=torch.float64) * (sub.upper - sub.lower)
    values = evaluate(graph, anchor, keep=set(pre))
    splits = {}
    for name in pre:
        iv = root[name]
        unstable = ((iv.lower < 0) & (iv.upper > 0)).reshape(-1).nonzero().flatten()[:2]
        s = torch.zeros(B, iv.lower.numel(), dtype=torch.float64)
        if name in pre[:2] and len(unstable):
            s[:, unstable] = torch.where(values[name].reshape(B, -1)[:, unstable] >= 0, 1.0, -1.0).double()
        splits[name] = s
    got = intermediate_bounds(graph, sub, "crown", prior=root, splits=splits, slopes=slopes)
    n = 3000
    x = sub.lower.unsqueeze(0) + torch.rand(n, B, *shape, generator=gen, dtype=torch.float64) * (sub.upper - sub.lower)
    x[: n // 4] = torch.where(torch.rand(n // 4, B, *shape, generator=gen) < 0.5, sub.lower, sub.upper)
    vals = evaluate(graph, x.reshape(n * B, *shape), keep=set(pre))
    inside = torch.ones(n, B, dtype=torch.bool)
    for name, s in splits.items():
        v = vals[name].reshape(n, B, -1)
        inside &= ((s.unsqueeze(0) * v) >= 0).all(-1) | (s == 0).all(-1).unsqueeze(0)
    assert inside.any(), "no sample satisfies the split decisions"
    for name in pre:
        v = vals[name].reshape(n, B, -1)
        lo, up = got[name].lower.reshape(B, -1), got[name].upper.reshape(B, -1)
        ok = ((v >= lo - 1e-9) & (v <= up + 1e-9)).all(-1) | ~inside
        assert ok.all(), f"{name}: a point of the sub-problem lies outside its interval"
