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
