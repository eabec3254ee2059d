"""Shared checks for the per-op soundness tests: IBP and CROWN bounds of tiny graphs must
contain the concretely evaluated outputs of points sampled in the input box."""
from __future__ import annotations

import torch

from bounds.crown import backward_lower, intermediate_bounds
from bounds.graph.interpret import run
from bounds.graph.ir import Graph
from bounds.types import Interval

#: box families: (name, centre scale, radius scale)
BOX_KINDS = ("point", "tiny", "straddle", "wide", "positive", "negative", "large")


def random_box(shape: tuple[int, ...], seed: int, kind: str, dtype=torch.float64) -> Interval:
    """A (1, *shape) box of the given family."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(1, *shape, generator=g, dtype=dtype)
    radius = torch.rand(1, *shape, generator=g, dtype=dtype)
    if kind == "point":
        radius = radius * 0
    elif kind == "tiny":
        radius = radius * 1e-3
    elif kind == "straddle":
        centre, radius = centre * 0.2, radius + 0.3
    elif kind == "wide":
        centre, radius = centre * 2, radius * 5
    elif kind == "positive":
        centre, radius = centre.abs() + 1.5, radius
    elif kind == "negative":
        centre, radius = -centre.abs() - 1.5, radius
    elif kind == "large":
        centre, radius = centre * 100, radius * 30
    return Interval(centre - radius, centre + radius)


def sample_box(box: Interval, n: int, seed: int) -> torch.Tensor:
    """n uniform points plus n random vertices of the box (B = 2n)."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, *box.lower.shape[1:])
    u = torch.rand(shape, generator=g, dtype=box.lower.dtype)
    corners = torch.randint(0, 2, shape, generator=g).to(box.lower.dtype)
    pts = torch.cat([u, corners])
    return box.lower + pts * (box.upper - box.lower)


def check_sound(graph: Graph, box: Interval, seed: int = 0, rows: int = 6, n: int = 300,
                crown_inputs: bool = True) -> dict[str, torch.Tensor]:
    """Assert IBP (every value) and CROWN (random C on the output) contain sampled points.

    Returns {"crown": lower bounds (1, S), "sampled": the smallest sampled C·y (1, S)}.
    `crown_inputs` refines the intermediate bounds of nonlinear ops' inputs with CROWN too.
    """
    x = sample_box(box, n, seed)
    from bounds.graph.interpret import evaluate
    values = evaluate(graph, x, keep={nd.name for nd in graph.nodes})
    bounds = intermediate_bounds(graph, box, "crown" if crown_inputs else "ibp")
    scale = 1e-9
    for name, iv in bounds.items():
        v = values[name]
        tol = 1e-7 * (1 + v.abs()) + scale
        assert bool((v >= iv.lower - tol).all()), f"IBP lower of '{name}' violated by {float((iv.lower - v).max())}"
        assert bool((v <= iv.upper + tol).all()), f"IBP upper of '{name}' violated by {float((v - iv.upper).max())}"
    out = graph.outputs[0]
    y = run(graph, x)
    g = torch.Generator().manual_seed(seed + 1)
    C = torch.randn(1, rows, *y.shape[1:], generator=g, dtype=y.dtype)
    lb = backward_lower(graph, out, C, bounds)
    got = (C * y.unsqueeze(1)).reshape(y.shape[0], rows, -1).sum(-1)          # (2n, S)
    worst = got.min(0, keepdim=True).values
    tol = 1e-7 * (1 + got.abs().max()) + 1e-9
    assert bool((got >= lb - tol).all()), f"CROWN violated by {float((lb - got).max())}"
    return {"crown": lb, "sampled": worst}
