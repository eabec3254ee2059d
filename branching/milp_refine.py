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

import inspect
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generator, TypeVar

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

T = TypeVar("T")


@dataclass(frozen=True)
class RefineOptions:
    #: seconds HiGHS may spend on one bound of one neuron (its dual bound is kept either way)
    per_solve: float = 1.0
    #: at most this many variables times encoded values in the dense encoding (memory guard)
    max_encoding: int = 40_000_000
    #: HiGHS models solving one layer's neurons at once, each in its own thread (HiGHS
    #: releases the GIL while it solves); 0: one per CPU core this process may use
    workers: int = 0

    def thread_count(self) -> int:
        if self.workers > 0:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)


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


@dataclass
class _Proven:
    bounds: dict[int, tuple[float, float]]    # neuron -> (lower, upper) proven, slack included
    solves: int = 0


def _solve_share(enc, M: torch.Tensor, c: torch.Tensor, neurons: list[int], per_solve: float, deadline) -> _Proven:
    """Minimise and maximise each neuron's pre-activation over the encoded prefix with one
    HiGHS model; HiGHS's proven dual bound after the time limit bounds it either way."""
    model = new_model(enc.lbs, enc.ubs, enc.integer, enc.rows, per_solve, presolve=False, heuristics=False)
    n_vars = len(enc.lbs)
    columns = np.arange(n_vars, dtype=np.int32)
    out = _Proven({})
    for j in neurons:
        ends = [-np.inf, np.inf]
        for side, sign in enumerate((1.0, -1.0)):  # minimise z_j, then maximise it
            if deadline.expired():
                out.bounds[j] = (ends[0], ends[1])
                return out
            model.setOptionValue("time_limit", float(min(per_solve, max(deadline.remaining(), 0.01))))
            model.changeColsCost(n_vars, columns, sign * M[j].numpy())
            model.clearSolver()
            model.run()
            out.solves += 1
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
            ends[side] = value - slack if sign > 0 else value + slack
        out.bounds[j] = (ends[0], ends[1])
    return out


def refine_intervals(graph64: Graph, box: Interval, bounds: dict[str, Interval], deadline,
                     options: RefineOptions = RefineOptions(),
                     retighten: Callable[[dict[str, Interval]], dict[str, Interval]] | None = None,
                     done: Callable[[], bool] | None = None
                     ) -> tuple[dict[str, Interval], RefineReport]:
    """Refine the unstable neurons of every ReLU input after the first (which is exact
    already: a linear function of the box). `box` and `bounds` have batch 1 and live in
    float64 on the CPU; `deadline` (verifier.deadline.Deadline) ends the refinement early,
    keeping what was proven, and so does `done()` once true (asked after each `retighten`,
    e.g. whether the intervals so far decide the caller's question). Returns new intervals
    (never wider than `bounds`) and a report."""
    order = [n.name for n in graph64.nodes if n.name in pre_activation_nodes(graph64)]
    sizes = sum(int(np.prod(graph64[n].shape)) for n in order)

    def layer(name: str, earlier: list[str], bounds: dict[str, Interval]) -> tuple[Interval, int] | None:
        iv = bounds[name]
        lower, upper = iv.lower.reshape(-1).double().clone(), iv.upper.reshape(-1).double().clone()
        unstable = ((lower < 0) & (upper > 0)).nonzero().flatten()
        if len(unstable) == 0:
            return None
        # the layered encoding: a variable per ReLU output that is not constant zero, and a
        # binary per unstable one
        width = box.lower.numel() + sum(int((bounds[n].upper > 0).sum())
                                        + int(((bounds[n].lower < 0) & (bounds[n].upper > 0)).sum())
                                        for n in earlier)
        if width * sizes > options.max_encoding:
            raise StopRefining("encoding too large")
        enc = encode(graph64, box.lower.double(), box.upper.double(), bounds, until=name, layered=True)
        M, c = enc.affine(name)
        neurons = _order(lower, upper, unstable)
        threads = min(options.thread_count(), len(neurons))
        # neurons dealt round-robin (the widest first in every share), each share solved in
        # order by its own model: without presolve, since HiGHS's MIP presolve has known
        # wrong-bound reductions (see milp.MILP_SLACK)
        shares = [neurons[t::threads] for t in range(threads)]
        with ThreadPoolExecutor(threads) as pool:
            found = list(pool.map(lambda share: _solve_share(enc, M, c, share, options.per_solve, deadline), shares))
        for proven in found:
            for j, (low, up) in proven.bounds.items():
                lower[j] = max(float(lower[j]), low)
                upper[j] = min(float(upper[j]), up)
        return (Interval(lower.reshape(iv.lower.shape).to(iv.lower.dtype),
                         upper.reshape(iv.upper.shape).to(iv.upper.dtype)), sum(p.solves for p in found))

    return run_to_end(refine_layer_by_layer(graph64, bounds, deadline, layer, retighten, done))


class StopRefining(Exception):
    """Raised by a layer refiner (refine_layer_by_layer) to end the refinement; the message is
    the report's reason."""


def refine_layer_by_layer(graph: Graph, bounds: dict[str, Interval], deadline, refine_layer,
                          retighten: Callable[[dict[str, Interval]], dict[str, Interval]] | None = None,
                          done: Callable[[], bool] | None = None
                          ) -> Generator[None, None, tuple[dict[str, Interval], RefineReport]]:
    """The loop both refinements share: every relaxed value after the first, in order,
    refined by `refine_layer(name, earlier relaxed values, bounds)` (None: nothing to do;
    else (interval never wider, solves); a generator of that when it takes turns, which this
    one then yields through), `retighten` between layers and `done()` after it ending the
    loop once true, as does the deadline. Returns the intervals and a report."""
    start = time.monotonic()
    report = RefineReport()
    bounds = dict(bounds)
    relaxed = pre_activation_nodes(graph)
    order = [n.name for n in graph.nodes if n.name in relaxed]
    for position, name in enumerate(order[1:], start=1):
        if deadline.expired():
            report.reason = "deadline"
            break
        before = bounds[name]
        try:
            found = refine_layer(name, order[:position], bounds)
            if inspect.isgenerator(found):
                found = yield from found
        except StopRefining as stop:
            report.reason = str(stop)
            break
        if found is None:
            continue
        refined, solves = found
        report.solves += solves
        report.layers += 1
        report.tightened += int((refined.lower > before.lower).sum() + (refined.upper < before.upper).sum())
        was = (before.lower < 0) & (before.upper > 0)
        report.stabilised += int((was & ((refined.lower >= 0) | (refined.upper <= 0))).sum())
        bounds[name] = refined
        if retighten is not None and position < len(order) - 1 and not deadline.expired():
            bounds = retighten(bounds)
            if done is not None and done():
                report.reason = "done"
                break
    report.seconds = time.monotonic() - start
    return bounds, report


def run_to_end(steps: Generator[None, None, T]) -> T:
    """Run a generator that yields only to take turns; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


__all__ = ["RefineOptions", "RefineReport", "StopRefining", "refine_intervals", "refine_layer_by_layer",
           "run_to_end"]
