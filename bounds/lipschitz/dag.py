"""Networks with skip connections for LipSDP: every pre-activation may read the input and ANY
earlier activation layer, and so may the output.

    v = (h_0 = x, h_1, ..., h_l),   z_i = W_i v_{<i} + b_i,   h_i = act_i(z_i),   y = W_out v + b_out

A residual block y = S x + W2 act(W1 x + b1) + b2 is the case l = 1 with W_out = [S, W2];
chains of blocks read the previous block's output, which is itself a linear function of the
earlier blocks' activation outputs (the extractor folds it in), so every residual network with
slope-restricted or GroupSort activations has this form. A Chain is the special case where W_i
reads only block i-1.

`weights[i]` (i < l) is (n_{i+1}, n_0 + ... + n_i): the columns are the blocks 0..i side by side;
`weights[l]` (the output) is (m, n_0 + ... + n_l). Columns of blocks a matrix does not read are
zero; `sources[i]` is the first block it reads (every block after it is kept, zero or not: the
LMI couples that range anyway).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bounds.lipschitz.chain import DTYPE, Activation, Chain


@dataclass(frozen=True)
class Dag:
    weights: tuple[torch.Tensor, ...]       # len(activations) + 1 matrices, see the module doc
    activations: tuple[Activation, ...]
    biases: tuple[torch.Tensor, ...] = ()
    name: str = "dag"
    n_inputs: int = -1                       # n_0; inferred from weights[0] when -1

    def __post_init__(self) -> None:
        l = len(self.activations)
        if len(self.weights) != l + 1:
            raise ValueError(f"{len(self.weights)} weight matrices need {len(self.weights) - 1} activation "
                             f"layers, got {l}")
        ws = tuple(w.detach().to(DTYPE) for w in self.weights)
        object.__setattr__(self, "weights", ws)
        if self.n_inputs < 0:
            object.__setattr__(self, "n_inputs", ws[0].shape[1])
        if not self.biases:
            object.__setattr__(self, "biases", tuple(torch.zeros(w.shape[0], dtype=DTYPE) for w in ws))
        else:
            object.__setattr__(self, "biases", tuple(b.detach().to(DTYPE).reshape(-1) for b in self.biases))
        off = self.offsets
        for i, w in enumerate(ws):
            rows = self.activations[i].size if i < l else w.shape[0]
            if w.shape != (rows, off[i + 1]):
                raise ValueError(f"weights[{i}] has shape {tuple(w.shape)}; it must be ({rows}, {off[i + 1]}): "
                                 f"rows = its layer's neurons, columns = the input and every earlier layer")
            if not bool(torch.isfinite(w).all()):
                raise ValueError("the weights contain NaN or infinite values")

    @property
    def offsets(self) -> list[int]:
        """Column offset of block j in v: offsets[j]; offsets[-1] = len(v)."""
        out = [0, self.n_inputs]
        for a in self.activations:
            out.append(out[-1] + a.size)
        return out

    @property
    def n_outputs(self) -> int:
        return self.weights[-1].shape[0]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.activations)

    def block(self, i: int, j: int) -> torch.Tensor:
        """The part of weights[i] that reads block j (0 = input)."""
        off = self.offsets
        return self.weights[i][:, off[j]:off[j + 1]]

    @property
    def sources(self) -> tuple[int, ...]:
        """sources[i]: the first block weights[i] reads (i itself when it reads none)."""
        out = []
        for i in range(len(self.weights)):
            first = i
            for j in range(i + 1):
                if bool((self.block(i, j) != 0).any()):
                    first = j
                    break
            out.append(first)
        return tuple(out)

    @property
    def is_chain(self) -> bool:
        return all(s == i for i, s in enumerate(self.sources)) and all(
            not bool((self.block(i, j) != 0).any()) for i in range(len(self.weights)) for j in range(i))

    def to_chain(self) -> Chain:
        if not self.is_chain:
            raise ValueError("the network has skip connections")
        ws = tuple(self.block(i, i) for i in range(len(self.weights)))
        return Chain(ws, self.activations, self.biases, self.name)

    @staticmethod
    def from_chain(chain: Chain) -> "Dag":
        sizes = [chain.n_inputs] + list(chain.widths)
        ws = []
        for i, w in enumerate(chain.weights):
            full = torch.zeros(w.shape[0], sum(sizes[:i + 1]), dtype=DTYPE)
            full[:, sum(sizes[:i]):] = w
            ws.append(full)
        return Dag(tuple(ws), chain.activations, chain.biases, chain.name, chain.n_inputs)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate on x (B, n_inputs) in the dtype of x."""
        v = x
        for i, act in enumerate(self.activations):
            h = act(v @ self.weights[i].to(x.dtype).T + self.biases[i].to(x.dtype))
            v = torch.cat([v, h], 1)
        return v @ self.weights[-1].to(x.dtype).T + self.biases[-1].to(x.dtype)

    def with_output(self, c: torch.Tensor) -> "Dag":
        """The network whose output is c @ y (c: (k, n_outputs))."""
        c = c.to(DTYPE).reshape(-1, self.n_outputs)
        ws = self.weights[:-1] + (c @ self.weights[-1],)
        bs = self.biases[:-1] + (c @ self.biases[-1],)
        return Dag(ws, self.activations, bs, self.name, self.n_inputs)

    def describe(self) -> str:
        acts = ", ".join(a.describe() for a in self.activations)
        skips = sum(1 for i in range(len(self.weights)) for j in range(i) if bool((self.block(i, j) != 0).any()))
        return f"{self.name}: {self.n_inputs} inputs -> [{acts}] -> {self.n_outputs} outputs, {skips} skip connections"


def as_dag(net: Chain | Dag) -> Dag:
    return net if isinstance(net, Dag) else Dag.from_chain(net)


__all__ = ["Dag", "as_dag"]
