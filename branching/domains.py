"""Sub-problems of input-splitting branch-and-bound as one struct of batched tensors."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bounds.types import Interval
from branching.queue import get_intervals, put_intervals


@dataclass(frozen=True)
class DomainBatch:
    lower: torch.Tensor   # (N, *input_shape)
    upper: torch.Tensor   # (N, *input_shape)
    case: torch.Tensor    # (N,) long: which spec case (box/polytopes) the domain belongs to
    score: torch.Tensor   # (N,) best margin known (higher is closer to verified); -inf unknown
    depth: torch.Tensor   # (N,) long
    #: intermediate intervals proven for the domain (or an ancestor): name -> (N, *shape)
    inter: dict[str, Interval] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.case.shape[0]

    def take(self, idx: torch.Tensor) -> "DomainBatch":
        return DomainBatch(self.lower[idx], self.upper[idx], self.case[idx], self.score[idx], self.depth[idx],
                           {k: Interval(v.lower[idx], v.upper[idx]) for k, v in self.inter.items()})

    def repeat(self, times: int) -> "DomainBatch":
        idx = torch.arange(len(self), device=self.case.device).repeat(times)
        return self.take(idx)

    def fields(self) -> dict[str, torch.Tensor]:
        """Every per-domain tensor by name, for a DomainQueue."""
        out = {"lower": self.lower, "upper": self.upper, "case": self.case, "score": self.score, "depth": self.depth}
        put_intervals(out, self.inter)
        return out

    @staticmethod
    def from_fields(fields: dict[str, torch.Tensor]) -> "DomainBatch":
        return DomainBatch(fields["lower"], fields["upper"], fields["case"], fields["score"], fields["depth"],
                           get_intervals(fields))
