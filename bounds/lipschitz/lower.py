"""Lower bounds on the Lipschitz constant, so that users see the interval [lower, upper].

Every reported value is a difference quotient |f(x') - f(x)| / |x' - x| evaluated in float64
at two concrete points: a true lower bound by definition, whatever the activations are. The
points come from gradient ascent (Adam) on that quotient over pairs (x, x + delta), with
|delta| shrinking from wide (to move between linear regions, where the gradient norm of a
ReLU network is constant) to small (to approach the local Jacobian norm), and from the local
Jacobian's top direction at the best points found.

Norms: l2 -> l2; for norm=inf the input is measured in l-infinity and the output in
l-infinity too, which also bounds the l-inf -> l2 constant from below.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from bounds.lipschitz.chain import DTYPE

Function = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LowerBound:
    value: float
    x: torch.Tensor            # (n,) the point
    x2: torch.Tensor           # (n,) the second point of the quotient
    time_s: float


def _out_norm(v: torch.Tensor, norm: float) -> torch.Tensor:
    return v.norm(dim=-1) if norm == 2 else v.abs().amax(-1)


def _in_norm(v: torch.Tensor, norm: float) -> torch.Tensor:
    return v.norm(dim=-1) if norm == 2 else v.abs().amax(-1)


#: relative float64 error allowed for evaluating f (a few hundred roundings of 1.1e-16)
EVAL_ERROR = 1e-13


def quotient(f: Function, x: torch.Tensor, x2: torch.Tensor, norm: float) -> torch.Tensor:
    """|f(x2) - f(x)| / |x2 - x| for each row, in float64, less what rounding in the two
    evaluations of f could have added (at x2 - x ~ 1e-6 that is ~1e-7 of the quotient,
    and without it a quotient could exceed a tight certified bound)."""
    x, x2 = x.to(DTYPE), x2.to(DTYPE)
    with torch.no_grad():
        a, b = f(x), f(x2)
        slack = EVAL_ERROR * (_out_norm(a, norm) + _out_norm(b, norm) + 1.0)
        return (_out_norm(b - a, norm) - slack).clamp(min=0.0) / _in_norm(x2 - x, norm).clamp(min=1e-300)


def _jacobian_directions(f: Function, x: torch.Tensor, norm: float) -> torch.Tensor:
    """The input direction (B, n) in which the local Jacobian stretches most."""
    J = torch.func.vmap(torch.func.jacrev(lambda v: f(v[None])[0]))(x)      # (B, m, n)
    if norm == 2:
        _, _, Vh = torch.linalg.svd(J, full_matrices=False)
        return Vh[:, 0]
    k = J.abs().sum(-1).argmax(-1)                                           # row with largest l1 norm
    return torch.sign(J[torch.arange(J.shape[0]), k])


def lower_bound(f: Function, n_inputs: int, norm: float = 2, *, box: tuple[torch.Tensor, torch.Tensor] | None = None,
                starts: int = 16, steps: int = 150, seed: int = 0, deadline: float | None = None) -> LowerBound:
    """max over the points tried of the difference quotient (a sound lower bound).

    `box` (lower, upper) confines the points to an input domain; without it they start at
    standard normal points (the Lipschitz constant is global)."""
    begin = time.monotonic()
    gen = torch.Generator().manual_seed(seed)
    if box is not None:
        lo, hi = (b.to(DTYPE).reshape(-1) for b in box)
        x = lo + (hi - lo) * torch.rand(starts, n_inputs, generator=gen, dtype=DTYPE)
        scale = float((hi - lo).max()) or 1.0
    else:
        lo = hi = None
        x = torch.randn(starts, n_inputs, generator=gen, dtype=DTYPE)
        scale = 1.0
    u = torch.randn(starts, n_inputs, generator=gen, dtype=DTYPE)
    x = x.requires_grad_(True)
    u = u.requires_grad_(True)
    opt = torch.optim.Adam([x, u], lr=0.02 * scale)
    best = (-math.inf, None, None)

    def consider(a: torch.Tensor, b: torch.Tensor) -> None:
        nonlocal best
        q = quotient(f, a, b, norm)
        k = int(q.argmax())
        if float(q[k]) > best[0]:
            best = (float(q[k]), a[k].detach().clone(), b[k].detach().clone())

    for step in range(steps):
        if deadline is not None and time.monotonic() > deadline:
            break
        radius = scale * 10 ** (-0.5 - 3.0 * step / max(steps - 1, 1))       # 0.3 -> 3e-4 of the box
        d = u / _in_norm(u, norm).clamp(min=1e-300)[:, None] * radius
        x2 = x + d
        if lo is not None:
            x2 = torch.maximum(torch.minimum(x2, hi), lo)
        q = _out_norm(f(x2) - f(x), norm) / _in_norm(x2 - x, norm).clamp(min=1e-300)
        opt.zero_grad()
        (-q.sum()).backward()
        opt.step()
        with torch.no_grad():
            if lo is not None:
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
        consider(x.detach(), x2.detach())
    # polish: the local Jacobian's top direction, at a small step
    with torch.no_grad():
        xs = x.detach().clone()
    try:
        v = _jacobian_directions(f, xs, norm)
        eps = 1e-6 * scale
        a = xs
        if lo is not None:
            a = torch.maximum(torch.minimum(a, hi - eps), lo)
        consider(a, a + eps * v if lo is None else torch.minimum(a + eps * v, hi))
    except (RuntimeError, NotImplementedError):
        pass
    value, p1, p2 = best
    return LowerBound(max(value, 0.0), p1, p2, time.monotonic() - begin)


__all__ = ["LowerBound", "lower_bound", "quotient"]
