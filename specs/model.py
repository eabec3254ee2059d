"""Parsed form of a VNN-COMP property.

VNN-LIB assertions describe the *unsafe* set.  A property is violated ("sat")
iff some case has an input ``x`` inside its box and one of its polytopes holds
for ``y = f(x)``.  A polytope is a conjunction of rows ``C @ y <= d``; a
polytope with zero rows has no output condition, so every point of its box is
a counterexample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SpecShapeError


def _frozen_array(value: object, ndim: int, what: str) -> np.ndarray:
    # Copy so that later edits of the caller's array cannot change a frozen spec.
    arr = np.array(value, dtype=np.float64, copy=True)
    if arr.ndim != ndim:
        raise SpecShapeError(f"{what} must be {ndim}-D, got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Polytope:
    """One unsafe output region: all rows of ``C @ y <= d`` hold."""

    C: np.ndarray  # (rows, n_outputs) float64
    d: np.ndarray  # (rows,) float64

    def __post_init__(self) -> None:
        C = _frozen_array(self.C, 2, "Polytope.C")
        d = _frozen_array(self.d, 1, "Polytope.d")
        if C.shape[0] != d.shape[0]:
            raise SpecShapeError(
                f"Polytope has {C.shape[0]} rows in C but {d.shape[0]} entries in d"
            )
        object.__setattr__(self, "C", C)
        object.__setattr__(self, "d", d)

    @property
    def n_rows(self) -> int:
        return int(self.C.shape[0])

    def holds(self, y: np.ndarray, tol: float = 0.0) -> bool:
        """True iff every row satisfies ``C @ y <= d + tol`` (NaN never holds)."""
        if self.C.shape[0] == 0:
            return True
        return bool(np.all(self.C @ y <= self.d + tol))


@dataclass(frozen=True, eq=False)
class SpecCase:
    """One input box with the unsafe polytopes that apply to it."""

    lower: np.ndarray  # (n_inputs,)
    upper: np.ndarray  # (n_inputs,)
    polytopes: tuple[Polytope, ...]

    def __post_init__(self) -> None:
        lower = _frozen_array(self.lower, 1, "SpecCase.lower")
        upper = _frozen_array(self.upper, 1, "SpecCase.upper")
        if lower.shape != upper.shape:
            raise SpecShapeError(
                f"SpecCase bounds differ in length: lower {lower.shape[0]}, upper {upper.shape[0]}"
            )
        polytopes = tuple(self.polytopes)
        widths = {p.C.shape[1] for p in polytopes}
        if len(widths) > 1:
            raise SpecShapeError(f"SpecCase polytopes have different output widths {sorted(widths)}")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "polytopes", polytopes)

    def stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All rows at once: ``C`` (R, n_out), ``d`` (R,), ``group`` (R,) polytope index.

        Zero-row polytopes contribute no rows, so their index never appears in
        ``group``; callers that care must look at ``polytopes`` directly.
        """
        if not self.polytopes:
            return np.zeros((0, 0)), np.zeros(0), np.zeros(0, dtype=np.int64)
        C = np.concatenate([p.C for p in self.polytopes], axis=0)
        d = np.concatenate([p.d for p in self.polytopes])
        group = np.repeat(
            np.arange(len(self.polytopes), dtype=np.int64),
            [p.C.shape[0] for p in self.polytopes],
        )
        return C, d, group

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        """True iff ``lower - tol <= x <= upper + tol`` elementwise."""
        return bool(np.all(x >= self.lower - tol) and np.all(x <= self.upper + tol))


@dataclass(frozen=True, eq=False)
class Spec:
    """A whole property: a disjunction of cases over ``n_inputs`` -> ``n_outputs``.

    ``cases`` may be empty when the assertions are unsatisfiable on their own
    (e.g. a constant ``false``); such a property can never be violated.
    """

    n_inputs: int
    n_outputs: int
    cases: tuple[SpecCase, ...]
    source: str | None = None

    def __post_init__(self) -> None:
        cases = tuple(self.cases)
        for k, case in enumerate(cases):
            if case.lower.shape[0] != self.n_inputs:
                raise SpecShapeError(
                    f"case {k} has {case.lower.shape[0]} input bounds, spec has {self.n_inputs} inputs"
                )
            for p in case.polytopes:
                if p.C.shape[1] != self.n_outputs:
                    raise SpecShapeError(
                        f"case {k} has a polytope over {p.C.shape[1]} outputs, "
                        f"spec has {self.n_outputs} outputs"
                    )
        object.__setattr__(self, "cases", cases)

    def check_shapes(self, n_inputs: int, n_outputs: int) -> None:
        """Raise SpecShapeError unless the network has the spec's variable counts."""
        problems = []
        if n_inputs != self.n_inputs:
            problems.append(
                f"the spec declares {self.n_inputs} inputs (X_0..X_{self.n_inputs - 1}) "
                f"but the network has {n_inputs}"
            )
        if n_outputs != self.n_outputs:
            problems.append(
                f"the spec declares {self.n_outputs} outputs (Y_0..Y_{self.n_outputs - 1}) "
                f"but the network has {n_outputs}"
            )
        if problems:
            where = f"{self.source}: " if self.source else ""
            raise SpecShapeError(where + "; ".join(problems))

    def is_violated_by(self, x: np.ndarray, y: np.ndarray, tol: float = 1e-4) -> bool:
        """True iff ``x`` lies in some case box and ``y`` satisfies one of its polytopes.

        Both tests are relaxed by ``tol`` so that a counterexample found in float32
        still counts; NaNs in ``y`` never count as a violation.
        """
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.n_inputs or y.shape[0] != self.n_outputs:
            raise SpecShapeError(
                f"point has {x.shape[0]} inputs and {y.shape[0]} outputs, "
                f"spec has {self.n_inputs} and {self.n_outputs}"
            )
        for case in self.cases:
            if case.contains(x, tol) and any(p.holds(y, tol) for p in case.polytopes):
                return True
        return False
