"""Falsification: look for an input in a case box whose output lies in one of its polytopes.

Every (case, polytope) pair with at least one row is a *target*. The violation loss of a
point for a target is max_i (C_i·y - d_i) over the polytope's rows: the point violates the
property when it is <= 0. All targets are attacked in one batch: first cheap sampling
(box centre, random vertices, uniform points), then PGD (signed gradient steps, projected
back onto the box, step size decaying geometrically, several restarts per target).

Results are candidates only: nothing here claims `sat`; see verifier.replay.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from bounds.graph.interpret import run
from bounds.graph.ir import Graph
from verifier.deadline import Deadline
from verifier.options import AttackOptions

log = logging.getLogger(__name__)

#: most points the sampling stage evaluates over all boxes together
_MAX_SAMPLES_TOTAL = 1 << 16


@dataclass(frozen=True, eq=False)
class Targets:
    """The targets of an attack, batched. P targets, R = most rows of any of them."""

    lower: torch.Tensor     # (P, n_in) box of each target's case
    upper: torch.Tensor     # (P, n_in)
    C: torch.Tensor         # (P, R, n_out), padded rows are zero
    d: torch.Tensor         # (P, R)
    valid: torch.Tensor     # (P, R) bool, False on padded rows
    case: tuple[int, ...]       # spec case index of each target
    polytope: tuple[int, ...]   # polytope index within that case

    @property
    def count(self) -> int:
        return len(self.case)

    def subset(self, index: list[int]) -> "Targets":
        sel = torch.as_tensor(index, dtype=torch.long, device=self.C.device)
        return Targets(self.lower[sel], self.upper[sel], self.C[sel], self.d[sel], self.valid[sel],
                       tuple(self.case[i] for i in index), tuple(self.polytope[i] for i in index))


@dataclass(frozen=True, eq=False)
class Candidate:
    """A point the attack believes violates the property (not yet replayed)."""

    x: np.ndarray   # (n_in,) float64
    y: np.ndarray   # (n_out,) float64, as computed by the graph
    case: int
    polytope: int
    loss: float     # max_i C_i·y - d_i, <= 0
    stage: str      # "sampling" or "pgd"


@dataclass(frozen=True, eq=False)
class AttackResult:
    candidates: list[Candidate]   # violating points, most violated first, at most one per target
    best_x: torch.Tensor          # (P, n_in) the lowest-loss point seen per target
    best_loss: torch.Tensor       # (P,)
    timed_out: bool = False

    @property
    def found(self) -> bool:
        return bool(self.candidates)


def build_targets(cases: list[tuple[int, np.ndarray, np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]],
                  device: torch.device | str, dtype: torch.dtype = torch.float32) -> Targets:
    """Targets from [(case_index, lower, upper, [(polytope_index, C, d), ...]), ...].

    Polytopes without rows are not targets (every point of their box violates; the caller
    handles them).
    """
    rows: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for k, lower, upper, polys in cases:
        for p, C, d in polys:
            if C.shape[0]:
                rows.append((k, p, lower, upper, C, d))
    if not rows:
        raise ValueError("build_targets: no polytope with rows")
    n_in = rows[0][2].shape[0]
    n_out = rows[0][4].shape[1]
    P, R = len(rows), max(r[4].shape[0] for r in rows)
    C = np.zeros((P, R, n_out))
    d = np.zeros((P, R))
    valid = np.zeros((P, R), dtype=bool)
    lower = np.zeros((P, n_in))
    upper = np.zeros((P, n_in))
    for i, (_, _, lo, up, Ci, di) in enumerate(rows):
        n = Ci.shape[0]
        C[i, :n], d[i, :n], valid[i, :n] = Ci, di, True
        lower[i], upper[i] = lo, up

    def t(a: np.ndarray, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dt, device=device)

    return Targets(t(lower), t(upper), t(C), t(d), t(valid, torch.bool),
                   tuple(r[0] for r in rows), tuple(r[1] for r in rows))


def violation_loss(y: torch.Tensor, targets: Targets, which: torch.Tensor) -> torch.Tensor:
    """max over the rows of target which[n] of C·y[n] - d: (N, n_out) -> (N,); <= 0 violates."""
    C, d, valid = targets.C[which], targets.d[which], targets.valid[which]
    values = torch.einsum("nro,no->nr", C, y) - d
    return values.masked_fill(~valid, -math.inf).amax(-1)


def forward(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """The flat first output for flat inputs: (N, n_in) -> (N, n_out)."""
    return run(graph, x.reshape(x.shape[0], *graph.input.shape)).reshape(x.shape[0], -1)


def _uniform(lower: torch.Tensor, upper: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points in each box: (K, n_in) boxes -> (K, n, n_in)."""
    u = torch.rand((lower.shape[0], n, lower.shape[1]), generator=gen, dtype=torch.float64)
    u = u.to(device=lower.device, dtype=lower.dtype)
    return lower.unsqueeze(1) + u * (upper - lower).unsqueeze(1)


def _sample_points(lower: torch.Tensor, upper: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Centre, random vertices (a quarter), and uniform points of each box: (K, n, n_in)."""
    pts = _uniform(lower, upper, n, gen)
    n_vertices = n // 4
    if n_vertices:
        bits = torch.rand((lower.shape[0], n_vertices, lower.shape[1]), generator=gen) < 0.5
        bits = bits.to(lower.device)
        pts[:, 1:1 + n_vertices] = torch.where(bits, upper.unsqueeze(1), lower.unsqueeze(1))
    pts[:, 0] = (lower + upper) / 2
    return pts


class _Best:
    """Running record of the lowest loss per target and the violating points seen."""

    def __init__(self, targets: Targets, start_x: torch.Tensor | None = None,
                 start_loss: torch.Tensor | None = None) -> None:
        P = targets.count
        self.targets = targets
        self.loss = start_loss.clone() if start_loss is not None else \
            torch.full((P,), math.inf, dtype=targets.C.dtype, device=targets.C.device)
        self.x = start_x.clone() if start_x is not None else (targets.lower + targets.upper) / 2
        self.hits: dict[int, Candidate] = {}

    def update(self, x: torch.Tensor, y: torch.Tensor, loss: torch.Tensor, which: torch.Tensor, stage: str) -> None:
        """x (N, n_in), y (N, n_out), loss (N,), which (N,) target index of each point."""
        loss = torch.nan_to_num(loss.detach(), nan=math.inf)
        P = self.targets.count
        # lowest loss per target among these points
        best = torch.full((P,), math.inf, dtype=loss.dtype, device=loss.device).scatter_reduce(
            0, which, loss, reduce="amin")
        improved = best < self.loss
        if improved.any():
            # index of a point achieving the per-target minimum
            is_min = loss == best[which]
            order = torch.arange(loss.shape[0], device=loss.device)
            pick = torch.full((P,), -1, dtype=torch.long, device=loss.device).scatter_reduce(
                0, which[is_min], order[is_min], reduce="amax")
            for p in improved.nonzero().flatten().tolist():
                i = int(pick[p])
                self.loss[p] = loss[i]
                self.x[p] = x[i].detach()
                if loss[i] <= 0:
                    self.hits[p] = Candidate(
                        x=x[i].detach().double().cpu().numpy(), y=y[i].detach().double().cpu().numpy(),
                        case=self.targets.case[p], polytope=self.targets.polytope[p],
                        loss=float(loss[i]), stage=stage)

    def result(self, timed_out: bool = False) -> AttackResult:
        cands = sorted(self.hits.values(), key=lambda c: c.loss)
        return AttackResult(cands, self.x, self.loss, timed_out)


def random_search(graph: Graph, targets: Targets, n: int, gen: torch.Generator, deadline: Deadline,
                  batch_size: int = 2048) -> AttackResult:
    """Evaluate n points per distinct case box (shared by that case's targets)."""
    cases = sorted(set(targets.case))
    first = {k: targets.case.index(k) for k in cases}
    lower = targets.lower[[first[k] for k in cases]]
    upper = targets.upper[[first[k] for k in cases]]
    n = max(1, min(n, _MAX_SAMPLES_TOTAL // max(1, len(cases))))
    best = _Best(targets)
    pos = {k: i for i, k in enumerate(cases)}
    target_pos = torch.as_tensor([pos[k] for k in targets.case], device=targets.C.device)
    with torch.no_grad():
        pts = _sample_points(lower, upper, n, gen)            # (K, n, n_in)
        flat = pts.reshape(-1, pts.shape[-1])
        for start in range(0, flat.shape[0], batch_size):
            if deadline.expired():
                return best.result(timed_out=True)
            x = flat[start:start + batch_size]
            y = forward(graph, x)
            box = torch.arange(start, start + x.shape[0], device=x.device) // n   # case position per point
            # every point is tried against every target of its case
            match = (box.unsqueeze(1) == target_pos.unsqueeze(0)).nonzero()      # (M, 2): point, target
            if match.numel() == 0:
                continue
            pi, ti = match[:, 0], match[:, 1]
            loss = violation_loss(y[pi], targets, ti)
            best.update(x[pi], y[pi], loss, ti, "sampling")
    return best.result()


def _step_sizes(opts: AttackOptions, scale: float = 1.0) -> list[float]:
    """Geometric decay from step_size * scale down to final_step_size."""
    steps = max(1, opts.pgd_steps)
    first = max(opts.final_step_size, opts.step_size * scale)
    if steps == 1:
        return [first]
    ratio = (opts.final_step_size / first) ** (1 / (steps - 1))
    return [first * ratio ** t for t in range(steps)]


#: first-step scale of successive PGD rounds: coarse, finer, finest, coarse again, ...
ROUND_SCALES = (1.0, 0.2, 0.04)


def pgd(graph: Graph, targets: Targets, opts: AttackOptions, gen: torch.Generator, deadline: Deadline,
        starts: torch.Tensor | None = None, stop_on_hit: bool = True, scale: float = 1.0,
        extra_starts: torch.Tensor | None = None) -> AttackResult:
    """One round of PGD: pgd_restarts starting points per target (restart 0 = `starts` when given,
    the next ones `extra_starts` (P, E, n_in) when given and there is room), first step
    step_size * scale (a fraction of each input's range).

    Stops as soon as some point violates (when stop_on_hit) or when the deadline expires.
    """
    P, R = targets.count, max(1, opts.pgd_restarts)
    best = _Best(targets)
    if P == 0 or opts.pgd_steps == 0:
        return best.result()
    alphas = _step_sizes(opts, scale)
    x0 = _uniform(targets.lower, targets.upper, R, gen)     # (P, R, n_in)
    if starts is not None:
        x0[:, 0] = starts
        if scale < 1 and R > 2:
            # fine rounds also search around the best point so far
            near = R // 2
            width = (targets.upper - targets.lower).unsqueeze(1)
            noise = torch.rand((P, near, x0.shape[-1]), generator=gen, dtype=torch.float64)
            noise = (noise.to(x0.device, x0.dtype) * 2 - 1) * (4 * alphas[0]) * width
            x0[:, 1:1 + near] = torch.minimum(torch.maximum(starts.unsqueeze(1) + noise, targets.lower.unsqueeze(1)),
                                              targets.upper.unsqueeze(1))
    if extra_starts is not None:
        room = min(extra_starts.shape[1], R - 1)
        x0[:, 1:1 + room] = extra_starts[:, :room].to(x0.dtype)
    which_all = torch.arange(P, device=x0.device).repeat_interleave(R)
    x_all = x0.reshape(P * R, -1)
    lo_all = targets.lower[which_all]
    hi_all = targets.upper[which_all]
    for start in range(0, P * R, opts.batch_size):
        sl = slice(start, start + opts.batch_size)
        x, which, lo, hi = x_all[sl].clone(), which_all[sl], lo_all[sl], hi_all[sl]
        width = hi - lo
        for alpha in alphas + [0.0]:                  # the last pass only evaluates
            if deadline.expired():
                return best.result(timed_out=True)
            x.requires_grad_(True)
            with torch.enable_grad():
                y = forward(graph, x)
                loss = violation_loss(y, targets, which)
                finite = torch.isfinite(loss)
                grad, = torch.autograd.grad(torch.where(finite, loss, 0).sum(), x, allow_unused=True)
            x = x.detach()
            best.update(x, y.detach(), loss.detach(), which, "pgd")
            if stop_on_hit and best.hits:
                return best.result()
            if alpha == 0.0 or grad is None:
                break
            direction = grad.sign()
            flat = direction.abs().sum(-1) == 0
            if flat.any():  # no gradient (dead ReLUs, plateaus): step in a random direction
                noise = torch.rand(direction.shape, generator=gen).to(direction.device) < 0.5
                direction[flat] = (noise.to(direction.dtype) * 2 - 1)[flat]
            x = torch.minimum(torch.maximum(x - alpha * width * direction, lo), hi)
    return best.result()
