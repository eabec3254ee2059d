"""VNN-COMP scoring: each answer against truth.csv, counterexamples replayed in onnxruntime.

Rules (2023 on, see ../shared/reference/VNNCOMP.md): a correct `sat` or `unsat` scores +10,
a wrong one -150; a `sat` whose counterexample does not replay (or is missing) counts as
wrong. A counterexample that replays proves `sat` whatever truth.csv says (such a row is
flagged: the truth file would be wrong). A verdict with no ground truth and no contradiction
scores +10 as in the competition, but is reported as `unconfirmed`. Times under 1 s count as
1 s. The 2026 preset also turns a verdict given after the time limit into a timeout; the 2022
preset has -100 for a wrong answer and does not check counterexamples.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.results import Row, match_key
from benchmarks.suite import Instance

log = logging.getLogger(__name__)

#: tolerance of the competition's checker on inputs and output constraints
WITNESS_TOL = 1e-4
#: a verdict this long after the limit counts as late under the 2026 rules
LATE_TOL_S = 1.0


@dataclass(frozen=True)
class ScoreRules:
    correct: float = 10.0
    wrong: float = -150.0
    check_witness: bool = True     # sat needs a counterexample that replays
    late_is_timeout: bool = False  # a verdict after the limit (+ LATE_TOL_S) counts as a timeout


RULES = {
    "2022": ScoreRules(wrong=-100.0, check_witness=False),
    "2023": ScoreRules(),
    "2026": ScoreRules(late_is_timeout=True),
}


@dataclass(frozen=True)
class Scored:
    """One row judged: status is correct / wrong / unconfirmed / invalid-witness / none."""

    row: Row
    word: str                      # the result word after the late rule
    expected: str                  # "sat" / "unsat" / ""
    status: str
    points: float
    witness_ok: bool | None = None  # None: not checked
    note: str = ""

    @property
    def solved(self) -> bool:
        return self.status in ("correct", "unconfirmed")


@dataclass
class SuiteScore:
    category: str
    scored: list[Scored] = field(default_factory=list)

    def count(self, **where: Any) -> int:
        return sum(all(getattr(s, k) == v for k, v in where.items()) for s in self.scored)

    @property
    def score(self) -> float:
        return sum(s.points for s in self.scored)

    @property
    def solved_times(self) -> list[float]:
        """Times of the solved instances, under 1 s counted as 1 s (the competition's totals)."""
        return sorted(max(1.0, s.row.run_time) for s in self.scored if s.solved)

    @property
    def raw_solved_times(self) -> list[float]:
        return sorted(s.row.run_time for s in self.scored if s.solved)


class WitnessChecker:
    """Replays counterexample files through onnxruntime; keeps one session per network."""

    def __init__(self) -> None:
        self._references: dict[Path, Any] = {}

    def check(self, witness: Path, onnx: Path, vnnlib: Path) -> tuple[bool, str]:
        """(valid, why): X inside a box of the property (+-1e-4) and onnxruntime's outputs on X
        inside one of its output polytopes (+-1e-4)."""
        import numpy as np

        from specs import SpecError, parse_vnnlib, parse_witness
        from verifier.replay import OnnxReference

        try:
            text = witness.read_text()
            if not text.strip() or text.split()[0].lower() != "sat":
                return False, "the counterexample file does not start with sat"
            x, y_claimed = parse_witness(text, str(witness))
            spec = parse_vnnlib(vnnlib)
        except (OSError, SpecError) as exc:
            return False, f"unreadable counterexample or property: {exc}"
        if x.shape[0] != spec.n_inputs:
            return False, f"the counterexample has {x.shape[0]} inputs, the property {spec.n_inputs}"
        if onnx not in self._references:
            self._references[onnx] = OnnxReference(onnx)
        try:
            y = self._references[onnx].outputs(x.reshape(1, -1))[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exceptions
            return False, f"onnxruntime failed on the counterexample: {exc}"
        if y.shape[0] != spec.n_outputs:
            return False, f"the network gives {y.shape[0]} outputs, the property has {spec.n_outputs}"
        if not spec.is_violated_by(x, y, tol=WITNESS_TOL):
            return False, "the counterexample does not violate the property when replayed in onnxruntime"
        note = ""
        if y_claimed.shape == y.shape and not np.allclose(y_claimed, y, rtol=1e-3, atol=WITNESS_TOL):
            note = f" (the file's Y differs from onnxruntime's by up to {np.abs(y_claimed - y).max():.3g})"
        return True, "replayed in onnxruntime" + note


def instance_index(instances: list[Instance]) -> dict[tuple[str, str], Instance]:
    """Instances by file names (no folders, no .gz), to match rows of any tool's CSV."""
    return {match_key(i.onnx, i.vnnlib): i for i in instances}


def score_row(row: Row, inst: Instance | None, rules: ScoreRules, checker: WitnessChecker | None,
              base: Path | None) -> Scored:
    """Judge one row. `inst` gives truth and files (None: neither known); `base` is the folder
    the row's witness path is relative to (None: the row has no witness column, another tool)."""
    expected = inst.expected if inst is not None else row.expected
    word = row.result
    note = ""
    if rules.late_is_timeout and word in ("sat", "unsat") and row.timeout and row.run_time > row.timeout + LATE_TOL_S:
        word, note = "timeout", f"verdict {row.result} after the limit"
    if word not in ("sat", "unsat"):
        return Scored(row, word, expected, "none", 0.0, note=note)
    witness_ok = None
    if word == "sat" and rules.check_witness and base is not None:
        if not row.witness:
            witness_ok, note = False, "sat without a counterexample file"
        elif inst is None or checker is None:
            note = "counterexample not checked (instance files unknown)"
        else:
            witness_ok, note = checker.check(base / row.witness, inst.onnx_path, inst.vnnlib_path)
        if witness_ok is False:
            return Scored(row, word, expected, "invalid-witness", rules.wrong, False, note)
        if witness_ok and expected == "unsat":
            return Scored(row, word, expected, "correct", rules.correct, True,
                          "counterexample replays although truth.csv says unsat: " + note)
    if expected in ("sat", "unsat"):
        status = "correct" if word == expected else "wrong"
        return Scored(row, word, expected, status, rules.correct if status == "correct" else rules.wrong,
                      witness_ok, note)
    return Scored(row, word, expected, "unconfirmed", rules.correct, witness_ok, note)


def score_rows(rows: list[Row], instances: list[Instance], rules: ScoreRules | None = None,
               base: Path | None = None, checker: WitnessChecker | None = None) -> dict[str, SuiteScore]:
    """Score rows per category (suite). Rows of instances that are not among `instances` are
    scored without truth when `instances` is empty, and left out otherwise."""
    rules = rules or RULES["2023"]
    checker = checker if checker is not None else (WitnessChecker() if rules.check_witness and base else None)
    index = instance_index(instances)
    by_key = {i.key: i for i in instances}
    suites: dict[str, SuiteScore] = {}
    for row in rows:
        inst = by_key.get(row.key) or index.get(match_key(row.onnx, row.vnnlib))
        if inst is None and instances:
            continue
        category = inst.category if inst is not None else row.category
        suites.setdefault(category, SuiteScore(category)).scored.append(score_row(row, inst, rules, checker, base))
    return suites
