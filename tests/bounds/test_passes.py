"""Graph passes: constant folding, identity removal, batch-norm fusion, dead-code removal."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from bounds.graph import Graph, Node, evaluate, load_onnx
from bounds.graph.passes import (PASSES, GraphInvariantError, canonicalise, check_graph, fold_constants,
                                 fuse_batchnorm, remove_dead, remove_identities)
from tests.bounds.onnx_fixtures import compare, f32, i64, model, node


def _ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes if n.op not in ("Input", "Constant")]


def _raw(m) -> Graph:
    return load_onnx(m.SerializeToString(), canonical=False)


def _bn_consts(c: int, prefix: str = "bn") -> dict[str, np.ndarray]:
    return {f"{prefix}_s": f32(c, seed=2), f"{prefix}_b": f32(c, seed=3), f"{prefix}_m": f32(c, seed=4),
            f"{prefix}_v": np.abs(f32(c, seed=5)) + 0.3}


def _bn(inp: str, out: str, prefix: str = "bn", **attrs):
    return node("BatchNormalization", [inp, f"{prefix}_s", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"], out, **attrs)


# ---------------------------------------------------------------------------------------
# constant folding

def _shape_reshape_model():
    nodes = [node("Relu", ["x"], "r"),
             node("Shape", ["r"], "sh"),
             node("Gather", ["sh", "zero"], "n"),
             node("Unsqueeze", ["n", "ax0"], "n1"),
             node("Concat", ["n1", "minus1"], "target", axis=0),
             node("Reshape", ["r", "target"], "y")]
    return model(nodes, [2, 3, 4], "y", {"zero": np.array(0, np.int64), "ax0": i64(0), "minus1": i64(-1)}, 13)


def test_fold_shape_chain_into_constant_reshape():
    m = _shape_reshape_model()
    raw = _raw(m)
    assert {"Shape", "Gather", "Concat"} <= set(_ops(raw))
    folded, changed = fold_constants(raw)
    assert changed
    assert _ops(folded) == ["Relu", "Reshape"]
    reshape = folded["y"]
    assert folded.is_constant(reshape.inputs[1])
    assert folded[reshape.inputs[1]].value.tolist() == [2, -1]
    assert folded[reshape.inputs[1]].value.dtype == torch.int64
    again, changed = fold_constants(folded)
    assert not changed and again is folded
    graph, _ = compare(m)
    assert _ops(graph) == ["Relu", "Reshape"]
    assert [n.name for n in graph.nodes if n.is_constant] == ["target"]  # dead constants gone


def test_fold_keeps_shapes_and_metadata():
    raw = _raw(_shape_reshape_model())
    folded, _ = fold_constants(raw)
    for before in raw.nodes:
        after = folded[before.name]
        assert after.shape == before.shape and after.source == before.source and after.opset == before.opset


def test_fold_on_hand_built_graph():
    nodes = [Node("x", "Input", shape=(3,)),
             Node("a", "Constant", attrs={"value": torch.tensor([1.0, 2.0, 3.0])}, shape=(3,)),
             Node("b", "Constant", attrs={"value": torch.tensor(2.0)}, shape=()),
             Node("ab", "Mul", ("a", "b"), shape=(3,)),
             Node("y", "Add", ("x", "ab"), shape=(3,))]
    graph, changed = fold_constants(Graph(tuple(nodes), ("x",), ("y",)))
    assert changed and graph["ab"].is_constant
    assert graph["ab"].value.tolist() == [2.0, 4.0, 6.0]
    graph, changed = remove_dead(graph)
    assert changed and [n.name for n in graph.nodes] == ["x", "ab", "y"]


def test_constant_of_shape_and_range_fold():
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.5])
    nodes = [node("Shape", ["x"], "sh"), node("ConstantOfShape", ["sh"], "c", value=value),
             node("Range", ["zero", "three", "one"], "r"), node("Cast", ["r"], "rf", to=TensorProto.FLOAT),
             node("Mul", ["c", "rf"], "k"), node("Add", ["x", "k"], "y")]
    m = model(nodes, [2, 3], "y", {"zero": np.array(0, np.int64), "three": np.array(3, np.int64),
                                   "one": np.array(1, np.int64)}, 13)
    graph, _ = compare(m)
    assert _ops(graph) == ["Add"]
    assert graph[graph["y"].inputs[1]].value.tolist() == [[0.0, 1.5, 3.0], [0.0, 1.5, 3.0]]


# ---------------------------------------------------------------------------------------
# identities

def test_identity_dropout_cast_removed():
    nodes = [node("Identity", ["x"], "i"), node("Dropout", ["i"], ["d", "mask"], ratio=0.5),
             node("Cast", ["d"], "c", to=TensorProto.FLOAT), node("Relu", ["c"], "y")]
    m = model(nodes, [2, 3], "y", opset=11)
    stripped, changed = remove_identities(_raw(m))
    assert changed and _ops(stripped) == ["Relu"] and stripped["y"].inputs == ("x",)
    assert remove_identities(stripped) == (stripped, False)
    graph, _ = compare(m)
    assert _ops(graph) == ["Relu"]


def test_identity_output_renames_producer():
    nodes = [node("Relu", ["x"], "r"), node("Identity", ["r"], "y")]
    graph, _ = compare(model(nodes, [2, 3], "y", opset=13))
    assert graph.outputs == ("y",) and graph["y"].op == "Relu"
    assert "r" not in graph


def test_identity_output_of_input_stays():
    graph, _ = compare(model([node("Identity", ["x"], "y")], [2, 3], "y", opset=13))
    assert _ops(graph) == ["Identity"] and graph.outputs == ("y",)


def test_two_identity_outputs_of_one_value():
    nodes = [node("Relu", ["x"], "r"), node("Identity", ["r"], "y1"), node("Identity", ["r"], "y2"),
             node("Sigmoid", ["r"], "y3")]
    graph, _ = compare(model(nodes, [2, 3], ["y1", "y2", "y3"], opset=13))
    assert graph.outputs == ("y1", "y2", "y3")
    assert sorted(_ops(graph)) == ["Identity", "Relu", "Sigmoid"]
    assert graph["y3"].inputs == ("y1",)


def test_output_that_is_also_consumed():
    nodes = [node("Relu", ["x"], "r"), node("Identity", ["r"], "y1"), node("Tanh", ["y1"], "y2")]
    graph, _ = compare(model(nodes, [2, 3], ["y1", "y2"], opset=13))
    assert _ops(graph) == ["Relu", "Tanh"] and graph["y2"].inputs == ("y1",)


def test_cast_to_integer_is_kept():
    nodes = [node("Cast", ["x"], "i", to=TensorProto.INT64), node("Cast", ["i"], "y", to=TensorProto.FLOAT)]
    graph, _ = compare(model(nodes, [2, 3], "y", opset=13), scale=5.0)
    assert _ops(graph) == ["Cast", "Cast"]


# ---------------------------------------------------------------------------------------
# batch-norm fusion

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 2], "pads": [1, 0, 1, 1]}, {"group": 2, "pads": [1, 1, 1, 1]}])
def test_fuse_conv_batchnorm(bias, attrs):
    w = f32(4, 2 if not attrs.get("group") else 1, 3, 3)
    consts = {"w": w, **_bn_consts(4)}
    if bias:
        consts["b"] = f32(4)
    nodes = [node("Conv", ["x", "w"] + (["b"] if bias else []), "c", **attrs), _bn("c", "n", epsilon=1e-3),
             node("Relu", ["n"], "y")]
    m = model(nodes, [1, 2, 6, 6], "y", consts, 11)
    graph, _ = compare(m)
    assert _ops(graph) == ["Conv", "Relu"]
    assert graph["n"].op == "Conv" and graph["y"].inputs == ("n",)


@pytest.mark.parametrize("attrs", [{}, {"transB": 1}, {"alpha": 0.5, "beta": -2.0, "transB": 1}])
@pytest.mark.parametrize("with_c", [True, False])
def test_fuse_gemm_batchnorm(attrs, with_c):
    w = f32(3, 5) if attrs.get("transB") else f32(5, 3)
    consts = {"w": w, **_bn_consts(3)}
    if with_c:
        consts["c"] = f32(1, 3)
    nodes = [node("Gemm", ["x", "w"] + (["c"] if with_c else []), "g", **attrs), _bn("g", "y")]
    m = model(nodes, [2, 5], "y", consts, 13)
    graph, _ = compare(m)
    assert _ops(graph) == ["Gemm"] and graph["y"].op == "Gemm"


@pytest.mark.parametrize("bias_first", [False, True])
def test_fuse_matmul_add_batchnorm(bias_first):
    consts = {"w": f32(5, 3), "b": f32(3), **_bn_consts(3)}
    add_in = ["b", "m"] if bias_first else ["m", "b"]
    nodes = [node("MatMul", ["x", "w"], "m"), node("Add", add_in, "a"), _bn("a", "n"), node("Relu", ["n"], "y")]
    graph, _ = compare(model(nodes, [4, 5], "y", consts, 13))
    assert _ops(graph) == ["MatMul", "Add", "Relu"]
    assert graph["n"].op == "Add"


def test_batchnorm_not_fused_when_shared_or_output():
    consts = {"w": f32(4, 2, 3, 3), "b": f32(4), **_bn_consts(4)}
    # the Conv output is read twice
    nodes = [node("Conv", ["x", "w", "b"], "c"), _bn("c", "n"), node("Add", ["c", "n"], "y")]
    graph, _ = compare(model(nodes, [1, 2, 5, 5], "y", consts, 13))
    assert "BatchNormalization" in _ops(graph)
    # the Conv output is a graph output
    nodes = [node("Conv", ["x", "w", "b"], "c"), _bn("c", "y")]
    graph, _ = compare(model(nodes, [1, 2, 5, 5], ["y", "c"], consts, 13))
    assert "BatchNormalization" in _ops(graph)
    # matmul output with rank 3: BatchNormalization's channel is not the weight's column
    consts = {"w": f32(5, 3), "b": f32(3), **_bn_consts(4)}
    nodes = [node("MatMul", ["x", "w"], "m"), node("Add", ["m", "b"], "a"), _bn("a", "y")]
    graph, _ = compare(model(nodes, [1, 4, 5], "y", consts, 13))
    assert "BatchNormalization" in _ops(graph)


def test_fuse_batchnorm_reports_change():
    consts = {"w": f32(4, 2, 3, 3), **_bn_consts(4)}
    raw = _raw(model([node("Conv", ["x", "w"], "c"), _bn("c", "y")], [1, 2, 5, 5], "y", consts, 13))
    fused, changed = fuse_batchnorm(raw)
    assert changed and fused["y"].op == "Conv" and fused["y"].shape == raw["y"].shape
    x = torch.randn(3, 1, 2, 5, 5)
    torch.testing.assert_close(evaluate(fused, x)["y"], evaluate(raw, x)["y"], rtol=1e-5, atol=1e-5)
    assert fuse_batchnorm(fused)[1] is False


# ---------------------------------------------------------------------------------------
# dead code, fixed point, invariants

def test_remove_dead():
    nodes = [node("Relu", ["x"], "r"), node("Sigmoid", ["x"], "unused"), node("Add", ["r", "c"], "y")]
    m = model(nodes, [2, 3], "y", {"c": f32(3), "spare": f32(7)}, 13)
    graph, _ = compare(m)
    assert [n.name for n in graph.nodes] == ["x", "c", "r", "y"]


def test_input_kept_even_if_unused():
    graph, _ = compare(model([node("Relu", ["c"], "y")], [2], "y", {"c": f32(2)}, 13))
    assert graph.inputs == ("x",) and graph.input.op == "Input"


def test_canonical_graph_is_a_fixed_point():
    consts = {"w": f32(4, 2, 3, 3), **_bn_consts(4)}
    nodes = [node("Conv", ["x", "w"], "c"), _bn("c", "n"), node("Identity", ["n"], "i"),
             node("Shape", ["i"], "sh"), node("Reshape", ["i", "sh"], "y")]
    graph = load_onnx(model(nodes, [1, 2, 5, 5], "y", consts, 13).SerializeToString())
    for p in PASSES:
        again, changed = p(graph)
        assert not changed, p.__name__
    assert canonicalise(graph).nodes == graph.nodes


def test_check_graph_rejects_duplicates_and_unknown_ops():
    x = Node("x", "Input", shape=(2,))
    with pytest.raises(GraphInvariantError, match="twice"):
        check_graph(Graph((x, Node("y", "Relu", ("x",)), Node("y", "Relu", ("x",))), ("x",), ("y",)))
    with pytest.raises(GraphInvariantError, match="no rule"):
        check_graph(Graph((x, Node("y", "Frobnicate", ("x",))), ("x",), ("y",)))
    with pytest.raises(GraphInvariantError, match="not an Input"):
        check_graph(Graph((x, Node("y", "Relu", ("x",))), ("y",), ("y",)))
