"""Ground truth for fuzz cases: dense sampling, a float64 PGD attack, and the exact MILP.

Everything here runs the network in float64, apart from and independently of the verifier's
own attack, so a counterexample found here is trustworthy: a point x in a case's box whose
outputs satisfy every row of some polytope (C·y <= d, checked exactly in float64).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from bounds.graph.interpret import run
from bounds.graph.ir import Graph, graph_to
from specs import Spec, SpecCase


@dataclass
class Samples:
    """Sampled points of one case's box and the float64 outputs there."""

    xs: np.ndarray      # (n, n_inputs)
    ys: np.ndarray      # (n, n_outputs)


@dataclass
class Witness:
    case: int
    x: np.ndarray
    value: float        # min over polytopes of max over rows of C·y - d: <= 0 violates
    source: str         # "sampling" | "pgd" | "milp"


@dataclass
class Evidence:
    samples: list[Samples]
    witness: Witness | None = None
    exact: str | None = None          # "sat" / "unsat" from the MILP, None when not run / undecided
    exact_value: float | None = None  # the MILP's smallest t* over polytopes
    notes: list[str] = field(default_factory=list)

    @property
    def sat(self) -> bool:
        return self.witness is not None and self.witness.value <= 0


def spec_values(case: SpecCase, ys: np.ndarray) -> np.ndarray:
    """(n,) min over polytopes of the max over rows of C·y - d; <= 0 iff y violates."""
    best = np.full(ys.shape[0], np.inf)
    for poly in case.polytopes:
        if poly.n_rows == 0:
            return np.full(ys.shape[0], -np.inf)
        best = np.minimum(best, (ys @ poly.C.T - poly.d).max(1))
    return best


def graph64(graph: Graph) -> Graph:
    return graph_to(graph, "cpu", torch.float64)


def evaluate64(g64: Graph, xs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        ys = run(g64, torch.as_tensor(xs, dtype=torch.float64).reshape(xs.shape[0], *g64.input.shape))
    return ys.reshape(xs.shape[0], -1).numpy()


def sample(g64: Graph, spec: Spec, n: int, rng: np.random.Generator) -> list[Samples]:
    """n points per case: the centre, corners (a quarter of them), the rest uniform."""
    out = []
    for case in spec.cases:
        t = rng.uniform(size=(n, case.lower.size))
        t[1 : n // 4] = t[1 : n // 4].round()
        t[0] = 0.5
        xs = case.lower + t * (case.upper - case.lower)
        out.append(Samples(xs, evaluate64(g64, xs)))
    return out


def pgd(g64: Graph, case: SpecCase, starts: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed-gradient descent on the spec value from each start, projected onto the box.
    Returns the best points and their values."""
    lower = torch.tensor(case.lower)   # copies: the spec's arrays are read-only
    upper = torch.tensor(case.upper)
    polys = [(torch.tensor(p.C), torch.tensor(p.d)) for p in case.polytopes if p.n_rows]
    x = torch.as_tensor(starts).clone()
    best_x, best_v = x.clone(), torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    step = (upper - lower) / 8
    for i in range(steps):
        x.requires_grad_(True)
        y = run(g64, x.reshape(x.shape[0], *g64.input.shape)).reshape(x.shape[0], -1)
        # smooth the max over rows a little so every row gets a gradient; the min over
        # polytopes stays hard (each start follows the polytope it is closest to)
        vals = torch.stack([(y @ C.T - d).max(1).values for C, d in polys], 1).min(1).values
        better = vals.detach() < best_v
        best_v = torch.where(better, vals.detach(), best_v)
        best_x[better] = x.detach()[better]
        (grad,) = torch.autograd.grad(vals.sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - step * grad.sign(), lower), upper)
        if (i + 1) % max(1, steps // 4) == 0:
            step = step / 2
    return best_x.numpy(), best_v.numpy()


def _exact(graph: Graph, spec: Spec, time_limit: float, ev: Evidence) -> None:
    from branching.milp import milp_encodable, verify_milp

    if not milp_encodable(graph):
        return
    try:
        verdict, x, best = verify_milp(graph, spec, time_limit=time_limit)
    except Exception as exc:  # noqa: BLE001 - an oracle failure is reported, not a case failure
        ev.notes.append(f"MILP failed: {type(exc).__name__}: {exc}")
        return
    ev.exact_value = float(best)
    if verdict == "sat" and x is not None:
        ev.exact = "sat"
        g64 = graph64(graph)
        for k, case in enumerate(spec.cases):
            if case.contains(np.asarray(x), tol=1e-9):
                v = float(spec_values(case, evaluate64(g64, np.asarray(x)[None]))[0])
                if ev.witness is None or v < ev.witness.value:
                    ev.witness = Witness(k, np.clip(np.asarray(x), case.lower, case.upper), v, "milp")
    elif verdict == "unsat":
        ev.exact = "unsat"


def gather(graph: Graph, spec: Spec, seed: int, n_samples: int = 2000, pgd_steps: int = 40,
           pgd_starts: int = 16, milp_seconds: float = 10.0) -> Evidence:
    """All the ground truth we can afford for one case."""
    rng = np.random.default_rng([seed, 3])
    g64 = graph64(graph)
    samples = sample(g64, spec, n_samples, rng)
    ev = Evidence(samples)
    for k, (case, s) in enumerate(zip(spec.cases, samples)):
        vals = spec_values(case, s.ys)
        i = int(np.argmin(vals))
        if ev.witness is None or vals[i] < ev.witness.value:
            ev.witness = Witness(k, s.xs[i], float(vals[i]), "sampling")
        if pgd_steps and any(p.n_rows for p in case.polytopes):
            order = np.argsort(vals)[:pgd_starts]
            xs, vs = pgd(g64, case, s.xs[order], pgd_steps)
            j = int(np.argmin(vs))
            if vs[j] < ev.witness.value:
                ev.witness = Witness(k, xs[j], float(vs[j]), "pgd")
    if milp_seconds > 0:
        t = time.monotonic()
        _exact(graph, spec, milp_seconds, ev)
        if time.monotonic() - t > milp_seconds:
            ev.notes.append("MILP ran past its time limit")
    return ev
