"""SpecTensors: boxes contain the spec's boxes after float32 rounding; refutation needs slack."""
from __future__ import annotations

import numpy as np
import torch

from bounds.types import Interval
from branching.problem import PolytopeSplit, SpecTensors
from specs import Polytope, Spec, SpecCase


def _spec(lower, upper) -> Spec:
    poly = Polytope(np.array([[1.0, -1.0]]), np.array([0.0]))
    return Spec(len(lower), 2, (SpecCase(np.array(lower), np.array(upper), (poly,)),))


def test_float32_box_contains_the_float64_box() -> None:
    rng = np.random.default_rng(0)
    lower = rng.normal(size=200)
    upper = lower + rng.uniform(0, 1e-3, size=200)
    problem = SpecTensors.from_spec(_spec(lower, upper), (200,))
    assert (problem.lower[0].double().numpy() <= lower).all()
    assert (problem.upper[0].double().numpy() >= upper).all()


def test_a_margin_inside_the_rounding_allowance_does_not_refute() -> None:
    problem = SpecTensors.from_spec(_spec([0.0, 0.0], [1.0, 1.0]), (2,))
    case = torch.zeros(1, dtype=torch.long)
    assert not bool(problem.refuted(case, torch.tensor([[1e-9]])).all())
    assert bool(problem.refuted(case, torch.tensor([[1e-3]])).all())


def test_exact_arithmetic_allowance_is_kept_by_every_derived_problem() -> None:
    from branching.problem import EXACT_SLACK

    spec = Spec(2, 2, (SpecCase(np.zeros(2), np.ones(2), (Polytope(np.array([[1.0, -1.0]]), np.array([-6.53])),
                                                          Polytope(np.array([[-1.0, 0.0]]), np.array([0.0])))),))
    case = torch.zeros(1, dtype=torch.long)
    lower = torch.tensor([[-6.53 + 7.9e-7, 1.0]], dtype=torch.float64)   # row 0 clears by 7.9e-7
    loose = SpecTensors.from_spec(spec, (2,), dtype=torch.float64)
    exact = SpecTensors.from_spec(spec, (2,), dtype=torch.float64, slack=EXACT_SLACK)
    assert loose.refuted(case, lower).tolist() == [[False, True]]
    assert exact.refuted(case, lower).tolist() == [[True, True]]
    assert not bool(exact.refuted(case, torch.tensor([[-6.53 + 1e-10, 1.0]], dtype=torch.float64))[0, 0])
    small, rows = exact.open_part(torch.tensor([[False, True]]))
    assert small.slack == EXACT_SLACK and bool(small.refuted(case, lower[:, :1]).all())
    assert PolytopeSplit.of(exact).problem.slack == EXACT_SLACK


def test_open_part_keeps_exactly_the_open_polytopes_rows() -> None:
    rng = np.random.default_rng(3)
    polys = lambda sizes: tuple(Polytope(rng.normal(size=(n, 3)), rng.normal(size=n)) for n in sizes)
    box = (np.zeros(2), np.ones(2))
    spec = Spec(2, 3, (SpecCase(*box, polys((1, 2, 1))), SpecCase(*box, polys((2,))), SpecCase(*box, polys((1, 1)))))
    problem = SpecTensors.from_spec(spec, (2,), dtype=torch.float64)
    refuted = torch.tensor([[True, False, False], [True, False, False], [False, False, False]])
    small, rows = problem.open_part(refuted)
    assert small.C.shape[1] == 3                     # case 0 keeps polytopes 1 and 2: 3 rows
    assert rows[0].tolist() == [1, 2, 3] and rows[2, :2].tolist() == [0, 1]
    assert small.real.tolist() == [[False, True, True], [False, False, False], [True, True, False]]
    y = torch.randn(256, 3, dtype=torch.float64)
    for k, case in enumerate(spec.cases):
        open_polys = [p for j, p in enumerate(case.polytopes) if not refuted[k, j]]
        expected = torch.tensor([any(bool((p.C @ v <= p.d).all()) for p in open_polys) for v in y.numpy()])
        assert torch.equal(small.violated(torch.full((256,), k), y), expected)
    # margins from the kept rows' values equal the margins of the open polytopes
    values = torch.einsum("nro,no->nr", problem.C[torch.zeros(256, dtype=torch.long)], y)
    m_small = small.margins(torch.zeros(256, dtype=torch.long), SpecTensors.take_rows(values, rows[:1].expand(256, -1)))
    only_open = problem.margins(torch.zeros(256, dtype=torch.long), torch.where(problem.group[0] == 0, 1e9, values))
    assert torch.allclose(m_small, only_open)
    assert bool(torch.isinf(small.margins(torch.ones(4, dtype=torch.long), torch.zeros(4, 3, dtype=torch.float64))).all())


def test_polytope_split_gives_each_open_polytope_its_own_case() -> None:
    rng = np.random.default_rng(5)
    polys = lambda sizes: tuple(Polytope(rng.normal(size=(n, 3)), rng.normal(size=n)) for n in sizes)
    boxes = [(np.zeros(2), np.ones(2)), (-np.ones(2), np.zeros(2))]
    spec = Spec(2, 3, (SpecCase(*boxes[0], polys((1, 2))), SpecCase(*boxes[1], polys((1, 1, 1)))))
    problem = SpecTensors.from_spec(spec, (2,), dtype=torch.float64)
    # a root bound that refutes case 1's middle polytope (its only row is row 1)
    root = torch.full((2, 3), -1e9, dtype=torch.float64)
    root[1, 1] = problem.d[1, 1] + 1.0
    split = PolytopeSplit.of(problem, root)
    assert split.case_of.tolist() == [0, 0, 1, 1]
    assert split.row_of.tolist() == [[0, -1], [1, 2], [0, -1], [2, -1]]
    sub = split.problem
    assert torch.equal(sub.lower[2], problem.lower[1])
    y = torch.randn(512, 3, dtype=torch.float64)
    for i, (k, rows) in enumerate(zip(split.case_of.tolist(), split.row_of.tolist())):
        poly = [p for j, p in enumerate(spec.cases[k].polytopes)
                if j == int(problem.group[k, rows[0]])][0]
        expected = torch.tensor([bool((poly.C @ v <= poly.d).all()) for v in y.numpy()])
        assert torch.equal(sub.violated(torch.full((512,), i), y), expected)
    # per-case tensors follow their cases and rows; tensors of another shape are dropped
    per_row = torch.arange(6.0).reshape(2, 3, 1)
    moved = split.per_row({"a": per_row, "b": torch.zeros(2, 5)})
    assert set(moved) == {"a"} and moved["a"][:, :, 0].tolist() == [[0, 0], [1, 2], [3, 3], [5, 3]]
    iv = split.intervals({"x": Interval(torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [4.0]]))})
    assert iv["x"].lower.flatten().tolist() == [1.0, 1.0, 2.0, 2.0]
    seen = []
    attack = split.falsifier(lambda points, cases: seen.append(cases.tolist()))
    attack(torch.zeros(2, 2), torch.tensor([3, 1]))
    assert seen == [[1, 0]]
