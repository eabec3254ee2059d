"""Affine segments too large to write down as dense matrices (convolutions on big images).

A segment is kept as the function it is (evaluated through the graph's own nodes) plus a list
of linear *factors* whose norms bound its Lipschitz constant: ||L|| <= prod ||factor||.

The convolution's l2 norm is bounded by the Fourier method (Sedghi et al. 2019): a
zero-padded, strided, dilated convolution is a restriction of the *circular* convolution on the
padded grid (padding embeds isometrically, the valid outputs are a subset of the circular
ones, and striding keeps a subset of those), and the circular convolution is block-diagonal in
the discrete Fourier basis: its singular values are those of the c_out x c_in matrices
K_hat(u) = sum_a K[a] exp(-2 pi i <u, d a / N>), one per frequency u of the grid. The largest
of them is therefore an upper bound on the segment's norm (exact when padding is circular,
within a few per cent on large zero-padded grids), computed in float64 with a rounding margin.
Per-channel scalings next to a convolution (BatchNormalization, Mul / Div by a per-channel
constant) are folded into its kernel first, so they cost no looseness.

The l-infinity induced norm of a convolution is at most the largest absolute row sum of its
kernel, max_o sum |K[o]| (rows at the border have fewer taps).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from bounds.lipschitz.chain import DTYPE

#: relative margin on every computed norm (float64 FFT and SVD rounding is ~1e-13 relative)
NORM_SLACK = 1e-9
#: bytes of complex Fourier coefficients held at once
FOURIER_CHUNK_BYTES = 256 * 2 ** 20


@dataclass(frozen=True)
class ConvFactor:
    """y = conv(x) without bias: kernel (c_out, c_in / groups, *k), zero padding pads
    ([b_1..b_n, e_1..e_n]), strides and dilations; in_shape (c_in, *spatial)."""

    kernel: torch.Tensor
    in_shape: tuple[int, ...]
    pads: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    groups: int = 1

    @property
    def n_spatial(self) -> int:
        return self.kernel.dim() - 2

    def norm(self, norm: float) -> float:
        if norm == 2:
            return conv_spectral_bound(self)
        rows = self.kernel.abs().flatten(1).sum(1)
        return float(rows.max()) * (1 + NORM_SLACK)

    def scale_outputs(self, s: torch.Tensor) -> "ConvFactor":
        k = self.kernel * s.reshape(-1, *([1] * (self.kernel.dim() - 1)))
        return ConvFactor(k, self.in_shape, self.pads, self.strides, self.dilations, self.groups)

    def scale_inputs(self, s: torch.Tensor) -> "ConvFactor":
        c_out, per_group = self.kernel.shape[:2]
        out_group = torch.arange(c_out) // (c_out // self.groups)             # group of each output channel
        index = out_group[:, None] * per_group + torch.arange(per_group)[None]  # global input channel
        k = self.kernel * s[index].reshape(c_out, per_group, *([1] * self.n_spatial))
        return ConvFactor(k, self.in_shape, self.pads, self.strides, self.dilations, self.groups)

    def describe(self) -> str:
        k = "x".join(str(d) for d in self.kernel.shape[2:])
        return f"conv{k}[{self.kernel.shape[1] * self.groups}->{self.kernel.shape[0]}]"


def _polyphase(conv: ConvFactor) -> ConvFactor:
    """The stride-1 convolution with the same norm bound structure: a strided convolution
    reads input position s*o + d*a; writing d*a = s*q + r, it is a stride-1 convolution (taps
    q) of the polyphase components x_r[m] = x[s*m + r] (a permutation of the zero-padded input,
    padded further to a multiple of s: an isometric embedding) stacked as channels."""
    n = conv.n_spatial
    s = conv.strides
    spatial = conv.in_shape[1:]
    padded = [size + conv.pads[i] + conv.pads[i + n] for i, size in enumerate(spatial)]
    grid = [-(-p // st) for p, st in zip(padded, s)]
    c_out, per_group = conv.kernel.shape[:2]
    taps = conv.kernel.shape[2:]
    q_size = [(d * (k - 1)) // st + 1 for d, k, st in zip(conv.dilations, taps, s)]
    phases = math.prod(s)
    g = conv.groups
    K = torch.zeros(c_out, per_group * phases, *q_size, dtype=conv.kernel.dtype)
    for a in itertools.product(*(range(k) for k in taps)):
        pos = [d * ai for d, ai in zip(conv.dilations, a)]
        q = tuple(p // st for p, st in zip(pos, s))
        r = 0
        for p, st in zip(pos, s):
            r = r * st + p % st
        # new channel (within the group): phase-major, then the old channel
        K[(slice(None), slice(r * per_group, (r + 1) * per_group)) + q] += conv.kernel[(slice(None), slice(None)) + a]
    zeros = (0,) * (2 * n)
    return ConvFactor(K, (conv.in_shape[0] * phases, *grid), zeros, (1,) * n, (1,) * n, g)


def conv_spectral_bound(conv: ConvFactor) -> float:
    """max over the padded grid's frequencies of the largest singular value of K_hat(u)."""
    if any(st > 1 for st in conv.strides):
        conv = _polyphase(conv)
    n = conv.n_spatial
    spatial = conv.in_shape[1:]
    grid = [s + conv.pads[i] + conv.pads[i + n] for i, s in enumerate(spatial)]
    c_out, per_group = conv.kernel.shape[:2]
    g = conv.groups
    K = conv.kernel.to(DTYPE).reshape(g, c_out // g, per_group, *conv.kernel.shape[2:]).to(torch.complex128)
    phases = []
    for d in range(n):
        taps = torch.arange(conv.kernel.shape[2 + d], dtype=DTYPE) * conv.dilations[d]
        freq = torch.arange(grid[d], dtype=DTYPE)
        phases.append(torch.exp(-2j * math.pi * torch.outer(freq, taps) / grid[d]))   # (N_d, k_d)
    per_freq = c_out * per_group * 16
    rest = math.prod(grid[1:])
    chunk = max(1, FOURIER_CHUNK_BYTES // max(per_freq * rest, 1))
    best = 0.0
    for start in range(0, grid[0], chunk):
        X = K
        for d in range(n):
            E = phases[d][start:start + chunk] if d == 0 else phases[d]
            # contract the kernel axis d (always at position 3 after the previous moves)
            X = torch.tensordot(X, E, dims=([3], [1]))            # appends the frequency axis last
        # X: (g, c_out/g, per_group, N_1', ..., N_n) -> (freqs * g, c_out/g, per_group)
        X = X.movedim((1, 2), (-2, -1)).reshape(-1, c_out // g, per_group)
        best = max(best, float(torch.linalg.svdvals(X)[:, 0].max()))
    return best * (1 + NORM_SLACK) + 1e-15 * float(conv.kernel.abs().sum())


@dataclass(frozen=True)
class ScaleFactor:
    """Elementwise multiplication by a constant (flat, in the element order of the value)."""

    values: torch.Tensor

    def norm(self, norm: float) -> float:
        return float(self.values.abs().max())

    def describe(self) -> str:
        return "scale"


@dataclass(frozen=True)
class DenseFactor:
    """x -> x @ W (MatMul / Gemm with a constant matrix on the last axis)."""

    matrix: torch.Tensor

    def norm(self, norm: float) -> float:
        W = self.matrix.to(DTYPE).T
        value = float(torch.linalg.matrix_norm(W, 2)) if norm == 2 else float(W.abs().sum(1).max())
        return value * (1 + NORM_SLACK)

    def describe(self) -> str:
        return f"dense[{self.matrix.shape[0]}->{self.matrix.shape[1]}]"


@dataclass(frozen=True)
class FixedFactor:
    """A linear map whose norms are known in closed form: a permutation or zero-embedding
    (Transpose, constant Pad, Slice: norm 1 both ways), an average over S entries (l2 norm
    1/sqrt(S), l-inf norm 1)."""

    what: str
    l2: float = 1.0
    linf: float = 1.0

    def norm(self, norm: float) -> float:
        return self.l2 if norm == 2 else self.linf

    def describe(self) -> str:
        return self.what


Factor = ConvFactor | ScaleFactor | DenseFactor | FixedFactor


@dataclass(frozen=True)
class StructuredAffine:
    """An affine map R^n_in -> R^n_out kept as a function plus factors bounding its norm."""

    n_in: int
    n_out: int
    factors: tuple[Factor, ...]
    fn: Callable[[torch.Tensor], torch.Tensor] = field(compare=False, repr=False)
    name: str = "segment"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate on x (B, n_in)."""
        return self.fn(x)

    def norm(self, norm: float = 2) -> float:
        """An upper bound on the induced l2 (or l-inf) norm of the linear part."""
        return math.prod(f.norm(norm) for f in self.factors) * (1 + NORM_SLACK * len(self.factors))

    def norm_inf_to_2(self) -> float:
        """An upper bound on the l-inf -> l2 norm: |Lx|_2 <= |L|_2 |x|_2 <= |L|_2 sqrt(n) |x|_inf,
        and |Lx|_2 <= sqrt(m) |Lx|_inf."""
        return min(math.sqrt(self.n_in) * self.norm(2), math.sqrt(self.n_out) * self.norm(math.inf))

    def describe(self) -> str:
        return "*".join(f.describe() for f in self.factors) or "affine"


def fold_scales(factors: list[Factor]) -> list[Factor]:
    """Fold per-channel ScaleFactors into an adjacent ConvFactor (the reshapes that may stand
    between them keep element order, so a flat, channel-first scale vector reads as the
    convolution's output / input layout)."""
    out = list(factors)
    i = 0
    while i < len(out):
        f = out[i]
        if isinstance(f, ScaleFactor):
            if i > 0 and isinstance(out[i - 1], ConvFactor):
                conv = out[i - 1]
                s = _per_channel(f.values, conv.kernel.shape[0])
                if s is not None:
                    out[i - 1] = conv.scale_outputs(s)
                    del out[i]
                    continue
            if i + 1 < len(out) and isinstance(out[i + 1], ConvFactor):
                conv = out[i + 1]
                s = _per_channel(f.values, conv.in_shape[0])
                if s is not None:
                    out[i + 1] = conv.scale_inputs(s)
                    del out[i]
                    continue
        i += 1
    return out


def _per_channel(values: torch.Tensor, channels: int) -> torch.Tensor | None:
    """The per-channel scale when `values` (flat, channel-first) is constant over each channel."""
    if values.numel() % channels:
        return None
    v = values.reshape(channels, -1)
    if not bool((v == v[:, :1]).all()):
        return None
    return v[:, 0].clone()


__all__ = ["ConvFactor", "ScaleFactor", "DenseFactor", "FixedFactor", "StructuredAffine", "fold_scales",
           "conv_spectral_bound", "NORM_SLACK"]
