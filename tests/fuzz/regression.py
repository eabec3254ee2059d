"""Shrinking failing fuzz cases and keeping them as regression files.

A regression is a pair in tests/fuzz/regressions/: NAME.onnx (the network, exported from
the IR) and NAME.json (the spec, the check that failed, the failure, the generator
parameters, and the counterexample that proved it when there was one). `replay` rebuilds
the case from the files alone, so later changes to the generator do not change it.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from specs import Polytope, Spec, SpecCase
from tests.fuzz.checks import CheckResult, Failure, run_check
from tests.fuzz.generators import CaseParams, FuzzCase, build_case, shrink_candidates
from tests.fuzz.oracles import Evidence, Witness, evaluate64, gather, graph64, spec_values

log = logging.getLogger(__name__)

REGRESSIONS = Path(__file__).resolve().parent / "regressions"


def fails_the_same(p: CaseParams, check: str, kind: str, seconds: float,
                   oracle: dict) -> tuple[FuzzCase, Evidence, Failure] | None:
    """The case of `p` if `check` still fails on it with a failure of `kind`."""
    try:
        fc = build_case(p)
    except Exception:  # noqa: BLE001 - a shrunk variant that cannot be built is just skipped
        return None
    ev = gather(fc.graph, fc.spec, p.seed, **oracle)
    res = run_check(check, fc, ev, p.seed, seconds)
    same = [f for f in res.failures if f.kind == kind]
    return (fc, ev, same[0]) if same else None


def shrink(p: CaseParams, failure: Failure, seconds: float = 3.0, oracle: dict | None = None,
           budget_s: float = 120.0) -> tuple[CaseParams, FuzzCase, Evidence, Failure] | None:
    """Greedy delta-debugging: take the first smaller variant that still fails the same way,
    until none does (or the time budget runs out). None if the failure does not reproduce."""
    oracle = oracle or {}
    start = time.monotonic()
    got = fails_the_same(p, failure.check, failure.kind, seconds, oracle)
    if got is None:
        return None
    best = (p, *got)
    progress = True
    while progress and time.monotonic() - start < budget_s:
        progress = False
        for cand in shrink_candidates(best[0]):
            got = fails_the_same(cand, failure.check, failure.kind, seconds, oracle)
            if got is not None:
                best = (cand, *got)
                progress = True
                break
    return best


def _spec_json(spec: Spec) -> list[dict]:
    return [{"lower": c.lower.tolist(), "upper": c.upper.tolist(),
             "polytopes": [{"C": p.C.tolist(), "d": p.d.tolist()} for p in c.polytopes]} for c in spec.cases]


def _spec_from_json(cases: list[dict], n_in: int, n_out: int, source: str) -> Spec:
    return Spec(n_in, n_out, tuple(SpecCase(np.array(c["lower"]), np.array(c["upper"]),
                                            tuple(Polytope(np.array(p["C"]).reshape(-1, n_out), np.array(p["d"]))
                                                  for p in c["polytopes"])) for c in cases), source=source)


def save(name: str, params: CaseParams, fc: FuzzCase, ev: Evidence, failure: Failure,
         directory: Path = REGRESSIONS) -> Path:
    """Write NAME.onnx and NAME.json; returns the JSON path."""
    import onnx

    from bounds.graph.onnx_export import to_onnx

    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(to_onnx(fc.graph, name), str(directory / f"{name}.onnx"))
    witness = None
    if ev.witness is not None and ev.witness.value <= 0:
        witness = {"case": ev.witness.case, "x": ev.witness.x.tolist(), "source": ev.witness.source}
    data = {"check": failure.check, "kind": failure.kind, "detail": failure.detail, "params": params.to_json(),
            "n_inputs": fc.spec.n_inputs, "n_outputs": fc.spec.n_outputs, "spec": _spec_json(fc.spec),
            "witness": witness, "found": time.strftime("%Y-%m-%d")}
    path = directory / f"{name}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def load(path: Path) -> tuple[dict, FuzzCase]:
    from bounds.graph.onnx_import import load_onnx

    data = json.loads(path.read_text())
    graph = load_onnx(path.with_suffix(".onnx"))
    spec = _spec_from_json(data["spec"], data["n_inputs"], data["n_outputs"], path.name)
    return data, FuzzCase(CaseParams.from_json(data["params"]), graph, spec)


def replay(path: Path, seconds: float = 3.0) -> CheckResult:
    """Run the saved check on the saved case, with fresh evidence plus the saved witness."""
    data, fc = load(path)
    ev = gather(fc.graph, fc.spec, fc.params.seed, milp_seconds=5.0)
    w = data.get("witness")
    if w is not None:
        x = np.asarray(w["x"], dtype=np.float64)
        value = float(spec_values(fc.spec.cases[w["case"]], evaluate64(graph64(fc.graph), x[None]))[0])
        if ev.witness is None or value < ev.witness.value:
            ev.witness = Witness(int(w["case"]), x, value, "saved")
    return run_check(data["check"], fc, ev, fc.params.seed, seconds)


def saved() -> list[Path]:
    return sorted(REGRESSIONS.glob("*.json")) if REGRESSIONS.is_dir() else []
