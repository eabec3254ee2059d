"""LipSDP upper bounds: exact cases, the certificate, soundness against concrete quotients,
agreement with an interior-point solver (cvxpy, when installed) and the order of methods."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds.lipschitz.bound import upper_bound
from bounds.lipschitz.certify import Multipliers, certify
from bounds.lipschitz.chain import Chain, group_sort, margin_vector, maxmin
from bounds.lipschitz.lower import lower_bound, quotient
from bounds.lipschitz.naive import naive_bound
from tests.bounds.lipschitz.nets import random_chain

ACTS = ["relu", "leaky_relu", "sigmoid", "tanh", "maxmin", "householder"]


def _sampled_quotient(chain: Chain, norm: float, n: int = 2000, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, chain.n_inputs, generator=gen, dtype=torch.float64)
    d = torch.randn(n, chain.n_inputs, generator=gen, dtype=torch.float64) * 10 ** (-3 * torch.rand(n, 1, generator=gen, dtype=torch.float64))
    return float(quotient(chain, x, x + d, norm).max())


def test_one_linear_layer_is_its_spectral_norm() -> None:
    w = torch.randn(7, 5, dtype=torch.float64)
    res = upper_bound(Chain((w,), ()), "neuron", 2)
    assert res.value == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-9)
    assert res.value >= float(torch.linalg.matrix_norm(w, 2))


@pytest.mark.parametrize("norm", [2, math.inf])
def test_one_maxmin_layer_is_one(norm: float) -> None:
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    chain = Chain((q, torch.eye(8, dtype=torch.float64)), (maxmin(8),))
    res = upper_bound(chain, "neuron", 2)
    assert 1.0 <= res.value <= 1.0 + 1e-6
    # plain LipSDP on the residual-ReLU form of MaxMin would give sqrt(2) here
    assert res.value < math.sqrt(2) - 0.1


def test_groupsort_layer_is_one() -> None:
    q, _ = torch.linalg.qr(torch.randn(9, 9, dtype=torch.float64))
    chain = Chain((q, torch.eye(9, dtype=torch.float64)), (group_sort(9, 3),))
    assert 1.0 <= upper_bound(chain, "neuron", 2).value <= 1.0 + 1e-6


def test_reported_bound_is_the_certificate_of_its_multipliers() -> None:
    chain = random_chain([6, 8, 8, 3], "relu", seed=3)
    res = upper_bound(chain, "neuron", 2)
    again = certify(chain, res.multipliers, 2)
    assert res.value == again.value
    # the certificate recomputes rho for the multipliers: never above what the solver claimed
    assert res.value <= res.solver_value * (1 + 1e-6)
    assert res.value <= naive_bound(chain, 2)


def test_infeasible_multipliers_prove_nothing() -> None:
    chain = random_chain([4, 6, 3], "relu", seed=1)
    zero = Multipliers(((torch.zeros(6, dtype=torch.float64),),))
    assert certify(chain, zero, 2).value == math.inf
    tiny = Multipliers(((torch.full((6,), 1e-6, dtype=torch.float64),),))
    assert certify(chain, tiny, 2).value == math.inf


def test_perturbed_multipliers_never_certify_less_than_the_truth() -> None:
    chain = random_chain([5, 6, 6, 2], "tanh", seed=2)
    res = upper_bound(chain, "neuron", 2)
    truth = _sampled_quotient(chain, 2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        layers = tuple(tuple(m * torch.exp(0.3 * torch.randn(m.shape, generator=gen, dtype=torch.float64)) for m in ms)
                       for ms in res.multipliers.layers)
        value = certify(chain, Multipliers(layers), 2).value
        assert value >= truth


@settings(max_examples=12, deadline=None)
@given(act=st.sampled_from(ACTS), seed=st.integers(0, 10_000), depth=st.integers(1, 3),
       norm=st.sampled_from([2, math.inf]), pair=st.booleans())
def test_upper_bound_is_never_below_a_concrete_quotient(act: str, seed: int, depth: int, norm: float, pair: bool) -> None:
    sizes = [5] + [6] * depth + [4]
    chain = random_chain(sizes, act, seed=seed)
    if pair:
        chain = chain.with_output(margin_vector(4, (0, 2)))
    res = upper_bound(chain, "neuron", norm)
    assert math.isfinite(res.value)
    assert res.value >= _sampled_quotient(chain, norm, n=500, seed=seed)
    assert res.value >= lower_bound(chain, chain.n_inputs, norm, starts=4, steps=30).value


@pytest.mark.parametrize("act", ["relu", "sigmoid", "maxmin"])
@pytest.mark.parametrize("norm", [2, math.inf])
def test_methods_are_ordered(act: str, norm: float) -> None:
    chain = random_chain([6, 8, 8, 3], act, seed=5)
    neuron = upper_bound(chain, "neuron", norm).value
    layer = upper_bound(chain, "layer", norm).value
    assert neuron <= layer * (1 + 1e-6)
    if norm == 2:   # naive measures l-inf -> l-inf, the SDP l-inf -> l2
        assert layer <= naive_bound(chain, norm) * (1 + 1e-6)


def test_exact_rescaling_by_powers_of_two() -> None:
    chain = random_chain([5, 6, 6, 3], "relu", seed=7)
    base = upper_bound(chain, "neuron", 2).value
    scaled = Chain((chain.weights[0] * 3.0,) + chain.weights[1:], chain.activations, chain.biases)
    # ReLU is positively homogeneous: scaling the first layer by 3 scales L by 3
    assert upper_bound(scaled, "neuron", 2).value == pytest.approx(3 * base, rel=1e-5)


def test_warm_start_from_the_layer_solution() -> None:
    chain = random_chain([6, 8, 8, 3], "relu", seed=8)
    layer = upper_bound(chain, "layer", 2)
    warm = upper_bound(chain, "neuron", 2, start=layer.multipliers)
    cold = upper_bound(chain, "neuron", 2)
    assert warm.value == pytest.approx(cold.value, rel=1e-5)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "maxmin", "householder"])
@pytest.mark.parametrize("method", ["neuron", "layer"])
@pytest.mark.parametrize("norm", [2, math.inf])
def test_agrees_with_an_interior_point_solver(act: str, method: str, norm: float) -> None:
    pytest.importorskip("cvxpy")
    from bounds.lipschitz.sdp_cvxpy import solve_cvxpy

    chain = random_chain([5, 6, 6, 3], act, seed=11)
    ours = upper_bound(chain, method, norm).value
    raw, theirs = solve_cvxpy(chain, method, norm)
    assert ours == pytest.approx(raw, rel=1e-4)
    # their multipliers sit on the boundary; pulled back and certified they prove about as much
    assert math.isfinite(theirs.value)
    assert theirs.value == pytest.approx(raw, rel=1e-3)


@pytest.mark.parametrize("act", ACTS)
def test_every_activation_kind_is_sound(act: str) -> None:
    chain = random_chain([4, 6, 6, 3], act, seed=21)
    for norm in (2, math.inf):
        res = upper_bound(chain, "neuron", norm)
        assert res.value >= _sampled_quotient(chain, norm, n=1000, seed=1)


def test_negative_gamma_cannot_lower_the_linf_certificate() -> None:
    chain = random_chain([4, 6, 2], "relu", seed=3)
    res = upper_bound(chain, "neuron", math.inf)
    g = res.multipliers.gamma.clone()
    g[0] = -1e6     # a user-supplied gamma with a huge negative entry must not shrink the bound
    value = certify(chain, Multipliers(res.multipliers.layers, g), math.inf).value
    assert value >= res.value * (1 - 1e-9)


def test_arrow_banded_newton_solve_equals_dense() -> None:
    from bounds.lipschitz.solver import _newton_direction

    gen = torch.Generator().manual_seed(0)
    n, head, band = 400, 7, 20
    A = torch.randn(n, n, generator=gen, dtype=torch.float64)
    i = torch.arange(n)
    mask = ((i[:, None] - i[None, :]).abs() <= band) | (i[:, None] < head) | (i[None, :] < head)
    H = (A @ A.T) * mask + n * torch.eye(n, dtype=torch.float64)
    H = H * torch.exp(torch.randn(n, generator=gen, dtype=torch.float64))[:, None].sqrt() \
          * torch.exp(torch.randn(n, generator=gen, dtype=torch.float64))[None, :].sqrt()
    H = (H + H.T) / 2 * mask + torch.diag(H.diagonal().abs() + n)
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    dense = -torch.linalg.solve(H, g)
    assert torch.allclose(_newton_direction(g, H, band, head), dense, rtol=1e-8, atol=1e-10)


def test_a_timeout_still_reports_a_certified_bound() -> None:
    import time

    from bounds.lipschitz.solver import SolverOptions

    chain = random_chain([5, 8, 8, 3], "relu", seed=9)
    rushed = upper_bound(chain, "neuron", 2, SolverOptions(deadline=time.monotonic()))
    full = upper_bound(chain, "neuron", 2)
    assert rushed.timed_out and math.isfinite(rushed.value)
    assert rushed.value >= full.value * (1 - 1e-9)
    assert rushed.value == certify(chain, rushed.multipliers, 2).value


@pytest.mark.parametrize("act, norm", [("relu", 2), ("tanh", 2), ("maxmin", 2), ("relu", math.inf)])
def test_certificate_descent_improves_layer_multipliers_but_never_passes_the_optimum(act: str, norm: float) -> None:
    """From LipSDP-Layer's multipliers, descent on the certified value itself lands between
    the neuron optimum (the barrier, centred on these small nets) and where it started; what
    it returns is exactly what its multipliers certify."""
    from bounds.lipschitz.descent import descend

    chain = random_chain([6, 12, 10, 3], act, seed=11)
    layer = upper_bound(chain, "layer", norm)
    neuron = upper_bound(chain, "neuron", norm)
    mult, value = descend(chain, layer.multipliers, norm, iterations=200)
    assert value == certify(chain, mult, norm).value
    assert neuron.value * (1 - 1e-6) <= value <= layer.value
    if act != "maxmin":
        assert value < layer.value * (1 - 1e-3)          # it does move
    assert value >= _sampled_quotient(chain, norm)
