"""IBP and CROWN bounds contain every sampled concrete output; CROWN is exact on linear nets."""
from __future__ import annotations

import pytest
import torch

from bounds.crown import spec_lower_bounds
from bounds.graph.interpret import run
from bounds.types import Interval
from tests.bounds.random_graphs import random_cnn, random_mlp


def _box(graph, seed: int, batch: int, radius: float) -> Interval:
    gen = torch.Generator().manual_seed(seed)
    shape = graph.input.shape
    center = torch.randn(batch, *shape, generator=gen)
    rad = torch.rand(batch, *shape, generator=gen) * radius
    return Interval(center - rad, center + rad)


def _samples(box: Interval, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(n, *box.lower.shape, generator=gen)
    t[: n // 4] = t[: n // 4].round()  # corners are where linear pieces peak
    return box.lower + t * (box.upper - box.lower)  # (n, B, *shape)


def _check_contains(graph, box: Interval, method: str, seed: int) -> torch.Tensor:
    n_out = graph.output.shape[-1]
    B = box.lower.shape[0]
    gen = torch.Generator().manual_seed(seed)
    C = torch.randn(B, 5, n_out, generator=gen)
    C[:, 0] = 0
    C[:, 0, 0] = 1.0
    lower = spec_lower_bounds(graph, box, C, method)
    xs = _samples(box, 400, seed)
    ys = run(graph, xs.reshape(-1, *graph.input.shape)).reshape(400, B, -1)
    values = torch.einsum("bso,nbo->nbs", C, ys)
    slack = 1e-4 * (1 + values.abs())
    assert (values >= lower - slack).all(), f"{method} unsound by {(lower - values).max().item()}"
    return lower


@pytest.mark.parametrize("seed", range(24))
def test_mlp_bounds_contain_samples(seed: int) -> None:
    graph = random_mlp(seed, residual=seed % 3 == 0)
    box = _box(graph, seed, batch=3, radius=[0.05, 0.5, 2.0][seed % 3])
    ibp = _check_contains(graph, box, "ibp", seed)
    crown = _check_contains(graph, box, "crown", seed)
    assert (crown >= ibp - 1e-5).all()  # we keep the better of the two at the output


@pytest.mark.parametrize("seed", range(8))
def test_cnn_bounds_contain_samples(seed: int) -> None:
    graph = random_cnn(seed)
    box = _box(graph, seed, batch=2, radius=[0.05, 0.3][seed % 2])
    _check_contains(graph, box, "ibp", seed)
    _check_contains(graph, box, "crown", seed)


def test_crown_is_tighter_than_ibp_on_deeper_relu_nets() -> None:
    graph = random_mlp(5, width=16, depth=4, acts=["Relu"])
    box = _box(graph, 0, batch=4, radius=0.3)
    C = torch.eye(3).expand(4, 3, 3)
    ibp = spec_lower_bounds(graph, box, C, "ibp")
    crown = spec_lower_bounds(graph, box, C, "crown")
    assert (crown >= ibp - 1e-6).all() and (crown > ibp + 1e-3).any()


class _Expired:
    def expired(self) -> bool:
        return True


@pytest.mark.parametrize("seed", range(4))
def test_passed_deadline_keeps_interval_bounds_and_stays_sound(seed: int) -> None:
    """Past the deadline no CROWN pass refines an intermediate value: the intervals are
    interval arithmetic's (IBP), the output bound is still a valid CROWN bound over them."""
    from bounds.crown import intermediate_bounds

    graph = random_mlp(40 + seed, width=12, depth=3, acts=["Relu"])
    box = _box(graph, seed, batch=2, radius=0.5)
    late = intermediate_bounds(graph, box, "crown", deadline=_Expired())
    ibp = intermediate_bounds(graph, box, "ibp")
    crown = intermediate_bounds(graph, box, "crown")
    for name, iv in late.items():
        assert torch.equal(iv.lower, ibp[name].lower) and torch.equal(iv.upper, ibp[name].upper)
    assert any(bool((crown[n].upper < late[n].upper - 1e-6).any()) for n in late)
    C = torch.eye(3).expand(2, 3, 3)
    lower = spec_lower_bounds(graph, box, C, "crown", deadline=_Expired())
    ys = run(graph, _samples(box, 300, seed).reshape(-1, *graph.input.shape)).reshape(300, 2, 3)
    assert (ys >= lower.unsqueeze(0) - 1e-5).all()


@pytest.mark.parametrize("seed", range(5))
def test_crown_exact_on_linear_networks(seed: int) -> None:
    graph = random_mlp(seed, acts=["Identity"], depth=3)
    box = _box(graph, seed, batch=2, radius=0.7)
    gen = torch.Generator().manual_seed(seed)
    C = torch.randn(2, 4, 3, generator=gen)
    lower = spec_lower_bounds(graph, box, C, "crown")
    # a linear map attains its minimum over a box at the corner picked by the gradient's signs
    x0 = box.center.requires_grad_(True)
    y = torch.einsum("bso,bo->bs", C, run(graph, x0).reshape(2, -1))
    exact = []
    for s in range(4):
        (grad,) = torch.autograd.grad(y[:, s].sum(), x0, retain_graph=True)
        corner = torch.where(grad > 0, box.lower, box.upper)
        exact.append(torch.einsum("bo,bo->b", C[:, s], run(graph, corner).reshape(2, -1)))
    exact_t = torch.stack(exact, 1).detach()
    assert torch.allclose(lower, exact_t, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_alpha_crown_sound_and_at_least_crown(seed: int) -> None:
    from bounds.alpha import AlphaOptions, alpha_spec_lower_bounds

    graph = random_mlp(seed, width=12, depth=3, acts=["Relu", "LeakyRelu"], residual=seed % 2 == 1)
    box = _box(graph, seed, batch=2, radius=0.6)
    gen = torch.Generator().manual_seed(seed)
    C = torch.randn(2, 4, 3, generator=gen)
    crown = spec_lower_bounds(graph, box, C, "crown")
    alpha = alpha_spec_lower_bounds(graph, box, C, AlphaOptions(iterations=15, stop_above=None))
    assert (alpha >= crown - 1e-5).all()
    xs = _samples(box, 2000, seed)
    ys = run(graph, xs.reshape(-1, *graph.input.shape)).reshape(2000, 2, -1)
    values = torch.einsum("bso,nbo->nbs", C, ys)
    assert (values >= alpha - 1e-4 * (1 + values.abs())).all()


@pytest.mark.parametrize("seed", range(6))
def test_alpha_crown_with_optimised_intermediate_bounds_is_sound(seed: int) -> None:
    from bounds.alpha import AlphaOptions, optimise_all

    graph = random_mlp(seed, width=12, depth=4, acts=["Relu", "LeakyRelu"], residual=seed % 2 == 1)
    box = _box(graph, seed, batch=2, radius=0.8)
    gen = torch.Generator().manual_seed(seed)
    C = torch.randn(2, 4, 3, generator=gen)
    crown = spec_lower_bounds(graph, box, C, "crown")
    lower, inter = optimise_all(graph, box, C, AlphaOptions(iterations=25, lr=0.2, stop_above=None))
    assert (lower >= crown - 1e-5).all()
    xs = _samples(box, 2000, seed)
    flat = xs.reshape(-1, *graph.input.shape)
    from bounds.graph.interpret import evaluate
    values = evaluate(graph, flat, keep=set(inter))
    for name, iv in inter.items():
        v = values[name].reshape(2000, 2, -1)
        lo, up = iv.lower.reshape(iv.lower.shape[0], -1), iv.upper.reshape(iv.upper.shape[0], -1)
        assert (v >= lo - 1e-4 * (1 + v.abs())).all() and (v <= up + 1e-4 * (1 + v.abs())).all(), name
    ys = values[graph.outputs[0]].reshape(2000, 2, -1)
    spec_values = torch.einsum("bso,nbo->nbs", C, ys)
    assert (spec_values >= lower - 1e-4 * (1 + spec_values.abs())).all()
