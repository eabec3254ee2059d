"""Every property file of the shared VNN-COMP suites parses to a sane Spec."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from specs import parse_vnnlib

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SUITES = SHARED / "benchmarks"

pytestmark = pytest.mark.slow

# Independent, deliberately naive reading of the one-bound-per-line form.
_SIMPLE_BOUND = re.compile(r"^\(assert \((<=|>=) X_(\d+) (\S+)\)\)", re.MULTILINE)


def _files() -> list[Path]:
    if not SUITES.is_dir():
        return []
    return sorted(p for p in SUITES.glob("*/vnnlib/*") if p.name.endswith((".vnnlib", ".vnnlib.gz")))


def _text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode()


def _naive_box(matches: list[tuple[str, str, str]], n: int) -> tuple[np.ndarray, np.ndarray]:
    ops, idx, val = (np.array(column) for column in zip(*matches))
    idx, val, upper = idx.astype(int), val.astype(float), ops == "<="
    lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
    np.maximum.at(lo, idx[~upper], val[~upper])
    np.minimum.at(hi, idx[upper], val[upper])
    return lo, hi


def _skip_without_shared() -> None:
    if not _files():
        pytest.skip(f"shared benchmarks not available at {SUITES}")


def _check_sane(spec) -> None:
    assert spec.n_inputs > 0 and spec.n_outputs > 0
    assert spec.cases, "no cases"
    for case in spec.cases:
        assert np.all(np.isfinite(case.lower)) and np.all(np.isfinite(case.upper))
        assert np.all(case.lower <= case.upper)
        assert case.polytopes
        for p in case.polytopes:
            assert p.n_rows > 0 and p.C.shape[1] == spec.n_outputs
            assert np.all(np.isfinite(p.C)) and np.all(np.isfinite(p.d))
            assert np.all(np.any(p.C != 0, axis=1))


def _check_against_naive_reading(spec, path: Path) -> None:
    text = _text(path)
    assert spec.n_inputs == len(re.findall(r"\(declare-const X_\d+ Real\)", text))
    assert spec.n_outputs == len(re.findall(r"\(declare-const Y_\d+ Real\)", text))
    matches = _SIMPLE_BOUND.findall(text)
    if matches and len(spec.cases) == 1:
        naive_lo, naive_hi = _naive_box(matches, spec.n_inputs)
        np.testing.assert_array_equal(spec.cases[0].lower, naive_lo)
        np.testing.assert_array_equal(spec.cases[0].upper, naive_hi)


NAIVE_PER_SUITE = 8  # the naive cross-check costs more than parsing; sample it


def test_every_shared_property_parses_sanely() -> None:
    _skip_without_shared()
    failures = []
    checked: dict[str, int] = {}
    for path in _files():
        suite = path.parent.parent.name
        try:
            spec = parse_vnnlib(path)
            _check_sane(spec)
            if checked.get(suite, 0) < NAIVE_PER_SUITE:
                checked[suite] = checked.get(suite, 0) + 1
                _check_against_naive_reading(spec, path)
        except Exception as exc:  # collect all, report together
            failures.append(f"{path.relative_to(SUITES)}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


def test_acasxu_disjunctive_properties() -> None:
    _skip_without_shared()
    folder = SUITES / "acasxu" / "vnnlib"
    prop6 = parse_vnnlib(folder / "prop_6.vnnlib")
    assert len(prop6.cases) == 2
    for case in prop6.cases:  # "Y_0 is not minimal": 4 single-row alternatives per box
        assert [p.n_rows for p in case.polytopes] == [1, 1, 1, 1]
    np.testing.assert_array_equal(prop6.cases[0].upper[1], 0.499999896)
    np.testing.assert_array_equal(prop6.cases[1].upper[1], -0.11140846)

    prop7 = parse_vnnlib(folder / "prop_7.vnnlib")
    (case,) = prop7.cases
    assert [p.n_rows for p in case.polytopes] == [3, 3]  # Y_3 minimal or Y_4 minimal
    C, d, group = case.stacked()
    np.testing.assert_array_equal(C[:3, 3], [1, 1, 1])
    np.testing.assert_array_equal(C[3:, 4], [1, 1, 1])
    assert group.tolist() == [0, 0, 0, 1, 1, 1]

    prop1 = parse_vnnlib(folder / "prop_1.vnnlib")
    (case,) = prop1.cases
    assert len(case.polytopes) == 1
    np.testing.assert_array_equal(case.polytopes[0].C, [[-1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(case.polytopes[0].d, [-3.991125645861615])


def test_mnist_fc_shape() -> None:
    _skip_without_shared()
    files = sorted((SUITES / "mnist_fc" / "vnnlib").glob("*.vnnlib*"))
    assert files
    for path in files:
        spec = parse_vnnlib(path)
        assert (spec.n_inputs, spec.n_outputs) == (784, 10)
        (case,) = spec.cases
        assert [p.n_rows for p in case.polytopes] == [1] * 9
        C, _, _ = case.stacked()
        label = int(np.flatnonzero(C.sum(axis=0) == 9)[0])  # the label column has +1 in every row
        assert f"label: {label}." in _text(path)
