"""branching.split_points: every smooth S-shaped / non-monotone activation gets a split-point
table; tables build fast, are cached, and their points lie inside the intervals and split
at least about as well as the midpoint (by the criterion the table minimises)."""
from __future__ import annotations


import pytest
import torch

from bounds.graph.ir import Node
from bounds.ops import RULES
from bounds.ops.base import ActivationRule
from branching.split_points import (TABULATED, SplitPoints, SplitTableOptions, build_table, load_or_build,
                                    mean_gap)

SMOOTH = ("Sigmoid", "Tanh", "Erf", "Atan", "Gelu", "nnverify.SiLU", "Softplus", "Mish", "Elu", "Selu", "Celu")


def test_smooth_activations_are_tabulated_by_default() -> None:
    assert set(SMOOTH) <= set(SplitTableOptions().tabulate)
    for op in TABULATED:
        assert isinstance(RULES.get(op), ActivationRule), f"{op} is not a registered activation"


@pytest.mark.parametrize("op,attrs", [("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Mish", {}),
                                      ("nnverify.SiLU", {})])
def test_tables_of_the_smooth_ops_hold_interior_fractions(op: str, attrs: dict) -> None:
    table = build_table(RULES[op], Node("y", op, ("x",), attrs), SplitTableOptions())
    assert table.shape == (3, 97, 97) and bool(((table > 0) & (table < 1)).all())


def _intervals(n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lo = torch.randn(n, generator=g, dtype=torch.float64) * 3
    return lo, lo + 0.05 + torch.rand(n, generator=g, dtype=torch.float64) * 6


@pytest.mark.parametrize("op", SMOOTH)
def test_table_points_are_inside_and_split_at_least_as_well_as_the_middle(op: str, tmp_path) -> None:
    options = SplitTableOptions(cache_dir=str(tmp_path), knots=49, candidates=15, samples=8)
    points = SplitPoints(options)
    node = Node("y", op, ("x",), {})
    assert points.table(node) is not None
    rule = RULES[op]
    lo, up = _intervals()
    for side in (0, 1, 2):
        p = points.points(node, lo, up, side)
        assert bool(((p > lo) & (p < up)).all()), f"{op}: split point outside the interval"

        def worst(q: torch.Tensor) -> torch.Tensor:
            return torch.maximum(mean_gap(rule, node, lo, q, side), mean_gap(rule, node, q, up, side))

        table, middle = worst(p), worst((lo + up) / 2)
        # interpolated on a coarse grid: close to, and on the whole no worse than, the middle
        assert float(table.sum()) <= float(middle.sum()) * 1.02 + 1e-9, f"{op} side {side}"


def test_tables_are_cached_on_disk(tmp_path) -> None:
    options = SplitTableOptions(cache_dir=str(tmp_path), knots=17, candidates=7, samples=4)
    node = Node("y", "Mish", ("x",), {})
    first = load_or_build(RULES["Mish"], node, options)
    assert len(list(tmp_path.iterdir())) == 1
    again = load_or_build(RULES["Mish"], node, options)
    assert torch.equal(first, again)
    # attributes are part of the key: another alpha, another table
    load_or_build(RULES["Elu"], Node("y", "Elu", ("x",), {"alpha": 0.5}), options)
    load_or_build(RULES["Elu"], Node("y", "Elu", ("x",), {"alpha": 2.0}), options)
    assert len(list(tmp_path.iterdir())) == 3
