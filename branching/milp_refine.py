"""Tighter intermediate intervals for ReLU networks from time-limited MILPs (HiGHS).

alpha-CROWN with optimised intermediate layers is about as tight as the LP (triangle)
relaxation; what is left comes from the integrality of earlier ReLUs. For a pre-activation
neuron z_j, the MILP of the network prefix up to its layer (big-M with the intervals found so
far) is minimised and maximised; after a short time limit HiGHS's proven dual bound is a
valid bound on z_j, usually well inside the LP one. Layers go in order, so each layer's MILPs
use the earlier layers' refined intervals, and the caller may re-run its bound propagation in
between (`retighten`) so that fewer neurons of the next layer remain unstable.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import highspy
import numpy as np
import torch

from bounds.crown import pre_activation_nodes
from bounds.graph.ir import Graph
from bounds.types import Interval
from branching.milp import encode, new_model

#: HiGHS stops at feasibility tolerances of 1e-9 (set in new_model); the refined bounds are
#: widened by this much (relative to their magnitude, plus absolute) before they are used
REFINE_SLACK = 1e-6


@dataclass(frozen=True)
class RefineOptions:
    #: seconds HiGHS may spend on one bound of one neuron (its dual bound is kept either way)
    per_solve: float = 1.0
    #: at most this many variables times encoded values in the dense encoding (memory guard)
    max_encoding: int = 40_000_000


@dataclass
class RefineReport:
    solves: int = 0
    stabilised: int = 0
    tightened: int = 0
    seconds: float = 0.0
    layers: int = 0
    reason: str = ""


def _order(lower: torch.Tensor, upper: torch.Tensor, idx: torch.Tensor) -> list[int]:
    """Unstable neurons, the widest triangle relaxation (-l·u / (u - l)) first."""
    gap = -lower[idx] * upper[idx] / (upper[idx] - lower[idx])
    return idx[torch.argsort(gap, descending=True)].tolist()


def refine_intervals(graph64: Graph, box: Interval, bounds: dict[str, Interval], deadline,
                     options: RefineOptions = RefineOptions(),
                     retighten: Callable[[dict[str, Interval]], dict[str, Interval]] | None = None
                     ) -> tuple[dict[str, Interval], RefineReport]:
    """Refine the unstable neurons of every ReLU input after the first (which is exact
    already: a linear function of the box). `box` and `bounds` have batch 1 and live in
    float64 on the CPU; `deadline` (verifier.deadline.Deadline) ends the refinement early,
    keeping what was proven. Returns new intervals (never wider than `bounds`) and a report."""
    start = time.monotonic()
    report = RefineReport()
    bounds = dict(bounds)
    relaxed = pre_activation_nodes(graph64)
    order = [n.name for n in graph64.nodes if n.name in relaxed]
    sizes = sum(int(np.prod(graph64[n].shape)) for n in order)
    for position, name in enumerate(order[1:], start=1):
        if deadline.expired():
            report.reason = "deadline"
            break
        iv = bounds[name]
        lower, upper = iv.lower.reshape(-1).double().clone(), iv.upper.reshape(-1).double().clone()
        unstable = ((lower < 0) & (upper > 0)).nonzero().flatten()
        if len(unstable) == 0:
            continue
        width = box.lower.numel() + 2 * sum(int(((bounds[n].lower < 0) & (bounds[n].upper > 0)).sum())
                                            for n in order[:position])
        if width * sizes > options.max_encoding:
            report.reason = "encoding too large"
            break
        enc = encode(graph64, box.lower.double(), box.upper.double(), bounds, until=name)
        M, c = enc.affine(name)
        n_vars = len(enc.lbs)
        columns = np.arange(n_vars, dtype=np.int32)
        # without presolve: HiGHS's MIP presolve has known wrong-bound reductions (see milp.MILP_SLACK)
        model = new_model(enc.lbs, enc.ubs, enc.integer, enc.rows, options.per_solve, presolve=False)
        report.layers += 1
        for j in _order(lower, upper, unstable):
            for sign in (1.0, -1.0):  # minimise z_j, then maximise it
                if deadline.expired():
                    break
                model.setOptionValue("time_limit", float(min(options.per_solve, max(deadline.remaining(), 0.01))))
                model.changeColsCost(n_vars, columns, sign * M[j].numpy())
                model.clearSolver()
                model.run()
                report.solves += 1
                status = model.getModelStatus()
                info = model.getInfo()
                if status == highspy.HighsModelStatus.kInfeasible:
                    continue  # no input reaches this prefix: any bound holds; keep ours
                proven = info.mip_dual_bound if enc.integer else (
                    info.objective_function_value if status == highspy.HighsModelStatus.kOptimal else -np.inf)
                if not np.isfinite(proven):
                    continue
                value = sign * proven + float(c[j])      # a bound on z_j (lower if sign > 0)
                slack = REFINE_SLACK * (1.0 + abs(value))
                if sign > 0 and value - slack > lower[j]:
                    lower[j] = value - slack
                    report.tightened += 1
                elif sign < 0 and value + slack < upper[j]:
                    upper[j] = value + slack
                    report.tightened += 1
            if lower[j] >= 0 or upper[j] <= 0:
                report.stabilised += 1
        bounds[name] = Interval(lower.reshape(iv.lower.shape).to(iv.lower.dtype),
                                upper.reshape(iv.upper.shape).to(iv.upper.dtype))
        if retighten is not None and position < len(order) - 1 and not deadline.expired():
            bounds = retighten(bounds)
    report.seconds = time.monotonic() - start
    return bounds, report


__all__ = ["RefineOptions", "RefineReport", "refine_intervals"]
