"""Max / Min / ReduceMax / MaxPool / TopK / GroupSort / MaxMin: soundness of IBP and CROWN
on tiny graphs, exactness where the relaxation must be exact, onnxruntime agreement."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bounds.crown import backward_lower, intermediate_bounds
from bounds.graph.ir import graph_to
from bounds.types import Interval
from tests.bounds import onnx_fixtures as fx
from tests.bounds.op_soundness import BOX_KINDS, check_sound, random_box
from tests.bounds.random_graphs import Builder

SEEDS = st.integers(0, 10 ** 6)
KINDS = st.sampled_from(BOX_KINDS)
FAST = settings(max_examples=25, deadline=None)


def _f64(graph):
    return graph_to(graph, dtype=torch.float64)


def _crown(graph, C: torch.Tensor, box: Interval, record: dict | None = None) -> torch.Tensor:
    bounds = intermediate_bounds(graph, box, "ibp")
    return backward_lower(graph, graph.outputs[0], C, bounds, record=record)


def _mix(b: Builder, x: str, n_in: int, n_out: int) -> str:
    """A random affine layer (so the op's inputs are correlated, as in a real network)."""
    return b.dense(x, n_in, n_out, style=0)


# ----------------------------------------------------------------------------------------
# elementwise Max / Min

def _maxmin_graph(op: str, seed: int, n_vars: int, with_const: bool):
    b = Builder((1, 4), torch.Generator().manual_seed(seed))
    args = [_mix(b, "x", 4, 5) for _ in range(n_vars)]
    if with_const:
        args.append(b.const(torch.tensor([0.3])))                # broadcasts against (5,)
    h = b.op(op, *args)
    return _f64(b.graph(_mix(b, h, 5, 3)))


@FAST
@given(seed=SEEDS, kind=KINDS, op=st.sampled_from(["Max", "Min"]), n=st.integers(1, 3), const=st.booleans())
def test_max_min_sound(seed: int, kind: str, op: str, n: int, const: bool) -> None:
    if n == 1 and not const:
        const = True
    graph = _maxmin_graph(op, seed, n, const)
    check_sound(graph, random_box((1, 4), seed, kind), seed)


def test_max_with_constant_is_the_relu_triangle() -> None:
    """max(x, 0) on [-1, 3]: CROWN upper of the single output equals the ReLU chord."""
    b = Builder((1,), torch.Generator().manual_seed(0))
    graph = _f64(b.graph(b.op("Max", "x", b.const(torch.zeros(1)))))
    box = Interval(torch.tensor([[-1.0]], dtype=torch.float64), torch.tensor([[3.0]], dtype=torch.float64))
    C = torch.tensor([[[-1.0]]], dtype=torch.float64)             # lower bound of -y: upper of y
    up = -_crown(graph, C, box)
    assert float(up) == pytest.approx(3.0)                        # chord at x = 3
    # the chord is exact at both ends: 0.75 (x + 1) at the box's midpoint
    A_rec: dict = {}
    _crown(graph, C, box, record=A_rec)
    assert float(A_rec["x"].reshape(())) == pytest.approx(-0.75)


def test_max_exact_when_one_input_dominates() -> None:
    b = Builder((2,), torch.Generator().manual_seed(0))
    a = b.op("Slice", "x", b.const(torch.tensor([0])), b.const(torch.tensor([1])))
    c = b.op("Slice", "x", b.const(torch.tensor([1])), b.const(torch.tensor([2])))
    graph = _f64(b.graph(b.op("Max", a, c)))
    box = Interval(torch.tensor([[2.0, -1.0]], dtype=torch.float64), torch.tensor([[3.0, 1.5]], dtype=torch.float64))
    for sign in (1.0, -1.0):
        lb = _crown(graph, torch.full((1, 1, 1), sign, dtype=torch.float64), box)
        assert float(lb) == pytest.approx(2.0 if sign > 0 else -3.0)


# ----------------------------------------------------------------------------------------
# reductions and pooling

@FAST
@given(seed=SEEDS, kind=KINDS, op=st.sampled_from(["ReduceMax", "ReduceMin"]),
       axes=st.sampled_from([[1], [-1], [0, 2], [0, 1, 2]]), keep=st.sampled_from([0, 1]))
def test_reduce_max_min_sound(seed: int, kind: str, op: str, axes: list[int], keep: int) -> None:
    b = Builder((2, 3, 4), torch.Generator().manual_seed(seed))
    h = b.op("Mul", "x", b.const(b.randn(2, 3, 4)))
    graph = _f64(b.graph(b.op(op, h, axes=axes, keepdims=keep)))
    check_sound(graph, random_box((2, 3, 4), seed, kind), seed)


POOLS = [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[2, 3], strides=[2, 1], pads=[0, 1, 1, 0], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[1, 2], dilations=[2, 1]),
    dict(kernel_shape=[3, 2], auto_pad="SAME_UPPER", strides=[2, 2]),
]


@FAST
@given(seed=SEEDS, kind=KINDS, which=st.integers(0, len(POOLS)))
def test_maxpool_sound(seed: int, kind: str, which: int) -> None:
    b = Builder((1, 2, 5, 5), torch.Generator().manual_seed(seed))
    h = b.op("Conv", "x", b.const(b.randn(2, 2, 2, 2, scale=0.7)), b.const(b.randn(2, scale=0.2)),
             pads=[1, 1, 0, 0])
    pool = b.op("GlobalMaxPool", h) if which == len(POOLS) else b.op("MaxPool", h, **POOLS[which])
    graph = _f64(b.graph(pool))
    check_sound(graph, random_box((1, 2, 5, 5), seed, kind), seed, n=100)


def test_maxpool_crown_beats_ibp_on_a_dominated_window() -> None:
    """Windows whose max is fixed by one input are exact; IBP on a following sum is not."""
    b = Builder((1, 1, 2, 2), torch.Generator().manual_seed(0))
    pool = b.op("MaxPool", "x", kernel_shape=[2, 2])
    graph = _f64(b.graph(b.op("Sub", pool, "x")))   # broadcasts (1,1,1,1) - (1,1,2,2)
    lo = torch.tensor([[[[5.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64).unsqueeze(0)
    box = Interval(lo, lo + 1.0)
    C = torch.zeros(1, 1, 1, 1, 2, 2, dtype=torch.float64).reshape(1, 1, 1, 1, 2, 2)
    C[..., 0, 0] = 1.0                                             # max - x00 = 0 exactly
    lb = _crown(graph, C, box)
    assert float(lb) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------------------
# sorting

@FAST
@given(seed=SEEDS, kind=KINDS, group=st.sampled_from([2, 3, 4, 6]), strided=st.sampled_from([0, 1]),
       desc=st.sampled_from([0, 1]))
def test_groupsort_sound(seed: int, kind: str, group: int, strided: int, desc: int) -> None:
    b = Builder((1, 12), torch.Generator().manual_seed(seed))
    h = _mix(b, "x", 12, 12)
    s = b.op("nnverify.GroupSort", h, axis=1, group=group, strided=strided, descending=desc)
    graph = _f64(b.graph(_mix(b, s, 12, 3)))
    check_sound(graph, random_box((1, 12), seed, kind), seed)


def _maxmin_pair(seed: int, with_diff: bool, strided: int = 0, desc: int = 1):
    b = Builder((1, 8), torch.Generator().manual_seed(seed))
    h = _mix(b, "x", 8, 8)
    args = (h, b.op("nnverify.PairDiff", h, axis=1, strided=strided)) if with_diff else (h,)
    s = b.op("nnverify.MaxMin", *args, axis=1, strided=strided, descending=desc)
    return _f64(b.graph(_mix(b, s, 8, 3)))


@FAST
@given(seed=SEEDS, kind=KINDS, strided=st.sampled_from([0, 1]), desc=st.sampled_from([0, 1]))
def test_maxmin_with_pair_differences_sound(seed: int, kind: str, strided: int, desc: int) -> None:
    """MaxMin reading CROWN bounds of its pair differences (as fused graphs do)."""
    check_sound(_maxmin_pair(seed, True, strided, desc), random_box((1, 8), seed, kind), seed)


def test_pair_differences_tighten_maxmin() -> None:
    gains = []
    for seed in range(5):
        box = random_box((1, 8), seed, "straddle")
        with_d = check_sound(_maxmin_pair(seed, True), box, seed)["crown"]
        without = check_sound(_maxmin_pair(seed, False), box, seed)["crown"]
        gains.append(float((with_d - without).sum()))
    assert sum(gains) > 0 and min(gains) > -1e-9, gains


@FAST
@given(seed=SEEDS, kind=KINDS, k=st.sampled_from([1, 2, 5]), largest=st.sampled_from([0, 1]))
def test_topk_sound(seed: int, kind: str, k: int, largest: int) -> None:
    b = Builder((2, 5), torch.Generator().manual_seed(seed))
    h = b.op("Mul", "x", b.const(b.randn(2, 5)))
    t = b.op("TopK", h, b.const(torch.tensor([k])), axis=-1, largest=largest)
    graph = _f64(b.graph(t))
    check_sound(graph, random_box((2, 5), seed, kind), seed)


def test_maxmin_preserves_the_sum_exactly() -> None:
    """max(a, b) + min(a, b) = a + b: CROWN on the sum of a MaxMin's outputs is exact."""
    b = Builder((6,), torch.Generator().manual_seed(3))
    graph = _f64(b.graph(b.op("nnverify.MaxMin", "x", axis=-1)))
    box = random_box((6,), 5, "straddle")
    for sign in (1.0, -1.0):
        lb = _crown(graph, torch.full((1, 1, 6), sign, dtype=torch.float64), box)
        exact = (box.lower if sign > 0 else -box.upper).sum()
        assert float(lb) == pytest.approx(float(exact), rel=1e-12, abs=1e-12)


def test_maxmin_is_tighter_than_separate_max_and_min() -> None:
    """The fused pair beats Max and Min relaxed independently when their coefficients have
    the same sign (the separate rules relax the kink twice, once from each side)."""
    b = Builder((2,), torch.Generator().manual_seed(0))
    fused = _f64(b.graph(b.op("nnverify.MaxMin", "x", axis=-1)))
    box = Interval(torch.tensor([[-1.0, -1.0]], dtype=torch.float64), torch.tensor([[2.0, 1.0]], dtype=torch.float64))
    b2 = Builder((2,), torch.Generator().manual_seed(0))
    a = b2.op("Slice", "x", b2.const(torch.tensor([0])), b2.const(torch.tensor([1])))
    c = b2.op("Slice", "x", b2.const(torch.tensor([1])), b2.const(torch.tensor([2])))
    split = _f64(b2.graph(b2.op("Concat", b2.op("Max", a, c), b2.op("Min", a, c), axis=0)))
    gains = []
    for row in ([1.0, 1.0], [2.0, 1.0], [1.0, -1.0], [-1.0, -3.0]):
        C = torch.tensor([[row]], dtype=torch.float64)
        lb_fused, lb_split = float(_crown(fused, C, box)), float(_crown(split, C, box))
        assert lb_fused >= lb_split - 1e-12, row
        gains.append(lb_fused - lb_split)
    assert gains[0] > 0.5 and gains[3] > 0.5          # max + min: exact when fused


# ----------------------------------------------------------------------------------------
# interpreter vs onnxruntime

ORT_CASES = {
    "max3": (fx.model([fx.node("Max", ["x", "c1", "c2"], "y")], [2, 3], consts={"c1": fx.f32(3), "c2": fx.f32(2, 1)}), 13),
    "min2": (fx.model([fx.node("Min", ["x", "c1"], "y")], [2, 3], consts={"c1": fx.f32(1, 3)}), 13),
    "reducemax": (fx.single("ReduceMax", [2, 3, 4], axes=[1], keepdims=0), 13),
    "reducemin18": (fx.model([fx.node("ReduceMin", ["x", "ax"], "y", keepdims=1)], [2, 3, 4],
                             consts={"ax": fx.i64(-1, 0)}, opset=18), 18),
    "maxpool": (fx.single("MaxPool", [1, 2, 5, 5], kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1]), 13),
    "maxpool_ceil": (fx.single("MaxPool", [1, 2, 6, 5], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1,
                               dilations=[1, 2]), 13),
    "maxpool1d": (fx.single("MaxPool", [1, 2, 7], kernel_shape=[3], strides=[2], pads=[1, 1]), 13),
    "globalmaxpool": (fx.single("GlobalMaxPool", [1, 3, 4, 4]), 13),
    "topk": (fx.model([fx.node("TopK", ["x", "k"], ["y", "idx"], axis=1, largest=1)], [2, 5, 3],
                      consts={"k": fx.i64(2)}), 13),
    "topk_small": (fx.model([fx.node("TopK", ["x", "k"], ["y", "idx"], axis=-1, largest=0)], [2, 5],
                            consts={"k": fx.i64(3)}), 13),
}


@pytest.mark.parametrize("case", sorted(ORT_CASES))
def test_interpreter_matches_onnxruntime(case: str) -> None:
    m, _ = ORT_CASES[case]
    fx.compare(m)


def test_torch_topk_ties_do_not_matter_for_values() -> None:
    """TopK values (not indices) are all we produce, so ties are harmless."""
    m = fx.model([fx.node("TopK", ["x", "k"], ["y", "idx"], axis=-1)], [4], consts={"k": fx.i64(2)})
    from bounds.graph import evaluate, load_onnx
    graph = load_onnx(m.SerializeToString())
    x = np.array([[1.0, 1.0, 0.0, 1.0]], dtype=np.float32)
    got = evaluate(graph, torch.from_numpy(x))[graph.outputs[0]]
    assert got.tolist() == [[1.0, 1.0]]
