"""Certificate descent: improve LipSDP multipliers by minimising the certified value itself.

The certificate (certify.py) is a function of the multipliers alone: eliminate the activation
layers by Schur complements, then take the largest eigenvalue of the input block (l2), or the
smallest diagonal-plus-shift cover (l-infinity). It is convex in the multipliers where it is
finite (a partial minimisation of the LMI over rho) and differentiable almost everywhere, so
Adam on the multipliers' logarithms (which keeps them positive) walks downhill on exactly the
number that gets reported. It is the fallback for the barrier path when that path loses the
central path (wide layers fed by few inputs): there it reaches in seconds what hundreds of
uncentred Newton steps do not. Every value returned comes from certify() on fixed multipliers.
"""
from __future__ import annotations

import math
import time

import torch

from bounds.lipschitz.certify import Multipliers, certify, input_form
from bounds.lipschitz.chain import DTYPE, Chain
from bounds.lipschitz.dag import Dag

#: multipliers below this are treated as zero when taking logarithms
TINY = 1e-12


def _objective(net: Chain | Dag, mult: Multipliers, norm: float) -> torch.Tensor | None:
    """log of the value the multipliers certify (certify.py without its rounding margins);
    None where a Schur complement is not negative definite."""
    K, _ = input_form(net, mult, norm)
    if K is None:
        return None
    if norm == 2:
        return torch.log(torch.linalg.eigvalsh(K)[-1].clamp(min=1e-300))
    gamma = mult.gamma
    shift = torch.linalg.eigvalsh(K - torch.diag(gamma))[-1].clamp(min=0)
    return torch.log((gamma + shift).clamp(min=0).sum().clamp(min=1e-300))


class _Params:
    """Multipliers as unconstrained tensors: logarithms of the nonnegative ones, the free
    lambda2 of sort groups as they are."""

    def __init__(self, mult: Multipliers, norm: float) -> None:
        self.layers = []
        for ms in mult.layers:
            row = []
            for m in ms:
                m = m.detach().to(DTYPE)
                if m.dim() == 1:
                    row.append((torch.log(m.clamp(min=TINY)).requires_grad_(True), None))
                else:
                    row.append((torch.log(m[:, 0].clamp(min=TINY)).requires_grad_(True),
                                m[:, 1].clone().requires_grad_(True)))
            self.layers.append(row)
        self.gamma = None
        if norm != 2 and mult.gamma is not None:
            self.gamma = torch.log(mult.gamma.detach().to(DTYPE).clamp(min=TINY)).requires_grad_(True)

    def tensors(self) -> list[torch.Tensor]:
        out = [t for row in self.layers for pair in row for t in pair if t is not None]
        return out + ([self.gamma] if self.gamma is not None else [])

    def multipliers(self) -> Multipliers:
        layers = []
        for row in self.layers:
            ms = []
            for log1, free in row:
                ms.append(torch.exp(log1) if free is None else torch.stack([torch.exp(log1), free], -1))
            layers.append(tuple(ms))
        return Multipliers(tuple(layers), None if self.gamma is None else torch.exp(self.gamma))


def descend(net: Chain | Dag, start: Multipliers, norm: float = 2, *, iterations: int = 300, lr: float = 0.05,
            check_every: int = 25, patience: int = 3, deadline: float | None = None) -> tuple[Multipliers, float]:
    """(multipliers, certified value): the best certificate met on the way, `start` included.
    Stops after `patience` checks in a row without a gain of 1e-6 (relative)."""
    best_mult, best = start, certify(net, start, norm).value
    if not math.isfinite(best):
        return best_mult, best
    params = _Params(start, norm)
    tensors = params.tensors()
    if not tensors:
        return best_mult, best
    opt = torch.optim.Adam(tensors, lr=lr)
    saved = [t.detach().clone() for t in tensors]
    stale = 0
    for step in range(1, iterations + 1):
        if deadline is not None and time.monotonic() > deadline:
            break
        value = _objective(net, params.multipliers(), norm)
        if value is None or not bool(torch.isfinite(value)):
            with torch.no_grad():                        # left the domain: back, with smaller steps
                for t, s in zip(tensors, saved):
                    t.copy_(s)
            for group in opt.param_groups:
                group["lr"] *= 0.5
            continue
        saved = [t.detach().clone() for t in tensors]
        opt.zero_grad()
        value.backward()
        opt.step()
        if step % check_every == 0 or step == iterations:
            with torch.no_grad():
                mult = params.multipliers()
            got = certify(net, mult, norm).value
            stale = 0 if got < best * (1 - 1e-6) else stale + 1
            if got < best:
                best_mult, best = mult, got
            if stale >= patience:
                break
    return best_mult, best


__all__ = ["descend"]
