"""The network shape LipSDP reads: a chain of affine maps and activation layers.

    z_1 = W_0 x + b_0,  h_i = act_i(z_i),  z_{i+1} = W_i h_i + b_i,  y = W_l h_l + b_l

Each activation layer is made of *pieces* that cover its neurons exactly once:

* elementwise pieces (ReLU, LeakyReLU, sigmoid, tanh, or any function with slopes in
  [lower, upper]): `index` (E,) lists the neurons;
* group pieces, `index` (G, g): each row is one group of g neurons mapped to g neurons.
  "sort" (GroupSort; MaxMin is g = 2: h[i] = max, h[j] = min) is 1-Lipschitz and keeps the
  sum of its group; "householder" (g = 2: z if v.z > 0 else (I - 2vv^T) z) is 1-Lipschitz.

Everything is float64: the certificate is computed from these very matrices.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

ELEMENTWISE = ("relu", "leaky_relu", "sigmoid", "tanh", "slope")
GROUPS = ("sort", "householder")
DTYPE = torch.float64


@dataclass(frozen=True)
class Piece:
    kind: str                       # one of ELEMENTWISE or GROUPS
    index: torch.Tensor             # (E,) elementwise, (G, g) groups; int64 neuron indices
    lower: float = 0.0              # slope bounds of elementwise pieces
    upper: float = 1.0
    param: torch.Tensor | float | None = None   # LeakyReLU slope; Householder vectors (G, g)
    fn: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=False)  # kind "slope"

    def __post_init__(self) -> None:
        if self.kind not in ELEMENTWISE + GROUPS:
            raise ValueError(f"unknown activation piece kind '{self.kind}'")
        want = 1 if self.kind in ELEMENTWISE else 2
        if self.index.dim() != want:
            raise ValueError(f"{self.kind} piece needs a rank-{want} index, got shape {tuple(self.index.shape)}")
        if self.kind in ELEMENTWISE and not self.lower <= self.upper:
            raise ValueError(f"slope bounds [{self.lower}, {self.upper}] are empty")

    @property
    def is_group(self) -> bool:
        return self.kind in GROUPS

    @property
    def sum_preserving(self) -> bool:
        return self.kind == "sort"

    @property
    def lipschitz(self) -> float:
        """The l2 (and l-infinity) Lipschitz constant of the piece on its own."""
        return 1.0 if self.is_group else max(abs(self.lower), abs(self.upper))

    def apply(self, z: torch.Tensor, out: torch.Tensor) -> None:
        """Write act(z) for this piece's neurons into out; z, out: (B, n)."""
        if self.kind in ELEMENTWISE:
            x = z[:, self.index]
            if self.kind == "relu":
                y = x.clamp(min=0)
            elif self.kind == "leaky_relu":
                y = torch.where(x >= 0, x, x * float(self.param))
            elif self.kind == "sigmoid":
                y = torch.sigmoid(x)
            elif self.kind == "tanh":
                y = torch.tanh(x)
            elif self.fn is not None:
                y = self.fn(x)
            else:
                raise ValueError("a 'slope' piece without its function cannot be evaluated")
            out[:, self.index] = y
        elif self.kind == "sort":
            out[:, self.index] = z[:, self.index].sort(dim=-1, descending=True).values
        else:  # householder
            x = z[:, self.index]                                  # (B, G, g)
            v = torch.as_tensor(self.param, dtype=z.dtype)        # (G, g), unit rows
            dot = (x * v).sum(-1, keepdim=True)
            out[:, self.index] = torch.where(dot > 0, x, x - 2 * dot * v)


@dataclass(frozen=True)
class Activation:
    size: int
    pieces: tuple[Piece, ...]

    def __post_init__(self) -> None:
        seen = torch.zeros(self.size, dtype=torch.int64)
        for p in self.pieces:
            idx = p.index.reshape(-1)
            if idx.numel() and (idx.min() < 0 or idx.max() >= self.size):
                raise ValueError(f"{p.kind} piece indexes outside the layer of {self.size} neurons")
            seen.index_add_(0, idx, torch.ones_like(idx))
        if not bool((seen == 1).all()):
            raise ValueError("activation pieces must cover every neuron of the layer exactly once")

    @property
    def lipschitz(self) -> float:
        return max((p.lipschitz for p in self.pieces), default=1.0)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(z)
        for p in self.pieces:
            p.apply(z, out)
        return out

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for p in self.pieces:
            kinds[p.kind] = kinds.get(p.kind, 0) + int(p.index.numel())
        return "+".join(f"{k}[{n}]" for k, n in kinds.items())


@dataclass(frozen=True)
class Chain:
    """weights[i]: (n_{i+1}, n_i) float64; biases[i]: (n_{i+1},); activations[i] acts on
    the output of weights[i], so len(weights) == len(activations) + 1."""

    weights: tuple[torch.Tensor, ...]
    activations: tuple[Activation, ...]
    biases: tuple[torch.Tensor, ...] = ()
    name: str = "chain"

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.activations) + 1:
            raise ValueError(f"{len(self.weights)} weight matrices need {len(self.weights) - 1} activation "
                             f"layers, got {len(self.activations)}")
        ws = tuple(w.detach().to(DTYPE) for w in self.weights)
        object.__setattr__(self, "weights", ws)
        if not self.biases:
            object.__setattr__(self, "biases", tuple(torch.zeros(w.shape[0], dtype=DTYPE) for w in ws))
        else:
            object.__setattr__(self, "biases", tuple(b.detach().to(DTYPE).reshape(-1) for b in self.biases))
        for i, act in enumerate(self.activations):
            if ws[i].shape[0] != act.size or ws[i + 1].shape[1] != act.size:
                raise ValueError(f"layer {i + 1}: weights {tuple(ws[i].shape)} and {tuple(ws[i + 1].shape)} "
                                 f"do not fit an activation of {act.size} neurons")
        for w in ws:
            if not bool(torch.isfinite(w).all()):
                raise ValueError("the weights contain NaN or infinite values")

    @property
    def n_inputs(self) -> int:
        return self.weights[0].shape[1]

    @property
    def n_outputs(self) -> int:
        return self.weights[-1].shape[0]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.activations)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate on x (B, n_inputs) in the dtype of x."""
        h = x
        for i, act in enumerate(self.activations):
            h = act(h @ self.weights[i].to(x.dtype).T + self.biases[i].to(x.dtype))
        return h @ self.weights[-1].to(x.dtype).T + self.biases[-1].to(x.dtype)

    def with_output(self, c: torch.Tensor) -> "Chain":
        """The chain whose output is c @ y (c: (k, n_outputs)), e.g. a margin y_i - y_j."""
        c = c.to(DTYPE).reshape(-1, self.n_outputs)
        ws = self.weights[:-1] + (c @ self.weights[-1],)
        bs = self.biases[:-1] + (c @ self.biases[-1],)
        return Chain(ws, self.activations, bs, self.name)

    def describe(self) -> str:
        acts = ", ".join(a.describe() for a in self.activations)
        return f"{self.name}: {self.n_inputs} inputs -> [{acts}] -> {self.n_outputs} outputs"


def margin_vector(n_outputs: int, pair: tuple[int, int]) -> torch.Tensor:
    """c with c @ y = y_i - y_j."""
    i, j = pair
    if not (0 <= i < n_outputs and 0 <= j < n_outputs) or i == j:
        raise ValueError(f"pair {pair} must name two different outputs in 0..{n_outputs - 1}")
    c = torch.zeros(1, n_outputs, dtype=DTYPE)
    c[0, i], c[0, j] = 1.0, -1.0
    return c


def output_vector(n_outputs: int, k: int) -> torch.Tensor:
    """c with c @ y = y_k."""
    if not 0 <= k < n_outputs:
        raise ValueError(f"output {k} must be in 0..{n_outputs - 1}")
    c = torch.zeros(1, n_outputs, dtype=DTYPE)
    c[0, k] = 1.0
    return c


def elementwise(kind: str, n: int, lower: float = 0.0, upper: float = 1.0, param=None) -> Activation:
    """A layer of n neurons with one elementwise activation."""
    return Activation(n, (Piece(kind, torch.arange(n), lower, upper, param),))


def maxmin(n: int) -> Activation:
    """MaxMin on consecutive pairs (0,1), (2,3), ...: h[2k] = max, h[2k+1] = min."""
    if n % 2:
        raise ValueError(f"MaxMin needs an even number of neurons, got {n}")
    return Activation(n, (Piece("sort", torch.arange(n).reshape(-1, 2)),))


def group_sort(n: int, group: int) -> Activation:
    if n % group:
        raise ValueError(f"GroupSort with groups of {group} needs a multiple of {group} neurons, got {n}")
    return Activation(n, (Piece("sort", torch.arange(n).reshape(-1, group)),))


__all__ = ["Chain", "Activation", "Piece", "margin_vector", "elementwise", "maxmin", "group_sort", "DTYPE"]
