"""Convolutions too large for dense matrices: Fourier norm bounds and networks bounded part by part.

Every structured bound is checked against the exact norm of the same map written down densely
(small sizes), and every network against concrete difference quotients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import bounds.lipschitz.extract as extract
from bounds.graph.torch_import import from_torch
from bounds.lipschitz.bound import upper_bound
from bounds.lipschitz.chain import Chain
from bounds.lipschitz.composed import Composition
from bounds.lipschitz.extract import ChainError, network_from_graph
from bounds.lipschitz.lower import quotient
from bounds.lipschitz.naive import naive_bound
from bounds.lipschitz.structured import ConvFactor, StructuredAffine
from verifier.lipschitz import lipschitz_bounds

_CONV = {1: F.conv1d, 2: F.conv2d}


def dense_conv(conv: ConvFactor) -> torch.Tensor:
    """The convolution's matrix, column k = the image of unit vector k."""
    n_in = math.prod(conv.in_shape)
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *conv.in_shape)
    n = conv.n_spatial
    pad = []
    for i in reversed(range(n)):
        pad += [conv.pads[i], conv.pads[i + n]]
    y = _CONV[n](F.pad(eye, pad), conv.kernel, stride=conv.strides, dilation=conv.dilations, groups=conv.groups)
    return y.reshape(n_in, -1).T


@st.composite
def convs(draw) -> ConvFactor:
    n = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    k = [draw(st.integers(1, 4)) for _ in range(n)]
    strides = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(n))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * n))
    spatial = [draw(st.integers(max(1, dil[i] * (k[i] - 1) + 1 - pads[i] - pads[i + n]), 9)) for i in range(n)]
    seed = draw(st.integers(0, 10_000))
    kernel = torch.randn(c_out, c_in // groups, *k, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)
    return ConvFactor(kernel, (c_in, *spatial), pads, strides, dil, groups)


@settings(max_examples=150, deadline=None)
@given(convs())
def test_fourier_bound_is_never_below_the_exact_norm(conv: ConvFactor) -> None:
    W = dense_conv(conv)
    exact2 = float(torch.linalg.matrix_norm(W, 2))
    exact_inf = float(W.abs().sum(1).max())
    assert conv.norm(2) >= exact2 * (1 - 1e-12)
    assert conv.norm(math.inf) >= exact_inf * (1 - 1e-12)


@pytest.mark.parametrize("stride, pad, dilation, groups", [(1, 1, 1, 1), (2, 1, 1, 1), (2, 2, 1, 2), (1, 2, 2, 1)])
def test_fourier_bound_is_close_on_a_large_grid(stride: int, pad: int, dilation: int, groups: int) -> None:
    """Zero padding only loosens the circular bound near the border; on a 24 x 24 grid a
    3 x 3 kernel's bound is within a few per cent of the exact norm."""
    gen = torch.Generator().manual_seed(stride * 7 + pad)
    conv = ConvFactor(torch.randn(6, 4 // groups, 3, 3, generator=gen, dtype=torch.float64), (4, 24, 24),
                      (pad,) * 4, (stride,) * 2, (dilation,) * 2, groups)
    exact = float(torch.linalg.matrix_norm(dense_conv(conv), 2))
    assert exact <= conv.norm(2) <= 1.06 * exact


def test_one_by_one_convolution_is_exact() -> None:
    """A 1 x 1 convolution is the channel matrix applied at every pixel: same norm."""
    M = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    conv = ConvFactor(M.reshape(5, 3, 1, 1), (3, 6, 6), (0,) * 4, (1, 1), (1, 1))
    assert conv.norm(2) == pytest.approx(float(torch.linalg.matrix_norm(M, 2)), rel=1e-8)


class _Net(torch.nn.Module):
    """conv3x3 + BatchNorm, ReLU, strided conv4x4 * 0.5 - 0.1, tanh, fc, ReLU, fc on 2 x size x size."""

    def __init__(self, size: int = 10, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(2, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6).eval()
        with torch.no_grad():
            self.bn.running_var.uniform_(0.3, 3.0)
            self.bn.weight.uniform_(0.5, 2.0)
            self.bn.running_mean.uniform_(-1, 1)
        self.conv2 = torch.nn.Conv2d(6, 4, 4, stride=2, padding=1)
        self.fc1 = torch.nn.Linear(4 * (size // 2) ** 2, width)
        self.fc2 = torch.nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        h = torch.tanh(self.conv2(h) * 0.5 - 0.1)
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


def _composed(monkeypatch, module: torch.nn.Module, shape: tuple[int, ...], limit: int, width: int = 8192):
    """The module read with segments of more than `limit` matrix entries kept structured."""
    monkeypatch.setattr(extract, "MAX_DENSE", limit)
    return network_from_graph(from_torch(module, shape), max_sdp_width=width)


def test_large_segments_become_structured_parts(monkeypatch) -> None:
    module = _Net().double()
    net = _composed(monkeypatch, module, (1, 2, 10, 10), limit=10_000)
    assert isinstance(net, Composition)
    kinds = [type(p).__name__ for p in net.parts]
    # conv1+bn (200 -> 600) and conv2 (600 -> 100) are over the limit; the 600 ReLUs between
    # them are bounded by their slope; tanh .. fc2 is one SDP
    assert kinds == ["StructuredAffine", "Activation", "StructuredAffine", "Chain"]
    assert len(net.parts[0].factors) == 1            # the BatchNorm scale folded into conv1
    assert len(net.parts[2].factors) == 1            # and the * 0.5 into conv2
    x = torch.randn(30, 200, dtype=torch.float64)
    assert torch.allclose(net(x), module(x.reshape(30, 2, 10, 10)), atol=1e-9)
    for part in (net.parts[0], net.parts[2]):       # each bound covers the exact (dense) norm
        W = torch.func.jacrev(lambda v: part(v[None])[0])(torch.zeros(part.n_in, dtype=torch.float64))
        exact = float(torch.linalg.matrix_norm(W, 2))
        assert exact * (1 - 1e-12) <= part.norm(2) <= 1.3 * exact


def test_wide_activation_layers_stand_alone(monkeypatch) -> None:
    module = _Net().double()
    net = _composed(monkeypatch, module, (1, 2, 10, 10), limit=100_000, width=300)
    kinds = [type(p).__name__ for p in net.parts]
    assert kinds == ["StructuredAffine", "Activation", "Chain"]    # 600 ReLUs > 300: no SDP over them
    assert net.parts[1].size == 600
    assert net.parts[2].weights[0].shape == (100, 600)            # the chain starts with conv2, dense


@pytest.mark.parametrize("norm", [2, math.inf])
def test_composed_bound_is_sound_and_beats_nothing_it_should_not(monkeypatch, norm: float) -> None:
    module = _Net(size=6).double()
    whole = network_from_graph(from_torch(module, (1, 2, 6, 6)))
    assert isinstance(whole, Chain)
    net = _composed(monkeypatch, module, (1, 2, 6, 6), limit=5_000)
    assert [type(p).__name__ for p in net.parts] == ["StructuredAffine", "Activation", "StructuredAffine", "Chain"]
    res = lipschitz_bounds(net, norm, timeout=120)
    # sound: no difference quotient of the network exceeds it
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(400, 72, generator=gen, dtype=torch.float64)
    d = torch.randn(400, 72, generator=gen, dtype=torch.float64) * 1e-3
    q = quotient(lambda v: module(v.reshape(-1, 2, 6, 6)), x, x + d, norm)
    assert float(q.max()) <= res.upper
    assert res.lower <= res.upper
    # the part-by-part bound is no better than one SDP over the whole (dense) network can be,
    # and no worse than the product of layer norms
    assert res.upper <= naive_bound(whole, norm) * 1.3
    if norm == 2:
        assert res.upper >= upper_bound(whole, "neuron", 2).value * (1 - 1e-6)


def test_margin_on_a_composition(monkeypatch) -> None:
    module = _Net().double()
    net = _composed(monkeypatch, module, (1, 2, 10, 10), limit=10_000)
    res = lipschitz_bounds(net, 2, pair=(0, 2), timeout=60)
    x = torch.randn(200, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    d = torch.randn(200, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 1e-3
    f = lambda v: (lambda y: y[:, :1] - y[:, 2:3])(module(v.reshape(-1, 2, 10, 10)))   # noqa: E731
    assert float(quotient(f, x, x + d, 2).max()) <= res.upper


class _Branches(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Conv2d(1, 2, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(torch.cat([self.a(x), self.b(x)], 1)).flatten(1))


def test_a_large_segment_without_structure_names_the_node(monkeypatch) -> None:
    with pytest.raises(ChainError, match="Concat"):
        _composed(monkeypatch, _Branches(), (1, 1, 8, 8), limit=1000)


def test_structured_affine_norm_multiplies_its_factors() -> None:
    conv = ConvFactor(torch.ones(1, 1, 1, 1, dtype=torch.float64) * 3, (1, 4, 4), (0,) * 4, (1, 1), (1, 1))
    seg = StructuredAffine(16, 16, (conv, conv), lambda v: 9 * v)
    assert seg.norm(2) == pytest.approx(9.0, rel=1e-7)
    assert seg.norm_inf_to_2() == pytest.approx(9.0 * 4, rel=1e-7)


@pytest.mark.parametrize("act, lower", [("relu", 0.0), ("leaky_relu", 0.1), ("slope", -0.2)])
def test_wide_input_certificate_avoids_the_input_square_and_agrees(act: str, lower: float) -> None:
    """The l2 certificate of a chain whose input is much wider than its first layer is computed
    from a (<= 2 n_1)-row factor; it equals the n_0 x n_0 form where P1 >= 0 and covers it
    where P1 has negative entries (dropped, so the bound can only grow)."""
    from bounds.lipschitz.certify import certify, reduced_input_form
    from bounds.lipschitz.chain import elementwise

    gen = torch.Generator().manual_seed(7)
    ws = (torch.randn(12, 400, generator=gen, dtype=torch.float64) / 20,
          torch.randn(10, 12, generator=gen, dtype=torch.float64) / 3,
          torch.randn(3, 10, generator=gen, dtype=torch.float64) / 3)
    acts = (elementwise(act, 12, lower, 1.0, 0.1 if act == "leaky_relu" else None), elementwise("relu", 10))
    chain = Chain(ws, acts)
    res = upper_bound(chain, "neuron", 2)
    full, _ = reduced_input_form(chain, res.multipliers)
    exact = math.sqrt(float(torch.linalg.eigvalsh(full)[-1]))
    assert res.value >= exact * (1 - 1e-9)
    if lower <= 0:
        assert res.value == pytest.approx(exact, rel=1e-8)
    else:
        assert res.value <= exact * 1.5
    assert certify(chain, res.multipliers, 2).value == res.value


@pytest.mark.parametrize("kernel, stride, cover", [(2, 2, 1), (3, 1, 9), (3, 2, 4)])
def test_max_pooling_is_its_own_part(kernel: int, stride: int, cover: int) -> None:
    """conv -> ReLU -> MaxPool -> conv -> ReLU -> fc: the pooling is a part bounded by the square
    root of the most windows covering one input (1 for 2x2/2, 9 for 3x3/1, 4 for 3x3/2)."""
    torch.manual_seed(kernel + stride)
    nn = torch.nn
    body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(kernel, stride))
    side = body(torch.zeros(1, 1, 8, 8)).shape[-1]
    module = nn.Sequential(body, nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * (side - 2) ** 2, 3)).double()
    net = network_from_graph(from_torch(module, (1, 1, 8, 8)))
    assert isinstance(net, Composition)
    pools = [p for p in net.parts if type(p).__name__ == "Pooling"]
    assert len(pools) == 1 and pools[0].max_cover == cover
    x = torch.randn(20, 64, dtype=torch.float64)
    assert torch.allclose(net(x), module(x.reshape(20, 1, 8, 8)), atol=1e-9)
    for norm in (2, math.inf):
        res = lipschitz_bounds(net, norm, timeout=60)
        d = torch.randn(20, 64, dtype=torch.float64) * 1e-3
        q = quotient(lambda v: module(v.reshape(-1, 1, 8, 8)), x, x + d, norm)
        assert float(q.max()) <= res.upper and res.lower <= res.upper


def test_naive_method_on_a_composition_is_sound_in_l_inf(monkeypatch) -> None:
    """upper_bound(composition, "naive", inf) chains l-inf -> l2 into l2 parts, never an
    l-inf -> l-inf value into an l2 part."""
    module = _Net(size=6).double()
    net = _composed(monkeypatch, module, (1, 2, 6, 6), limit=5_000)
    value = upper_bound(net, "naive", math.inf).value
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(400, 72, generator=gen, dtype=torch.float64)
    d = torch.sign(torch.randn(400, 72, generator=gen, dtype=torch.float64)) * 1e-3
    f = lambda v: module(v.reshape(-1, 2, 6, 6))        # noqa: E731
    with torch.no_grad():
        l2_of_linf = (f(x + d) - f(x)).norm(dim=1) / d.abs().amax(1)
    assert float(l2_of_linf.max()) <= value


class _Gated(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(4, 6), torch.nn.Linear(4, 6), torch.nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.a(x) * self.b(x)))


def test_a_non_affine_segment_names_its_operator() -> None:
    with pytest.raises(ChainError, match=r"not affine: Mul .* not linear"):
        network_from_graph(from_torch(_Gated(), (1, 4)))
