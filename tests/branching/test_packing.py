"""Packed waiting sub-problems (branching.packing): decisions and multipliers come back exactly,
slopes to bfloat16 precision, lists of different lengths share one queue, and a slope rounded
out of its valid range cannot loosen a bound (optimise_lower projects warm starts)."""
from __future__ import annotations

import torch

from branching.packing import BETAS, CODES, SplitLayout
from branching.queue import DomainQueue

WIDTHS = {"conv": 300, "fc/1": 40, "fc/2": 7}


def _random_domains(n: int, max_splits: int, rows: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    splits = {k: torch.zeros(n, w, dtype=torch.int8) for k, w in WIDTHS.items()}
    params = {}
    for k, w in WIDTHS.items():
        params[k.replace("fc", "relu") + "_alpha"] = torch.rand(n, rows, w, generator=gen)
    betas = {k: torch.zeros(n, rows, w) for k, w in WIDTHS.items()}
    for i in range(n):
        for _ in range(int(torch.randint(0, max_splits + 1, (1,), generator=gen))):
            k = list(WIDTHS)[int(torch.randint(0, len(WIDTHS), (1,), generator=gen))]
            j = int(torch.randint(0, WIDTHS[k], (1,), generator=gen))
            splits[k][i, j] = 1 if bool(torch.rand(1, generator=gen) < 0.5) else -1
            betas[k][i, :, j] = torch.rand(rows, generator=gen) + 0.1
    # a layer without any multiplier tensor yet (its splits still get zero multipliers back)
    params.update({f"beta:{k}": v for k, v in betas.items() if k != "fc/2"})
    return splits, params


def test_decisions_and_multipliers_round_trip_exactly_and_slopes_to_bfloat16() -> None:
    splits, params = _random_domains(50, 20, 3, seed=1)
    layout = SplitLayout.of(splits)
    fields = layout.pack(splits, params)
    assert fields[CODES].shape == (50, 32) and fields[BETAS].shape == (50, 3, 32)
    back_splits, back = layout.unpack(fields)
    for k in WIDTHS:
        assert torch.equal(back_splits[k], splits[k])
        key = f"beta:{k}"
        if key in params:
            assert torch.equal(back[key], params[key])
        elif bool((splits[k] != 0).any()):
            assert not bool(back[key].any())
        assert back[key].shape == (50, 3, WIDTHS[k])
    for k, v in params.items():
        if not k.startswith("beta:"):
            assert back[k].dtype == torch.float32
            assert torch.allclose(back[k], v, rtol=2 ** -8, atol=0)
            assert not torch.equal(back[k], v)          # they really are stored rounded


def test_packed_rows_are_a_fraction_of_the_dense_ones() -> None:
    n, rows = 8, 1
    splits = {"a": torch.zeros(n, 6000, dtype=torch.int8), "b": torch.zeros(n, 756, dtype=torch.int8)}
    splits["a"][:, :30] = 1
    params = {"relu_a": torch.rand(n, rows, 6000), "relu_b": torch.rand(n, rows, 756),
              "beta:a": torch.rand(n, rows, 6000), "beta:b": torch.zeros(n, rows, 756)}
    dense = sum(v[0].numel() * v.element_size() for v in [*splits.values(), *params.values()])
    packed = sum(v[0].numel() * v.element_size() for v in SplitLayout.of(splits).pack(splits, params).values())
    assert packed * 3.5 < dense


class _Packed:
    def __init__(self, score: torch.Tensor, fields: dict[str, torch.Tensor]) -> None:
        self.score, self._fields = score, fields

    def fields(self) -> dict[str, torch.Tensor]:
        return {"score": self.score, **self._fields}


def test_a_queue_holds_lists_of_different_lengths() -> None:
    short_splits, short_params = _random_domains(30, 5, 2, seed=2)
    long_splits, long_params = _random_domains(30, 40, 2, seed=3)
    layout = SplitLayout.of(short_splits)
    queue: DomainQueue[_Packed] = DomainQueue(lambda f: _Packed(f["score"], f),
                                              zero_fill=lambda key: key in (CODES, BETAS))
    queue.push(_Packed(torch.arange(30.0), layout.pack(short_splits, short_params)))
    queue.push(_Packed(torch.arange(30.0, 60.0), layout.pack(long_splits, long_params)))
    queue.push(_Packed(torch.arange(60.0, 90.0), layout.pack(short_splits, short_params)))
    out = queue.pop_worst(90)
    order = out.score.argsort()
    fields = {k: v[order] for k, v in out.fields().items()}
    splits, params = layout.unpack(fields)
    for part, (want_splits, want_params) in enumerate([(short_splits, short_params), (long_splits, long_params),
                                                       (short_splits, short_params)]):
        rows = slice(30 * part, 30 * part + 30)
        for k in WIDTHS:
            assert torch.equal(splits[k][rows], want_splits[k])
            if f"beta:{k}" in want_params:
                assert torch.equal(params[f"beta:{k}"][rows], want_params[f"beta:{k}"])


def test_a_warm_start_outside_the_valid_slopes_is_projected_before_it_counts() -> None:
    """A LeakyReLU slope below the leak (bfloat16 may round one there) would put the lower line
    above the function; the search must bound with the projected slope instead."""
    from bounds.alpha import AlphaOptions, bound_with, init_alphas, optimise_lower
    from bounds.crown import intermediate_bounds
    from bounds.graph.interpret import run
    from bounds.graph.ir import graph_to
    from bounds.ops import RULES
    from bounds.types import Interval
    from tests.bounds.random_graphs import random_mlp

    graph = graph_to(random_mlp(3, width=10, depth=2, n_in=3, n_out=2, acts=["LeakyRelu"]), "cpu", torch.float64)
    box = Interval(-torch.ones(1, 1, 3, dtype=torch.float64), torch.ones(1, 1, 3, dtype=torch.float64))
    bounds = intermediate_bounds(graph, box)
    C = torch.eye(2, dtype=torch.float64).reshape(1, 2, *graph[graph.outputs[0]].shape)
    start = init_alphas(graph, bounds, 2)
    assert start
    bad = {k: torch.zeros_like(v) for k, v in start.items()}       # below every leak
    fixed = {k: RULES[graph[k].op].project_alpha(graph[k], v) for k, v in bad.items()}
    assert any(bool((fixed[k] > 0).all()) for k in fixed)
    options = AlphaOptions(iterations=1, stop_above=None, search_float32=False)
    lower, _ = optimise_lower(graph, graph.outputs[0], C, bounds, options, alphas=bad)
    torch.testing.assert_close(lower, bound_with(graph, graph.outputs[0], C, bounds, fixed), rtol=0, atol=1e-12)
    xs = box.lower[0] + (box.upper - box.lower)[0] * torch.rand(4000, 1, 3, dtype=torch.float64,
                                                          generator=torch.Generator().manual_seed(0))
    ys = run(graph, xs).reshape(4000, 2)
    assert bool((lower.reshape(1, 2) <= ys.min(0).values + 1e-9).all())
