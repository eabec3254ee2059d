"""Spec / SpecCase / Polytope behaviour: immutability, stacking, violation checks, shapes."""

from __future__ import annotations

import numpy as np
import pytest

from specs import Polytope, Spec, SpecCase, SpecShapeError, parse_vnnlib_text

# ACAS Xu property 7 shape: one box, "Y_3 minimal" or "Y_4 minimal" (3 rows each).
PROP7 = (
    "".join(f"(declare-const X_{i} Real)" for i in range(5))
    + "".join(f"(declare-const Y_{j} Real)" for j in range(5))
    + "".join(f"(assert (<= X_{i} 0.5))(assert (>= X_{i} -0.5))" for i in range(5))
    + """(assert (or
    (and (<= Y_3 Y_0) (<= Y_3 Y_1) (<= Y_3 Y_2))
    (and (<= Y_4 Y_0) (<= Y_4 Y_1) (<= Y_4 Y_2))
))"""
)


def test_arrays_are_copied_and_read_only() -> None:
    C = np.array([[1.0, -1.0]])
    p = Polytope(C, np.array([0.0]))
    C[0, 0] = 5.0
    assert p.C[0, 0] == 1.0
    with pytest.raises(ValueError):
        p.C[0, 0] = 2.0
    case = SpecCase(np.zeros(2), np.ones(2), (p,))
    with pytest.raises(ValueError):
        case.lower[0] = 3.0
    with pytest.raises(AttributeError):
        case.lower = np.ones(2)  # type: ignore[misc]


def test_int_inputs_are_stored_as_float64() -> None:
    p = Polytope([[1, 0]], [2])
    assert p.C.dtype == np.float64 and p.d.dtype == np.float64


@pytest.mark.parametrize(
    "make",
    [
        lambda: Polytope(np.zeros((2, 3)), np.zeros(3)),
        lambda: Polytope(np.zeros(3), np.zeros(3)),
        lambda: SpecCase(np.zeros(2), np.zeros(3), ()),
        lambda: SpecCase(np.zeros(2), np.zeros(2), (Polytope(np.zeros((1, 2)), [0]), Polytope(np.zeros((1, 3)), [0]))),
        lambda: Spec(3, 2, (SpecCase(np.zeros(2), np.zeros(2), ()),)),
        lambda: Spec(2, 3, (SpecCase(np.zeros(2), np.zeros(2), (Polytope(np.zeros((1, 2)), [0]),)),)),
    ],
)
def test_inconsistent_shapes_are_rejected(make) -> None:
    with pytest.raises(SpecShapeError):
        make()


def test_stacked() -> None:
    spec = parse_vnnlib_text(PROP7)
    (case,) = spec.cases
    assert len(case.polytopes) == 2
    C, d, group = case.stacked()
    assert C.shape == (6, 5) and d.shape == (6,)
    assert group.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(C[0], [-1, 0, 0, 1, 0])
    np.testing.assert_array_equal(C[5], [0, 0, -1, 0, 1])
    empty = SpecCase(np.zeros(1), np.zeros(1), ())
    C, d, group = empty.stacked()
    assert C.shape[0] == 0 and d.shape == (0,) and group.dtype == np.int64


def test_is_violated_by() -> None:
    spec = parse_vnnlib_text(PROP7)
    x = np.zeros(5)
    assert spec.is_violated_by(x, np.array([1.0, 1.0, 1.0, 0.0, 2.0]))  # Y_3 minimal
    assert spec.is_violated_by(x, np.array([1.0, 1.0, 1.0, 2.0, 0.0]))  # Y_4 minimal
    assert not spec.is_violated_by(x, np.array([0.0, 1.0, 1.0, 2.0, 2.0]))
    # On the boundary (ties) counts, as the unsafe set is closed.
    assert spec.is_violated_by(x, np.array([1.0, 1.0, 1.0, 1.0, 2.0]))
    # Input outside the box never counts, even with a violating output.
    y = np.array([1.0, 1.0, 1.0, 0.0, 2.0])
    assert not spec.is_violated_by(np.array([0.6, 0, 0, 0, 0]), y)
    # ...except within tolerance.
    assert spec.is_violated_by(np.array([0.5 + 5e-5, 0, 0, 0, 0]), y)
    assert not spec.is_violated_by(np.array([0.5 + 5e-5, 0, 0, 0, 0]), y, tol=0.0)
    assert spec.is_violated_by(x, np.array([1.0, 1.0, 1.0, 1.00005, 2.0]))
    assert not spec.is_violated_by(x, np.array([1.0, 1.0, 1.0, 1.00005, 2.0]), tol=0.0)
    assert not spec.is_violated_by(x, np.array([1.0, 1.0, 1.0, np.nan, 2.0]))
    # Any array shape with the right number of entries is accepted.
    assert spec.is_violated_by(x.reshape(1, 5), y.reshape(5, 1).astype(np.float32))


def test_is_violated_by_checks_every_case() -> None:
    text = (
        "(declare-const X_0 Real)(declare-const Y_0 Real)"
        "(assert (or (and (>= X_0 0) (<= X_0 1) (<= Y_0 0)) (and (>= X_0 2) (<= X_0 3) (>= Y_0 5))))"
    )
    spec = parse_vnnlib_text(text)
    assert len(spec.cases) == 2
    assert spec.is_violated_by(np.array([0.5]), np.array([-1.0]))
    assert not spec.is_violated_by(np.array([0.5]), np.array([6.0]))
    assert spec.is_violated_by(np.array([2.5]), np.array([6.0]))
    assert not spec.is_violated_by(np.array([1.5]), np.array([-1.0]))


def test_is_violated_by_rejects_wrong_sizes() -> None:
    spec = parse_vnnlib_text(PROP7)
    with pytest.raises(SpecShapeError):
        spec.is_violated_by(np.zeros(4), np.zeros(5))
    with pytest.raises(SpecShapeError):
        spec.is_violated_by(np.zeros(5), np.zeros(6))


def test_check_shapes() -> None:
    spec = parse_vnnlib_text(PROP7, source="prop_7.vnnlib")
    spec.check_shapes(5, 5)
    message = r"prop_7.vnnlib: the spec declares 5 inputs \(X_0..X_4\) but the network has 784"
    with pytest.raises(SpecShapeError, match=message):
        spec.check_shapes(784, 5)
    with pytest.raises(SpecShapeError, match="5 outputs .* but the network has 10"):
        spec.check_shapes(5, 10)
