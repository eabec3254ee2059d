"""Property test: random boxes and output polytopes written as VNN-LIB parse back exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from specs import parse_vnnlib_text

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
coefficient = finite.filter(lambda a: a != 0.0)


@st.composite
def problems(draw):
    n_in = draw(st.integers(1, 6))
    n_out = draw(st.integers(1, 5))
    box = []
    for _ in range(n_in):
        a, b = draw(finite), draw(finite)
        box.append((min(a, b), max(a, b)))
    polytopes = []
    for _ in range(draw(st.integers(1, 4))):
        rows = []
        for _ in range(draw(st.integers(1, 3))):
            outputs = draw(st.lists(st.integers(0, n_out - 1), min_size=1, max_size=n_out, unique=True))
            coefs = {j: draw(coefficient) for j in sorted(outputs)}
            rows.append((coefs, draw(finite)))
        polytopes.append(rows)
    style = draw(st.integers(0, 2**16 - 1))  # picks spelling variants below
    return n_in, n_out, box, polytopes, style


def _term(coefs: dict[int, float], bit: int) -> str:
    parts = [f"Y_{j}" if a == 1.0 and bit else f"(* {a!r} Y_{j})" for j, a in coefs.items()]
    return parts[0] if len(parts) == 1 else "(+ " + " ".join(parts) + ")"


def write(n_in, n_out, box, polytopes, style) -> str:
    bits = [(style >> k) & 1 for k in range(16)]
    out = [f"(declare-const X_{i} Real)" for i in range(n_in)]
    out += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (lo, hi) in enumerate(box):
        upper = f"(<= X_{i} {hi!r})" if bits[i % 16] else f"(>= {hi!r} X_{i})"
        lower = f"(>= X_{i} {lo!r})" if bits[(i + 3) % 16] else f"(<= {lo!r} X_{i})"
        out.append(f"(assert {upper})\n(assert {lower})" if bits[5] else f"(assert (and {upper} {lower}))")
    terms = []
    for k, rows in enumerate(polytopes):
        atoms = [
            f"(<= {_term(c, bits[(k + r) % 16])} {d!r})" if bits[(k + r + 7) % 16] else f"(>= {d!r} {_term(c, 1)})"
            for r, (c, d) in enumerate(rows)
        ]
        terms.append("(and " + " ".join(atoms) + ")")
    out.append("(assert (or\n    " + "\n    ".join(terms) + "\n))")
    text = "\n".join(out) + "\n"
    if bits[8]:
        text = text.replace(") (", ")(")
    if bits[9]:
        text = text.replace("\n", "\r\n")
    if bits[10]:
        text = "; generated\n" + text.replace("))\n", ")) ; end of command\n")
    return text


@settings(max_examples=150, deadline=None)
@given(problems())
def test_written_spec_parses_back_identically(problem) -> None:
    n_in, n_out, box, polytopes, style = problem
    spec = parse_vnnlib_text(write(*problem))
    assert (spec.n_inputs, spec.n_outputs) == (n_in, n_out)
    (case,) = spec.cases
    np.testing.assert_array_equal(case.lower, [lo for lo, _ in box])
    np.testing.assert_array_equal(case.upper, [hi for _, hi in box])
    expected = []
    for rows in polytopes:
        C = np.zeros((len(rows), n_out))
        for r, (coefs, _) in enumerate(rows):
            for j, a in coefs.items():
                C[r, j] = a
        d = np.array([d for _, d in rows]) + 0.0
        if not any(np.array_equal(C, e[0]) and np.array_equal(d, e[1]) for e in expected):
            expected.append((C, d))
    assert len(case.polytopes) == len(expected)
    for p, (C, d) in zip(case.polytopes, expected):
        np.testing.assert_array_equal(p.C, C)
        np.testing.assert_array_equal(p.d, d)
