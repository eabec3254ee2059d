"""Our own LipSDP solver: a primal barrier (interior-point) method on the low-rank LMI.

    minimise  t * cost'y - logdet N(y) - sum_{positive} log y_j     for t = t0, 10 t0, ...

N(y) = -M(y) is assembled from the directions of formulations.py. Why this scales where
generic SDP solvers do not: there is no dual matrix variable, the number of unknowns is the
number of multipliers (about one per neuron), and gradient and Hessian come in closed form
from X = N^{-1}:

    d/dy_j  (-logdet N) = sum_{r in j} c_r d_r'X d_r
    d2/dy_j dy_k        = sum_{r in j, s in k} c_r c_s (d_r'X d_s)^2

so one damped Newton step costs one Cholesky of N (per block-diagonal component: MaxMin /
GroupSort chains decouple layer by layer) plus small products of the directions. The gap
after centring at t is at most m/t (m = barrier dimension), so the loop stops with a
relative optimality gap below `tol`. Whatever the loop returns, the caller certifies the
multipliers independently (certify.py); the solver's own value is never reported.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from bounds.lipschitz.chain import DTYPE
from bounds.lipschitz.formulations import Problem, assemble

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SolverOptions:
    tol: float = 1e-6             # relative duality gap at which the barrier loop stops
    t_factor: float = 10.0        # barrier parameter growth per stage
    max_newton: int = 60          # Newton steps per stage
    deadline: float | None = None  # time.monotonic() value; the best feasible point so far is returned


@dataclass
class SolveReport:
    y: torch.Tensor
    objective: float              # cost'y of the returned point (scaled units)
    gap: float                    # the m/t gap bound of the last completed stage (inf if none)
    newton_steps: int
    stages: int
    timed_out: bool
    centred: bool = True          # every stage reached its central point (else `gap` is no bound)
    history: list[tuple[float, float]] = field(default_factory=list)   # (seconds, objective)
    iterates: list[torch.Tensor] = field(default_factory=list)         # y at the end of each stage


def _components(problem: Problem) -> list[tuple[int, int]]:
    """Row ranges of the diagonal blocks of N that no direction couples to each other."""
    n_blocks = len(problem.sizes)
    joined = [False] * n_blocks                # joined[b]: block b is coupled with block b - 1
    for at in problem.atoms:
        if at.W is not None:
            for b in range(at.first + 1, at.block):   # W'CW couples every block W reads (skips)
                joined[b] = True
            if at.couples:
                joined[at.block] = True
    for b in range(problem.const_src + 1, n_blocks) if problem.const_src >= 0 else ():
        joined[b] = True                       # an output reading several blocks couples them
    off = problem.offsets
    comps, start = [], 0
    for b in range(1, n_blocks):
        if not joined[b]:
            comps.append((off[start], off[b]))
            start = b
    comps.append((off[start], off[-1]))
    return comps


class _Barrier:
    def __init__(self, problem: Problem) -> None:
        self.p = problem
        self.comps = _components(problem)
        off = problem.offsets
        self.rows = [(off[a.first], off[a.block + 1]) for a in problem.atoms]
        self.Ut = [a.U.t().coalesce() for a in problem.atoms]
        self.comp_of_row = torch.zeros(off[-1], dtype=torch.int64)
        for k, (a, b) in enumerate(self.comps):
            self.comp_of_row[a:b] = k
        self.atom_comps = [set(self.comp_of_row[a:b].tolist()) for a, b in self.rows]
        # columns of X that can be nonzero next to an atom set's rows: its components' span
        self.cols = [(min(self.comps[k][0] for k in cs), max(self.comps[k][1] for k in cs)) for cs in self.atom_comps]
        self.uniq = [torch.unique(a.var, return_inverse=True) for a in problem.atoms]
        # half-bandwidth of the Hessian: variables of atom sets whose rows share a component
        # (the objective's variables come first and are eliminated separately: `head`)
        self.head = int(problem.objective_vars.numel())
        band = 0
        for ia, (ua, _) in enumerate(self.uniq[1:], start=1):
            for ib, (ub, _) in enumerate(self.uniq[1:], start=1):
                if self.atom_comps[ia] & self.atom_comps[ib]:
                    band = max(band, int(ub.max()) - int(ua.min()))
        self.band = band
        self.pos = problem.positive
        self.m = off[-1] + int(problem.positive.sum())
        self.last_value = math.inf     # barrier value at the point of the last derivatives() call

    def logdet(self, y: torch.Tensor, with_inverse: bool = False):
        if bool((y[self.pos] <= 0).any()):
            return None
        N = assemble(self.p, y)
        X = torch.zeros_like(N) if with_inverse else None
        total = 0.0
        for a, b in self.comps:
            L, info = torch.linalg.cholesky_ex(N[a:b, a:b])
            if int(info) != 0:
                return None
            total += 2.0 * float(torch.log(torch.diagonal(L)).sum())
            if with_inverse:
                X[a:b, a:b] = torch.cholesky_inverse(L)
        return (total, X) if with_inverse else total

    def value(self, y: torch.Tensor, t: float) -> float:
        ld = self.logdet(y)
        if ld is None:
            return math.inf
        return t * float(self.p.cost @ y) - ld - float(torch.log(y[self.pos]).sum())

    def _factor_rows(self, A, X: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
        """F_A' X[:, c0:c1]: rows z (W times the previous block) then h (this block)."""
        return _factor_rows_impl(A, X, self.p.offsets, c0, c1)

    @staticmethod
    def _factor_cols(B, left: torch.Tensor, c0: int, off: list[int]) -> torch.Tensor:
        """left F_B, where left holds columns c0.. of some F' X (zero outside them)."""
        width = left.shape[1]

        def cols(lo: int, hi: int, size: int) -> torch.Tensor:
            out = torch.zeros(left.shape[0], size, dtype=DTYPE)
            s0, s1 = max(lo, c0), min(hi, c0 + width)
            if s1 > s0:
                out[:, s0 - lo:s1 - lo] = left[:, s0 - c0:s1 - c0]
            return out

        b0, b1 = off[B.block], off[B.block + 1]
        hpart = cols(b0, b1, b1 - b0)
        if B.W is None:
            return hpart
        a0, a1 = off[B.first], off[B.block]
        return torch.cat([cols(a0, a1, a1 - a0) @ B.W.T, hpart], 1)

    def derivatives(self, y: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.p
        V = p.n_vars
        logdet, X = self.logdet(y, with_inverse=True)
        self.last_value = t * float(p.cost @ y) - logdet - float(torch.log(y[self.pos]).sum())
        g = t * p.cost.clone()
        H = torch.zeros(V, V, dtype=DTYPE)
        inv = torch.zeros_like(y)
        inv[self.pos] = 1.0 / y[self.pos]
        g -= inv
        H.diagonal().add_(inv ** 2)
        off = p.offsets
        for ia, A in enumerate(p.atoms):
            c0, c1 = self.cols[ia]
            left = self._factor_rows(A, X, c0, c1)                 # F_a' X[:, c0:c1]
            ua, inv_a = self.uniq[ia]
            for ib in range(ia, len(p.atoms)):
                if not self.atom_comps[ia] & self.atom_comps[ib]:
                    continue
                B = p.atoms[ib]
                GF = self._factor_cols(B, left, c0, off)            # F_a' X F_b  (n_factors_a, n_factors_b)
                # D_a' X D_b = U_a' GF U_b, with U sparse
                G = torch.sparse.mm(self.Ut[ia], torch.sparse.mm(self.Ut[ib], GF.T).T)
                if ib == ia:
                    g.index_add_(0, A.var, A.coef * torch.diagonal(G))
                vals = (A.coef[:, None] * B.coef[None, :]) * G * G
                ub, inv_b = self.uniq[ib]
                tmp = torch.zeros(len(ua), vals.shape[1], dtype=DTYPE).index_add_(0, inv_a, vals)
                blk = torch.zeros(len(ua), len(ub), dtype=DTYPE).index_add_(1, inv_b, tmp)
                H[ua[:, None], ub[None, :]] += blk
                if ib != ia:
                    H[ub[:, None], ua[None, :]] += blk.T
        return g, H


def _factor_rows_impl(A, X: torch.Tensor, off: list[int], c0: int, c1: int) -> torch.Tensor:
    b0, b1 = off[A.block], off[A.block + 1]
    hpart = X[b0:b1, c0:c1]
    if A.W is None:
        return hpart
    a0, a1 = off[A.first], off[A.block]
    return torch.cat([A.W @ X[a0:a1, c0:c1], hpart], 0)


def _band_matrix(A, d, lo: int, band: int):
    """A[lo:, lo:] scaled by d, in scipy's upper banded storage."""
    import numpy as np

    n = A.shape[0] - lo
    ab = np.zeros((band + 1, n))
    dn = d[lo:]
    for k in range(band + 1):                           # ab[band - k, j] = A[j - k, j]
        ab[band - k, k:] = np.diagonal(A[lo:, lo:], k) * dn[:n - k] * dn[k:]
    return ab


def _newton_direction(g: torch.Tensor, H: torch.Tensor, band: int | None = None, head: int = 0) -> torch.Tensor:
    """-H^{-1} g, with H scaled to a unit diagonal first: multipliers of inactive constraints
    shrink like 1/t and their barrier terms make H badly scaled (but not badly conditioned).

    Chains of MaxMin / GroupSort layers give an arrow-shaped H: the first `head` variables
    (rho or gamma) are dense, the rest is banded with half-bandwidth `band` (a layer's
    multipliers meet only the neighbouring layers'). Then the band is eliminated first."""
    n = H.shape[0]
    d = H.diagonal().clamp(min=1e-300).rsqrt()
    gs = g * d
    tail = n - head
    if band is not None and tail > 200 and band < tail // 4:
        import numpy as np
        import scipy.linalg

        A, dn, gn = H.numpy(), d.numpy(), gs.numpy()
        try:
            ab = _band_matrix(A, dn, head, band)
            Bt = A[head:, :head] * dn[head:, None] * dn[None, :head]          # (tail, head)
            sol = scipy.linalg.solveh_banded(ab, np.concatenate([gn[head:, None], Bt], 1))
            if head:
                Ahh = A[:head, :head] * dn[:head, None] * dn[None, :head]
                S = Ahh - Bt.T @ sol[:, 1:]
                rhs = gn[:head] - Bt.T @ sol[:, 0]
                x = scipy.linalg.solve(S, rhs, assume_a="pos")
                y = sol[:, 0] - sol[:, 1:] @ x
                out = np.concatenate([x, y])
            else:
                out = sol[:, 0]
            return -torch.from_numpy(out) * d
        except (np.linalg.LinAlgError, ValueError):
            pass
    H = (H + H.T) / 2
    Hs = H * d[:, None] * d[None, :]
    eye = torch.eye(n, dtype=DTYPE)
    for jitter in (0.0, 1e-14, 1e-12, 1e-10, 1e-8):
        L, info = torch.linalg.cholesky_ex(Hs + jitter * eye)
        if int(info) == 0:
            return -torch.cholesky_solve(gs[:, None], L)[:, 0] * d
    return -torch.linalg.lstsq(Hs, gs[:, None]).solution[:, 0] * d


def solve(problem: Problem, y0: torch.Tensor, options: SolverOptions = SolverOptions()) -> SolveReport:
    """Barrier path from the strictly feasible y0 (see initial_point)."""
    bar = _Barrier(problem)
    y = y0.clone()
    if bar.logdet(y) is None:
        raise ValueError("the starting point is not strictly feasible")
    start = time.monotonic()
    obj = float(problem.cost @ y)
    t = _best_start(bar, y, bar.m / max(obj, 1e-12))
    factor = 2.0
    steps = stages = 0
    gap = math.inf
    history = [(0.0, obj)]
    iterates = [y.clone()]
    timed_out = False
    centred = True
    while True:
        stage_steps = 0
        stage_centred = False
        for _ in range(options.max_newton):
            if options.deadline is not None and time.monotonic() > options.deadline:
                timed_out = True
                break
            g, H = bar.derivatives(y, t)
            dy = _newton_direction(g, H, bar.band, bar.head)
            decrement = float(-(g @ dy))
            steps += 1
            stage_steps += 1
            if decrement / 2 < 1e-9:
                stage_centred = True
                break
            f0, s = bar.last_value, 1.0
            while s > 1e-12:
                f1 = bar.value(y + s * dy, t)
                if f1 <= f0 - 0.1 * s * decrement:
                    break
                s *= 0.5
            if s <= 1e-12:
                stage_centred = True
                break  # no progress possible at this t: treat as centred
            y = y + s * dy
        if timed_out:
            iterates.append(y.clone())   # feasible (every accepted step is): certify what we have
            break
        stages += 1
        centred &= stage_centred
        previous = obj
        obj = float(problem.cost @ y)
        gap = bar.m / t
        history.append((time.monotonic() - start, obj))
        iterates.append(y.clone())
        log.debug("stage %d: t=%.3g objective %.10g gap<=%.3g (%d Newton steps)", stages, t, obj, gap, steps)
        if gap <= options.tol * max(obj, 1e-300):
            break
        # the objective converges geometrically along the path: stop once what is left
        # (extrapolated from the last decrease) is far below the tolerance
        if stages > 2 and 0 <= previous - obj <= 0.1 * options.tol * abs(obj):
            break
        # long steps in t stall in a slow drift on these problems; grow the step only while
        # stages stay cheap
        factor = min(factor * 1.5, options.t_factor) if stage_steps <= 4 else 2.0
        t_new = t * factor
        y = _predict(bar, y, t, t_new, H)
        t = t_new
    if not centred:
        log.info("barrier path left the central path (a stage used all %d Newton steps): no gap bound",
                 options.max_newton)
        gap = math.inf
    return SolveReport(y, float(problem.cost @ y), gap, steps, stages, timed_out, centred, history, iterates)


def _best_start(bar: _Barrier, y: torch.Tensor, fallback: float) -> float:
    """The t at which y is closest to the central path (smallest Newton decrement)."""
    g, H = bar.derivatives(y, 0.0)              # gradient of the barrier alone
    u = -_newton_direction(bar.p.cost, H, bar.band, bar.head)   # H^{-1} c
    cu = float(bar.p.cost @ u)
    t = -float(g @ u) / cu if cu > 0 else fallback
    return t if math.isfinite(t) and t > 0 else fallback


def _predict(bar: _Barrier, y: torch.Tensor, t: float, t_new: float, H: torch.Tensor) -> torch.Tensor:
    """Follow the tangent of the central path (t c + grad B(y(t)) = 0, so dy/dt = -H^{-1} c)
    towards t_new, as far as it lowers the new barrier function: it saves most of the
    damped Newton steps a cold re-centring costs. H: the barrier's Hessian at (or next to) y."""
    d = _newton_direction(bar.p.cost, H, bar.band, bar.head)   # = -H^{-1} c
    f0 = bar.value(y, t_new)
    step = t_new - t
    best, f_best = y, f0
    while step > (t_new - t) * 1e-6:
        cand = y + step * d
        f1 = bar.value(cand, t_new)
        if f1 < f_best:
            best, f_best = cand, f1
            break
        step *= 0.5
    return best


def initial_point(problem: Problem, margin: float = 1.5) -> torch.Tensor:
    """A strictly feasible point: one scalar per layer for all positive multipliers, free
    ones 0, chosen from the last layer backwards so that every Schur complement of N is
    positive definite; then rho (or every gamma) above what the input block needs.

    E is what is left of N on a window of blocks [lo, i] once the layers after i are
    eliminated (blocks i-1, i for a chain; wider where a layer reads earlier blocks)."""
    y = torch.zeros(problem.n_vars, dtype=DTYPE)
    atoms = problem.atoms
    n_layers = len(atoms) - 1
    off = problem.offsets
    unit = problem.positive.to(DTYPE)
    lo = n_layers if problem.const_src < 0 else problem.const_src
    E = -problem.const                         # N on blocks lo..l before any multiplier
    for i in range(n_layers, 0, -1):
        at = atoms[i]
        ll, lh, hh = (-m for m in at.blocks(unit))
        if at.first < lo:                      # widen the window to the blocks layer i reads
            pad = off[lo] - off[at.first]
            E = torch.nn.functional.pad(E, (pad, 0, pad, 0))
            lo = at.first
        a = off[i] - off[lo]                   # block i starts at row a of the window
        r = off[at.first] - off[lo]            # (always 0: the window starts at the earliest read)
        d = hh.diagonal().clamp(min=1e-300).rsqrt()
        need = float(torch.linalg.eigvalsh(-(E[a:, a:] * d[:, None] * d[None, :]))[-1])
        tau = max(margin * need, 1e-3)
        y[at.var[problem.positive[at.var]]] = tau
        S = E[a:, a:] + tau * hh                  # Schur complement of block i, > 0
        L = torch.linalg.cholesky(S)
        cross = E[:a, a:].clone()
        cross[r:] += tau * lh
        Y = torch.linalg.solve_triangular(L, cross.T, upper=False)
        E = E[:a, :a].clone()
        E[r:, r:] += tau * ll
        E = E - Y.T @ Y                           # blocks lo..i-1 before their own multipliers
    if lo > 0:
        E = torch.zeros(off[1], off[1], dtype=DTYPE)
    need = float(torch.linalg.eigvalsh(-E)[-1])
    y[problem.objective_vars] = max(margin * need, 1e-3)
    return y


__all__ = ["SolverOptions", "SolveReport", "solve", "initial_point"]
