"""crown_interval packs (sub-problem, neuron) pairs when most sub-problems ask for few
neurons: the same numbers as padding every sub-problem to the busiest one's count, and the
sampled values of the neurons lie inside."""
from __future__ import annotations

import pytest
import torch

import bounds.crown as crown
from bounds.crown import crown_interval, intermediate_bounds, pre_activation_nodes
from bounds.graph.interpret import evaluate
from bounds.graph.ir import graph_to
from bounds.types import Interval
from tests.bounds.random_graphs import ACTS, random_mlp


def _boxes(seed: int, shape, batch: int) -> Interval:
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(batch, *shape, generator=gen, dtype=torch.float64)
    # mostly narrow boxes (few unstable neurons) and a couple of wide ones (many)
    wide = (torch.arange(batch) < 2).reshape(batch, *([1] * len(shape)))
    radius = torch.where(wide, 1.0, 0.02) * torch.rand(batch, *shape, generator=gen, dtype=torch.float64)
    return Interval(centre - radius, centre + radius)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("acts", [["Relu"], ACTS])
def test_packed_rows_match_padded_rows_and_hold_samples(seed, acts, monkeypatch):
    graph = graph_to(random_mlp(seed, width=12, depth=4, acts=acts), dtype=torch.float64)
    box = _boxes(seed, tuple(graph.input.shape), batch=16)
    known = intermediate_bounds(graph, box, "ibp")
    relaxed = sorted(pre_activation_nodes(graph), key=[n.name for n in graph.nodes].index)
    target = relaxed[-1]
    known = {k: v for k, v in known.items() if k in graph.ancestors(target) or k == target}
    iv = known[target]
    mask = ((iv.lower < 0) & (iv.upper > 0)).flatten(1)
    assert int(mask.sum()) <= crown._PACK_BELOW * mask.shape[0] * int(mask.sum(1).max()), "the packed path is taken"
    low, up = crown_interval(graph, target, known, mask)
    monkeypatch.setattr(crown, "_PACK_BELOW", -1.0)
    low_pad, up_pad = crown_interval(graph, target, known, mask)
    # the padded pass also bounds neurons nobody asked for; the packed one leaves them open
    assert bool(torch.isinf(low[~mask]).all()) and bool(torch.isinf(up[~mask]).all())
    torch.testing.assert_close(low[mask], low_pad[mask], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(up[mask], up_pad[mask], rtol=1e-9, atol=1e-9)
    gen = torch.Generator().manual_seed(seed + 1)
    points = box.lower + (box.upper - box.lower) * torch.rand(64, *box.lower.shape, generator=gen, dtype=torch.float64)
    values = evaluate(graph, points.reshape(-1, *box.lower.shape[1:]), keep={target})[target].reshape(64, box.lower.shape[0], -1)
    assert bool((values >= low - 1e-9).all()) and bool((values <= up + 1e-9).all())
