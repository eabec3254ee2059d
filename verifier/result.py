"""What a verification run answers: the verdict, why, and the counterexample if there is one.

Only the standard library and numpy are imported here, so that the command line can report
a timeout before the heavy modules have finished loading.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Outcome(enum.Enum):
    SAT = "sat"          # a counterexample exists (and was replayed)
    UNSAT = "unsat"      # the property holds on every input box
    UNKNOWN = "unknown"  # neither proved nor falsified with the effort spent
    TIMEOUT = "timeout"  # the time limit ran out before a verdict
    ERROR = "error"      # the run could not be done (bad model, bad spec, internal failure)

    @property
    def word(self) -> str:
        """The VNN-COMP result word."""
        return self.value

    @property
    def is_verdict(self) -> bool:
        return self in (Outcome.SAT, Outcome.UNSAT)


_STAGE_LABELS = {"sampling": "sampling", "pgd": "PGD", "crown": "CROWN", "ibp": "IBP"}


def _flat(values: Any) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.array(values, dtype=np.float64).reshape(-1)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Result:
    """The answer of one run.

    outcome      the verdict
    time_s       wall-clock seconds the run took
    witness_x    the counterexample's input (flat, C order) when sat, else None
    witness_y    the network's output on witness_x, as replayed (flat) when sat, else None
    message      a plain-English sentence saying why (what was proved, what stayed open)
    stage        the stage that decided: "sampling", "pgd", "crown", "ibp" ("" if none did)
    best_bound   unsat/unknown: the smallest certified margin over all cases (> 0 proves the
                 property; for a case, the margin of a polytope is the largest certified
                 lower bound of C_i·y - d_i over its rows, and a case counts its weakest
                 polytope); sat: the violation C_i·y - d_i of the witness (<= 0)
    instance     a short name of the instance for summaries ("net prop")
    details      extra machine-readable facts (per-stage timings, counts, ...)
    """

    outcome: Outcome
    time_s: float = 0.0
    witness_x: np.ndarray | None = None
    witness_y: np.ndarray | None = None
    message: str = ""
    stage: str = ""
    best_bound: float | None = None
    instance: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "witness_x", _flat(self.witness_x))
        object.__setattr__(self, "witness_y", _flat(self.witness_y))
        if self.outcome is Outcome.SAT and (self.witness_x is None or self.witness_y is None):
            raise ValueError("a sat Result needs witness_x and witness_y")

    @property
    def word(self) -> str:
        return self.outcome.word

    # ------------------------------------------------------------------------------------
    def to_vnncomp(self) -> str:
        """The VNN-COMP result file: the word, then after `sat` the witness (full precision)."""
        if self.outcome is Outcome.SAT:
            from specs import format_witness  # only needed for sat; keeps this module light

            return f"sat\n{format_witness(self.witness_x, self.witness_y)}\n"
        return f"{self.word}\n"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict: result, time_s, stage, message, best_bound, witness, ..."""
        witness = None
        if self.witness_x is not None and self.witness_y is not None:
            witness = {"x": self.witness_x.tolist(), "y": self.witness_y.tolist()}
        return {
            "result": self.word,
            "instance": self.instance,
            "time_s": round(float(self.time_s), 6),
            "stage": self.stage,
            "message": self.message,
            "best_bound": None if self.best_bound is None or not math.isfinite(self.best_bound)
            else float(self.best_bound),
            "witness": witness,
            "details": _jsonable(self.details),
        }

    def summary(self) -> str:
        """One line for humans, e.g. `unsat    net prop_1  0.42 s  (CROWN, min margin 0.013)`."""
        head = f"{self.word:<8} {self.instance}  " if self.instance else f"{self.word:<8} "
        why = self._why()
        if self.details.get("exact_arithmetic_refutes"):
            why += "; refuted in exact arithmetic: see --arithmetic exact"
        return f"{head}{self.time_s:.2f} s  ({why})"

    def _why(self) -> str:
        label = _STAGE_LABELS.get(self.stage, self.stage)
        bound = "" if self.best_bound is None else f"{self.best_bound:.4g}"
        if self.outcome is Outcome.UNSAT:
            return f"{label}, min margin {bound}" if bound else label
        if self.outcome is Outcome.SAT:
            where = self.details.get("violated")
            at = f" at case {where['case']} polytope {where['polytope']}" if isinstance(where, dict) else ""
            return f"{label}, violation {bound}{at}" if bound else f"{label}{at}"
        if self.outcome is Outcome.UNKNOWN:
            near = self.details.get("attack_best_loss")
            attack = f"attack within {near:.4g}" if isinstance(near, (int, float)) and math.isfinite(near) \
                else "no counterexample"
            return f"{label} min margin {bound}, {attack}" if bound else f"no bounds, {attack}"
        if self.outcome is Outcome.TIMEOUT:
            during = self.details.get("during")
            if during:
                return f"time limit reached during {during}"
            return self.message or "time limit reached"
        first = self.message.splitlines()[0] if self.message else "failed"
        return f"error: {first}"

    # ------------------------------------------------------------------------------------
    @staticmethod
    def error(message: str, time_s: float = 0.0, instance: str = "", **details: Any) -> "Result":
        return Result(Outcome.ERROR, time_s=time_s, message=message, instance=instance, details=details)

    @staticmethod
    def timeout(time_s: float, instance: str = "", during: str = "", message: str = "") -> "Result":
        msg = message or (f"the time limit ran out during {during}" if during else "the time limit ran out")
        return Result(Outcome.TIMEOUT, time_s=time_s, message=msg, instance=instance,
                      details={"during": during} if during else {})


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
