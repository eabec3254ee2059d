"""Malformed or unsupported VNN-LIB: clear, located errors and never a raw Python error."""

from __future__ import annotations

import gzip
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specs import SpecError, SpecParseError, parse_vnnlib, parse_vnnlib_text

OPERATOR = "an operator (and, or, <=, >=, <, >, =, +, -, *, /)"
# Two lines of declarations, so body errors are on line 3.
H = "(declare-const X_0 Real)(declare-const X_1 Real)\n(declare-const Y_0 Real)(declare-const Y_1 Real)\n"
BOX = "(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_1 1))(assert (>= X_1 0))"


def parse_error(text: str) -> SpecParseError:
    with pytest.raises(SpecParseError) as info:
        parse_vnnlib_text(text, source="prop.vnnlib")
    return info.value


@pytest.mark.parametrize(
    "body, line, column, expected, found",
    [
        # unbalanced parentheses
        ("(assert (<= X_0 1)", 3, 19, "')' to close the '(' at line 3, column 1", "end of file"),
        ("(assert (<= X_0 1)))", 3, 20, "'(' to start a command", "')' (unbalanced parenthesis)"),
        # unknown operator / command
        ("(assert (foo X_0 1))", 3, 10, OPERATOR, "'foo'"),
        ("(assert (not (<= Y_0 1)))", 3, 10, OPERATOR, "'not'"),
        ("(check-it)", 3, 2, "a command 'declare-const' or 'assert'", "'check-it'"),
        ("()", 3, 2, "a command 'declare-const' or 'assert'", "')'"),
        ("(assert ())", 3, 10, "an operator", "')'"),
        ("(assert ((<= X_0 1)))", 3, 10, "an operator", "'('"),
        # missing operands
        ("(assert (<= ))", 3, 13, "a number or a declared variable", "')'"),
        ("(assert (<= X_0))", 3, 16, "a number or a declared variable", "')'"),
        ("(assert (and))", 3, 13, "a constraint such as '(<= Y_0 1.5)', '(and ...)' or '(or ...)'", "')'"),
        ("(assert)", 3, 8, "a formula", "')'"),
        ("(assert (- ))", 3, 12, "a number or a declared variable", "')'"),
        # bad numbers
        ("(assert (<= X_0 1.2.3))", 3, 17, "a valid number", "'1.2.3'"),
        ("(assert (<= X_0 1e))", 3, 17, "a valid number", "'1e'"),
        ("(assert (<= X_0 0x10))", 3, 17, "a valid number", "'0x10'"),
        ("(assert (<= X_0 inf))", 3, 17, "a number or a declared variable", "'inf'"),
        ("(assert (<= X_0 nan))", 3, 17, "a number or a declared variable", "'nan'"),
        # stray tokens
        ("foo\n(assert (<= X_0 1))", 3, 1, "'(' to start a command", "'foo'"),
        ("(assert (<= X_0 1) 2)", 3, 20, "')'", "'2'"),
        ("(assert (/ Y_0 2 3))", 3, 18, "')'", "'3'"),
        # wrong kinds of operands
        ("(assert X_0)", 3, 9, "a constraint such as '(<= Y_0 1.5)', '(and ...)' or '(or ...)'", "'X_0'"),
        ("(assert (and (<= X_0 1) 3))", 3, 25, "a constraint such as '(<= Y_0 1.5)', '(and ...)' or '(or ...)'", "'3'"),
        ("(assert (<= (<= X_0 1) 3))", 3, 13, "a number or a declared variable", "'(<= ...)'"),
        ("(assert (<= Y_0 (/ Y_1 0)))", 3, 24, "a non-zero constant divisor", "'0'"),
        # nested commands
        ("(assert (and (assert (<= X_0 1))))", 3, 15, OPERATOR, "'assert'"),
        ("(assert (or (declare-const X_0 Real)))", 3, 14, OPERATOR, "'declare-const'"),
        # undeclared variables
        ("(assert (<= X_2 1))", 3, 13, "a declared variable (X_0..X_1 are declared)", "'X_2'"),
        ("(assert (<= 1 X_7))", 3, 15, "a declared variable (X_0..X_1 are declared)", "'X_7'"),
        ("(assert (or (<= Y_0 1) (>= Y_2 1)))", 3, 28, "a declared variable (Y_0..Y_1 are declared)", "'Y_2'"),
        ("(assert (<= X_01 1))", 3, 13, "a number or a declared variable", "'X_01'"),
        ("(assert (<= Z_0 1))", 3, 13, "a number or a declared variable", "'Z_0'"),
    ],
)
def test_malformed_body(body: str, line: int, column: int, expected: str, found: str) -> None:
    err = parse_error(H + body)
    assert (err.path, err.line, err.column, err.expected, err.found) == ("prop.vnnlib", line, column, expected, found)
    assert str(err).startswith(f"prop.vnnlib:{line}:{column}: expected {expected}")
    assert "\n" not in str(err)


def test_message_format_matches_the_documented_example() -> None:
    err = parse_error(H + "(assert (<= ))")
    assert str(err) == "prop.vnnlib:3:13: expected a number or a declared variable after '<=', found ')'"
    assert err.after == "<="


@pytest.mark.parametrize(
    "text, line, column, expected, found",
    [
        ("", 1, 1, "'(declare-const X_0 Real)' or '(assert ...)'", "end of file"),
        ("; only a comment\n  \n", 1, 1, "'(declare-const X_0 Real)' or '(assert ...)'", "end of file"),
        (H, 3, 1, "at least one '(assert ...)'", "end of file"),
        ("(declare-const Y_0 Real)\n(assert (<= Y_0 1))", 2, 20,
         "at least one input declaration '(declare-const X_0 Real)'", "end of file"),
        ("(declare-const X_0 Real)\n(assert (<= X_0 1))", 2, 20,
         "at least one output declaration '(declare-const Y_0 Real)'", "end of file"),
        ("(declare-const X_0 Int)", 1, 20, "the sort 'Real'", "'Int'"),
        ("(declare-const X_0 Bool)(declare-const Y_0 Real)", 1, 20, "the sort 'Real'", "'Bool'"),
        ("(declare-const X_0)", 1, 19, "the sort 'Real'", "')'"),
        ("(declare-const X_0 Real Real)", 1, 25, "')'", "'Real'"),
        ("(declare-const Z Real)", 1, 16, "a variable name X_<i> or Y_<j>", "'Z'"),
        ("(declare-const (X_0) Real)", 1, 16, "a variable name X_<i> or Y_<j>", "'(X_0 ...)'"),
        ("(declare-fun X_0 Real)", 1, 18, "'()' (no arguments)", "'Real'"),
        (H + "(declare-const X_1 Real)", 3, 16,
         "a new variable (X_1 was already declared at line 1, column 40)", "'X_1'"),
        (H + "(declare-const Y_3 Real)", 3, 16, "output indices 0..2 (Y_2 is not declared)", "'Y_3'"),
        ("(declare-const X_1 Real)(declare-const Y_0 Real)", 1, 16,
         "input indices 0..0 (X_0 is not declared)", "'X_1'"),
    ],
)
def test_malformed_file(text: str, line: int, column: int, expected: str, found: str) -> None:
    err = parse_error(text)
    assert (err.line, err.column, err.expected, err.found) == (line, column, expected, found)


def test_undeclared_variable_in_fast_path_bound() -> None:
    err = parse_error(H + BOX + "\n  (assert (>= X_5 0))")
    assert (err.line, err.column, err.found) == (4, 15, "'X_5'")


def test_error_column_counts_characters_after_crlf() -> None:
    err = parse_error(H.replace("\n", "\r\n") + "(assert\r\n  (<= X_0 oops))")
    assert (err.line, err.column) == (4, 11)


@pytest.mark.parametrize(
    "body, message",
    [
        ("(assert (<= X_0 1))(assert (<= X_1 1))(assert (>= X_1 0))", "input X_0 has no finite lower bound"),
        ("(assert (>= X_0 0))(assert (<= X_1 1))(assert (>= X_1 0))", "input X_0 has no finite upper bound"),
        ("(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_1 1))(assert (>= X_1 -1e999))",
         "input X_1 has no finite lower bound"),
        ("(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_1 0.25))(assert (>= X_1 0.5))",
         "input X_1 has lower bound 0.5 above its upper bound 0.25"),
        ("(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_1 1))"
         "(assert (or (and (>= X_1 0) (<= Y_0 0)) (and (<= Y_1 0))))",
         "input X_1 has no finite lower bound (in disjunct 2 of 2)"),
        (BOX + "(assert (<= (+ X_0 X_1) 1))", "linear constraints among inputs (X_0, X_1) are not supported yet"),
        (BOX + "(assert (<= X_0 Y_0))", "constraints that mix inputs and outputs (X_0 with Y_0) are not supported"),
        (BOX + "(assert (<= (* Y_0 Y_1) 1))", "non-linear product of variables is not supported"),
    ],
)
def test_semantic_errors(body: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_vnnlib_text(H + body, source="prop.vnnlib")
    assert not isinstance(info.value, SpecParseError) or "not supported" not in message
    assert message in str(info.value)
    assert str(info.value).startswith("prop.vnnlib")


def test_dnf_explosion_is_refused() -> None:
    decl = "".join(f"(declare-const Y_{j} Real)" for j in range(20)) + "(declare-const X_0 Real)"
    box = "(assert (<= X_0 1))(assert (>= X_0 0))"
    split = "".join(f"(assert (or (<= Y_{j} 0) (>= Y_{j} 1)))" for j in range(18))
    with pytest.raises(SpecError, match="more than 100000"):
        parse_vnnlib_text(decl + box + split)
    nested = "(assert (and " + "".join(f"(or (<= Y_{j} 0) (>= Y_{j} 1))" for j in range(18)) + "))"
    with pytest.raises(SpecError, match="more than the supported 100000"):
        parse_vnnlib_text(decl + box + nested)
    ok = "".join(f"(assert (or (<= Y_{j} 0) (>= Y_{j} 1)))" for j in range(10))
    assert len(parse_vnnlib_text(decl + box + ok).cases[0].polytopes) == 1024


def test_unreadable_files(tmp_path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        parse_vnnlib(tmp_path / "missing.vnnlib")
    broken = tmp_path / "broken.vnnlib.gz"
    broken.write_bytes(gzip.compress(b"(declare-const X_0 Real)" * 50)[:30])
    with pytest.raises(SpecError, match="cannot read"):
        parse_vnnlib(broken)


def test_error_in_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "p.vnnlib"
    path.write_text(H + "(assert (<= X_0 ))\n")
    with pytest.raises(SpecParseError) as info:
        parse_vnnlib(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}:3:17: ")


def test_parse_error_is_picklable() -> None:
    err = parse_error(H + "(assert (<= ))")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.line == 3


@pytest.mark.parametrize(
    "text",
    [
        ")", "(", "((", "))(", "(assert", "(assert (", "(assert (<=", "(declare-const", "(declare-const X_0",
        "(declare-fun X_0 (", "(declare-fun X_0 () Real", "(declare-fun X_0 (Real) Real)", "(declare-fun X_0 ()",
        H + "(assert (or))", H + "(assert (* ))", H + "(assert (<= (*) 1))", H + "(assert (<= (- ) 1))",
        H + "(assert (<= X_0 1 2 X_1 ()))", H + "(assert (<= ((X_0)) 1))", H + "(assert true false)",
        "(assert (<= X_0 1))", "\x00\x01\x02", "(declare-const X_123456789012345678901234567890 Real)",
        "(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_99999999999999999999999 1))", "X_0", "'", "|X_0|", "(declare-const X_0 Real) junk",
    ],
)
def test_garbage_raises_only_spec_errors(text: str) -> None:
    with pytest.raises(SpecError):
        parse_vnnlib_text(text)


VALID = (
    "; c\n(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)\n"
    "(assert (<= X_0 1))(assert (>= X_0 0))(assert (and (<= X_1 1.5e0) (>= X_1 -1)))\n"
    "(assert (or (and (<= Y_0 Y_1) (>= (+ Y_0 (* 2 Y_1)) 3)) (and (<= X_0 0.5) (< (- Y_1) 1))))\n"
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 3), st.sampled_from(list("()XY_019.-+e<=>; \nando"))),
                min_size=1, max_size=6))
def test_mutated_files_raise_only_spec_errors(edits) -> None:
    text = VALID
    for pos, length, char in edits:
        text = text[:pos] + char + text[pos + length:]
    try:
        parse_vnnlib_text(text)
    except SpecError:
        pass
