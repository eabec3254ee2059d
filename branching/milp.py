"""Exact verification of piecewise-linear networks by mixed-integer programming (HiGHS).

Each value is kept as an affine expression over the MILP's variables (the inputs and one
variable per unstable ReLU), so linear layers cost no constraints. Unstable ReLUs use the
big-M encoding with the tightest intervals available (CROWN). For each polytope the MILP
minimises t subject to C_i·y - d_i <= t: the polytope is reachable iff the optimum t* <= 0.
"""
from __future__ import annotations

import math

from dataclasses import dataclass

import highspy
import numpy as np
import torch

from bounds.crown import intermediate_bounds
from bounds.graph.ir import CONSTANT, INPUT, Graph
from bounds.ops import RULES
from bounds.ops.base import LinearRule
from bounds.ops.relu import LeakyRelu, Relu
from bounds.types import Interval
from specs import Spec, SpecCase


#: a MILP/LP refutes a polytope only when its proven lower bound on t* exceeds this. HiGHS's
#: default feasibility tolerances (1e-7 / 1e-6) can only enlarge the feasible set, which lowers
#: the bound (the safe side); tighter tolerances (1e-9) made its MIP presolve return a wrong
#: "optimal" value above the true one on a small ReLU net, so the defaults are kept and a
#: refutation is confirmed by a second solve with presolve off (see _solve)
MILP_SLACK = 1e-6


@dataclass(frozen=True)
class PolytopeOptimum:
    case: int
    polytope: int
    value: float | None            # t*, None when the solver gave no optimum
    x: np.ndarray | None           # input attaining it (flat)
    status: str
    #: a proven lower bound on t* (the MIP dual bound; t* itself for an LP): only this may
    #: refute the polytope, since a MIP stops within its gap above the true optimum
    lower: float | None = None


def _linear_map(node, xs_shapes, consts, var_positions):
    """Jacobian and offset of a linear node with respect to its variable inputs (float64)."""
    args = []
    for i, shape in enumerate(xs_shapes):
        args.append(consts[i] if i not in var_positions else torch.zeros((1, *shape), dtype=torch.float64))
    offset = RULES[node.op].forward(node, args).reshape(-1)
    jacs = []
    for i in var_positions:
        def f(z, i=i):
            a = list(args)
            a[i] = z.reshape(1, *xs_shapes[i])
            return RULES[node.op].forward(node, a).reshape(-1)
        n_in = int(np.prod(xs_shapes[i]))
        jacs.append(torch.autograd.functional.jacobian(f, torch.zeros(n_in, dtype=torch.float64)))
    return jacs, offset


@dataclass
class Encoding:
    """The MILP of a network prefix: variable bounds, which variables are binary, constraint
    rows (coefficients, lower, upper), and every encoded value as an affine expression
    (M, c) over the variables (the first n_in are the inputs)."""
    lbs: list[float]
    ubs: list[float]
    integer: list[int]
    rows: list[tuple[dict[int, float], float, float]]
    exprs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    n_in: int

    def affine(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) of a value, padded to the current number of variables."""
        M, c = self.exprs[name]
        pad = len(self.lbs) - M.shape[1]
        return (torch.cat([M, torch.zeros(M.shape[0], pad, dtype=torch.float64)], 1) if pad else M), c


def encode(g64: Graph, box_l: torch.Tensor, box_u: torch.Tensor, bounds: dict[str, Interval],
           fixed: dict[str, torch.Tensor] | None = None, until: str | None = None,
           layered: bool = False) -> Encoding:
    """Encode the float64 graph over the box, unstable ReLUs by big-M from `bounds` (batch 1),
    sign decisions in `fixed` (pre-activation name -> (numel,) in {-1, 0, 1}) as constraints;
    stop after the node `until` when given. `layered`: every ReLU output that is not constant
    zero gets a variable (stable active ones by an equality row), so that each later value is
    an expression over the last ReLU layer only: more variables, but on deep networks far
    sparser rows than expressions over the inputs and every earlier ReLU (HiGHS's iterations
    cost about the number of nonzeros)."""
    n_in = box_l.numel()
    lbs, ubs = list(box_l.reshape(-1).tolist()), list(box_u.reshape(-1).tolist())
    integer: list[int] = []
    rows: list[tuple[dict[int, float], float, float]] = []  # (coeffs, lower, upper)
    exprs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for node in g64.nodes:
        if node.op == CONSTANT:
            continue
        if node.op == INPUT:
            exprs[node.name] = (torch.eye(n_in, dtype=torch.float64), torch.zeros(n_in, dtype=torch.float64))
            continue
        rule = RULES[node.op]
        var_pos = [i for i, n in enumerate(node.inputs) if not g64[n].is_constant]
        if isinstance(rule, (Relu, LeakyRelu)):
            M, c = exprs[node.inputs[0]]
            interval = bounds[node.inputs[0]]
            lo, up = interval.lower.reshape(-1).double(), interval.upper.reshape(-1).double()
            slope = 0.0 if isinstance(rule, Relu) else float(node.attrs.get("alpha", 0.01))
            if slope > 1:
                raise NotImplementedError("LeakyRelu with slope > 1 in MILP")
            signs = fixed.get(node.inputs[0]) if fixed else None
            free = (lo < 0) & (up > 0)
            if signs is not None:
                free &= signs.reshape(-1).cpu() == 0
            # room for two new variables per neuron at most; trimmed to those made below
            newM = torch.zeros(M.shape[0], len(lbs) + (2 * M.shape[0] if layered else 2 * int(free.sum())),
                               dtype=torch.float64)
            newM[:, : M.shape[1]] = M
            newc = c.clone()
            def materialise(j: int, factor: float, low: float, high: float) -> None:
                # y = factor * (e + c) as its own variable, in [low, high]
                y = len(lbs)
                lbs.append(low)
                ubs.append(high)
                e = {k: -factor * float(v) for k, v in enumerate(M[j].tolist()) if v != 0}
                e[y] = 1.0
                rows.append((e, float(factor * c[j]), float(factor * c[j])))
                newM[j] = 0
                newM[j, y] = 1.0
                newc[j] = 0.0

            for j in range(M.shape[0]):
                if signs is not None and int(signs[j]) != 0:
                    e = {k: float(v) for k, v in enumerate(M[j].tolist()) if v != 0}
                    if int(signs[j]) > 0:   # e >= 0, and then y = e
                        rows.append((e, -float(c[j]), np.inf))
                        if layered:
                            materialise(j, 1.0, max(float(lo[j]), 0.0), float(up[j]))
                        continue
                    rows.append((e, -np.inf, -float(c[j])))   # e <= 0, and then y = slope*e
                    if layered and slope != 0.0:
                        materialise(j, slope, float(slope * lo[j]), 0.0)
                        continue
                    newM[j] = 0
                    newM[j, : M.shape[1]] = slope * M[j]
                    newc[j] = slope * c[j]
                    continue
                if lo[j] >= 0:
                    if layered:
                        materialise(j, 1.0, float(lo[j]), float(up[j]))
                    continue
                if up[j] <= 0:
                    if layered and slope != 0.0:
                        materialise(j, slope, float(slope * lo[j]), float(slope * up[j]))
                        continue
                    newM[j] = 0
                    newM[j, : M.shape[1]] = slope * M[j]
                    newc[j] = slope * c[j]
                    continue
                y, a = len(lbs), len(lbs) + 1
                lbs += [float(slope * lo[j]), 0.0]
                ubs += [float(up[j]), 1.0]
                integer.append(a)
                e = {k: float(v) for k, v in enumerate(M[j].tolist()) if v != 0}
                # y >= e and y >= slope*e; the binary a picks which line y sits on:
                # a = 1 (e >= 0): y <= e, a = 0 (e <= 0): y <= slope*e, big-M from [lo, up]
                big_off = float((slope - 1) * lo[j])   # max of y - e when e <= 0
                big_on = float((1 - slope) * up[j])    # max of y - slope*e when e >= 0
                rows.append(({**{k: -v for k, v in e.items()}, y: 1.0}, float(c[j]), np.inf))
                rows.append(({**{k: -slope * v for k, v in e.items()}, y: 1.0}, float(slope * c[j]), np.inf))
                rows.append(({**{k: -v for k, v in e.items()}, y: 1.0, a: big_off}, -np.inf, float(c[j]) + big_off))
                rows.append(({**{k: -slope * v for k, v in e.items()}, y: 1.0, a: -big_on}, -np.inf, float(slope * c[j])))
                newM[j] = 0
                newM[j, y] = 1.0
                newc[j] = 0.0
            width = len(lbs)
            exprs[node.name] = (newM[:, :width], newc)
            for name in list(exprs):
                if exprs[name][0].shape[1] < width:
                    m, cc = exprs[name]
                    exprs[name] = (torch.cat([m, torch.zeros(m.shape[0], width - m.shape[1], dtype=torch.float64)], 1), cc)
            continue
        if not isinstance(rule, LinearRule) or rule.needs_bounds(node, [g64[n].is_constant for n in node.inputs]):
            raise NotImplementedError(f"MILP encoding has no rule for {node.describe()}")
        shapes = [tuple(g64[n].shape) for n in node.inputs]
        consts = [g64[n].value.unsqueeze(0).double() if g64[n].is_constant and g64[n].value.is_floating_point()
                  else (g64[n].value.unsqueeze(0) if g64[n].is_constant else None) for n in node.inputs]
        jacs, offset = _linear_map(node, shapes, consts, var_pos)
        width = max(exprs[node.inputs[i]][0].shape[1] for i in var_pos)
        M = torch.zeros(offset.numel(), width, dtype=torch.float64)
        c = offset.clone()
        for J, i in zip(jacs, var_pos):
            Mi, ci = exprs[node.inputs[i]]
            Mi = torch.cat([Mi, torch.zeros(Mi.shape[0], width - Mi.shape[1], dtype=torch.float64)], 1)
            M += J @ Mi
            c += J @ ci
        exprs[node.name] = (M, c)
        if node.name == until:
            break
    return Encoding(lbs, ubs, integer, rows, exprs, n_in)


def build_and_solve(graph: Graph, case: SpecCase, polytope_index: int, time_limit: float = 60.0,
                    bounds: dict[str, Interval] | None = None,
                    fixed: dict[str, torch.Tensor] | None = None) -> PolytopeOptimum:
    """Minimise t over the box (and the sign decisions in `fixed`: pre-activation name ->
    (numel,) in {-1, 0, 1}) subject to C_i·y - d_i <= t for the polytope's rows."""
    g64 = graph
    box_l = torch.tensor(case.lower, dtype=torch.float64).reshape(1, *graph.input.shape)
    box_u = torch.tensor(case.upper, dtype=torch.float64).reshape(1, *graph.input.shape)
    if bounds is None:
        from bounds.graph.ir import graph_to
        g64 = graph_to(graph, dtype=torch.float64)
        bounds = intermediate_bounds(g64, Interval(box_l, box_u), "crown")
    enc = encode(g64, box_l, box_u, bounds, fixed)
    lbs, ubs, integer, rows, n_in = enc.lbs, enc.ubs, enc.integer, enc.rows, enc.n_in
    M, c = enc.exprs[g64.outputs[0]]
    poly = case.polytopes[polytope_index]
    C = torch.tensor(poly.C, dtype=torch.float64)
    d = torch.tensor(poly.d, dtype=torch.float64)
    t = len(lbs)
    lbs.append(-np.inf)
    ubs.append(np.inf)
    width = len(lbs)
    CM = C @ torch.cat([M, torch.zeros(M.shape[0], width - M.shape[1], dtype=torch.float64)], 1)
    for i in range(C.shape[0]):
        coeffs = {k: float(v) for k, v in enumerate(CM[i].tolist()) if v != 0}
        coeffs[t] = coeffs.get(t, 0.0) - 1.0
        rows.append((coeffs, -np.inf, float(d[i] - C[i] @ c)))
    return _solve(lbs, ubs, integer, rows, t, n_in, case, polytope_index, time_limit)


#: HiGHS's primal heuristics find feasible points, which a bound never needs: off, its dual
#: bound rises sooner (eran mnist_relu_9_200, a second-layer neuron's lower bound after 0.2 s
#: -0.832 instead of -2.604, the LP's -0.836; after 4 s 0.085 instead of 0.049)
NO_HEURISTICS = {"mip_heuristic_effort": 0.0, "mip_heuristic_run_feasibility_jump": False,
                 "mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False,
                 "mip_heuristic_run_root_reduced_cost": False}


def new_model(lbs, ubs, integer, rows, time_limit: float, presolve: bool = True,
              heuristics: bool = True) -> highspy.Highs:
    """A silent HiGHS model (default feasibility tolerances) with no objective yet;
    `heuristics` False: no search for feasible points (for dual bounds alone)."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("mip_rel_gap", 1e-6)
    if not presolve:
        h.setOptionValue("presolve", "off")
    if not heuristics:
        for name, value in NO_HEURISTICS.items():
            h.setOptionValue(name, value)
    n = len(lbs)
    inf = highspy.kHighsInf
    h.addVars(n, np.array([max(v, -inf) for v in lbs]), np.array([min(v, inf) for v in ubs]))
    if integer:
        h.changeColsIntegrality(len(integer), np.array(integer, dtype=np.int32),
                                np.array([highspy.HighsVarType.kInteger] * len(integer)))
    for coeffs, lo, up in rows:
        idx = np.array(list(coeffs), dtype=np.int32)
        h.addRow(max(lo, -inf), min(up, inf), len(idx), idx, np.array([coeffs[i] for i in coeffs]))
    return h


def _solve(lbs, ubs, integer, rows, t, n_in, case, polytope_index, time_limit) -> PolytopeOptimum:
    res = _solve_once(lbs, ubs, integer, rows, t, n_in, polytope_index, time_limit, presolve=True)
    if res.lower is not None and res.lower > MILP_SLACK:
        # a refutation must survive a second solve without presolve (HiGHS's MIP presolve has
        # known wrong-optimum / wrong-infeasible reductions); the weaker proof is kept
        again = _solve_once(lbs, ubs, integer, rows, t, n_in, polytope_index, time_limit, presolve=False)
        if again.lower is None or again.lower < res.lower:
            best = again if again.value is not None and again.value < res.value else res
            return PolytopeOptimum(-1, polytope_index, best.value, best.x,
                                   f"{res.status}; {again.status} without presolve", again.lower)
    return res


def _solve_once(lbs, ubs, integer, rows, t, n_in, polytope_index, time_limit, presolve: bool) -> PolytopeOptimum:
    h = new_model(lbs, ubs, integer, rows, time_limit, presolve)
    n = len(lbs)
    h.changeColCost(t, 1.0)
    h.run()
    status = h.getModelStatus()
    name = h.modelStatusToString(status)
    if status == highspy.HighsModelStatus.kInfeasible:  # no input reaches this region at all
        return PolytopeOptimum(-1, polytope_index, np.inf, None, name, np.inf)
    if status != highspy.HighsModelStatus.kOptimal:
        return PolytopeOptimum(-1, polytope_index, None, None, name)
    sol = np.array(h.getSolution().col_value)
    lower = float(h.getInfo().mip_dual_bound) if integer else float(sol[t])
    return PolytopeOptimum(-1, polytope_index, float(sol[t]), sol[:n_in].copy(), name, min(lower, float(sol[t])))


def verify_milp(graph: Graph, spec: Spec, time_limit: float = 60.0) -> tuple[str, np.ndarray | None, float]:
    """('sat'|'unsat'|'unknown', witness x, smallest t*) over every case and polytope.

    `unsat` needs every polytope's proven lower bound above 0 (not only the incumbent)."""
    best = np.inf
    verdict = "unsat"
    for k, case in enumerate(spec.cases):
        for p in range(len(case.polytopes)):
            res = build_and_solve(graph, case, p, time_limit)
            if res.value is None:
                return "unknown", None, best
            best = min(best, res.value)
            if res.value <= 0:
                return "sat", res.x, best
            if not (res.lower is not None and res.lower > MILP_SLACK):
                verdict = "unknown"
    return verdict, None, best


def milp_encodable(graph: Graph) -> bool:
    """True when every node is linear or a ReLU / LeakyReLU (slope <= 1): the MILP is exact."""
    for node in graph.nodes:
        if node.op in (CONSTANT, INPUT):
            continue
        rule = RULES.get(node.op)
        if isinstance(rule, (Relu, LeakyRelu)):
            if isinstance(rule, LeakyRelu) and float(node.attrs.get("alpha", 0.01)) > 1:
                return False
            continue
        if not isinstance(rule, LinearRule) or rule.needs_bounds(node, [graph[n].is_constant for n in node.inputs]):
            return False
    return True


def relu_count(graph: Graph) -> int:
    """ReLU-like neurons of the network (elements of their inputs)."""
    return sum(math.prod(graph[node.inputs[0]].shape) for node in graph.nodes
               if isinstance(RULES.get(node.op), (Relu, LeakyRelu)))


def unstable_relus(graph: Graph, bounds: dict[str, Interval]) -> int:
    """Most unstable ReLU-like neurons (interval straddling 0) of any batch entry."""
    total = None
    for node in graph.nodes:
        if isinstance(RULES.get(node.op), (Relu, LeakyRelu)) and node.inputs[0] in bounds:
            iv = bounds[node.inputs[0]]
            n = iv.lower.shape[0]
            count = ((iv.lower < 0) & (iv.upper > 0)).reshape(n, -1).sum(1)
            total = count if total is None else total + count
    return 0 if total is None else int(total.max())


def exact_search(graph: Graph, spec: Spec, bounds: dict[str, Interval], deadline,
                 skip: set[tuple[int, int]] = frozenset()) -> tuple[str, int, np.ndarray | None, list[str]]:
    """Decide every (case, polytope) not in `skip` by one MILP each, with `bounds` (batch 1 or
    one entry per case) as the big-M intervals. Returns (verdict, case, witness x, notes)."""
    g64 = graph
    for k, case in enumerate(spec.cases):
        per_case = {name: Interval(iv.lower[min(k, iv.lower.shape[0] - 1)].unsqueeze(0).double(),
                                   iv.upper[min(k, iv.upper.shape[0] - 1)].unsqueeze(0).double())
                    for name, iv in bounds.items()}
        for p in range(len(case.polytopes)):
            if (k, p) in skip:
                continue
            if deadline.expired():
                return "timeout", k, None, []
            res = build_and_solve(g64, case, p, time_limit=max(0.01, deadline.remaining()), bounds=per_case)
            if res.value is not None and res.value <= 0:
                return "sat", k, res.x, []
            if res.value is None or res.lower is None or not res.lower > MILP_SLACK:
                return "unknown", k, None, [f"the MILP of case {k} polytope {p} ended {res.status}"]
    return "unsat", 0, None, []
