"""Every bound method and every verdict-producing search, checked on one fuzz case.

Bound checks: each lower bound of C·y (and each intermediate interval) must contain every
sampled point's value. Verdict checks: `unsat` with a known counterexample is unsound;
`sat` must come with a point that really violates the spec (float64, tolerance 1e-4).
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from bounds.graph.interpret import evaluate
from bounds.graph.ir import Graph, graph_to
from bounds.types import Interval
from branching.problem import SpecTensors
from specs import Spec
from tests.fuzz.generators import FuzzCase, piecewise_linear
from tests.fuzz.oracles import Evidence, evaluate64, graph64, spec_values
from verifier.deadline import Deadline

log = logging.getLogger(__name__)

#: bounds in float64 must contain float64 samples up to rounding; float32 bounds get more room
TOL = {torch.float64: 1e-7, torch.float32: 2e-4}
#: exceptions that mean "this method does not apply here", not a defect
NOT_APPLICABLE = (NotImplementedError,)

BOUND_CHECKS = ("ibp", "crown", "ibp32", "crown32", "alpha", "beta")
VERDICT_CHECKS = ("input_split", "relu_split", "general_split", "verify")
ALL_CHECKS = BOUND_CHECKS + VERDICT_CHECKS


@dataclass(frozen=True)
class Failure:
    check: str
    kind: str          # "unsound-bound" | "unsound-unsat" | "bogus-sat" | "crash"
    detail: str

    @property
    def unsound(self) -> bool:
        return self.kind in ("unsound-bound", "unsound-unsat")


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: str        # "ok" | "n/a" | verdict word for the searches | "fail"
    failures: tuple[Failure, ...] = ()


# ----------------------------------------------------------------------------------------
# bound containment

def _problem(spec: Spec, graph: Graph, dtype: torch.dtype) -> SpecTensors:
    return SpecTensors.from_spec(spec, tuple(graph.input.shape), "cpu", dtype)


def _contain_rows(check: str, lower: torch.Tensor, prob: SpecTensors, spec: Spec, ev: Evidence,
                  tol: float, mask: list[np.ndarray] | None = None) -> list[Failure]:
    """lower (K, R) must be <= C_k·y for every sample of case k (only samples in mask[k])."""
    out = []
    lo = lower.detach().double().numpy()
    C = prob.C.double().numpy()
    valid = (prob.group >= 0).numpy()
    for k, s in enumerate(ev.samples):
        ys = s.ys if mask is None else s.ys[mask[k]]
        if ys.shape[0] == 0:
            continue
        vals = ys @ C[k].T                               # (n, R)
        gap = lo[k][None, :] - vals - tol * (1 + np.abs(vals))
        gap[:, ~valid[k]] = -np.inf
        if np.isnan(lo[k][valid[k]]).any():
            continue                                      # NaN never refutes: not unsound
        if (gap > 0).any():
            n, r = np.unravel_index(int(np.argmax(gap)), gap.shape)
            out.append(Failure(check, "unsound-bound",
                               f"case {k} row {r}: lower bound {lo[k][r]:.9g} above sampled value "
                               f"{vals[n, r]:.9g}"))
    return out


def _contain_intervals(check: str, g: Graph, bounds: dict[str, Interval], ev: Evidence, tol: float,
                       mask: list[np.ndarray] | None = None) -> list[Failure]:
    """Every interval in `bounds` ((K or 1, *shape)) must contain every sample's value there."""
    out = []
    g64 = graph64(g)
    names = {n for n in bounds if n in g64 and not g64[n].is_constant}
    for k, s in enumerate(ev.samples):
        xs = s.xs if mask is None else s.xs[mask[k]]
        if xs.shape[0] == 0:
            continue
        with torch.no_grad():
            values = evaluate(g64, torch.as_tensor(xs).reshape(xs.shape[0], *g64.input.shape), keep=names)
        for name in sorted(names):
            iv = bounds[name]
            b = min(k, iv.lower.shape[0] - 1)
            lo = iv.lower[b].detach().double().reshape(1, -1)
            up = iv.upper[b].detach().double().reshape(1, -1)
            v = values[name].reshape(xs.shape[0], -1).double()
            slack = tol * (1 + v.abs())
            bad = (v < lo - slack) | (v > up + slack)
            if bool(bad.any()):
                i, j = (int(t) for t in bad.nonzero()[0])
                out.append(Failure(check, "unsound-bound",
                                   f"case {k} value '{name}'[{j}] = {float(v[i, j]):.9g} outside "
                                   f"[{float(lo[0, j]):.9g}, {float(up[0, j]):.9g}]"))
                break
    return out


def check_bounds(case: FuzzCase, ev: Evidence, method: str) -> list[Failure]:
    """IBP / CROWN (float64 or float32 by the '32' suffix) and alpha-CROWN containment."""
    from bounds.crown import spec_lower_bounds

    dtype = torch.float32 if method.endswith("32") else torch.float64
    g = graph_to(case.graph, "cpu", dtype)
    prob = _problem(case.spec, g, dtype)
    box = Interval(prob.lower, prob.upper)
    known: dict[str, Interval] = {}
    if method == "alpha":
        from bounds.alpha import AlphaOptions, optimise_all

        lower, known = optimise_all(g, box, prob.C, AlphaOptions(iterations=8, stop_above=None))
    else:
        lower = spec_lower_bounds(g, box, prob.C, method.removesuffix("32"), bounds=known)
    return (_contain_rows(method, lower, prob, case.spec, ev, TOL[dtype])
            + _contain_intervals(method, g, known, ev, TOL[dtype]))


def check_beta(case: FuzzCase, ev: Evidence, seed: int) -> list[Failure] | None:
    """beta-CROWN on random ReLU split decisions taken from a sampled point's signs (so the
    sub-problem is not empty): bounds must contain every sample that respects the splits."""
    from bounds.alpha import AlphaOptions, optimise_lower
    from bounds.crown import intermediate_bounds

    g = graph64(case.graph)
    pre = [n.inputs[0] for n in g.nodes if piecewise_linear(n.op)]
    if not pre:
        return None
    rng = np.random.default_rng([seed, 4])
    prob = _problem(case.spec, g, torch.float64)
    K = prob.n_cases
    anchor = np.stack([s.xs[int(rng.integers(s.xs.shape[0]))] for s in ev.samples])
    with torch.no_grad():
        at = evaluate(g, torch.as_tensor(anchor).reshape(K, *g.input.shape), keep=set(pre))
    splits = {}
    for name in pre:
        sign = torch.sign(at[name].reshape(K, -1))
        chosen = torch.as_tensor(rng.random(sign.shape) < 0.4)
        splits[name] = torch.where(chosen, sign, torch.zeros_like(sign)).long()
    box = Interval(prob.lower, prob.upper)
    bounds = intermediate_bounds(g, box, "crown", splits=splits)
    if any(bool((bounds[n].lower > bounds[n].upper).any()) for n in pre):
        return [Failure("beta", "unsound-bound", "splits taken from a sampled point were judged infeasible")]
    C = prob.C.reshape(K, prob.C.shape[1], *g.output.shape)
    lower, _ = optimise_lower(g, g.outputs[0], C, bounds, AlphaOptions(iterations=6, stop_above=None),
                              splits=splits)
    # samples on the split side of every decision
    mask = []
    for k, s in enumerate(ev.samples):
        with torch.no_grad():
            vals = evaluate(g, torch.as_tensor(s.xs).reshape(s.xs.shape[0], *g.input.shape), keep=set(pre))
        ok = np.ones(s.xs.shape[0], dtype=bool)
        for name in pre:
            v = vals[name].reshape(s.xs.shape[0], -1).numpy()
            sg = splits[name][k].numpy()
            ok &= np.all((sg == 0) | (sg * v >= 0), axis=1)
        mask.append(ok)
    return (_contain_rows("beta", lower, prob, case.spec, ev, TOL[torch.float64], mask)
            + _contain_intervals("beta", g, bounds, ev, TOL[torch.float64], mask))


# ----------------------------------------------------------------------------------------
# verdicts

def _judge(check: str, status: str, witness: np.ndarray | None, case_index: int | None, fc: FuzzCase,
           ev: Evidence) -> list[Failure]:
    out = []
    if status == "unsat" and ev.sat:
        w = ev.witness
        out.append(Failure(check, "unsound-unsat",
                           f"said unsat, but {w.source} found x={np.array2string(w.x, precision=9)} in case "
                           f"{w.case} with spec value {w.value:.6g} <= 0"))
    if status == "sat" and witness is not None:
        x = np.asarray(witness, dtype=np.float64).reshape(-1)
        y = evaluate64(graph64(fc.graph), x[None])[0]
        if not fc.spec.is_violated_by(x, y, tol=1e-4):
            best = min(float(spec_values(c, y[None])[0]) for c in fc.spec.cases)
            out.append(Failure(check, "bogus-sat", f"said sat, but its witness gives spec value {best:.6g} > 0"))
    return out


def _bab(check: str, fc: FuzzCase, ev: Evidence, seconds: float) -> CheckResult:
    from branching.bab import input_split_bab
    from branching.general_split import general_split_bab
    from branching.relu_split import relu_split_bab

    g = graph64(fc.graph)
    prob = _problem(fc.spec, g, torch.float64)
    acts = {n.op for n in g.nodes if n.op in _activations()}
    if check == "relu_split" and not (acts and all(piecewise_linear(a) for a in acts)):
        return CheckResult(check, "n/a")
    if check == "general_split" and not acts - {"Relu", "LeakyRelu"}:
        return CheckResult(check, "n/a")
    run: Callable = {"input_split": input_split_bab, "relu_split": relu_split_bab,
                     "general_split": general_split_bab}[check]
    outcome = run(g, prob, Deadline(seconds))
    witness = outcome.witness.reshape(-1).numpy() if outcome.witness is not None else None
    return CheckResult(check, outcome.status, tuple(_judge(check, outcome.status, witness, outcome.witness_case,
                                                           fc, ev)))


def _activations() -> set[str]:
    from bounds.ops import RULES
    from bounds.ops.base import ActivationRule

    return {op for op, rule in RULES.items() if isinstance(rule, ActivationRule) or rule.needs_input_bounds}


def _verify(fc: FuzzCase, ev: Evidence, seconds: float) -> CheckResult:
    from verifier.api import verify
    from verifier.options import AttackOptions, VerifyOptions

    opts = VerifyOptions(timeout=seconds, attack=AttackOptions(pgd_rounds=2, pgd_steps=30, max_seconds=0.3))
    res = verify(fc.graph, fc.spec, options=opts)
    word = res.word
    witness = np.asarray(res.witness_x) if res.witness_x is not None else None
    return CheckResult("verify", word, tuple(_judge("verify", word, witness, None, fc, ev)))


def run_check(check: str, fc: FuzzCase, ev: Evidence, seed: int, seconds: float = 3.0) -> CheckResult:
    """One named check; exceptions other than 'not applicable' become 'crash' failures."""
    try:
        if check in ("ibp", "crown", "ibp32", "crown32", "alpha"):
            fails = check_bounds(fc, ev, check)
            return CheckResult(check, "fail" if fails else "ok", tuple(fails))
        if check == "beta":
            fails = check_beta(fc, ev, seed)
            if fails is None:
                return CheckResult(check, "n/a")
            return CheckResult(check, "fail" if fails else "ok", tuple(fails))
        if check == "verify":
            return _verify(fc, ev, seconds)
        return _bab(check, fc, ev, seconds)
    except NOT_APPLICABLE as exc:
        return CheckResult(check, "n/a", ())
    except Exception as exc:  # noqa: BLE001 - a crash is a finding too, with its traceback
        tb = traceback.format_exc(limit=4)
        log.debug("check %s crashed: %s", check, tb)
        return CheckResult(check, "fail", (Failure(check, "crash", f"{type(exc).__name__}: {exc}"),))


def run_all(fc: FuzzCase, ev: Evidence, seed: int, checks: tuple[str, ...] = ALL_CHECKS,
            seconds: float = 3.0) -> list[CheckResult]:
    return [run_check(c, fc, ev, seed, seconds) for c in checks]
