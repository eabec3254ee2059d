"""bounds.cuts: the first ReLU layer as an exact affine map, and bounds over the input box cut
by active splits, checked against concrete points of the cut box."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds.crown import concretize_lower, intermediate_bounds, pre_activation_nodes
from bounds.cuts import InputCuts, affine_map, concretize_with_cuts, cuts_from_splits
from bounds.graph.interpret import evaluate
from bounds.graph.ir import graph_to
from bounds.types import Interval
from tests.bounds.random_graphs import random_mlp


def _net(seed: int):
    graph = graph_to(random_mlp(seed, width=10, depth=4, n_in=5, acts=["Relu"]), dtype=torch.float64)
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    pres = sorted(pre_activation_nodes(graph), key=order.get)
    return graph, pres


def _box(seed: int, n: int = 5, width: float = 1.0, shape: tuple[int, ...] = (1, 1)) -> Interval:
    """A random box of shape (*shape[:-1], n): (1, 1, n) for the nets' (1, n) inputs."""
    g = torch.Generator().manual_seed(seed)
    lower = torch.randn(*shape, n, generator=g, dtype=torch.float64)
    return Interval(lower, lower + width * torch.rand(*shape, n, generator=g, dtype=torch.float64))


def _inside(box: Interval, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return box.lower + (box.upper - box.lower) * torch.rand(n, *box.lower.shape[1:], generator=g, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(4))
def test_affine_map_is_the_first_layer_and_none_behind_a_relu(seed):
    graph, pres = _net(seed)
    box = _box(seed)
    bounds = intermediate_bounds(graph, box, method="crown")
    G, h = affine_map(graph, pres[0], bounds)
    x = _inside(box, 256, seed)
    z = evaluate(graph, x, keep={pres[0]})[pres[0]].reshape(256, -1)
    line = x.reshape(256, -1) @ G.T + h
    assert bool((line >= z).all()) and torch.allclose(line, z, atol=1e-7)
    assert affine_map(graph, pres[1], bounds) is None


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(1, 4), S=st.integers(1, 5))
def test_cut_box_bound_is_sound_and_no_looser(seed, K, S):
    g = torch.Generator().manual_seed(seed)
    n = 6
    box = _box(seed, n, width=2.0, shape=(1,))
    centre = box.center
    # cuts through random points of the box, so the cut box is not empty
    G = torch.randn(1, K, n, generator=g, dtype=torch.float64)
    h = -(G * (centre + 0.3 * box.radius * torch.randn(1, 1, n, generator=g, dtype=torch.float64))).sum(-1)
    cuts = InputCuts(G, h)
    A = torch.randn(1, S, n, generator=g, dtype=torch.float64)
    bound = concretize_with_cuts(A, box, cuts)
    assert bool((bound >= concretize_lower(A, box) - 1e-12).all())
    x = _inside(box, 20_000, seed)
    keep = ((x @ G[0].T + h[0]) >= 0).all(1)
    if bool(keep.any()):
        values = x[keep] @ A[0].T
        assert bool((values >= bound[0] - 1e-9).all())


@pytest.mark.parametrize("seed", range(4))
def test_intervals_with_cuts_hold_on_the_split_region(seed):
    graph, pres = _net(seed)
    box = _box(seed, width=2.0)
    root = intermediate_bounds(graph, box, method="crown")
    G, h = affine_map(graph, pres[0], root)
    first = root[pres[0]]
    unstable = ((first.lower < 0) & (first.upper > 0)).reshape(-1).nonzero().flatten()
    if len(unstable) < 2:
        pytest.skip("too few unstable first-layer neurons")
    split = torch.zeros(1, G.shape[0], dtype=torch.int8)
    split[0, unstable[:2]] = 1
    cuts = cuts_from_splits(G, h, split)
    assert cuts.G.shape[1] == 2
    cut = intermediate_bounds(graph, box, method="crown", splits={pres[0]: split}, cuts=cuts)
    plain = intermediate_bounds(graph, box, method="crown", splits={pres[0]: split})
    x = _inside(box, 50_000, seed)
    values = evaluate(graph, x, keep=set(pres))
    keep = (values[pres[0]].reshape(len(x), -1)[:, unstable[:2]] >= 0).all(1)
    assert bool(keep.any())
    for name in pres[1:]:
        v = values[name].reshape(len(x), -1)[keep]
        iv = cut[name]
        assert bool((v >= iv.lower.reshape(1, -1) - 1e-9).all() and (v <= iv.upper.reshape(1, -1) + 1e-9).all())
    # the first layer (affine: no relaxation that tighter intervals could change) is never
    # looser with the cuts; later layers' CROWN slopes follow the intervals, so no such rule
    for name in pres[:1]:
        iv = cut[name]
        assert bool((iv.lower >= plain[name].lower - 1e-9).all() and (iv.upper <= plain[name].upper + 1e-9).all())
