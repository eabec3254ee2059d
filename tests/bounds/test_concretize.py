"""bounds.crown.concretize_lower: min of A·x over a box, also when the box has infinite ends
(0 coefficients there contribute exactly 0; nonzero ones make the bound -inf, never NaN)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from bounds.crown import concretize_lower, spec_lower_bounds
from bounds.types import Interval
from tests.bounds.random_graphs import Builder


def _brute_force(A: torch.Tensor, box: Interval) -> torch.Tensor:
    """min over the corners of a small finite box (B = 1)."""
    lo, up = box.lower[0], box.upper[0]
    corners = torch.stack([torch.where(torch.tensor(bits, dtype=torch.bool), up, lo)
                           for bits in itertools.product([0, 1], repeat=lo.numel())])
    return (A[0] @ corners.T).min(-1).values[None]


def test_finite_box_is_the_minimum_over_corners() -> None:
    g = torch.Generator().manual_seed(0)
    lo = torch.randn(1, 5, generator=g, dtype=torch.float64)
    box = Interval(lo, lo + torch.rand(1, 5, generator=g, dtype=torch.float64))
    A = torch.randn(1, 4, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(concretize_lower(A, box), _brute_force(A, box))


def test_zero_coefficients_on_infinite_ends_contribute_nothing() -> None:
    inf = math.inf
    box = Interval(torch.tensor([[-inf, 1.0, -2.0, -inf]]), torch.tensor([[inf, 2.0, inf, 3.0]]))
    A = torch.tensor([[[0.0, 1.0, 0.0, 0.0],        # only the finite coordinate: 1
                       [0.0, -2.0, 3.0, 0.0],       # x2 >= -2 is all that is needed: -4 - 6
                       [0.0, 0.0, 0.0, -1.0],       # x3 <= 3: -3
                       [0.0, 0.0, 0.0, 0.0]]])      # nothing: exactly 0
    got = concretize_lower(A, box)
    assert got.tolist() == [[1.0, -10.0, -3.0, 0.0]]


def test_nonzero_coefficients_on_infinite_ends_give_minus_infinity() -> None:
    inf = math.inf
    box = Interval(torch.tensor([[-inf, 1.0, -2.0]]), torch.tensor([[inf, 2.0, inf]]))
    A = torch.tensor([[[1e-30, 1.0, 0.0],           # x0 unbounded below
                       [-1.0, 0.0, 0.0],            # x0 unbounded above
                       [0.0, 1.0, -0.5],            # x2 unbounded above
                       [0.0, 1.0, 0.5]]])           # x2 bounded below: finite, 1 - 1
    got = concretize_lower(A, box)
    assert not bool(torch.isnan(got).any())
    assert got[0, :3].tolist() == [-inf, -inf, -inf] and got[0, 3].item() == 0.0


def test_nan_coefficients_are_not_hidden() -> None:
    box = Interval(torch.tensor([[-math.inf, 0.0]]), torch.tensor([[0.0, 1.0]]))
    A = torch.tensor([[[0.0, math.nan]]])
    assert bool(torch.isnan(concretize_lower(A, box)).all())


def test_gradients_stay_finite_with_infinite_ends() -> None:
    """alpha-CROWN differentiates the bound w.r.t. A: a 0 coefficient on an infinite end must
    not turn the gradient into NaN."""
    box = Interval(torch.tensor([[-math.inf, 1.0]]), torch.tensor([[0.0, 2.0]]))
    A = torch.tensor([[[0.0, 3.0], [-1.0, -1.0]]], requires_grad=True)
    got = concretize_lower(A, box)
    assert got.tolist() == [[3.0, -2.0]]
    (grad,) = torch.autograd.grad(got.sum(), A)
    assert bool(torch.isfinite(grad).all())


def test_bounds_of_a_graph_with_an_unbounded_value_are_not_nan() -> None:
    """1/x over an interval reaching 0 is unbounded; a spec row that ignores it keeps a finite
    bound (before: 0 * inf = NaN at the output interval), one that reads it gets -inf."""
    b = Builder((2,), torch.Generator().manual_seed(0))
    graph = b.graph(b.op("Reciprocal", "x"))
    box = Interval(torch.tensor([[-1.0, 1.0]], dtype=torch.float64), torch.tensor([[1.0, 2.0]], dtype=torch.float64))
    C = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, -1.0]]], dtype=torch.float64)
    for method in ("ibp", "crown"):
        got = spec_lower_bounds(graph, box, C, method)
        assert not bool(torch.isnan(got).any()), method
        assert got[0, 0].item() == 0.5 and got[0, 1].item() == -math.inf and got[0, 2].item() == -1.0, method


def test_record_only_keeps_the_named_nodes():
    from bounds.crown import RecordOnly

    record = RecordOnly(["x"])
    record["x"] = torch.ones(1)
    record["h"] = torch.zeros(1)
    assert list(record) == ["x"]


@pytest.mark.parametrize("a_batch", [1, 3])
def test_a_box_expanded_along_the_batch_gives_each_row_its_bound(a_batch: int) -> None:
    """One box expanded for many sub-problems is concretised once, and every sub-problem still
    gets its row of the result, as with a materialised copy."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(a_batch, 4, 2, 5, generator=gen, dtype=torch.float64)
    lo = torch.randn(1, 2, 5, generator=gen, dtype=torch.float64)
    box = Interval(lo, lo + torch.rand(1, 2, 5, generator=gen, dtype=torch.float64))
    expanded = Interval(box.lower.expand(3, -1, -1), box.upper.expand(3, -1, -1))
    copied = Interval(expanded.lower.clone(), expanded.upper.clone())
    got = concretize_lower(A, expanded)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, concretize_lower(A, copied))


def test_centred_box_concretises_like_its_interval():
    from bounds.types import CentredBox

    gen = torch.Generator().manual_seed(5)
    lower = torch.randn(4, 3, 2, generator=gen, dtype=torch.float64)
    box = Interval(lower, lower + torch.rand(4, 3, 2, generator=gen, dtype=torch.float64))
    A = torch.randn(4, 5, 3, 2, generator=gen, dtype=torch.float64)
    centred = CentredBox.of(box)
    assert isinstance(centred, CentredBox)
    torch.testing.assert_close(concretize_lower(A, centred), concretize_lower(A, box), rtol=0, atol=1e-12)
    # one box repeated along the batch keeps one centre and radius
    one = Interval(lower[:1].expand(4, 3, 2), (lower[:1] + 1).expand(4, 3, 2))
    repeated = CentredBox.of(one)
    assert repeated.mid.shape[0] == 1
    torch.testing.assert_close(concretize_lower(A, repeated), concretize_lower(A, one), rtol=0, atol=1e-12)


def test_box_with_infinite_ends_is_not_centred():
    from bounds.types import CentredBox

    box = Interval(torch.tensor([[-math.inf, 0.0]]), torch.tensor([[1.0, 2.0]]))
    assert not isinstance(CentredBox.of(box), CentredBox)
