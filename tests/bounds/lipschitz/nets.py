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
