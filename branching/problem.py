"""A Spec as batched tensors: what branch-and-bound and the verifier bound and check."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from bounds.types import Interval
from specs import Spec

#: a row refutes only with a certified margin above this float32 allowance, relative to the
#: magnitudes involved: REFUTE_SLACK * (1 + |d| + |lower bound|). It makes the answer hold for
#: the model as onnxruntime runs it in float32 too, and covers float32 bounds' own rounding
REFUTE_SLACK = 1e-6
#: the allowance when the property is judged on the network in exact arithmetic and the bounds
#: are float64: it only covers their own rounding (unit roundoff 1.1e-16, six orders below)
EXACT_SLACK = 1e-10


def round_outward(values, direction: int) -> torch.Tensor:
    """float64 bounds -> float32 rounded outward (down for lower, up for upper), so the float32
    box always contains the spec's box."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    v32 = values.astype(np.float32)
    if direction < 0:
        bad = v32.astype(np.float64) > values
        v32[bad] = np.nextafter(v32[bad], np.float32(-np.inf))
    else:
        bad = v32.astype(np.float64) < values
        v32[bad] = np.nextafter(v32[bad], np.float32(np.inf))
    return torch.from_numpy(v32)


def certified_margin(row_lower: torch.Tensor, d: torch.Tensor, slack: float = REFUTE_SLACK) -> torch.Tensor:
    """lower(C·y) - d, reduced by the rounding allowance `slack` (relative); > 0 proves the row."""
    return row_lower - d - slack * (1 + d.abs() + row_lower.abs())


@dataclass(frozen=True)
class SpecTensors:
    """K cases (input boxes), each with up to P polytopes made of up to R rows in total.

    A case's polytope p is refuted (safe) when some row r of it has lower(C_r·y) > d_r.
    Padding rows have group -1; padding polytopes count as refuted. A polytope without rows
    holds everywhere, so it is never refuted and every point of its box violates it.
    """

    lower: torch.Tensor       # (K, *input_shape)
    upper: torch.Tensor       # (K, *input_shape)
    C: torch.Tensor           # (K, R, n_outputs), zero on padding rows
    d: torch.Tensor           # (K, R)
    group: torch.Tensor       # (K, R) long, polytope index of each row, -1 on padding
    onehot: torch.Tensor      # (K, R, P) float, row -> polytope membership
    real: torch.Tensor        # (K, P) bool, polytope exists in this case
    slack: float = REFUTE_SLACK   # relative rounding allowance of every refutation

    @staticmethod
    def from_spec(spec: Spec, input_shape: tuple[int, ...], device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, slack: float = REFUTE_SLACK) -> "SpecTensors":
        K = len(spec.cases)
        stacked = [case.stacked() for case in spec.cases]
        R = max([1] + [len(s[1]) for s in stacked])
        P = max([1] + [len(case.polytopes) for case in spec.cases])
        C = torch.zeros(K, R, spec.n_outputs, dtype=torch.float64)
        d = torch.zeros(K, R, dtype=torch.float64)
        group = torch.full((K, R), -1, dtype=torch.long)
        real = torch.zeros(K, P, dtype=torch.bool)
        for k, (rows, rhs, grp) in enumerate(stacked):
            n = len(rhs)
            C[k, :n] = torch.tensor(rows)
            d[k, :n] = torch.tensor(rhs)
            group[k, :n] = torch.tensor(grp)
            real[k, : len(spec.cases[k].polytopes)] = True
        onehot = torch.zeros(K, R, P, dtype=dtype)
        valid = group >= 0
        onehot[valid.nonzero(as_tuple=True) + (group[valid],)] = 1.0
        if dtype == torch.float32:
            lower = torch.stack([round_outward(c.lower, -1) for c in spec.cases]).reshape(K, *input_shape)
            upper = torch.stack([round_outward(c.upper, +1) for c in spec.cases]).reshape(K, *input_shape)
        else:
            lower = torch.stack([torch.tensor(c.lower) for c in spec.cases]).reshape(K, *input_shape)
            upper = torch.stack([torch.tensor(c.upper) for c in spec.cases]).reshape(K, *input_shape)
        to = dict(device=device, dtype=dtype)
        return SpecTensors(lower.to(**to), upper.to(**to), C.to(**to), d.to(**to), group.to(device),
                           onehot.to(device), real.to(device), slack)

    @property
    def n_cases(self) -> int:
        return self.C.shape[0]

    def open_part(self, refuted: torch.Tensor) -> tuple["SpecTensors", torch.Tensor]:
        """The same cases with the polytopes in `refuted` (K, P) dropped, and the rows kept.

        A polytope refuted on a whole box stays refuted on every part of it, so a search over
        sub-boxes or neuron splits only needs the open ones' rows: bounding costs grow with the
        row count. Returns the smaller problem and, per case, the old index of each new row
        (K, R'); padding rows point at row 0 and carry zero coefficients.
        """
        K, R = self.group.shape
        closed = refuted | ~self.real
        keep = (self.group >= 0) & ~closed.gather(1, self.group.clamp(min=0))
        width = max(1, int(keep.sum(1).max()))
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
        valid = keep.gather(1, order)
        rows = torch.where(valid, order, torch.zeros_like(order))
        n_out, P = self.C.shape[2], self.onehot.shape[2]
        C = self.C.gather(1, rows.unsqueeze(-1).expand(K, width, n_out)) * valid.unsqueeze(-1).to(self.C.dtype)
        d = torch.where(valid, self.d.gather(1, rows), torch.zeros_like(rows, dtype=self.d.dtype))
        group = torch.where(valid, self.group.gather(1, rows), torch.full_like(rows, -1))
        onehot = self.onehot.gather(1, rows.unsqueeze(-1).expand(K, width, P)) * valid.unsqueeze(-1).to(self.onehot.dtype)
        return SpecTensors(self.lower, self.upper, C, d, group, onehot, self.real & ~closed, self.slack), rows

    @staticmethod
    def take_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Select rows (K, R') along dimension 1 of a per-row tensor (K or 1, R, ...)."""
        K, width = rows.shape
        t = t.expand(K, *t.shape[1:]) if t.shape[0] == 1 else t
        index = rows.reshape(K, width, *([1] * (t.dim() - 2))).expand(K, width, *t.shape[2:])
        return t.gather(1, index)

    def refuted(self, case: torch.Tensor, row_lower: torch.Tensor) -> torch.Tensor:
        """(N, P) bool: polytope proven unreachable, from lower bounds of C·y (N, R)."""
        proven = (certified_margin(row_lower, self.d[case], self.slack) > 0) & (self.group[case] >= 0)
        hits = torch.einsum("nr,nrp->np", proven.to(self.onehot.dtype), self.onehot[case])
        return (hits > 0) | ~self.real[case]

    def margins(self, case: torch.Tensor, row_lower: torch.Tensor) -> torch.Tensor:
        """(N,) the worst polytope's best row margin; > 0 means the domain is verified."""
        margin = certified_margin(row_lower, self.d[case], self.slack).unsqueeze(-1)
        member = self.onehot[case] > 0
        best = torch.where(member, margin, torch.full_like(margin, -torch.inf)).amax(1)  # (N, P)
        best = torch.where(self.real[case], best, torch.full_like(best, torch.inf))
        return best.amin(1)

    def violated(self, case: torch.Tensor, y: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
        """(N,) bool: some polytope of the case holds at outputs y (N, n_outputs)."""
        values = torch.einsum("nro,no->nr", self.C[case], y.reshape(y.shape[0], -1)) - self.d[case]
        bad = (values > tol) & (self.group[case] >= 0)
        broken = torch.einsum("nr,nrp->np", bad.to(self.onehot.dtype), self.onehot[case]) > 0
        return (~broken & self.real[case]).any(1)

    def violation_loss(self, case: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) differentiable: min over polytopes of the max row value; <= 0 means violated."""
        values = torch.einsum("nro,no->nr", self.C[case], y.reshape(y.shape[0], -1)) - self.d[case]
        member = self.onehot[case] > 0
        worst = torch.where(member, values.unsqueeze(-1), torch.full_like(member, -torch.inf, dtype=values.dtype)).amax(1)
        empty = ~member.any(1)
        worst = torch.where(empty & self.real[case], torch.full_like(worst, -1.0), worst)
        worst = torch.where(self.real[case], worst, torch.full_like(worst, torch.inf))
        return worst.amin(1)


@dataclass(frozen=True)
class PolytopeSplit:
    """One case per (case, polytope) still open, holding only that polytope's rows.

    A polytope is refuted by a bound on one of its own rows, so the polytopes of a case can
    be searched apart: each sub-problem then splits only for the row it needs, and bounds
    as few rows as that polytope has (on a 10-class robustness spec, one row instead of up
    to nine). `case_of` (K',) is each new case's original case, `row_of` (K', R') each new
    row's original row, -1 on padding.
    """

    problem: SpecTensors
    case_of: torch.Tensor
    row_of: torch.Tensor
    original_cases: int
    original_rows: int

    @staticmethod
    def of(problem: SpecTensors, root_lower: torch.Tensor | None = None) -> "PolytopeSplit":
        """Split `problem`; polytopes that `root_lower` (K, R) already refutes are left out."""
        K = problem.n_cases
        device = problem.C.device
        all_cases = torch.arange(K, device=device)
        closed = problem.refuted(all_cases, root_lower) if root_lower is not None else ~problem.real
        pairs = (problem.real & ~closed).nonzero().tolist()
        rows = [(problem.group[k] == p).nonzero().flatten() for k, p in pairs]
        width = max([1] + [len(r) for r in rows])
        index = torch.full((len(pairs), width), -1, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            index[i, :len(r)] = r
        case_of = torch.tensor([k for k, _ in pairs], dtype=torch.long, device=device)
        pad = index < 0
        safe = index.clamp(min=0)
        C = problem.C[case_of.unsqueeze(1), safe] * (~pad).unsqueeze(-1).to(problem.C.dtype)
        d = torch.where(pad, torch.zeros_like(safe, dtype=problem.d.dtype), problem.d[case_of.unsqueeze(1), safe])
        group = torch.where(pad, torch.full_like(safe, -1), torch.zeros_like(safe))
        onehot = (~pad).to(problem.onehot.dtype).unsqueeze(-1)
        real = torch.ones(len(pairs), 1, dtype=torch.bool, device=device)
        sub = SpecTensors(problem.lower[case_of], problem.upper[case_of], C, d, group, onehot, real, problem.slack)
        return PolytopeSplit(sub, case_of, index, K, problem.C.shape[1])

    def carry(self, bounds: dict[str, Interval] | None, per_row: dict[str, torch.Tensor] | None,
              falsify: Callable | None) -> tuple[dict[str, Interval] | None, dict[str, torch.Tensor], Callable | None]:
        """A search's root inputs moved onto the split problem: intervals (see `intervals`),
        per-row warm starts (see `per_row`) and the attack callback (see `falsifier`)."""
        return self.intervals(bounds), self.per_row(per_row), self.falsifier(falsify)

    def intervals(self, bounds: dict[str, Interval] | None) -> dict[str, Interval] | None:
        """Intervals valid on each original case's box (batch 1 or K) -> batch K'."""
        K = self.original_cases
        return {k: Interval(v.lower.expand(K, *v.lower.shape[1:])[self.case_of],
                            v.upper.expand(K, *v.upper.shape[1:])[self.case_of])
                for k, v in (bounds or {}).items()} or None

    def per_row(self, tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Per-case, per-row tensors (K|1, R, ...) -> (K', R', ...); others are dropped."""
        out = {}
        for k, t in (tensors or {}).items():
            if t.dim() < 2 or t.shape[1] != self.original_rows or t.shape[0] not in (1, self.original_cases):
                continue
            t = t.expand(self.original_cases, *t.shape[1:])
            out[k] = t[self.case_of.unsqueeze(1), self.row_of.clamp(min=0)]
        return out

    def falsifier(self, falsify: Callable | None) -> Callable | None:
        """An attack on original cases, called with new case numbers (it returns original ones)."""
        if falsify is None:
            return None
        case_of = self.case_of

        def on_split(points: torch.Tensor, cases: torch.Tensor):
            return falsify(points, case_of[cases])
        return on_split
