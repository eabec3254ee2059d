"""Real VNN-COMP instances from ../shared/benchmarks: no verdict may contradict truth.csv, and
every `sat` must replay in onnxruntime the way the competition checker replays it.

Sample rule (fixed, not hand-picked): per suite, of the truth.csv rows whose `expected` is
sat or unsat, the first, middle and last of the sat rows and of the unsat rows, i.e. 3 + 3
rows spread evenly over the file order (fewer when a suite has fewer).
"""
from __future__ import annotations

import csv
import gzip
import time
from pathlib import Path

import numpy as np
import pytest

from specs import parse_vnnlib, parse_witness
from verifier import AttackOptions, Outcome, VerifyOptions, verify

BENCHMARKS = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
SUITES = ("acasxu", "mnist_fc")
PER_VERDICT = 3
TIMEOUT_S = 20.0
OPTIONS = VerifyOptions(timeout=TIMEOUT_S, attack=AttackOptions(max_seconds=3.0))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not BENCHMARKS.is_dir(), reason=f"no shared benchmarks at {BENCHMARKS}")]


def _evenly(rows: list[dict], k: int) -> list[dict]:
    if len(rows) <= k:
        return rows
    return [rows[round(i * (len(rows) - 1) / (k - 1))] for i in range(k)]


def _sample() -> list[tuple[str, dict]]:
    picked = []
    for suite in SUITES:
        truth = BENCHMARKS / suite / "truth.csv"
        if not truth.is_file():
            continue
        with truth.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        for verdict in ("sat", "unsat"):
            picked += [(suite, r) for r in _evenly([r for r in rows if r["expected"] == verdict], PER_VERDICT)]
    return picked


def _ort_outputs(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    data = model.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    return np.asarray(sess.run(None, {inp.name: x.astype(np.float32).reshape(shape)})[0], dtype=np.float64).reshape(-1)


@pytest.mark.parametrize("suite,row", _sample(),
                         ids=lambda v: v if isinstance(v, str) else f"{Path(v['onnx']).name}:{Path(v['vnnlib']).name}")
def test_no_contradiction_and_sat_replays(suite: str, row: dict, record_property) -> None:
    folder = BENCHMARKS / suite
    model, spec_path = folder / row["onnx"], folder / row["vnnlib"]
    start = time.monotonic()
    result = verify(model, spec_path, options=OPTIONS)
    record_property("seconds", round(time.monotonic() - start, 3))
    record_property("result", result.word)
    assert result.outcome in (Outcome.SAT, Outcome.UNSAT, Outcome.UNKNOWN, Outcome.TIMEOUT), result.message
    if result.outcome.is_verdict:
        assert result.word == row["expected"], f"{result.summary()} contradicts truth.csv ({row['confidence']})"
    if result.outcome is Outcome.SAT:
        x, _ = parse_witness(result.to_vnncomp())
        y = _ort_outputs(model, x)
        assert parse_vnnlib(spec_path).is_violated_by(x, y, tol=1e-4), "the witness does not replay in onnxruntime"
