"""VNN-LIB 2.0 queries: the forms of the standard, located errors, and equality with 1.0."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specs import (Spec, SpecError, SpecParseError, is_vnnlib2, parse_query_text, parse_vnnlib,
                   parse_vnnlib_text)

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "benchmarks"
HEAD = "(vnnlib-version <2.0>)\n(declare-network f (declare-input X float32 [1,2]) (declare-output Y Real [3]))\n"
BOX = "(assert (and (>= X[0,0] 0) (<= X[0,0] 1) (>= X[0,1] -1) (<= X[0,1] 1)))\n"

_DECL = re.compile(r"\(\s*declare-const\s+([XY])_(\d+)\s+Real\s*\)")
_VAR = re.compile(r"\b([XY])_(\d+)\b")


def to_vnnlib2(text: str, x_shape: tuple[int, ...] | None = None, y_shape: tuple[int, ...] | None = None,
               spaced: bool = False) -> str:
    """Translate 1.0 text into an equivalent 2.0 query (X_i -> X[...] in C order of the shape)."""
    counts = {"X": 0, "Y": 0}
    for kind, index in _DECL.findall(text):
        counts[kind] = max(counts[kind], int(index) + 1)
    shapes = {"X": x_shape or (1, counts["X"]), "Y": y_shape or (1, counts["Y"])}
    assert all(int(np.prod(shapes[k])) == counts[k] for k in "XY")

    def element(m: re.Match) -> str:
        kind, flat = m.group(1), int(m.group(2))
        index = np.unravel_index(flat, shapes[kind])
        sep = ", " if spaced else ","
        return f"{kind}{' ' if spaced else ''}[{sep.join(str(int(i)) for i in index)}]"

    body = _VAR.sub(element, _DECL.sub("", text))
    dims = {k: ",".join(map(str, shapes[k])) for k in "XY"}
    return (f"; translated from VNN-LIB 1.0\n(vnnlib-version <2.0>)\n(declare-network net\n"
            f"  (declare-input X float32 [{dims['X']}])\n  (declare-output Y float32 [{dims['Y']}]))\n{body}")


def assert_same_spec(a: Spec, b: Spec) -> None:
    assert (a.n_inputs, a.n_outputs, len(a.cases)) == (b.n_inputs, b.n_outputs, len(b.cases))
    for ca, cb in zip(a.cases, b.cases):
        np.testing.assert_array_equal(ca.lower, cb.lower)
        np.testing.assert_array_equal(ca.upper, cb.upper)
        assert len(ca.polytopes) == len(cb.polytopes)
        for pa, pb in zip(ca.polytopes, cb.polytopes):
            np.testing.assert_array_equal(pa.C, pb.C)
            np.testing.assert_array_equal(pa.d, pb.d)


def parse_error(text: str) -> SpecParseError:
    with pytest.raises(SpecParseError) as info:
        parse_vnnlib_text(text, source="q.vnnlib")
    return info.value


# -- forms ---------------------------------------------------------------------------------------

def test_query_declarations_and_flat_indices():
    q = parse_query_text(HEAD + BOX + "(assert (<= (+ (* 2 Y[0]) (- Y[2]) 1.5) (* 0.5 Y[1])))", "q")
    assert (q.version, q.network) == ("2.0", "f")
    assert (q.input.name, q.input.element_type, q.input.shape) == ("X", "float32", (1, 2))
    assert (q.output.name, q.output.element_type, q.output.shape) == ("Y", "Real", (3,))
    assert q.input.element_names() == ["X[0,0]", "X[0,1]"]
    (case,) = q.spec.cases
    np.testing.assert_array_equal(case.lower, [0, -1])
    np.testing.assert_array_equal(case.upper, [1, 1])
    (poly,) = case.polytopes
    # 2 y0 - y2 + 1.5 <= 0.5 y1   <=>   2 y0 - 0.5 y1 - y2 <= -1.5
    np.testing.assert_array_equal(poly.C, [[2.0, -0.5, -1.0]])
    np.testing.assert_array_equal(poly.d, [-1.5])


def test_c_order_of_multi_dimensional_tensors():
    text = ("(vnnlib-version <2.0>)(declare-network n (declare-input X Real [2,3]) (declare-output Y Real [2,1]))"
            + "".join(f"(assert (>= X[{i},{j}] {10 * i + j}))(assert (<= X[{i},{j}] {10 * i + j + 1}))"
                      for i in range(2) for j in range(3))
            + "(assert (<= Y[1,0] Y[0,0]))")
    spec = parse_vnnlib_text(text)
    np.testing.assert_array_equal(spec.cases[0].lower, [0, 1, 2, 10, 11, 12])
    np.testing.assert_array_equal(spec.cases[0].polytopes[0].C, [[-1.0, 1.0]])


def test_scalar_tensors_spaces_in_indices_onnx_names_and_comments():
    text = """; a query
(vnnlib-version <2.0>)  ; the version
(declare-network g
    (declare-input  inp  float64 [ 1 , 2 ] "input.1")
    (declare-output out  float32 [] "logit"))
(assert (and (>= inp [0, 0] -1) (<= inp[0 ,1] 1) (<= inp [ 0,0 ] 1) (>= inp[0,1] -1)))
(assert (== out 0.25))
"""
    q = parse_query_text(text)
    assert q.input.onnx_name == "input.1" and q.output.shape == () and q.output.element_names() == ["out"]
    (poly,) = q.spec.cases[0].polytopes
    np.testing.assert_array_equal(poly.C, [[1.0], [-1.0]])  # == is two inequalities
    np.testing.assert_array_equal(poly.d, [0.25, -0.25])


def test_disjunctions_of_boxes_and_polytopes():
    text = HEAD + """(assert (or (and (>= X[0,0] 0) (<= X[0,0] 1) (>= X[0,1] 0) (<= X[0,1] 1))
                 (and (>= X[0,0] 2) (<= X[0,0] 3) (>= X[0,1] 0) (<= X[0,1] 1))))
(assert (or (and (<= Y[0] 0) (>= Y[1] 2)) (> Y[2] Y[0])))"""
    spec = parse_vnnlib_text(text)
    assert len(spec.cases) == 2 and all(len(c.polytopes) == 2 for c in spec.cases)
    assert spec.is_violated_by([2.5, 0.5], [-1.0, 3.0, -5.0])
    assert not spec.is_violated_by([1.5, 0.5], [-1.0, 3.0, -5.0])


def test_version_detection_and_gzip(tmp_path):
    text = HEAD + BOX + "(assert (<= Y[0] Y[1]))"
    assert is_vnnlib2(text) and is_vnnlib2("\ufeff; c\n\n( vnnlib-version <2.0>)")
    assert not is_vnnlib2("(declare-const X_0 Real)") and not is_vnnlib2("(vnnlib-versionX)")
    path = tmp_path / "q.vnnlib.gz"
    path.write_bytes(gzip.compress(text.encode()))
    assert_same_spec(parse_vnnlib(path), parse_vnnlib_text(text))
    assert parse_vnnlib(path).source == str(path)


def test_false_assertion_leaves_nothing_unsafe():
    assert parse_vnnlib_text(HEAD + BOX + "(assert (<= 1 0))").cases == ()


# -- equality with 1.0 -----------------------------------------------------------------------

def test_tiny_examples_translate_to_equal_specs():
    for name in ("robust", "border"):
        text = (ROOT / "examples" / "tiny" / f"{name}.vnnlib").read_text()
        for spaced in (False, True):
            assert_same_spec(parse_vnnlib_text(to_vnnlib2(text, spaced=spaced)), parse_vnnlib_text(text))


@settings(max_examples=40, deadline=None)
@given(n_in=st.integers(1, 6), n_out=st.integers(1, 4), data=st.data())
def test_random_1_0_properties_translate_to_equal_specs(n_in, n_out, data):
    """Random 1.0 files (boxes, disjunctions, linear output rows) and their 2.0 twins."""
    number = st.integers(-20, 20).map(lambda k: k / 4)
    lines = [f"(declare-const X_{i} Real)" for i in range(n_in)] + [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i in range(n_in):
        lo = data.draw(number)
        lines.append(f"(assert (>= X_{i} {lo}))(assert (<= X_{i} {lo + 1}))")
    terms = []
    for _ in range(data.draw(st.integers(1, 3))):
        atoms = []
        for _ in range(data.draw(st.integers(1, 3))):
            coefs = data.draw(st.lists(st.tuples(st.integers(0, n_out - 1), number), min_size=1, max_size=3))
            lhs = "(+ " + " ".join(f"(* {a} Y_{j})" for j, a in coefs) + ")"
            atoms.append(f"({data.draw(st.sampled_from(['<=', '>=']))} {lhs} {data.draw(number)})")
        terms.append("(and " + " ".join(atoms) + ")")
    lines.append("(assert (or " + " ".join(terms) + "))")
    text = "\n".join(lines)
    x_shape = data.draw(st.sampled_from([(n_in,), (1, n_in)]))
    try:
        expected = parse_vnnlib_text(text)
    except SpecError:
        with pytest.raises(SpecError):
            parse_vnnlib_text(to_vnnlib2(text, x_shape=x_shape))
        return
    assert_same_spec(parse_vnnlib_text(to_vnnlib2(text, x_shape=x_shape, spaced=data.draw(st.booleans()))), expected)


def _shared(*names: str) -> list[Path]:
    paths = [SHARED / n for n in names]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"shared benchmarks not available at {SHARED}")
    return paths


def test_shared_properties_translate_to_equal_specs():
    for path in _shared("acasxu/vnnlib/prop_1.vnnlib", "acasxu/vnnlib/prop_6.vnnlib",
                        "acasxu/vnnlib/prop_9.vnnlib", "mnist_fc/vnnlib/prop_0_0.03.vnnlib"):
        text = path.read_text()
        n_in = len(re.findall(r"declare-const X_", text))
        x_shape = (1, 1, 28, 28) if n_in == 784 else None
        assert_same_spec(parse_vnnlib_text(to_vnnlib2(text, x_shape=x_shape), str(path)), parse_vnnlib(path))


# -- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, line, column, expected, found", [
    ("(assert (<= Z[0] 1))", 3, 13, "a declared tensor ('X', 'Y')", "'Z'"),
    ("(assert (<= X[0] 1))", 3, 13, "2 indices for X of shape [1,2]", "'X[0]'"),
    ("(assert (<= X[0,2] 1))", 3, 13, "indices within X's shape [1,2]", "'X[0,2]'"),
    ("(assert (<= Y 1))", 3, 13, "1 indices for Y of shape [3]", "'Y'"),
    ("(assert (<= X[0,-1] 1))", 3, 13, "2 indices for X of shape [1,2]", "'X[0,-1]'"),
    ("(assert (<= Y[0] 1x))", 3, 18, "a valid number", "'1x'"),
    ("(assert (foo Y[0] 1))", 3, 10, "an operator (and, or, <=, >=, <, >, =, +, -, *, /)", "'foo'"),
    ("(assert (<= Y[0] 1)", 3, 20, "')' to close the '(' at line 3, column 1", "end of file"),
    ("(declare-network g (declare-input A Real [1]) (declare-output B Real [1]))", 3, 1, None, None),
    ("(check-sat)", 3, 2, "a command 'declare-network' or 'assert'", "'check-sat'"),
])
def test_located_errors(body, line, column, expected, found):
    if expected is None:  # not a parse error but still located: a second network
        with pytest.raises(SpecError, match=r"q\.vnnlib:3:1: queries with several networks"):
            parse_vnnlib_text(HEAD + body, source="q.vnnlib")
        return
    err = parse_error(HEAD + body)
    assert (err.line, err.column, err.expected, err.found) == (line, column, expected, found)
    assert str(err).startswith(f"q.vnnlib:{line}:{column}: expected ")


@pytest.mark.parametrize("text, line, column, expected", [
    ("(vnnlib-version <3.0>)", 1, 17, "VNN-LIB version 2.x"),
    ("(vnnlib-version two)", 1, 17, "a version such as '<2.0>'"),
    ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X int8 [1]) (declare-output Y Real [1]))", None, None,
     "element type 'int8' is not supported"),
    ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X flot32 [1]) (declare-output Y Real [1]))", 2, 37,
     "an element type such as 'float32' or 'Real'"),
    ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X Real [1.2]) (declare-output Y Real [1]))", 2, 42,
     "a shape such as '[1,5]' or '[]'"),
    ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X Real [1]))", 2, 46, "'(declare-output NAME TYPE"),
    ("(vnnlib-version <2.0>)\n(declare-network f (declare-output Y Real [1]) (declare-input X Real [1]))", 2, 48,
     "'(declare-output ...)' (inputs are declared before outputs)"),
    ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X Real [1]) (declare-output X Real [1]))", 2, 63,
     "a new name ('X' is declared already)"),
    ("(vnnlib-version <2.0>)\n(assert (<= 1 2))", 2, 1, "'(declare-network ...)' before the first assertion"),
    ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X Real [1]) (declare-output Y Real [1]))", 2, 75,
     "at least one '(assert ...)'"),
])
def test_declaration_errors(text, line, column, expected):
    if line is None:
        with pytest.raises(SpecError, match=re.escape(expected)):
            parse_vnnlib_text(text, source="q.vnnlib")
        return
    err = parse_error(text)
    assert (err.line, err.column) == (line, column), str(err)
    assert err.expected.startswith(expected), str(err)


@pytest.mark.parametrize("decl, message", [
    ('(declare-hidden H Real [2] "h")', r"q\.vnnlib:2:\d+: hidden-node declarations are not supported"),
    ("(equal-to g)", r"'equal-to' \(several networks\) are not supported"),
    ("(declare-input X2 Real [1])", "networks with several inputs are not supported"),
])
def test_unsupported_declarations(decl, message):
    text = f"(vnnlib-version <2.0>)\n(declare-network f (declare-input X Real [1]) {decl} (declare-output Y Real [1]))"
    if "equal-to" in decl:
        text = "(vnnlib-version <2.0>)\n(declare-network f (equal-to g) (declare-input X Real [1]) " \
               "(declare-output Y Real [1]))"
    with pytest.raises(SpecError, match=message):
        parse_vnnlib_text(text, source="q.vnnlib")


@pytest.mark.parametrize("assertion, message", [
    ("(assert (<= (+ X[0,0] Y[0]) 1))", r"mix inputs and outputs \(X\[0,0\] with Y\[0\]\)"),
    ("(assert (<= (+ X[0,0] X[0,1]) 1))", r"linear constraints among inputs \(X\[0,0\], X\[0,1\]\)"),
    ("(assert (<= (* Y[0] Y[1]) 1))", "non-linear product"),
    ("(assert (!= Y[0] 1))", r"q\.vnnlib:4:10: '!=' is not supported"),
])
def test_unsupported_assertions_name_2_0_elements(assertion, message):
    with pytest.raises(SpecError, match=message):
        parse_vnnlib_text(HEAD + BOX + assertion, source="q.vnnlib")


def test_missing_bound_names_the_2_0_element():
    with pytest.raises(SpecError, match=r"input X\[0,1\] has no finite upper bound"):
        parse_vnnlib_text(HEAD + "(assert (and (>= X[0,0] 0) (<= X[0,0] 1) (>= X[0,1] -1)))(assert (<= Y[0] 1))")
