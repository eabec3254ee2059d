"""Where to split a nonlinear neuron's input interval, and how much a split would help.

Splitting the pre-activation interval [l, u] of an activation at p gives two sub-problems,
[l, p] and [p, u]; any p in [l, u] is sound (the children cover the parent), so the choice
only decides how fast branch-and-bound converges. The best p makes the children's
relaxations tight. That choice depends only on the function and on (l, u), so it is
precomputed on a grid of intervals into a table built once per function and cached on disk;
a lookup interpolates the table and is clamped into the interval, so a stale, coarse or
foreign table can slow the search but never make it unsound.

Gaps are measured per side of the relaxation, because a bound uses only one side of each
neuron: the lower line where the output bound's coefficient is positive, the upper where it
is negative. `SIDES` indexes the tables: both (upper - lower), lower (f - lower), upper
(upper - f). Choosing by side is what makes the split point depend on the property.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bounds.graph.ir import Node
from bounds.ops import RULES
from bounds.ops.base import ActivationRule
from bounds.types import Interval

log = logging.getLogger(__name__)

SIDES = ("both", "lower", "upper")
#: bump when the table layout or the criterion changes: old files are then rebuilt
_FORMAT = 1
#: activations whose kink sits at 0: a split there makes both children exact
_KINKED = ("Relu", "LeakyRelu")
#: a split point never lies closer to an end than this fraction of the width (progress)
_INTERIOR = 1e-4
#: ops tabulated by default: S-shaped (bounds.ops.s_shaped), GELU-like with a minimum
#: (Gelu, SiLU, Mish), convex-ish smooth or exponential-linear (Softplus, Elu, Selu, Celu).
#: Each table takes about a second to build (1 CPU thread) and is cached on disk.
TABULATED = ("Sigmoid", "Tanh", "Erf", "Atan", "Gelu", "nnverify.SiLU", "Mish", "Softplus", "Elu", "Selu", "Celu")


@dataclass(frozen=True)
class SplitTableOptions:
    """The split-point tables.

    cache_dir   where tables are kept; None: $NNVERIFY_CACHE_DIR, else ~/.cache/nnverify
    tabulate    activation ops that get a table (others: the rule's own `split_point`,
                the kink at 0 for ReLUs, else the midpoint): the smooth S-shaped and
                non-monotone ones, whose best split depends on (l, u) in no closed form
    knots       grid points per axis; they are spaced evenly in asinh(x), dense near 0
    reach       the grid covers [-reach, reach]; ends beyond it are clamped for the lookup
    candidates  split fractions tried per grid interval
    samples     points per child at which the relaxation gap is measured
    criterion   "worst": minimise the larger of the two children's mean gaps (what the
                branching score estimates); "area": minimise the summed area between the
                relaxation lines over both children (the published criterion)
    """

    cache_dir: str | None = None
    tabulate: tuple[str, ...] = TABULATED
    knots: int = 97
    reach: float = 40.0
    candidates: int = 31
    samples: int = 16
    criterion: str = "worst"

    def __post_init__(self) -> None:
        if self.criterion not in ("worst", "area"):
            raise ValueError(f"SplitTableOptions.criterion must be 'worst' or 'area', got {self.criterion!r}")
        if self.knots < 3 or self.candidates < 1 or self.samples < 2 or not self.reach > 0:
            raise ValueError("SplitTableOptions needs knots >= 3, candidates >= 1, samples >= 2 and reach > 0")

    def directory(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        env = os.environ.get("NNVERIFY_CACHE_DIR")
        base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nnverify"
        return base / "split_points"


def mean_gap(rule: ActivationRule, node: Node, lower: torch.Tensor, upper: torch.Tensor, side: torch.Tensor | int,
             samples: int = 8) -> torch.Tensor:
    """Mean distance between the function and its relaxation on [lower, upper], elementwise.

    `side` (0 both, 1 lower line, 2 upper line; a tensor broadcasting with the intervals, or
    one int) says which distance. Measured at `samples` evenly spaced interior points, in the
    intervals' dtype; an empty or point interval has gap 0.
    """
    below, above = side_gaps(rule, node, lower, upper, samples)
    side = torch.as_tensor(side, device=lower.device)
    return torch.where(side == 1, below, torch.where(side == 2, above, below + above))


def side_gaps(rule: ActivationRule, node: Node, lower: torch.Tensor, upper: torch.Tensor,
              samples: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean f - lower line, mean upper line - f) on [lower, upper], from one relaxation: the
    relaxation is what costs (root searches for smooth functions), so the sides share it."""
    upper = torch.maximum(upper, lower)
    r = rule.relax(node, Interval(lower, upper))
    t = (torch.arange(samples, dtype=lower.dtype, device=lower.device) + 0.5) / samples
    x = lower.unsqueeze(-1) + t * (upper - lower).unsqueeze(-1)
    f = rule.fn(node, x)
    below = (f - (r.lw.unsqueeze(-1) * x + r.lb.unsqueeze(-1))).mean(-1)
    above = ((r.uw.unsqueeze(-1) * x + r.ub.unsqueeze(-1)) - f).mean(-1)
    empty = ~(upper > lower)                 # point intervals (and NaN ends) have gap 0
    zero = torch.zeros_like(below)
    return torch.where(empty, zero, below.clamp(min=0)), torch.where(empty, zero, above.clamp(min=0))


def _knots(options: SplitTableOptions) -> torch.Tensor:
    top = math.asinh(options.reach)
    return torch.sinh(torch.linspace(-top, top, options.knots, dtype=torch.float64))


def _fractions(options: SplitTableOptions) -> torch.Tensor:
    return (torch.arange(options.candidates, dtype=torch.float64) + 1) / (options.candidates + 1)


def build_table(rule: ActivationRule, node: Node, options: SplitTableOptions) -> torch.Tensor:
    """(3, knots, knots) best split fractions per side for every grid interval [k_i, k_j], i < j
    (0.5 elsewhere)."""
    knots = _knots(options)
    G = len(knots)
    i, j = torch.triu_indices(G, G, offset=1)
    l, u = knots[i], knots[j]                                     # (M,)
    fr = _fractions(options)                                      # (F,)
    p = l.unsqueeze(1) + fr * (u - l).unsqueeze(1)                # (M, F)
    table = torch.full((3, G, G), 0.5, dtype=torch.float64)
    # one relaxation per child serves all three sides (SIDES: both, lower, upper)
    lb, la = side_gaps(rule, node, l.unsqueeze(1).expand_as(p), p, options.samples)
    rb, ra = side_gaps(rule, node, p, u.unsqueeze(1).expand_as(p), options.samples)
    for s, (left, right) in enumerate(((lb + la, rb + ra), (lb, rb), (la, ra))):
        if options.criterion == "area":
            cost = left * (p - l.unsqueeze(1)) + right * (u.unsqueeze(1) - p)
        else:
            cost = torch.maximum(left, right)
        cost = torch.nan_to_num(cost, nan=math.inf)
        table[s, i, j] = fr[cost.argmin(1)]
    return table.float()


def _table_key(rule: ActivationRule, node: Node, options: SplitTableOptions) -> str:
    """A file name that changes whenever the relaxation code, the op's attributes or the grid do."""
    try:
        source = inspect.getsource(type(rule))
    except (OSError, TypeError):
        source = type(rule).__qualname__
    parts = [str(_FORMAT), type(rule).__module__, type(rule).__qualname__, source,
             repr(sorted((k, repr(v)) for k, v in node.attrs.items())),
             repr((options.knots, options.reach, options.candidates, options.samples, options.criterion))]
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
    return f"{node.op}-{digest}.npy"


def load_or_build(rule: ActivationRule, node: Node, options: SplitTableOptions) -> torch.Tensor:
    """The table from the disk cache, or built (and saved) when it is missing or unreadable."""
    path = options.directory() / _table_key(rule, node, options)
    G = options.knots
    try:
        table = torch.from_numpy(np.load(path, allow_pickle=False))
        ok = table.shape == (3, G, G) and bool(torch.isfinite(table).all())
        ok = ok and bool(((table > 0) & (table < 1)).all())
        if ok:
            return table.float()
        log.warning("split-point table %s is malformed; rebuilding it", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, EOFError) as exc:
        log.warning("split-point table %s is unreadable (%s); rebuilding it", path, exc)
    table = build_table(rule, node, options)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # write to a temporary file and rename, so a concurrent reader never sees half a table
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, table.numpy())
        os.replace(tmp, path)
    except OSError as exc:
        log.info("could not cache the split-point table at %s: %s", path, exc)
    return table


def _interpolate(table: torch.Tensor, knots: torch.Tensor, side: torch.Tensor, l: torch.Tensor,
                 u: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation of the table at (l, u) in asinh coordinates (clamped to the grid)."""
    top = float(knots[-1])
    G = len(knots)
    scale = (G - 1) / (2 * math.asinh(top))

    def position(v):
        z = (torch.asinh(v.clamp(-top, top)) + math.asinh(top)) * scale
        i0 = z.floor().clamp(0, G - 2).long()
        return i0, (z - i0).clamp(0, 1)

    i0, wi = position(l)
    j0, wj = position(u)
    t = table[side, i0, j0] * (1 - wi) * (1 - wj) + table[side, i0 + 1, j0] * wi * (1 - wj)
    return t + table[side, i0, j0 + 1] * (1 - wi) * wj + table[side, i0 + 1, j0 + 1] * wi * wj


class SplitPoints:
    """Per-run chooser of split points: tables are loaded (or built) on first use per op."""

    def __init__(self, options: SplitTableOptions = SplitTableOptions()) -> None:
        self.options = options
        self._tables: dict[tuple[str, str], torch.Tensor] = {}
        self._knots = _knots(options)

    def table(self, node: Node) -> torch.Tensor | None:
        rule = RULES.get(node.op)
        if node.op not in self.options.tabulate or not isinstance(rule, ActivationRule):
            return None
        key = (node.op, repr(sorted((k, repr(v)) for k, v in node.attrs.items())))
        if key not in self._tables:
            self._tables[key] = load_or_build(rule, node, self.options)
        return self._tables[key]

    def points(self, node: Node, lower: torch.Tensor, upper: torch.Tensor,
               side: torch.Tensor | int = 0) -> torch.Tensor:
        """A split point strictly inside each (lower, upper) (elementwise, lower < upper)."""
        table = self.table(node)
        rule = RULES.get(node.op)
        if table is not None:
            knots = self._knots.to(lower)
            top = float(knots[-1])
            side = torch.as_tensor(side, device=lower.device).long().expand_as(lower)
            t = _interpolate(table.to(lower), knots, side, lower, upper).to(lower.dtype)
            lc, uc = lower.clamp(-top, top), upper.clamp(-top, top)
            p = torch.where(uc > lc, lc + t * (uc - lc), (lower + upper) / 2)
        elif getattr(rule, "split_point", None) is not None:
            p = rule.split_point(node, Interval(lower, upper)).to(lower.dtype)
        elif node.op in _KINKED:
            p = torch.zeros_like(lower)
        else:
            p = (lower + upper) / 2
        return interior(p, lower, upper)

    def children(self, node: Node, lower: torch.Tensor, upper: torch.Tensor, side: torch.Tensor | int,
                 branches: int = 2) -> torch.Tensor:
        """(branches + 1, *shape) cut points l = c_0 < c_1 < ... < c_k = u: the k pieces'
        union is [l, u]. More than two pieces: the piece with the larger gap is split again."""
        cuts = [lower, self.points(node, lower, upper, side), upper]
        rule = RULES[node.op]
        while len(cuts) - 1 < branches:
            lo, hi = torch.stack(cuts[:-1]), torch.stack(cuts[1:])
            gaps = mean_gap(rule, node, lo, hi, side) * (hi - lo)
            worst = gaps.argmax(0)                                  # which piece to cut, per neuron
            a = lo.gather(0, worst.unsqueeze(0)).squeeze(0)
            b = hi.gather(0, worst.unsqueeze(0)).squeeze(0)
            new = self.points(node, a, b, side)
            # insert the new cut and keep the cuts sorted per neuron
            allc = torch.sort(torch.stack(cuts + [new]), dim=0).values
            cuts = list(allc.unbind(0))
        return torch.stack(cuts)


def interior(p: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """`p` moved strictly inside (lower, upper) where that interval has room (NaN -> midpoint)."""
    width = upper - lower
    p = torch.where(torch.isfinite(p), p, (lower + upper) / 2)
    lo, hi = lower + _INTERIOR * width, upper - _INTERIOR * width
    return torch.minimum(torch.maximum(p, lo), hi)
