"""bounds.graph.fuse_activations: GELU / SiLU / Mish / Pow export patterns become one node; the fused
graph evaluates like the unfused one and like onnxruntime; other graphs are left alone; the
export writes standard ONNX again."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

from bounds.graph import evaluate, load_onnx
from bounds.graph.onnx_export import to_onnx
from tests.bounds import onnx_fixtures as fx

S2 = np.float32(math.sqrt(2))
C = {"s2": np.array(S2), "inv_s2": np.array(np.float32(1 / math.sqrt(2))), "one": np.array(np.float32(1.0)),
     "half": np.array(np.float32(0.5)), "three": np.array(np.float32(3.0)), "a": np.array(np.float32(0.044715)),
     "k": np.array(np.float32(math.sqrt(2 / math.pi))), "w": fx.f32(4, 6), "b": fx.f32(6)}
N = fx.node


def _dense() -> list[onnx.NodeProto]:
    return [N("MatMul", ["x", "w"], "mm"), N("Add", ["mm", "b"], "h")]


# torch's exporter order; 1/sqrt 2 and the half first; the tanh form with Pow; constants on the left
GELU_PATTERNS = {
    "torch": ([N("Div", ["h", "s2"], "d"), N("Erf", ["d"], "e"), N("Add", ["e", "one"], "p"),
               N("Mul", ["h", "p"], "m"), N("Mul", ["m", "half"], "y")], "none"),
    "half_first": ([N("Mul", ["h", "inv_s2"], "d"), N("Erf", ["d"], "e"), N("Add", ["one", "e"], "p"),
                    N("Mul", ["half", "h"], "hx"), N("Mul", ["hx", "p"], "y")], "none"),
    "half_last": ([N("Mul", ["inv_s2", "h"], "d"), N("Erf", ["d"], "e"), N("Add", ["e", "one"], "p"),
                   N("Mul", ["p", "half"], "ph"), N("Mul", ["ph", "h"], "y")], "none"),
    "tanh": ([N("Pow", ["h", "three"], "c"), N("Mul", ["c", "a"], "ca"), N("Add", ["h", "ca"], "in"),
              N("Mul", ["in", "k"], "z"), N("Tanh", ["z"], "t"), N("Add", ["t", "one"], "p"),
              N("Mul", ["p", "half"], "ph"), N("Mul", ["h", "ph"], "y")], "tanh"),
}


def _ops(graph) -> list[str]:
    return [n.op for n in graph.nodes if n.op not in ("Input", "Constant")]


@pytest.mark.parametrize("name", sorted(GELU_PATTERNS))
def test_gelu_patterns_fuse_and_match_onnxruntime(name: str) -> None:
    nodes, approximate = GELU_PATTERNS[name]
    m = fx.model(_dense() + nodes, [4], consts=C)
    graph, _ = fx.compare(m, batch=8, scale=3.0, rtol=1e-5, atol=2e-6)
    assert _ops(graph) == ["MatMul", "Add", "Gelu"]
    assert graph["y"].attrs["approximate"] == approximate
    raw = load_onnx(m.SerializeToString(), canonical=False)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0)) * 3
    got, want = evaluate(graph, x)["y"], evaluate(raw, x)["y"]
    assert torch.allclose(got, want, rtol=1e-5, atol=2e-6)


def test_erf_that_is_not_a_gelu_stays() -> None:
    # x * erf(x / sqrt 2) without the "1 +": a different function
    nodes = [N("Div", ["h", "s2"], "d"), N("Erf", ["d"], "e"), N("Mul", ["h", "e"], "y")]
    m = fx.model(_dense() + nodes, [4], consts=C)
    graph, _ = fx.compare(m, batch=4)
    assert "Gelu" not in _ops(graph) and "Erf" in _ops(graph)


def test_plain_tanh_network_is_left_alone() -> None:
    m = fx.model(_dense() + [N("Tanh", ["h"], "t"), N("Mul", ["t", "half"], "y")], [4], consts=C)
    graph, _ = fx.compare(m, batch=4)
    assert _ops(graph) == ["MatMul", "Add", "Tanh", "Mul"]


def test_gelu_region_used_elsewhere_keeps_its_inner_nodes() -> None:
    nodes, _ = GELU_PATTERNS["torch"]
    m = fx.model(_dense() + nodes + [N("Add", ["y", "e"], "z")], [4], outputs="z", consts=C)
    graph, _ = fx.compare(m, batch=6, scale=2.0)
    assert "Gelu" in _ops(graph) and "Erf" in _ops(graph)


@pytest.mark.parametrize("order", [0, 1])
def test_silu_fuses(order: int) -> None:
    mul = N("Mul", ["h", "s"] if order == 0 else ["s", "h"], "y")
    m = fx.model(_dense() + [N("Sigmoid", ["h"], "s"), mul], [4], consts=C)
    graph, _ = fx.compare(m, batch=6, scale=3.0)
    assert _ops(graph) == ["MatMul", "Add", "nnverify.SiLU"]


def test_sigmoid_times_other_value_is_no_silu() -> None:
    m = fx.model(_dense() + [N("Sigmoid", ["h"], "s"), N("Mul", ["s", "mm"], "y")], [4], consts=C)
    graph, _ = fx.compare(m, batch=4)
    assert "nnverify.SiLU" not in _ops(graph)


@pytest.mark.parametrize("name", ["torch", "tanh"])
def test_export_of_fused_graph_runs_in_onnxruntime(name: str) -> None:
    nodes, _ = GELU_PATTERNS[name]
    extra = [N("Sigmoid", ["y"], "s"), N("Mul", ["y", "s"], "sy"), N("Pow", ["sy", "three"], "out")]
    m = fx.model(_dense() + nodes + extra, [4], outputs="out", consts=C)
    graph = load_onnx(m.SerializeToString())
    assert {"Gelu", "nnverify.SiLU", "nnverify.Pow"} <= set(_ops(graph))
    exported = to_onnx(graph)
    x = np.random.default_rng(0).normal(0, 2, (5, 4)).astype(np.float32)
    ref = fx.ort_outputs(exported, x)[0]
    ours = evaluate(graph, torch.from_numpy(x))["out"].numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    again = load_onnx(exported.SerializeToString())
    assert {"Gelu", "nnverify.SiLU", "nnverify.Pow"} <= set(_ops(again))


def test_native_gelu_op_matches_onnxruntime() -> None:
    for approximate in ("none", "tanh"):
        m = fx.model([N("Gelu", ["x"], "y", approximate=approximate)], [3, 4], opset=20)
        fx.compare(m, batch=6, scale=4.0)


def test_native_softplus_matches_onnxruntime() -> None:
    fx.compare(fx.single("Softplus", [7]), batch=6, scale=20.0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", [0, 1])
def test_mish_pattern_fuses_and_exports_back(order: int) -> None:
    """x * Tanh(Softplus(x)) (the pre-opset-18 export of Mish) -> Mish; to_onnx undoes it."""
    mul = N("Mul", ["h", "t"] if order == 0 else ["t", "h"], "y")
    m = fx.model(_dense() + [N("Softplus", ["h"], "sp"), N("Tanh", ["sp"], "t"), mul], [4], consts=C)
    graph, _ = fx.compare(m, batch=6, scale=3.0)
    assert _ops(graph) == ["MatMul", "Add", "Mish"]
    exported = to_onnx(graph)
    assert "Mish" not in {n.op_type for n in exported.graph.node}
    x = np.random.default_rng(1).normal(0, 3, (5, 4)).astype(np.float32)
    np.testing.assert_allclose(evaluate(graph, torch.from_numpy(x))["y"].numpy(), fx.ort_outputs(exported, x)[0],
                               rtol=1e-5, atol=1e-5)


def test_tanh_of_softplus_of_another_value_is_no_mish() -> None:
    m = fx.model(_dense() + [N("Softplus", ["mm"], "sp"), N("Tanh", ["sp"], "t"), N("Mul", ["h", "t"], "y")],
                 [4], consts=C)
    graph, _ = fx.compare(m, batch=4)
    assert "Mish" not in _ops(graph)
