"""Accepted VNN-LIB forms: each snippet parses to the expected boxes and polytopes."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from specs import Spec, parse_vnnlib, parse_vnnlib_text

DECL = """
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
"""
BOX = """
(assert (<= X_0 1.0))
(assert (>= X_0 0.0))
(assert (<= X_1 2.0))
(assert (>= X_1 -2.0))
"""


def parse(body: str, decl: str = DECL) -> Spec:
    return parse_vnnlib_text(decl + body, source="t.vnnlib")


def polys(case) -> list[tuple[list[list[float]], list[float]]]:
    return [(p.C.tolist(), p.d.tolist()) for p in case.polytopes]


def test_simple_box_and_single_row() -> None:
    spec = parse(BOX + "(assert (<= Y_0 Y_1))")
    assert (spec.n_inputs, spec.n_outputs, spec.source) == (2, 3, "t.vnnlib")
    (case,) = spec.cases
    np.testing.assert_array_equal(case.lower, [0.0, -2.0])
    np.testing.assert_array_equal(case.upper, [1.0, 2.0])
    assert polys(case) == [([[1.0, -1.0, 0.0]], [0.0])]
    assert case.lower.dtype == np.float64


def test_top_level_conjunction_of_output_atoms_is_one_polytope() -> None:
    spec = parse(BOX + "(assert (<= Y_0 Y_1))\n(assert (>= Y_2 3))")
    assert polys(spec.cases[0]) == [([[1.0, -1.0, 0.0], [0.0, 0.0, -1.0]], [0.0, -3.0])]


def test_top_level_and_mixes_inputs_and_outputs() -> None:
    spec = parse("(assert (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0) (>= Y_0 0.5)))")
    (case,) = spec.cases
    np.testing.assert_array_equal(case.lower, [0, 0])
    np.testing.assert_array_equal(case.upper, [1, 1])
    assert polys(case) == [([[-1.0, 0.0, 0.0]], [-0.5])]


def test_constant_on_the_left_and_repeated_bounds_intersect() -> None:
    spec = parse(BOX + "(assert (<= 0.25 X_0))(assert (>= 0.5 X_0))(assert (<= X_0 0.75))(assert (<= Y_0 1))")
    np.testing.assert_array_equal(spec.cases[0].lower, [0.25, -2.0])
    np.testing.assert_array_equal(spec.cases[0].upper, [0.5, 2.0])


def test_strict_comparisons_are_non_strict() -> None:
    spec = parse("(assert (< X_0 1))(assert (> X_0 0))(assert (< X_1 1))(assert (> X_1 0))(assert (> Y_0 Y_2))")
    np.testing.assert_array_equal(spec.cases[0].upper, [1, 1])
    assert polys(spec.cases[0]) == [([[-1.0, 0.0, 1.0]], [0.0])]


@pytest.mark.parametrize(
    "text, value",
    [("1", 1.0), ("-3", -3.0), ("2.5e-3", 2.5e-3), ("-1.5E+2", -150.0), (".5", 0.5), ("7.", 7.0), ("+4", 4.0),
     ("0.029999999329447746", 0.029999999329447746), ("1e-300", 1e-300)],
)
def test_numbers(text: str, value: float) -> None:
    spec = parse(f"(assert (<= X_0 {text}))(assert (>= X_0 -1000))(assert (= X_1 0))(assert (<= Y_0 {text}))")
    assert spec.cases[0].upper[0] == value
    assert spec.cases[0].polytopes[0].d[0] == value


def test_output_disjunction_gives_one_polytope_per_term() -> None:
    spec = parse(BOX + "(assert (or (and (>= Y_0 Y_2)) (and (>= Y_1 Y_2))))")
    (case,) = spec.cases
    assert polys(case) == [([[-1.0, 0.0, 1.0]], [0.0]), ([[0.0, -1.0, 1.0]], [0.0])]
    C, d, group = case.stacked()
    assert C.shape == (2, 3) and d.tolist() == [0.0, 0.0] and group.tolist() == [0, 1]
    assert group.dtype == np.int64


def test_disjunction_of_polytopes_with_global_rows() -> None:
    spec = parse(BOX + "(assert (<= Y_2 10))(assert (or (and (<= Y_0 3) (>= Y_1 1)) (and (<= Y_1 Y_0) (<= Y_2 Y_0))))")
    (case,) = spec.cases
    assert polys(case) == [
        ([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], [10.0, 3.0, -1.0]),
        ([[0.0, 0.0, 1.0], [-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]], [10.0, 0.0, 0.0]),
    ]
    C, d, group = case.stacked()
    assert group.tolist() == [0, 0, 0, 1, 1, 1]


def test_two_output_disjunctions_multiply_out() -> None:
    spec = parse(BOX + "(assert (or (<= Y_0 0) (<= Y_1 0)))(assert (or (>= Y_2 1) (>= Y_2 2)))")
    rows = [(C, d) for C, d in polys(spec.cases[0])]
    assert len(rows) == 4
    assert rows[0] == ([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]], [0.0, -1.0])
    assert rows[3] == ([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0]], [0.0, -2.0])


def test_disjunction_of_input_boxes() -> None:
    spec = parse(
        "(assert (<= X_1 1))(assert (>= X_1 0))"
        "(assert (or (and (<= X_0 1) (>= X_0 0)) (and (<= X_0 3) (>= X_0 2))))"
        "(assert (or (and (<= Y_1 Y_0)) (and (<= Y_2 Y_0))))"
    )
    assert len(spec.cases) == 2
    np.testing.assert_array_equal(spec.cases[0].lower, [0, 0])
    np.testing.assert_array_equal(spec.cases[1].lower, [2, 0])
    np.testing.assert_array_equal(spec.cases[1].upper, [3, 1])
    for case in spec.cases:
        assert len(case.polytopes) == 2


def test_mixed_or_terms_pair_boxes_with_polytopes_and_merge_equal_boxes() -> None:
    spec = parse(
        "(assert (<= X_1 1))(assert (>= X_1 -1))"
        "(assert (or (and (<= X_0 1) (>= X_0 0) (<= Y_0 3))"
        "            (and (<= X_0 2) (>= X_0 1) (>= Y_0 5))"
        "            (and (>= X_0 0) (<= X_0 1) (>= Y_1 Y_0))))"
    )
    assert len(spec.cases) == 2
    first, second = spec.cases
    np.testing.assert_array_equal(first.lower, [0, -1])
    np.testing.assert_array_equal(first.upper, [1, 1])
    assert polys(first) == [([[1.0, 0.0, 0.0]], [3.0]), ([[1.0, -1.0, 0.0]], [0.0])]
    np.testing.assert_array_equal(second.lower, [1, -1])
    assert polys(second) == [([[-1.0, 0.0, 0.0]], [-5.0])]


def test_mixed_term_intersects_with_global_bounds() -> None:
    spec = parse(BOX + "(assert (or (and (<= X_0 0.5) (<= Y_0 0)) (and (>= X_1 1.5) (<= Y_1 0))))")
    first, second = spec.cases
    np.testing.assert_array_equal(first.upper, [0.5, 2.0])
    np.testing.assert_array_equal(first.lower, [0.0, -2.0])
    np.testing.assert_array_equal(second.lower, [0.0, 1.5])


def test_nested_and_or_of_any_depth() -> None:
    spec = parse(BOX + "(assert (and (or (and (or (<= Y_0 1) (<= Y_1 1))) (<= Y_2 1)) (and (and (>= Y_0 -1)))))")
    rows = polys(spec.cases[0])
    assert len(rows) == 3
    # Conjuncts without disjunction come first within a polytope.
    assert rows[2] == ([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], [1.0, 1.0])


def test_redundant_term_atoms_do_not_split_boxes() -> None:
    spec = parse(BOX + "(assert (or (and (<= X_0 1) (<= Y_0 0)) (and (>= X_0 0) (<= Y_1 0))))")
    assert len(spec.cases) == 1 and len(spec.cases[0].polytopes) == 2


def test_duplicate_polytopes_are_dropped() -> None:
    spec = parse(BOX + "(assert (or (<= Y_0 0) (<= Y_0 0) (>= 0 Y_0)))")
    assert len(spec.cases[0].polytopes) == 1


def test_linear_terms() -> None:
    spec = parse(
        BOX
        + "(assert (<= (+ Y_0 (* 2 Y_1) (- 3)) (- Y_2 1)))"
        + "(assert (>= (- Y_0) (* Y_1 -0.5 2)))"
        + "(assert (<= (- Y_0 Y_1 Y_2) (/ 3 2)))"
    )
    assert polys(spec.cases[0]) == [
        ([[1.0, 2.0, -1.0], [1.0, -1.0, 0.0], [1.0, -1.0, -1.0]], [2.0, 0.0, 1.5])
    ]


def test_scaled_input_bound_and_equality() -> None:
    spec = parse(
        "(assert (<= (* 2 X_0) 1))(assert (>= (- X_0) -4))(assert (= X_1 0.5))"
        "(assert (>= (+ X_0 1) 1))(assert (= Y_0 Y_1))"
    )
    (case,) = spec.cases
    np.testing.assert_array_equal(case.lower, [0.0, 0.5])
    np.testing.assert_array_equal(case.upper, [0.5, 0.5])
    assert polys(case) == [([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]], [0.0, 0.0])]


def test_chained_comparison() -> None:
    spec = parse("(assert (<= 0 X_0 1))(assert (<= -1 X_1 1))(assert (<= Y_0 Y_1 2))")
    np.testing.assert_array_equal(spec.cases[0].lower, [0, -1])
    assert polys(spec.cases[0]) == [([[1.0, -1.0, 0.0], [0.0, 1.0, 0.0]], [0.0, 2.0])]


def test_constant_atoms() -> None:
    true_spec = parse(BOX + "(assert (<= 1 2))(assert (<= Y_0 0))")
    assert len(true_spec.cases) == 1 and true_spec.cases[0].polytopes[0].n_rows == 1
    dropped = parse(BOX + "(assert (or (and (<= 2 1) (<= Y_0 0)) (<= Y_1 0)))")
    assert polys(dropped.cases[0]) == [([[0.0, 1.0, 0.0]], [0.0])]
    never = parse(BOX + "(assert (>= 0 1))(assert (<= Y_0 0))")
    assert never.cases == ()
    assert not never.is_violated_by(np.zeros(2), np.zeros(3))


def test_input_only_spec_has_unconstrained_polytope() -> None:
    spec = parse(BOX)
    (case,) = spec.cases
    assert [p.n_rows for p in case.polytopes] == [0]
    assert spec.is_violated_by(np.array([0.5, 0.0]), np.array([1e9, -1e9, 0.0]))


def test_comments_whitespace_crlf_and_glued_parens() -> None:
    text = (
        "; header comment (assert (<= X_0 -100))\r\n"
        "(declare-const X_0 Real)(declare-const Y_0 Real) ; trailing\r\n"
        "(declare-const\tY_1\n  Real )\r\n"
        "(assert(<= X_0 1))(assert (>=\n\tX_0\r\n 0));c\r\n"
        "(assert (or(and(<= Y_0 Y_1))(and (<= Y_1 Y_0)))); Mnist property\n"
        "(assert ( <= Y_0 5 ) )"
    )
    spec = parse_vnnlib_text(text)
    assert (spec.n_inputs, spec.n_outputs) == (1, 2)
    np.testing.assert_array_equal(spec.cases[0].lower, [0.0])
    np.testing.assert_array_equal(spec.cases[0].upper, [1.0])
    assert len(spec.cases[0].polytopes) == 2
    assert spec.cases[0].polytopes[0].n_rows == 2


def test_declare_fun_and_ignored_smtlib_commands() -> None:
    spec = parse_vnnlib_text(
        "(set-logic QF_LRA)(declare-fun X_0 () Real)(declare-fun Y_0 () Real)"
        "(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= Y_0 0))(check-sat)(exit)"
    )
    assert (spec.n_inputs, spec.n_outputs) == (1, 1)


def test_declarations_in_any_order() -> None:
    spec = parse_vnnlib_text(
        "(declare-const Y_1 Real)(declare-const X_1 Real)(declare-const Y_0 Real)(declare-const X_0 Real)"
        "(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_1 1))(assert (>= X_1 0))(assert (<= Y_1 0))"
    )
    assert (spec.n_inputs, spec.n_outputs) == (2, 2)
    assert polys(spec.cases[0]) == [([[0.0, 1.0]], [0.0])]


def test_utf8_bom_is_ignored() -> None:
    spec = parse_vnnlib_text(
        "\ufeff(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))"
    )
    assert spec.n_inputs == 1


def test_deep_nesting_needs_no_recursion() -> None:
    depth = 20_000
    formula = "(and " * depth + "(<= Y_0 1)" + ")" * depth
    spec = parse(BOX + f"(assert {formula})")
    assert polys(spec.cases[0]) == [([[1.0, 0.0, 0.0]], [1.0])]


SMALL = DECL + BOX + "(assert (or (and (>= Y_0 Y_2)) (and (>= Y_1 Y_2))))\n"


def test_file_plain_gzip_and_misnamed(tmp_path) -> None:
    plain = tmp_path / "p.vnnlib"
    plain.write_text(SMALL)
    zipped = tmp_path / "p.vnnlib.gz"
    zipped.write_bytes(gzip.compress(SMALL.encode()))
    misnamed = tmp_path / "q.vnnlib"  # gzip content without the extension
    misnamed.write_bytes(gzip.compress(SMALL.encode()))
    crlf = tmp_path / "r.vnnlib"
    crlf.write_bytes(SMALL.replace("\n", "\r\n").encode())
    specs = [parse_vnnlib(p) for p in (plain, str(zipped), misnamed, crlf)]
    for spec in specs:
        np.testing.assert_array_equal(spec.cases[0].lower, [0.0, -2.0])
        assert len(spec.cases[0].polytopes) == 2
    assert specs[1].source == str(zipped)
