"""Upper bounds on a chain's Lipschitz constant: naive, LipSDP-Layer, LipSDP-Neuron.

Every SDP answer goes through the same three steps: our barrier solver (solver.py) on the
rescaled, reduced LMI (formulations.py); a pull-back of its multipliers a hair towards the
strictly feasible starting point, so that they pass the certificate's rounding margins; the
float64 certificate (certify.py) on the ORIGINAL weights. Only the certificate is reported.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from bounds.lipschitz import formulations, solver
from bounds.lipschitz.certify import Certificate, Multipliers, certify
from bounds.lipschitz.chain import Activation, Chain
from bounds.lipschitz.composed import Composition, Pooling
from bounds.lipschitz.dag import Dag
from bounds.lipschitz.descent import descend
from bounds.lipschitz.structured import StructuredAffine
from bounds.lipschitz.naive import naive_bound

log = logging.getLogger(__name__)

METHODS = ("neuron", "layer", "naive")


@dataclass(frozen=True)
class UpperBound:
    value: float                      # the certified bound (math.inf when nothing was proved)
    method: str
    norm: float
    solver_value: float = math.nan    # what the solver's own objective claimed (not certified)
    multipliers: Multipliers | None = None
    time_s: float = 0.0
    newton_steps: int = 0
    gap: float = math.nan             # relative optimality gap bound of the solver's last stage
    timed_out: bool = False
    pullback: float = 0.0             # stages stepped back + weight of the earlier iterate mixed in

    def details(self) -> dict:
        return {"method": self.method, "norm": "inf" if self.norm == math.inf else 2, "upper": self.value,
                "solver_value": self.solver_value, "time_s": round(self.time_s, 4),
                "newton_steps": self.newton_steps, "relative_gap": self.gap,
                "timed_out": self.timed_out, "pullback": self.pullback}


def _certify_pulled_back(chain: Chain | Dag, problem: formulations.Problem, iterates: list[torch.Tensor],
                         norm: float) -> tuple[Certificate, Multipliers, float]:
    """Certify the last iterate; when the rounding margins reject it (optimal multipliers sit
    on the boundary of the LMI), mix in a little of the previous stage's iterate, which is
    strictly feasible with a wider margin - the LMI is convex, so the mix is too."""
    ys = iterates[::-1]
    for k, y in enumerate(ys):
        inner = ys[k + 1] if k + 1 < len(ys) else None
        thetas = (0.0, 1e-3, 1e-2, 1e-1) if inner is not None else (0.0,)
        for theta in thetas:
            yc = y if theta == 0 else (1 - theta) * y + theta * inner
            mult = problem.unpack(yc)
            cert = certify(chain, mult, norm)
            if math.isfinite(cert.value):
                return cert, mult, float(k) + theta
    return Certificate(math.inf, math.inf, "no multipliers passed the certificate"), problem.unpack(ys[0]), math.inf


def upper_bound(chain: Chain | Dag | Composition, method: str = "neuron", norm: float = 2,
                options: solver.SolverOptions = solver.SolverOptions(),
                start: Multipliers | None = None) -> UpperBound:
    """A certified upper bound on the l2 (or l-inf -> l2 for norm=inf) Lipschitz constant of a
    chain or of a network with skip connections (Dag: the exact LipSDP over all activation
    outputs, not a product of per-block bounds); of a Composition, the product of its parts'
    bounds."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got '{method}'")
    begin = time.monotonic()
    if isinstance(chain, Composition):
        return _composed_bound(chain, method, norm, options, begin)
    if method == "naive":
        return UpperBound(naive_bound(chain, norm), method, norm, time_s=time.monotonic() - begin)
    if not chain.activations and norm == 2:
        cert = certify(chain, Multipliers(()), 2)      # exactly the spectral norm
        return UpperBound(cert.value, method, norm, cert.value, Multipliers(()), time.monotonic() - begin)
    problem = formulations.build(chain, method, norm)
    y0 = solver.initial_point(problem)
    y_start = y0
    if start is not None:
        guess = problem.pack(start)
        for theta in (0.01, 0.1, 0.5):
            cand = (1 - theta) * guess + theta * y0
            if solver._Barrier(problem).logdet(cand) is not None:
                y_start = cand
                break
    report = solver.solve(problem, y_start, options)
    cert, mult, theta = _certify_pulled_back(chain, problem, report.iterates, norm)
    claimed = math.sqrt(max(report.objective * problem.objective_factor, 0.0))
    log.info("LipSDP-%s (l%s): certified %.8g (solver %.8g) in %.2f s, %d Newton steps, pull-back %g",
             method, "inf" if norm == math.inf else 2, cert.value, claimed, time.monotonic() - begin,
             report.newton_steps, theta)
    rel_gap = report.gap / max(report.objective, 1e-300) if math.isfinite(report.gap) else math.inf
    result = UpperBound(cert.value, method, norm, claimed, mult, time.monotonic() - begin, report.newton_steps,
                        rel_gap, report.timed_out, theta)
    if method == "neuron" and not report.centred and not report.timed_out:
        result = _recover(chain, norm, options, result, begin)
    return result


def _recover(chain: Chain | Dag, norm: float, options: solver.SolverOptions, result: UpperBound,
             begin: float) -> UpperBound:
    """The neuron path left the central path (seen on wide layers fed by few inputs, residual
    nets, deep l-inf chains), so its last point may be far from the optimum: certificate
    descent (descent.py) walks downhill on the certified value itself from there, for at most
    half the time the path took."""
    if result.multipliers is None or not math.isfinite(result.value):
        return result
    now = time.monotonic()
    deadline = now + max(10.0, 0.5 * (now - begin))
    if options.deadline is not None:
        deadline = min(deadline, options.deadline)
    mult, value = descend(chain, result.multipliers, norm, deadline=deadline)
    log.info("LipSDP-neuron path not centred (certified %.8g); certificate descent %.8g in %.1f s",
             result.value, value, time.monotonic() - now)
    if value < result.value:
        return UpperBound(value, "neuron", norm, result.solver_value, mult, time.monotonic() - begin,
                          result.newton_steps, math.inf, result.timed_out, result.pullback)
    return result


def _composed_bound(net: Composition, method: str, norm: float, options: solver.SolverOptions,
                    begin: float) -> UpperBound:
    """prod over the parts: the first bounded from the requested input norm into l2, the
    others l2 -> l2 (see composed.py); the l-inf product of induced norms is the alternative
    (naive_bound) the caller compares with."""
    total, steps, timed_out = 1.0, 0, False
    for k, part in enumerate(net.parts):
        into_l2 = norm if k == 0 else 2
        if isinstance(part, (StructuredAffine, Pooling)):
            value = part.norm(2) if into_l2 == 2 else part.norm_inf_to_2()
        elif isinstance(part, Activation):
            value = part.lipschitz * (1.0 if into_l2 == 2 else math.sqrt(part.size))
        else:
            # the l2 product of norms, times sqrt(n) from |x|_2 <= sqrt(n) |x|_inf (naive_bound's
            # own l-inf value is l-inf -> l-inf, which cannot feed an l2 part)
            value = naive_bound(part, 2) * (1.0 if into_l2 == 2 else math.sqrt(part.n_inputs))
            if method != "naive":
                res = upper_bound(part, method, into_l2, options)
                value = min(res.value, value)
                steps += res.newton_steps
                timed_out |= res.timed_out
        total *= value
    return UpperBound(total, method, norm, total, None, time.monotonic() - begin, steps, math.nan, timed_out)


__all__ = ["UpperBound", "upper_bound", "METHODS"]
