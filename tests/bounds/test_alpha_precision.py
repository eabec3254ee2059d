"""alpha-CROWN on float64 bounds searches in float32 and reports a float64 re-evaluation:
the reported bounds must be sound to float64 precision, never merely to float32's."""
from __future__ import annotations

import pytest
import torch

from bounds.alpha import AlphaOptions, exact_params, optimise_all, optimise_lower
from bounds.crown import intermediate_bounds, spec_lower_bounds
from bounds.graph.interpret import evaluate
from bounds.graph.ir import graph_to
from bounds.types import Interval
from tests.bounds.random_graphs import random_mlp

TOL = 1e-9


def _case(seed: int):
    graph = graph_to(random_mlp(seed, width=12, depth=4, acts=["Relu", "Sigmoid", "Tanh"],
                                residual=seed % 2 == 1), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    shape = graph.input.shape
    centre = torch.randn(2, *shape, generator=gen, dtype=torch.float64)
    box = Interval(centre - 0.7, centre + 0.7)
    C = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    t = torch.rand(3000, 2, *shape, generator=gen, dtype=torch.float64)
    t[:750] = t[:750].round()  # corners are where linear pieces peak
    xs = box.lower + (box.upper - box.lower) * t
    return graph, box, C, xs


@pytest.mark.parametrize("search_on_best", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_float32_search_reports_float64_sound_bounds(seed: int, search_on_best: bool) -> None:
    graph, box, C, xs = _case(seed)
    crown = spec_lower_bounds(graph, box, C, "crown")
    lower, inter = optimise_all(graph, box, C, AlphaOptions(iterations=15, lr=0.2, stop_above=None,
                                                            search_on_best=search_on_best))
    assert lower.dtype == torch.float64 and all(iv.lower.dtype == torch.float64 for iv in inter.values())
    assert (lower >= crown - TOL).all()
    values = evaluate(graph, xs.reshape(-1, *graph.input.shape), keep=set(inter))
    for name, iv in inter.items():
        v = values[name].reshape(3000, 2, -1)
        lo, up = iv.lower.reshape(iv.lower.shape[0], -1), iv.upper.reshape(iv.upper.shape[0], -1)
        assert (v >= lo - TOL).all() and (v <= up + TOL).all(), name
    ys = values[graph.outputs[0]].reshape(3000, 2, -1)
    assert (torch.einsum("bso,nbo->nbs", C, ys) >= lower - TOL).all()


@pytest.mark.parametrize("seed", range(3))
def test_float32_search_matches_float64_search_closely(seed: int) -> None:
    graph, box, C, _ = _case(seed)
    low, _ = optimise_all(graph, box, C, AlphaOptions(iterations=20, stop_above=None))
    full, _ = optimise_all(graph, box, C, AlphaOptions(iterations=20, stop_above=None, search_float32=False))
    # different rounding, different Adam path: close, not equal
    assert torch.allclose(low, full, rtol=0.05, atol=0.05)


def test_optimise_lower_reports_the_float64_value_of_its_parameters() -> None:
    graph, box, C, xs = _case(3)
    bounds = intermediate_bounds(graph, box, "crown")
    C = C.reshape(2, 4, *graph.output.shape)
    record: dict[str, torch.Tensor] = {}
    best, params = optimise_lower(graph, graph.outputs[0], C, bounds,
                                  AlphaOptions(iterations=10, stop_above=None), record=record)
    assert best.dtype == torch.float64 and all(v.dtype == torch.float64 for v in params.values())
    assert record, "the float64 evaluation records its coefficients"
    ys = evaluate(graph, xs.reshape(-1, *graph.input.shape))[graph.outputs[0]].reshape(3000, 2, -1)
    assert (torch.einsum("bso,nbo->nbs", C.reshape(2, 4, -1), ys) >= best - TOL).all()


def test_spoiled_search_parameters_fall_back_to_their_start() -> None:
    start = {"a": torch.full((1, 2, 3), 0.25, dtype=torch.float64)}
    found = {"a": torch.tensor([[[0.5, float("nan"), 1.0], [0.0, 0.1, float("nan")]]])}
    exact = exact_params(found, start, torch.float64)
    assert exact["a"].dtype == torch.float64
    assert exact["a"][0, 0, 1] == 0.25 and exact["a"][0, 1, 2] == 0.25 and exact["a"][0, 0, 0] == 0.5
