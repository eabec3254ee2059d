"""Counterexample blocks: exact format and lossless round trip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from specs import SpecError, SpecParseError, format_witness, parse_witness


def test_format_matches_vnncomp_layout() -> None:
    text = format_witness(np.array([0.1, -0.25]), np.array([1.5]))
    assert text == "((X_0 0.1)\n (X_1 -0.25)\n (Y_0 1.5))"


def test_format_flattens_and_keeps_full_precision() -> None:
    x = np.array([[1 / 3]], dtype=np.float64)
    y = np.array([np.float32(0.1)], dtype=np.float32)
    text = format_witness(x, y)
    assert f"(X_0 {1 / 3!r})" in text
    assert f"(Y_0 {float(np.float32(0.1))!r})" in text


def test_format_rejects_non_finite() -> None:
    with pytest.raises(SpecError, match="Y_0 is nan"):
        format_witness(np.zeros(1), np.array([np.nan]))


@pytest.mark.parametrize(
    "text",
    [
        "((X_0 0.1)\n (X_1 -0.25)\n (Y_0 1.5))",
        "sat\n((X_0 0.1)\n (X_1 -0.25)\n (Y_0 1.5))\n",
        "sat\r\n(\r\n(X_0 0.1)\r\n(X_1 -0.25)\r\n(Y_0 1.5)\r\n)\r\n",
        "sat\n(X_0 0.1)\n(X_1 -0.25)\n(Y_0 1.5)\n",  # some tools omit the outer parens
        "((Y_0 1.5) (X_1 -0.25) (X_0 1e-1))",  # any order
    ],
)
def test_parse_accepts_common_layouts(text: str) -> None:
    x, y = parse_witness(text)
    assert x.tolist() == [0.1, -0.25] and y.tolist() == [1.5]
    assert x.dtype == np.float64


@pytest.mark.parametrize(
    "text, match",
    [
        ("((X_0 0.1) (Y_0 abc))", "expected a number"),
        ("((X_0 0.1) (Y_0 1)", "expected '\\(' or '\\)'"),
        ("((X_0 0.1) (Z_0 1))", "expected a variable"),
        ("((X_0 0.1) (X_0 0.2) (Y_0 1))", "X_0 is repeated"),
        ("((X_0 0.1))", "at least one \\(Y_0"),
        ("((X_0 0.1) (Y_0 1)) extra", "expected end of input"),
        ("unsat", "expected end of input"),
    ],
)
def test_parse_errors(text: str, match: str) -> None:
    with pytest.raises(SpecParseError, match=match):
        parse_witness(text)


def test_parse_missing_index() -> None:
    with pytest.raises(SpecError, match="no value for X_1"):
        parse_witness("((X_0 1) (X_2 1) (Y_0 1))")


finite = st.floats(allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=20), st.lists(finite, min_size=1, max_size=12), st.booleans())
def test_round_trip_is_exact(xs: list[float], ys: list[float], with_sat: bool) -> None:
    text = format_witness(np.array(xs), np.array(ys))
    if with_sat:
        text = "sat\n" + text + "\n"
    x, y = parse_witness(text)
    np.testing.assert_array_equal(x, np.array(xs))
    np.testing.assert_array_equal(y, np.array(ys))
    # -0.0 survives as well
    assert [np.signbit(v) for v in x] == [np.signbit(v) for v in xs]
