"""Core value types shared by every bound algorithm.

Shapes: a *batched* tensor has a leading batch dimension B (sub-problems) in front of the
value's full ONNX shape. Constants are batched with B = 1 and broadcast.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def single_if_repeated(t: torch.Tensor) -> torch.Tensor:
    """A batched tensor that is one entry expanded along the batch (one box for many
    sub-problems) as that entry alone, so that work on it costs one entry; else t itself."""
    return t[:1] if t.dim() > 1 and t.shape[0] > 1 and t.stride(0) == 0 else t


@dataclass(frozen=True)
class Interval:
    """Elementwise bounds lower <= v <= upper; both (B, *shape)."""

    lower: torch.Tensor
    upper: torch.Tensor

    @staticmethod
    def point(value: torch.Tensor) -> "Interval":
        return Interval(value, value)

    @property
    def center(self) -> torch.Tensor:
        return (self.lower + self.upper) / 2

    @property
    def radius(self) -> torch.Tensor:
        return (self.upper - self.lower) / 2

    @property
    def shape(self) -> torch.Size:
        return self.lower.shape

    def intersect(self, other: "Interval") -> "Interval":
        return Interval(torch.maximum(self.lower, other.lower), torch.minimum(self.upper, other.upper))

    def map(self, fn) -> "Interval":
        """Apply a monotonically increasing map to both ends."""
        return Interval(fn(self.lower), fn(self.upper))


@dataclass(frozen=True)
class CentredBox(Interval):
    """An interval with finite ends, its centre and radius computed once: a box that a
    search concretises at every step (crown.concretize_lower) then costs no check or
    subtraction per step."""

    mid: torch.Tensor
    half: torch.Tensor

    @staticmethod
    def of(x: Interval) -> Interval:
        """x as a CentredBox when both its ends are finite, else x itself."""
        if isinstance(x, CentredBox) or not bool(torch.isfinite(x.lower).all() and torch.isfinite(x.upper).all()):
            return x
        lower, upper = single_if_repeated(x.lower), single_if_repeated(x.upper)
        return CentredBox(x.lower, x.upper, (lower + upper) / 2, (upper - lower) / 2)

    @property
    def center(self) -> torch.Tensor:
        return self.mid

    @property
    def radius(self) -> torch.Tensor:
        return self.half


@dataclass(frozen=True)
class Relaxation:
    """Elementwise linear bounds lw*x + lb <= f(x) <= uw*x + ub, valid on the input interval.

    All four tensors have the shape of the input interval (B, *shape).
    """

    lw: torch.Tensor
    lb: torch.Tensor
    uw: torch.Tensor
    ub: torch.Tensor
