"""ConvTranspose, Resize / Upsample and the constant-selection plumbing (Where, Equal,
Expand, Gather, Slice): onnxruntime agreement, and bounds that contain sampled outputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds.crown import backward_lower, intermediate_bounds
from bounds.graph import load_onnx
from bounds.graph.ir import graph_to
from tests.bounds import onnx_fixtures as fx
from tests.bounds.op_soundness import BOX_KINDS, check_sound, random_box


def _onnx_graph(m) -> object:
    return graph_to(load_onnx(m.SerializeToString()), dtype=torch.float64)


# ----------------------------------------------------------------------------------------
# ConvTranspose

CONV_T = {
    "plain": dict(),
    "stride_pad": dict(strides=[2, 2], pads=[1, 0, 1, 1]),
    "output_padding": dict(strides=[2, 3], output_padding=[1, 2]),
    "dilation": dict(dilations=[2, 1], pads=[1, 1, 0, 0]),
    "output_shape": dict(strides=[2, 2], output_shape=[8, 7]),
    "same_upper": dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(strides=[2, 2], auto_pad="SAME_LOWER"),
}


def _conv_t_model(case: str, group: int = 1, bias: bool = True):
    c_in, c_out = 4, 2
    consts = {"w": fx.f32(c_in, c_out // group if group > 1 else c_out, 3, 2)}
    inputs = ["x", "w"]
    if bias:
        consts["b"] = fx.f32(c_out if group == 1 else (c_out // group) * group, seed=5)
        inputs.append("b")
    attrs = dict(CONV_T[case])
    if group > 1:
        attrs["group"] = group
    return fx.model([fx.node("ConvTranspose", inputs, "y", **attrs)], [1, c_in, 4, 4], consts=consts)


@pytest.mark.parametrize("case", sorted(CONV_T))
def test_conv_transpose_matches_onnxruntime(case: str) -> None:
    fx.compare(_conv_t_model(case), rtol=1e-4, atol=1e-5)


def test_grouped_conv_transpose_matches_onnxruntime() -> None:
    fx.compare(_conv_t_model("stride_pad", group=2, bias=False), rtol=1e-4, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10 ** 6), kind=st.sampled_from(BOX_KINDS), case=st.sampled_from(sorted(CONV_T)))
def test_conv_transpose_bounds_sound_and_exact(seed: int, kind: str, case: str) -> None:
    graph = _onnx_graph(_conv_t_model(case))
    box = random_box((1, 4, 4, 4), seed, kind)
    check_sound(graph, box, seed, n=50)
    # linear: CROWN is exact, i.e. it equals the minimum over the box's vertices
    bounds = intermediate_bounds(graph, box, "crown")
    C = torch.randn(1, 2, *graph[graph.outputs[0]].shape, dtype=torch.float64)
    lb = backward_lower(graph, graph.outputs[0], C, bounds)
    A_rec: dict = {}
    backward_lower(graph, graph.outputs[0], C, bounds, record=A_rec)
    A = A_rec["x"]
    best = torch.where(A > 0, box.lower.unsqueeze(1), box.upper.unsqueeze(1))
    from bounds.graph.interpret import run
    y = run(graph, best.reshape(-1, *box.lower.shape[1:]))                   # (2, *out)
    exact = (C[0] * y).reshape(2, -1).sum(-1)
    torch.testing.assert_close(lb[0], exact, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------
# Resize / Upsample

RESIZE = {
    "nearest_half_pixel_up": (dict(mode="nearest"), [1.0, 1.0, 2.0, 1.5], None),
    "nearest_asym_floor": (dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
                           [1.0, 1.0, 3.0, 2.0], None),
    "nearest_ceil_align": (dict(mode="nearest", coordinate_transformation_mode="align_corners", nearest_mode="ceil"),
                           None, [1, 2, 7, 5]),
    "nearest_down": (dict(mode="nearest", nearest_mode="round_prefer_ceil"), [1.0, 1.0, 0.5, 0.6], None),
    "nearest_tf": (dict(mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn"), [1.0, 1.0, 1.7, 2.0], None),
    "linear_half_pixel": (dict(mode="linear"), [1.0, 1.0, 2.0, 1.5], None),
    "linear_align": (dict(mode="linear", coordinate_transformation_mode="align_corners"), None, [1, 2, 7, 3]),
    "linear_pytorch": (dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"), None, [1, 2, 1, 8]),
    "linear_down": (dict(mode="linear", coordinate_transformation_mode="asymmetric"), [1.0, 1.0, 0.5, 0.75], None),
}


def _resize_model(case: str):
    attrs, scales, sizes = RESIZE[case]
    consts = {"roi": np.zeros(0, np.float32)}
    inputs = ["x", "roi"]
    if scales is not None:
        consts["scales"] = np.array(scales, np.float32)
        inputs.append("scales")
    else:
        consts["scales"] = np.zeros(0, np.float32)
        consts["sizes"] = np.array(sizes, np.int64)
        inputs += ["scales", "sizes"]
    return fx.model([fx.node("Resize", inputs, "y", **attrs)], [1, 2, 4, 5], consts=consts, opset=13)


@pytest.mark.parametrize("case", sorted(RESIZE))
def test_resize_matches_onnxruntime(case: str) -> None:
    fx.compare(_resize_model(case), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode,opset", [("nearest", 9), ("linear", 9), ("nearest", 10)])
def test_upsample_and_resize10_match_onnxruntime(mode: str, opset: int) -> None:
    op = "Upsample" if opset == 9 else "Resize"
    m = fx.model([fx.node(op, ["x", "scales"], "y", mode=mode)], [1, 2, 3, 4],
                 consts={"scales": np.array([1.0, 1.0, 2.0, 3.0], np.float32)}, opset=opset)
    fx.compare(m, rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10 ** 6), kind=st.sampled_from(BOX_KINDS), case=st.sampled_from(sorted(RESIZE)))
def test_resize_bounds_sound(seed: int, kind: str, case: str) -> None:
    graph = _onnx_graph(_resize_model(case))
    check_sound(graph, random_box((1, 2, 4, 5), seed, kind), seed, n=50)


# ----------------------------------------------------------------------------------------
# constant selections that already existed: make sure they import, evaluate and bound

def _selections_model():
    """Where with a constant (Equal-produced) mask, Expand, Gather, Slice with a step."""
    nodes = [
        fx.node("Equal", ["pattern", "one"], "mask"),
        fx.node("Where", ["mask", "x", "neg"], "w"),                 # x where mask else -1.5
        fx.node("Expand", ["w", "shape"], "e"),                       # (3, 4) -> (2, 3, 4)
        fx.node("Gather", ["e", "idx"], "g", axis=2),                 # columns 3, 0, 0
        fx.node("Slice", ["g", "starts", "ends", "axes", "steps"], "y"),
    ]
    consts = {"pattern": np.array([[1, 0, 1, 1]], np.int64), "one": np.array(1, np.int64),
              "neg": np.array(-1.5, np.float32), "shape": fx.i64(2, 3, 4), "idx": fx.i64(3, 0, 0),
              "starts": fx.i64(-1), "ends": fx.i64(-4), "axes": fx.i64(1), "steps": fx.i64(-2)}
    return fx.model(nodes, [3, 4], consts=consts, opset=13)


def test_constant_selections_match_onnxruntime() -> None:
    graph, _ = fx.compare(_selections_model())
    assert "Equal" not in [n.op for n in graph.nodes]                # folded into a constant mask


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10 ** 6), kind=st.sampled_from(BOX_KINDS))
def test_constant_selections_bounds_sound(seed: int, kind: str) -> None:
    graph = _onnx_graph(_selections_model())
    check_sound(graph, random_box((3, 4), seed, kind), seed)
