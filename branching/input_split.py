"""Input splitting: bisect one input dimension of each domain."""
from __future__ import annotations

import torch

from branching.domains import DomainBatch


def split_scores(domains: DomainBatch, coeffs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(N, n_inputs) how much each dimension's width loosens the deciding row's bound.

    coeffs (N, S, *input_shape) are the input coefficients of the linear lower bounds; the
    bound's looseness from dimension i is |A_i| * width_i (its share of A·x's range).
    """
    n = coeffs.shape[0]
    A = coeffs[torch.arange(n, device=coeffs.device), rows].reshape(n, -1)
    width = (domains.upper - domains.lower).reshape(n, -1)
    sensitivity = A.abs()
    # The linear bound can ignore a dimension (A_i = 0) whose width still feeds the
    # relaxation error; keep a share of "width x average sensitivity" so such a dimension is
    # split eventually instead of bisecting ever-thinner slivers of the others.
    typical = sensitivity.mean(1, keepdim=True) + 1e-12
    return sensitivity * width + 0.05 * typical * width


def bisect(domains: DomainBatch, dims: torch.Tensor) -> DomainBatch:
    """Two children per domain, split at the midpoint of dimension `dims[i]`."""
    n = len(domains)
    shape = domains.lower.shape[1:]
    lower, upper = domains.lower.reshape(n, -1), domains.upper.reshape(n, -1)
    idx = torch.arange(n, device=lower.device)
    mid = (lower[idx, dims] + upper[idx, dims]) / 2
    left_upper, right_lower = upper.clone(), lower.clone()
    left_upper[idx, dims] = mid
    right_lower[idx, dims] = mid
    twice = domains.repeat(2)
    return DomainBatch(torch.cat([lower, right_lower]).reshape(2 * n, *shape),
                       torch.cat([left_upper, upper]).reshape(2 * n, *shape),
                       twice.case, twice.score, twice.depth + 1, twice.inter)
