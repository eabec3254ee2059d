"""bounds.graph.fuse_minmax: MaxMin / GroupSort export patterns become one native node that
evaluates exactly like the unfused graph and like onnxruntime."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bounds.graph import evaluate, load_onnx
from bounds.graph.fuse_minmax import GROUPSORT, MAXMIN, PAIRDIFF, SELECTIONS, unfuse
from tests.bounds import onnx_fixtures as fx

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "lipschitz" / "maxmin_mnist"


def _ops(graph) -> list[str]:
    return [n.op for n in graph.nodes]


def _check_equivalent(m: onnx.ModelProto, fused_op: str, batch: int = 5, tol: float = 0.0):
    """Fused graph == unfused graph (exactly) == onnxruntime (to `tol`: matmuls round
    differently), and the selections are gone."""
    graph, _ = fx.compare(m, batch=batch, rtol=tol, atol=tol)
    assert fused_op in _ops(graph), graph.summary()
    assert not SELECTIONS & set(_ops(graph)), graph.summary()
    raw = load_onnx(m.SerializeToString(), canonical=False)
    x = torch.randn(batch, *graph.input.shape)
    assert torch.equal(evaluate(graph, x)[graph.outputs[0]], evaluate(raw, x)[raw.outputs[0]])
    # ties: exact too (sorting is defined on ties, whatever order the exporter chose)
    xt = torch.randint(0, 3, (batch, *graph.input.shape)).float()
    assert torch.equal(evaluate(graph, xt)[graph.outputs[0]], evaluate(raw, xt)[raw.outputs[0]])
    return graph


# ----------------------------------------------------------------------------------------
# hand-written export patterns

def _halves(first: str = "Max", axis: int = 1, n: int = 6) -> onnx.ModelProto:
    nodes = [fx.node("Split", ["x", "sizes"], ["a", "b"], axis=axis),
             fx.node("Max", ["a", "b"], "mx"), fx.node("Min", ["b", "a"], "mn"),
             fx.node("Concat", ["mx", "mn"] if first == "Max" else ["mn", "mx"], "y", axis=axis)]
    shape = [1, n] if axis == 1 else [1, 2, n]
    return fx.model(nodes, shape, consts={"sizes": fx.i64(n // 2, n // 2)})


def _pairs_reduce(keep: int) -> onnx.ModelProto:
    nodes = [fx.node("Reshape", ["x", "grp"], "g"),
             fx.node("ReduceMax", ["g"], "mx", axes=[-1], keepdims=keep),
             fx.node("ReduceMin", ["g"], "mn", axes=[-1], keepdims=keep)]
    if keep:
        nodes.append(fx.node("Concat", ["mx", "mn"], "c", axis=-1))
    else:
        nodes += [fx.node("Unsqueeze", ["mx", "ax"], "umx"), fx.node("Unsqueeze", ["mn", "ax"], "umn"),
                  fx.node("Concat", ["umx", "umn"], "c", axis=-1)]
    nodes.append(fx.node("Reshape", ["c", "back"], "y"))
    return fx.model(nodes, [1, 8], consts={"grp": fx.i64(1, 4, 2), "ax": fx.i64(-1), "back": fx.i64(1, 8)})


def _topk_groups(g: int, largest: int) -> onnx.ModelProto:
    nodes = [fx.node("Reshape", ["x", "grp"], "g"),
             fx.node("TopK", ["g", "k"], ["s", "idx"], axis=-1, largest=largest),
             fx.node("Reshape", ["s", "back"], "y")]
    return fx.model(nodes, [1, 3 * g], consts={"grp": fx.i64(1, 3, g), "k": fx.i64(g), "back": fx.i64(1, 3 * g)})


def _channels_conv_style() -> onnx.ModelProto:
    """MaxMin over the channels of an (N, C, H, W) feature map, halves written with Slice."""
    nodes = [fx.node("Slice", ["x", "s0", "e0", "ax"], "a"), fx.node("Slice", ["x", "s1", "e1", "ax"], "b"),
             fx.node("Max", ["a", "b"], "mx"), fx.node("Min", ["a", "b"], "mn"),
             fx.node("Concat", ["mx", "mn"], "y", axis=1)]
    return fx.model(nodes, [1, 4, 3, 3], consts={"s0": fx.i64(0), "e0": fx.i64(2), "s1": fx.i64(2),
                                                 "e1": fx.i64(4), "ax": fx.i64(1)})


@pytest.mark.parametrize("first", ["Max", "Min"])
def test_split_max_min_concat_fuses(first: str) -> None:
    graph = _check_equivalent(_halves(first), MAXMIN)
    node = next(n for n in graph.nodes if n.op == MAXMIN)
    assert node.attrs["strided"] == 1 and node.attrs["descending"] == int(first == "Max")


@pytest.mark.parametrize("keep", [0, 1])
def test_reshape_reduce_pairs_fuses(keep: int) -> None:
    graph = _check_equivalent(_pairs_reduce(keep), MAXMIN)
    node = next(n for n in graph.nodes if n.op == MAXMIN)
    assert node.attrs["strided"] == 0 and node.attrs["descending"] == 1


@pytest.mark.parametrize("g,largest", [(3, 1), (4, 0), (2, 1)])
def test_topk_sort_fuses(g: int, largest: int) -> None:
    _check_equivalent(_topk_groups(g, largest), GROUPSORT if g > 2 else MAXMIN)


def test_channel_halves_with_slices_fuse() -> None:
    _check_equivalent(_channels_conv_style(), MAXMIN)


def test_the_fused_graph_has_one_node_per_activation() -> None:
    graph = load_onnx(_pairs_reduce(0).SerializeToString())
    assert _ops(graph).count(MAXMIN) == 1
    assert [n.op for n in graph.nodes if n.op not in ("Input", "Constant")] == [PAIRDIFF, MAXMIN]


def test_clamps_and_relu_like_max_are_not_fused() -> None:
    """Max(x, 0) stays; a sort followed by a clamp against constants keeps the clamp."""
    relu_like = fx.model([fx.node("Max", ["x", "z"], "y")], [1, 4], consts={"z": np.zeros(1, np.float32)})
    assert "Max" in _ops(load_onnx(relu_like.SerializeToString()))
    m = _halves()
    m.graph.node[-1].output[0] = m.graph.node[-1].name = "s"
    m.graph.node.extend([fx.node("Min", ["s", "hi"], "t"), fx.node("Max", ["t", "lo"], "y")])
    m.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([1e9], np.float32), "hi"),
                                onnx.numpy_helper.from_array(np.array([-1e9], np.float32), "lo")])
    graph, _ = fx.compare(m, rtol=0, atol=0)
    assert MAXMIN in _ops(graph) and "Max" in _ops(graph) and "Min" in _ops(graph)


def test_max_of_unrelated_halves_is_not_a_maxmin() -> None:
    """Max and Min of different pairs: no sort reproduces it, so nothing is fused."""
    nodes = [fx.node("Split", ["x", "sizes"], ["a", "b", "c"], axis=1),
             fx.node("Max", ["a", "b"], "mx"), fx.node("Min", ["a", "c"], "mn"),
             fx.node("Concat", ["mx", "mn"], "y", axis=1)]
    m = fx.model(nodes, [1, 6], consts={"sizes": fx.i64(2, 2, 2)})
    graph, _ = fx.compare(m, rtol=0, atol=0)
    assert MAXMIN not in _ops(graph)


def test_unfuse_round_trips_through_onnxruntime() -> None:
    from bounds.graph.onnx_export import to_onnx
    for m in (_halves(), _pairs_reduce(1), _topk_groups(3, 0), _channels_conv_style()):
        graph = load_onnx(m.SerializeToString())
        plain = unfuse(graph)
        assert not {MAXMIN, GROUPSORT, PAIRDIFF} & set(_ops(plain))
        exported = to_onnx(graph)          # unfuses by itself
        x = np.random.default_rng(0).normal(size=(3, *graph.input.shape)).astype(np.float32)
        ref = fx.ort_outputs(exported, x)[0]
        ours = evaluate(graph, torch.from_numpy(x))[graph.outputs[0]].numpy()
        np.testing.assert_array_equal(ours, ref)
        assert MAXMIN in _ops(load_onnx(exported.SerializeToString())) or \
            GROUPSORT in _ops(load_onnx(exported.SerializeToString()))


# ----------------------------------------------------------------------------------------
# what torch.onnx writes, and a real MaxMin network

class _TorchMaxMin(torch.nn.Module):
    """MaxMin on consecutive pairs, written the way Lipschitz-network code often does."""

    def __init__(self, weights: list[torch.Tensor], style: str) -> None:
        super().__init__()
        self.ws = torch.nn.ParameterList([torch.nn.Parameter(w) for w in weights])
        self.style = style

    def act(self, h: torch.Tensor) -> torch.Tensor:
        if self.style == "halves":
            a, b = h.chunk(2, dim=1)
            return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], 1)
        if self.style == "sort":
            return h.reshape(h.shape[0], -1, 2).sort(dim=-1, descending=True).values.reshape(h.shape[0], -1)
        v = h.reshape(h.shape[0], -1, 2)
        return torch.stack([v.max(-1).values, v.min(-1).values], -1).reshape(h.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for w in self.ws[:-1]:
            x = self.act(x @ w.T)
        return x @ self.ws[-1].T


def _export(module: torch.nn.Module, n_in: int) -> onnx.ModelProto:
    f = io.BytesIO()
    try:
        torch.onnx.export(module, (torch.randn(1, n_in),), f, dynamo=False, opset_version=13)
    except Exception as exc:  # the legacy exporter may be gone in some torch versions
        pytest.skip(f"torch.onnx.export (TorchScript) unavailable: {exc}")
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("style", ["halves", "pairs", "sort"])
def test_torch_exports_fuse(style: str) -> None:
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(8, 5, generator=g), torch.randn(6, 8, generator=g), torch.randn(3, 6, generator=g)]
    m = _export(_TorchMaxMin(ws, style), 5)
    graph = _check_equivalent(m, MAXMIN, tol=1e-4)
    assert _ops(graph).count(MAXMIN) == 2


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/lipschitz is not available")
def test_lipschitz_reference_network_fuses_and_keeps_its_chain() -> None:
    from scipy.io import loadmat

    from bounds.lipschitz.extract import chain_from_graph, chain_from_mat

    path = SHARED / "weights_l2_2fc_16.mat"
    if not path.exists():
        pytest.skip(f"{path.name} missing")
    cells = loadmat(str(path))["W"]
    ws = [torch.tensor(np.asarray(cells[0, i], dtype=np.float32)) for i in range(cells.shape[1])]
    m = _export(_TorchMaxMin(ws, "pairs"), ws[0].shape[1])
    graph = _check_equivalent(m, MAXMIN, batch=3, tol=1e-3)
    assert _ops(graph).count(MAXMIN) == len(ws) - 1
    chain = chain_from_graph(graph)
    ref = chain_from_mat(path)
    assert len(chain.weights) == len(ref.weights)
    for a, b in zip(chain.weights, ref.weights):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
