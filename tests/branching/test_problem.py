"""SpecTensors: boxes contain the spec's boxes after float32 rounding; refutation needs slack."""
from __future__ import annotations

import numpy as np
import torch

from branching.problem import SpecTensors
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
