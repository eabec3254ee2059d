"""Small networks for the Lipschitz tests: chains, ONNX files with MaxMin, torch modules."""
from __future__ import annotations

import math

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from bounds.lipschitz.chain import Activation, Chain, Piece, elementwise, maxmin


def random_chain(sizes: list[int], act: str = "relu", seed: int = 0, bias: bool = True) -> Chain:
    """sizes = [inputs, hidden..., outputs]; act: relu, leaky_relu, sigmoid, tanh, maxmin."""
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(o, i, generator=gen, dtype=torch.float64) / math.sqrt(i) for i, o in zip(sizes, sizes[1:])]
    bs = [0.3 * torch.randn(o, generator=gen, dtype=torch.float64) for o in sizes[1:]] if bias else []
    slopes = {"relu": (0, 1), "leaky_relu": (0.1, 1), "sigmoid": (0, 0.25), "tanh": (0, 1)}
    acts = []
    for n in sizes[1:-1]:
        if act == "maxmin":
            acts.append(maxmin(n))
        elif act == "householder":
            v = torch.randn(n // 2, 2, generator=gen, dtype=torch.float64)
            acts.append(Activation(n, (Piece("householder", torch.arange(n).reshape(-1, 2), param=v / v.norm(dim=1, keepdim=True)),)))
        else:
            lo, hi = slopes[act]
            acts.append(elementwise(act, n, lo, hi, 0.1 if act == "leaky_relu" else None))
    return Chain(tuple(ws), tuple(acts), tuple(bs), f"{act}{'x'.join(map(str, sizes))}")


def maxmin_onnx(weights: list[np.ndarray], biases: list[np.ndarray] | None = None) -> bytes:
    """Gemm layers with MaxMin on consecutive pairs, written the way an exporter writes
    torch.maximum / torch.minimum on x.view(-1, n/2, 2): Reshape, Split, Max, Min, Concat."""
    nodes, inits = [], []
    x = "x"
    for k, w in enumerate(weights):
        b = biases[k] if biases is not None else np.zeros(w.shape[0])
        inits += [numpy_helper.from_array(w.astype(np.float32), f"W{k}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{k}")]
        nodes.append(helper.make_node("Gemm", [x, f"W{k}", f"b{k}"], [f"z{k}"], transB=1))
        x = f"z{k}"
        if k == len(weights) - 1:
            break
        n = w.shape[0]
        inits += [numpy_helper.from_array(np.array([1, n // 2, 2], dtype=np.int64), f"s{k}"),
                  numpy_helper.from_array(np.array([1, n], dtype=np.int64), f"f{k}")]
        nodes += [helper.make_node("Reshape", [x, f"s{k}"], [f"r{k}"]),
                  helper.make_node("Split", [f"r{k}"], [f"a{k}", f"c{k}"], axis=2, num_outputs=2),
                  helper.make_node("Max", [f"a{k}", f"c{k}"], [f"mx{k}"]),
                  helper.make_node("Min", [f"c{k}", f"a{k}"], [f"mn{k}"]),
                  helper.make_node("Concat", [f"mx{k}", f"mn{k}"], [f"p{k}"], axis=2),
                  helper.make_node("Reshape", [f"p{k}", f"f{k}"], [f"h{k}"])]
        x = f"h{k}"
    graph = helper.make_graph(nodes, "maxmin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weights[0].shape[1]])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, weights[-1].shape[0]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def relu_module(sizes: list[int], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def random_residual(n: int, hidden: int, blocks: int = 1, act: str = "relu", seed: int = 0,
                    projection: bool = False, out: int = 3, branch_scale: float = 0.5):
    """A Dag: input -> `blocks` residual blocks u <- S u + W2 act(W1 u + b1) + b2 (S the identity,
    or a random matrix when `projection`) -> a linear read-out of `out` outputs. Every block's
    pre-activation reads the input and all earlier activation layers (the skips fold in)."""
    from bounds.lipschitz.dag import Dag

    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    # the stream u is kept as an affine function of v = (x, h_1, ...): u = A v + c
    A = torch.eye(n, dtype=f64)
    c = torch.zeros(n, dtype=f64)
    weights, biases, acts = [], [], []
    for _ in range(blocks):
        W1 = torch.randn(hidden, n, generator=gen, dtype=f64) / math.sqrt(n)
        b1 = 0.3 * torch.randn(hidden, generator=gen, dtype=f64)
        W2 = branch_scale * torch.randn(n, hidden, generator=gen, dtype=f64) / math.sqrt(hidden)
        b2 = 0.3 * torch.randn(n, generator=gen, dtype=f64)
        S = torch.randn(n, n, generator=gen, dtype=f64) / math.sqrt(n) if projection else torch.eye(n, dtype=f64)
        weights.append(W1 @ A)
        biases.append(W1 @ c + b1)
        acts.append(_activation(act, hidden, gen))
        A = torch.cat([S @ A, W2], 1)
        c = S @ c + b2
    R = torch.randn(out, n, generator=gen, dtype=f64) / math.sqrt(n)
    weights.append(R @ A)
    biases.append(R @ c)
    return Dag(tuple(weights), tuple(acts), tuple(biases), f"res{act}{n}x{hidden}x{blocks}")


def _activation(act: str, n: int, gen: torch.Generator) -> Activation:
    if act == "maxmin":
        return maxmin(n)
    if act == "householder":
        v = torch.randn(n // 2, 2, generator=gen, dtype=torch.float64)
        return Activation(n, (Piece("householder", torch.arange(n).reshape(-1, 2), param=v / v.norm(dim=1, keepdim=True)),))
    slopes = {"relu": (0, 1), "leaky_relu": (0.1, 1), "sigmoid": (0, 0.25), "tanh": (0, 1)}
    lo, hi = slopes[act]
    return elementwise(act, n, lo, hi, 0.1 if act == "leaky_relu" else None)


class ResidualMLP(torch.nn.Module):
    """inp -> Linear -> [blocks of u + W2 relu(W1 u)] (optionally a Linear projection on the skip) -> Linear."""

    def __init__(self, n_in: int, width: int, hidden: int, blocks: int, n_out: int, projection: bool = False,
                 act: type[torch.nn.Module] = torch.nn.ReLU) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(n_in, width)
        self.w1 = torch.nn.ModuleList(torch.nn.Linear(width, hidden) for _ in range(blocks))
        self.w2 = torch.nn.ModuleList(torch.nn.Linear(hidden, width) for _ in range(blocks))
        self.skip = torch.nn.ModuleList(torch.nn.Linear(width, width, bias=False) for _ in range(blocks)) if projection else None
        self.act = act()
        self.out = torch.nn.Linear(width, n_out)

    def forward(self, x):
        u = self.inp(x)
        for k in range(len(self.w1)):
            s = self.skip[k](u) if self.skip is not None else u
            u = s + self.w2[k](self.act(self.w1[k](u)))
        return self.out(u)


def residual_onnx(W1: np.ndarray, b1: np.ndarray, W2: np.ndarray, b2: np.ndarray, R: np.ndarray) -> bytes:
    """x -> u = x + W2 relu(W1 x + b1) + b2 -> R u, as Gemm / Relu / Add nodes."""
    n = W1.shape[1]
    inits = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in
             (("W1", W1), ("b1", b1), ("W2", W2), ("b2", b2), ("R", R), ("c", np.zeros(R.shape[0])))]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["z"], transB=1),
             helper.make_node("Relu", ["z"], ["h"]),
             helper.make_node("Gemm", ["h", "W2", "b2"], ["r"], transB=1),
             helper.make_node("Add", ["x", "r"], ["u"]),
             helper.make_node("Gemm", ["u", "R", "c"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, R.shape[0]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()
