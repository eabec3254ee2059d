"""Bounds of convolution neurons over their receptive fields (bounds.receptive): the same
numbers as the dense backward pass, for every stride / padding / dilation / group layout,
with and without per-row slopes, per-sample rows and batched intervals; the sampled values
of the neurons lie inside; and anything but a convolution chain is left to the dense pass."""
from __future__ import annotations

import pytest
import torch

from bounds.alpha import AlphaOptions, init_alphas, optimise_all
from bounds.crown import backward_lower, intermediate_bounds
from bounds.graph.interpret import evaluate
from bounds.graph.ir import graph_to
from bounds.ops import RULES
from bounds.receptive import conv_chain, neuron_rows_lower
from bounds.types import Interval
from tests.bounds.random_graphs import ACTS, Builder, random_cnn

#: (kernel, stride, dilation, pads or auto_pad, group) of the two convolutions after the first
LAYOUTS = [
    ((3, 3), (1, 1), (1, 1), [1, 1, 1, 1], 1),
    ((4, 4), (2, 2), (1, 1), [1, 1, 1, 1], 1),
    ((3, 2), (2, 1), (1, 1), [0, 1, 2, 0], 1),          # asymmetric kernel, stride and pads
    ((3, 3), (1, 1), (2, 2), [2, 2, 2, 2], 2),          # dilated, grouped
    ((2, 2), (2, 2), (1, 1), "SAME_UPPER", 1),
    ((3, 3), (3, 3), (1, 1), [0, 0, 0, 0], 1),          # stride > output positions' spacing
]


def conv_net(seed: int, layout, acts: list[str], return_first: bool = False):
    """Input (1, 4, 9, 9) -> Conv -> act -> Conv -> act -> Conv: the last is the target."""
    gen = torch.Generator().manual_seed(seed)
    b = Builder((1, 4, 9, 9), gen)
    kernel, stride, dilation, pads, group = layout
    x = b.op("Conv", "x", b.const(b.randn(4, 4, 3, 3, scale=0.4)), b.const(b.randn(4, scale=0.2)), pads=[1, 1, 1, 1])
    first = x
    for layer in range(2):
        x = b.act(x, acts[layer])
        attrs = {"strides": list(stride), "dilations": list(dilation), "group": group}
        if isinstance(pads, str):
            attrs["auto_pad"] = pads
        else:
            attrs["pads"] = pads
        w = b.randn(4, 4 // group, *kernel, scale=0.5)
        inputs = (x, b.const(w)) + ((b.const(b.randn(4, scale=0.2)),) if layer == 0 else ())
        x = b.op("Conv", *inputs, **attrs)
    graph = graph_to(b.graph(x), dtype=torch.float64)
    return (graph, x) if not return_first else (graph, x, first)


def _box(graph, seed: int, batch: int) -> Interval:
    gen = torch.Generator().manual_seed(seed + 100)
    centre = torch.randn(batch, *graph.input.shape, generator=gen, dtype=torch.float64)
    radius = 0.3 * torch.rand(batch, *graph.input.shape, generator=gen, dtype=torch.float64)
    return Interval(centre - radius, centre + radius)


def _dense(graph, target: str, idx: torch.Tensor, bounds, alphas=None) -> torch.Tensor:
    B, k = idx.shape
    numel = bounds[target].lower[0].numel()
    C = torch.zeros(B, 2 * k, numel, dtype=torch.float64)
    C[:, :k].scatter_(2, idx.unsqueeze(2), 1.0)
    C[:, k:].scatter_(2, idx.unsqueeze(2), -1.0)
    return backward_lower(graph, target, C.reshape(B, 2 * k, *graph[target].shape), bounds, alphas)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", range(3))
def test_equals_the_dense_pass(layout, seed: int) -> None:
    acts = [ACTS[seed % len(ACTS)], ACTS[(seed + 1) % len(ACTS)]]
    graph, target = conv_net(seed, layout, acts)
    box = _box(graph, seed, batch=3)
    bounds = intermediate_bounds(graph, box, "crown")
    numel = bounds[target].lower[0].numel()
    gen = torch.Generator().manual_seed(seed)
    # per-sample rows, corners and edges included
    k = min(7, numel)
    idx = torch.stack([torch.randperm(numel, generator=gen)[:k] for _ in range(3)])
    idx[0, :2] = torch.tensor([0, numel - 1])
    got = neuron_rows_lower(graph, target, idx, bounds)
    assert got is not None and got.shape == (3, 2 * k)
    torch.testing.assert_close(got, _dense(graph, target, idx, bounds), rtol=1e-9, atol=1e-9)
    # per-row optimisable slopes (random points of each activation's parameter set)
    alphas = {}
    for act, init in init_alphas(graph, bounds, 2 * k).items():
        a = torch.rand(3, 2 * k, *init.shape[2:], generator=gen, dtype=torch.float64)
        alphas[act] = RULES[graph[act].op].project_alpha(graph[act], a)
    got = neuron_rows_lower(graph, target, idx, bounds, alphas)
    torch.testing.assert_close(got, _dense(graph, target, idx, bounds, alphas), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_sampled_values_lie_inside(seed: int) -> None:
    graph, target = conv_net(seed, LAYOUTS[seed % len(LAYOUTS)], ["Relu", "Relu"])
    box = _box(graph, seed, batch=1)
    bounds = intermediate_bounds(graph, box, "crown")
    numel = bounds[target].lower[0].numel()
    idx = torch.arange(numel)
    lb = neuron_rows_lower(graph, target, idx, bounds)
    lower, upper = lb[0, :numel], -lb[0, numel:]
    gen = torch.Generator().manual_seed(seed)
    x = box.lower + torch.rand(2000, *box.lower.shape[1:], generator=gen, dtype=torch.float64) * (box.upper - box.lower)
    x[:500] = torch.where(torch.rand(500, *box.lower.shape[1:], generator=gen) < 0.5, box.lower, box.upper)
    z = evaluate(graph, x, keep={target})[target].reshape(2000, -1)
    assert bool((z >= lower - 1e-9).all()) and bool((z <= upper + 1e-9).all())


def test_the_first_convolution_too() -> None:
    graph, _, first = conv_net(0, LAYOUTS[0], ["Relu", "Relu"], return_first=True)
    box = _box(graph, 0, batch=2)
    bounds = intermediate_bounds(graph, box, "crown")
    idx = torch.arange(bounds[first].lower[0].numel())
    torch.testing.assert_close(neuron_rows_lower(graph, first, idx, bounds),
                               _dense(graph, first, idx.expand(2, -1), bounds), rtol=1e-9, atol=1e-9)


def test_alpha_crown_intervals_unchanged_by_the_window_pass() -> None:
    """optimise_all bounds convolution neurons through neuron_rows_lower: its intervals still
    hold every sampled point."""
    graph, target = conv_net(3, LAYOUTS[1], ["Relu", "Relu"])
    box = _box(graph, 3, batch=1)
    C = torch.randn(1, 2, *graph[target].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, best = optimise_all(graph, box, C, AlphaOptions(iterations=5))
    gen = torch.Generator().manual_seed(0)
    x = box.lower + torch.rand(1000, *box.lower.shape[1:], generator=gen, dtype=torch.float64) * (box.upper - box.lower)
    values = evaluate(graph, x, keep=set(best))
    for name, iv in best.items():
        v = values[name].reshape(1000, -1)
        assert bool((v >= iv.lower.reshape(1, -1) - 1e-9).all()), name
        assert bool((v <= iv.upper.reshape(1, -1) + 1e-9).all()), name


def test_only_convolution_chains() -> None:
    graph = graph_to(random_cnn(0), dtype=torch.float64)
    convs = [n.name for n in graph.nodes if n.op == "Conv"]
    assert [n.name for n in conv_chain(graph, convs[0])] == [convs[0]]
    assert conv_chain(graph, convs[1]) is None          # a batch normalisation on the way back
    later = [n.name for n in graph.nodes if n.op not in ("Conv", "Input", "Constant")]
    assert all(conv_chain(graph, name) is None for name in later)
    # a residual add on the way back: not a chain
    gen = torch.Generator().manual_seed(0)
    b = Builder((1, 2, 5, 5), gen)
    x = b.op("Conv", "x", b.const(b.randn(2, 2, 3, 3)), pads=[1, 1, 1, 1])
    y = b.op("Add", b.op("Relu", x), x)
    z = b.op("Conv", y, b.const(b.randn(2, 2, 3, 3)), pads=[1, 1, 1, 1])
    residual = b.graph(z)
    assert conv_chain(residual, z) is None
    bounds = intermediate_bounds(graph_to(residual, dtype=torch.float64), _box(residual, 0, 1), "crown")
    assert neuron_rows_lower(residual, z, torch.arange(3), bounds) is None


def test_batch_and_row_broadcasting() -> None:
    """A caller's batch larger than any tensor here, and slopes shared by every row (S = 1),
    give what the dense pass gives."""
    graph, target = conv_net(1, LAYOUTS[1], ["Relu", "LeakyRelu"])
    box = _box(graph, 1, batch=1)
    bounds = intermediate_bounds(graph, box, "crown")
    idx = torch.tensor([0, 5, 9])
    got = neuron_rows_lower(graph, target, idx, bounds, batch=3)
    assert got.shape == (3, 6)
    torch.testing.assert_close(got, _dense(graph, target, idx.expand(3, -1), bounds), rtol=1e-9, atol=1e-9)
    gen = torch.Generator().manual_seed(2)
    shared = {act: RULES[graph[act].op].project_alpha(graph[act], torch.rand(2, 1, *init.shape[2:], generator=gen,
                                                                            dtype=torch.float64))
              for act, init in init_alphas(graph, bounds, 1).items()}
    got = neuron_rows_lower(graph, target, idx, bounds, shared)
    assert got.shape == (2, 6)
    torch.testing.assert_close(got, _dense(graph, target, idx.expand(2, -1), bounds, shared), rtol=1e-9, atol=1e-9)
