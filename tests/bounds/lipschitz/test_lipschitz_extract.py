"""Graph IR / ONNX / .mat -> Chain: the chain computes the same function as the model."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bounds.graph.torch_import import from_torch
from bounds.lipschitz.bound import upper_bound
from bounds.lipschitz.chain import Chain, maxmin
from bounds.lipschitz.extract import ChainError, chain_from_graph, chain_from_mat, load_network
from tests.bounds.lipschitz.nets import maxmin_onnx, relu_module

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "lipschitz" / "maxmin_mnist"


def test_torch_relu_network_becomes_the_same_function() -> None:
    module = relu_module([6, 8, 8, 3]).double()
    chain = chain_from_graph(from_torch(module, (1, 6)))
    assert chain.widths == (8, 8)
    x = torch.randn(50, 6, dtype=torch.float64)
    assert torch.allclose(chain(x), module(x), atol=1e-6)


def test_small_convolution_becomes_a_matrix() -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, stride=2), torch.nn.Sigmoid(), torch.nn.Flatten(),
                                 torch.nn.Linear(2 * 3 * 3, 4)).double()
    chain = chain_from_graph(from_torch(module, (1, 1, 7, 7)))
    assert chain.weights[0].shape == (18, 49)
    assert chain.activations[0].pieces[0].upper == 0.25
    x = torch.randn(20, 1, 7, 7, dtype=torch.float64)
    assert torch.allclose(chain(x.reshape(20, -1)), module(x), atol=1e-6)


def test_maxmin_onnx_export_pattern_is_recognised(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((8, 5)), rng.standard_normal((6, 8)), rng.standard_normal((3, 6))]
    bs = [rng.standard_normal(8), rng.standard_normal(6), rng.standard_normal(3)]
    path = tmp_path / "mm.onnx"
    path.write_bytes(maxmin_onnx(ws, bs))
    chain = load_network(path)
    assert [p.kind for a in chain.activations for p in a.pieces] == ["sort", "sort"]
    x = rng.random((10, 5)).astype(np.float32)
    sess = ort.InferenceSession(str(path))
    ref = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(10)])
    np.testing.assert_allclose(chain(torch.as_tensor(x, dtype=torch.float64)).numpy(), ref, rtol=1e-4, atol=1e-4)
    # the same weights as a hand-made chain give the same bound (rows permuted inside the layer)
    direct = Chain(tuple(torch.as_tensor(w.astype(np.float32), dtype=torch.float64) for w in ws), (maxmin(8), maxmin(6)))
    assert upper_bound(chain, "neuron", 2).value == pytest.approx(upper_bound(direct, "neuron", 2).value, rel=1e-5)


class _Residual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(h)) + h)


def test_residual_networks_are_refused_with_a_reason() -> None:
    with pytest.raises(ChainError, match="residual"):
        chain_from_graph(from_torch(_Residual(), (1, 4)))


def test_unreadable_file_is_a_model_error(tmp_path: Path) -> None:
    from bounds.errors import ModelLoadError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        load_network(bad)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared Lipschitz networks at {SHARED}")
def test_shared_maxmin_network_bounds() -> None:
    chain = chain_from_mat(SHARED / "weights_l2_2fc_16.mat")
    assert chain.widths == (16,)
    res = upper_bound(chain, "neuron", 2)
    naive = math.prod(float(torch.linalg.matrix_norm(w, 2)) for w in chain.weights)
    assert res.value < naive
    from bounds.lipschitz.lower import lower_bound

    assert lower_bound(chain, 784, 2, starts=2, steps=15).value <= res.value
