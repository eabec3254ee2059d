"""LipSDP with skip connections (Dag): exact cases, the windowed certificate against the chain
one, soundness against concrete quotients, agreement with cvxpy, extraction from torch / ONNX."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds.graph.torch_import import from_torch
from bounds.lipschitz.bound import upper_bound
from bounds.lipschitz.certify import Multipliers, certify
from bounds.lipschitz.chain import elementwise, maxmin
from bounds.lipschitz.dag import Dag
from bounds.lipschitz.extract import ChainError, chain_from_graph, load_network, network_from_graph
from bounds.lipschitz.lower import lower_bound, quotient
from bounds.lipschitz.naive import naive_bound
from tests.bounds.lipschitz.nets import ResidualMLP, random_chain, random_residual, residual_onnx

F64 = torch.float64


def _sampled_quotient(net, norm: float, n: int = 2000, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(n, net.n_inputs, generator=gen, dtype=F64)
    d = torch.randn(n, net.n_inputs, generator=gen, dtype=F64) * 10 ** (-3 * torch.rand(n, 1, generator=gen, dtype=F64))
    return float(quotient(net, x, x + d, norm).max())


def _random_multipliers(net, gen: torch.Generator, scale: float = 1.0) -> Multipliers:
    layers = []
    for act in net.activations:
        ms = []
        for p in act.pieces:
            if p.is_group:
                ms.append(torch.stack([scale * torch.rand(p.index.shape[0], generator=gen, dtype=F64),
                                       0.3 * torch.randn(p.index.shape[0], generator=gen, dtype=F64)], -1))
            else:
                ms.append(scale * torch.rand(p.index.numel(), generator=gen, dtype=F64))
        layers.append(tuple(ms))
    return Multipliers(tuple(layers), torch.rand(net.n_inputs, generator=gen, dtype=F64))


@pytest.mark.parametrize("projection", [False, True])
def test_zero_residual_branch_leaves_the_skip(projection: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    S = torch.randn(5, 5, generator=gen, dtype=F64) if projection else torch.eye(5, dtype=F64)
    W1 = torch.randn(6, 5, generator=gen, dtype=F64)
    net = Dag((W1, torch.cat([S, torch.zeros(5, 6, dtype=F64)], 1)), (elementwise("relu", 6),))
    res = upper_bound(net, "neuron", 2)
    exact = float(torch.linalg.matrix_norm(S, 2))
    assert exact <= res.value <= exact * (1 + 1e-5)


def test_identity_plus_a_contraction_is_below_the_triangle_inequality() -> None:
    # y = x + W2 relu(W1 x): the naive bound is 1 + |W2||W1|; the SDP must be no worse
    net = random_residual(4, 6, blocks=1, seed=2)
    sdp = upper_bound(net, "neuron", 2).value
    assert sdp <= naive_bound(net, 2) * (1 + 1e-9)
    assert sdp >= _sampled_quotient(net, 2)


@pytest.mark.parametrize("act", ["relu", "maxmin", "sigmoid"])
@pytest.mark.parametrize("norm", [2, math.inf])
def test_a_chain_as_a_dag_gives_the_same_bound(act: str, norm: float) -> None:
    chain = random_chain([5, 6, 6, 3], act, seed=4)
    dag = Dag.from_chain(chain)
    assert dag.is_chain and dag.to_chain().weights[1].shape == (6, 6)
    x = torch.randn(7, 5, dtype=F64)
    assert torch.allclose(dag(x), chain(x))
    a = upper_bound(chain, "neuron", norm)
    b = upper_bound(dag, "neuron", norm)
    assert b.value == pytest.approx(a.value, rel=1e-7)
    # the windowed certificate equals the block-tridiagonal one on the same multipliers:
    # mixes of the neuron and layer solutions (feasible: the LMI is convex), perturbed ones
    # and random ones (mostly infeasible)
    gen = torch.Generator().manual_seed(1)
    layer = upper_bound(chain, "layer", norm).multipliers
    finite = 0
    for k in range(6):
        if k < 3:
            th = 0.3 * k
            m = a.multipliers
            mult = Multipliers(tuple(tuple((1 - th) * t + th * u for t, u in zip(ms, ns)) for ms, ns in zip(m.layers, layer.layers)),
                               None if m.gamma is None else (1 - th) * m.gamma + th * layer.gamma)
        elif k == 3:
            m = a.multipliers
            mult = Multipliers(tuple(tuple(t * (1 + 0.5 * torch.rand(t.shape, generator=gen, dtype=F64)) for t in ms)
                                     for ms in m.layers), m.gamma)
        else:
            mult = _random_multipliers(chain, gen, 30.0 if k == 5 else 1.0)
        ca, cb = certify(chain, mult, norm), certify(dag, mult, norm)
        assert (ca.value == math.inf) == (cb.value == math.inf)
        if math.isfinite(ca.value):
            finite += 1
            assert cb.value == pytest.approx(ca.value, rel=1e-9)
    assert finite >= 2
    assert naive_bound(dag, norm) == pytest.approx(naive_bound(chain, norm), rel=1e-9)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), act=st.sampled_from(["relu", "leaky_relu", "tanh", "maxmin", "householder"]),
       blocks=st.integers(1, 3), projection=st.booleans(), norm=st.sampled_from([2, math.inf]))
def test_certified_bound_is_never_below_a_concrete_quotient(seed: int, act: str, blocks: int, projection: bool,
                                                             norm: float) -> None:
    net = random_residual(4, 6, blocks, act, seed, projection)
    res = upper_bound(net, "neuron", norm)
    assert math.isfinite(res.value)
    # norm=inf: the SDP bounds l-inf -> l2, which dominates l-inf -> l-inf quotients
    assert res.value >= _sampled_quotient(net, norm) * (1 - 1e-9)
    assert res.value >= lower_bound(net, net.n_inputs, norm, starts=6, steps=60, seed=seed).value * (1 - 1e-9)
    if norm == 2:
        assert res.value <= naive_bound(net, 2) * (1 + 1e-6)
    assert res.value == certify(net, res.multipliers, norm).value


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_any_multipliers_certify_no_less_than_a_quotient(seed: int, scale: float) -> None:
    """The certificate alone (no solver) is sound: whatever multipliers come in, a finite
    constant they prove is above what the network attains."""
    net = random_residual(3, 4, 2, "relu" if seed % 2 else "maxmin", seed, projection=bool(seed % 3))
    gen = torch.Generator().manual_seed(seed)
    best = upper_bound(net, "layer", 2).multipliers
    mult = _random_multipliers(net, gen, scale)
    mixed = Multipliers(tuple(tuple(0.5 * a + 0.5 * b for a, b in zip(ms, ns)) for ms, ns in zip(mult.layers, best.layers)))
    low = _sampled_quotient(net, 2, 500, seed)
    for m in (mult, mixed):
        cert = certify(net, m, 2)
        assert cert.value >= low * (1 - 1e-9)


@pytest.mark.parametrize("act", ["relu", "maxmin", "sigmoid"])
@pytest.mark.parametrize("method", ["neuron", "layer"])
@pytest.mark.parametrize("norm", [2, math.inf])
def test_agrees_with_an_interior_point_solver(act: str, method: str, norm: float) -> None:
    pytest.importorskip("cvxpy")
    from bounds.lipschitz.sdp_cvxpy import solve_cvxpy

    net = random_residual(4, 6, 2, act, seed=5, projection=True)
    ours = upper_bound(net, method, norm).value
    raw, theirs = solve_cvxpy(net, method, norm)
    assert ours == pytest.approx(raw, rel=1e-3)
    assert math.isfinite(theirs.value) and theirs.value >= ours * (1 - 1e-3)


@pytest.mark.parametrize("projection", [False, True])
def test_torch_residual_module_is_read_with_its_skips(projection: bool) -> None:
    torch.manual_seed(0)
    module = ResidualMLP(5, 4, 6, 2, 3, projection).double()
    with pytest.raises(ChainError, match="residual"):
        chain_from_graph(from_torch(module, (1, 5)))
    net = network_from_graph(from_torch(module, (1, 5)))
    assert isinstance(net, Dag) and net.widths == (6, 6)
    assert net.sources[1] == 0        # the second block reads the input through the skip
    x = torch.randn(30, 5, dtype=F64)
    assert torch.allclose(net(x), module(x), atol=1e-9)
    res = upper_bound(net, "neuron", 2)
    assert res.value >= lower_bound(net, 5, 2, starts=6, steps=60).value * (1 - 1e-9)
    assert res.value <= naive_bound(net, 2) * (1 + 1e-6)


def test_residual_onnx_file_and_cli(tmp_path: Path, capsys) -> None:
    import json

    from verifier.cli import main as verify_main

    rng = np.random.default_rng(3)
    W1, b1 = rng.standard_normal((6, 4)) / 2, rng.standard_normal(6)
    W2, b2 = rng.standard_normal((4, 6)) / 3, rng.standard_normal(4)
    R = rng.standard_normal((2, 4))
    path = tmp_path / "res.onnx"
    path.write_bytes(residual_onnx(W1, b1, W2, b2, R))
    net = load_network(path)
    assert isinstance(net, Dag) and net.name == "res"
    x = rng.random((8, 4)).astype(np.float32)
    sess = ort.InferenceSession(str(path))
    ref = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(8)])
    np.testing.assert_allclose(net(torch.as_tensor(x, dtype=F64)).numpy(), ref, rtol=1e-4, atol=1e-4)
    code = verify_main(["lipschitz", str(path), "--json", "-q"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert 0 < out["lower"] <= out["upper"] <= out["details"]["naive"] * (1 + 1e-9)
    assert "skip" in out["details"]["network"]
    code = verify_main(["lipschitz", str(path), "--json", "-q", "--pair", "0,1", "--norm", "inf"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and 0 < out["lower"] <= out["upper"]


def test_maxmin_residual_block_is_at_most_two() -> None:
    # y = x + W2 maxmin(W1 x) with |W1|, |W2| <= 1 orthogonal: the triangle inequality gives 2,
    # the SDP may do better but never below what is attained
    q1, _ = torch.linalg.qr(torch.randn(6, 6, dtype=F64))
    q2, _ = torch.linalg.qr(torch.randn(6, 6, dtype=F64))
    net = Dag((q1, torch.cat([torch.eye(6, dtype=F64), q2], 1)), (maxmin(6),))
    res = upper_bound(net, "neuron", 2).value
    assert _sampled_quotient(net, 2) <= res <= 2 * (1 + 1e-6)
