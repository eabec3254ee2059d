"""Random small graphs built directly in the IR, for soundness tests of the bound code."""
from __future__ import annotations

import torch

from bounds.graph.ir import Graph, Node
from bounds.graph.shapes import infer_shapes

ACTS = ["Relu", "Sigmoid", "Tanh", "LeakyRelu"]


class Builder:
    def __init__(self, input_shape: tuple[int, ...], gen: torch.Generator) -> None:
        self.nodes: list[Node] = [Node("x", "Input", shape=input_shape)]
        self.gen = gen
        self.count = 0

    def const(self, value: torch.Tensor) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.nodes.append(Node(name, "Constant", attrs={"value": value}, shape=tuple(value.shape)))
        return name

    def op(self, op: str, *inputs: str, **attrs) -> str:
        self.count += 1
        name = f"{op.lower()}{self.count}"
        self.nodes.append(Node(name, op, tuple(inputs), attrs))
        return name

    def randn(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen) * scale

    def act(self, x: str, kind: str) -> str:
        if kind == "LeakyRelu":
            return self.op("LeakyRelu", x, alpha=0.1)
        return self.op(kind, x)

    def dense(self, x: str, n_in: int, n_out: int, style: int) -> str:
        w = self.randn(n_in, n_out, scale=1 / n_in ** 0.5)
        b = self.randn(n_out, scale=0.3)
        if style == 0:
            return self.op("Gemm", x, self.const(w.T.contiguous()), self.const(b), transB=1)
        return self.op("Add", self.op("MatMul", x, self.const(w)), self.const(b))

    def graph(self, out: str) -> Graph:
        return infer_shapes(Graph(tuple(self.nodes), ("x",), (out,)))


def random_mlp(seed: int, width: int = 8, depth: int = 3, n_in: int = 4, n_out: int = 3,
               acts: list[str] | None = None, residual: bool = False) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    b = Builder((1, n_in), gen)
    acts = acts or ACTS
    x = b.op("Div", b.op("Sub", "x", b.const(b.randn(n_in, scale=0.1))), b.const(torch.rand(n_in, generator=gen) + 0.5))
    x = b.dense(x, n_in, width, seed % 2)
    for layer in range(depth - 1):
        h = b.act(x, acts[(seed + layer) % len(acts)])
        y = b.dense(h, width, width, (seed + layer) % 2)
        x = b.op("Add", y, x) if residual else y
    x = b.act(x, acts[(seed + depth) % len(acts)])
    return b.graph(b.dense(x, width, n_out, 0))


def random_cnn(seed: int, channels: int = 3, size: int = 6, n_out: int = 3) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    b = Builder((1, 1, size, size), gen)
    w1 = b.randn(channels, 1, 3, 3, scale=0.5)
    x = b.op("Conv", "x", b.const(w1), b.const(b.randn(channels, scale=0.1)), pads=[1, 1, 1, 1])
    x = b.op("BatchNormalization", x, b.const(torch.rand(channels, generator=gen) + 0.5),
             b.const(b.randn(channels, scale=0.1)), b.const(b.randn(channels, scale=0.1)),
             b.const(torch.rand(channels, generator=gen) + 0.5))
    x = b.act(x, ACTS[seed % len(ACTS)])
    w2 = b.randn(channels, channels, 3, 3, scale=0.3)
    x = b.op("Conv", x, b.const(w2), strides=[2, 2], pads=[0, 0, 1, 1])
    x = b.op("AveragePool" if seed % 2 else "MaxPool", x, kernel_shape=[2, 2], strides=[1, 1])
    x = b.act(x, ACTS[(seed + 1) % len(ACTS)])
    x = b.op("Transpose", x, perm=[0, 2, 3, 1])
    x = b.op("Flatten", x, axis=1)
    n = channels * ((size + 1 - 3) // 2 + 1 - 1) ** 2
    return b.graph(b.dense(x, n, n_out, 0))
