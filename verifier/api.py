"""`verify(model, spec)`: the whole pipeline, ordered so that easy instances are easy.

  1. cheap random sampling in every input box (milliseconds)
  2. bounds (CROWN or IBP) on all boxes at once: `unsat` when every polytope is refuted
  3. PGD on the polytopes the bounds left open, with what is left of the time budget
  4. otherwise `unknown`, saying which polytope came closest to a proof and to a violation

A counterexample is reported only after it replays outside our graph code (onnxruntime or
the torch module). Bad models and specs raise (VerifierError / SpecError); running out of
time gives a `timeout` Result.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from bounds.crown import RecordOnly, spec_lower_bounds
from bounds.graph.interpret import run as run_graph
from branching.bab import BaBOutcome, input_split_bab, is_out_of_memory
from branching.milp import exact_search, milp_encodable, relu_count, unstable_relus
from branching.milp_refine import RefineOptions, refine_intervals, run_to_end
from branching.split_refine import SplitRefineOptions, refine_by_splits_steps, relu_network
from branching.general_split import general_split_bab
from branching.relu_split import TightenedRoot, relu_split_bab
from bounds.alpha import IntermediateSlopes, optimise_all
from bounds.ops import RULES
from bounds.ops.base import ActivationRule
from branching.problem import EXACT_SLACK, SpecTensors, certified_margin, round_outward
from bounds.errors import ModelLoadError
from bounds.graph.ir import Graph, graph_to
from bounds.ibp import UnsupportedBoundError
from bounds.types import Interval
from specs import Spec, SpecError, parse_vnnlib
from verifier import attack as atk
from verifier.deadline import Deadline
from verifier.options import VerifyOptions
from verifier.replay import GraphReference, OnnxReference, Reference, TorchReference, crosscheck, replay
from verifier.result import Outcome, Result

log = logging.getLogger(__name__)
progress_log = logging.getLogger("verifier.progress")

ModelLike = Union[str, Path, torch.nn.Module, Graph]
SpecLike = Union[str, Path, Spec]

#: most input boxes bounded in one batch (halved on out-of-memory)
MAX_CASES_PER_BATCH = 64
#: box centres compared between our graph and the reference before anything else
CROSSCHECK_POINTS = 4


class _Timeout(Exception):
    def __init__(self, during: str, best_bound: float | None = None, details: dict | None = None) -> None:
        super().__init__(during)
        self.during = during
        self.best_bound = best_bound
        self.details = details or {}


# ----------------------------------------------------------------------------------------
# loading

def _stem(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".gz", ".onnx", ".vnnlib"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def load_spec(spec: SpecLike) -> Spec:
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, (str, Path)):
        return parse_vnnlib(spec)
    raise TypeError(f"spec must be a VNN-LIB path or a specs.Spec, not {type(spec).__name__}")


def load_model(model: ModelLike, spec: Spec, input_shape: tuple[int, ...] | None) -> tuple[Graph, Reference, str]:
    """(graph, independent reference for replays, short name)."""
    if isinstance(model, Graph):
        from bounds.graph.passes import check_supported

        check_supported(model)  # as load_onnx and from_torch do: weights a rule needs constant must be
        return model, GraphReference(model), model.name
    if isinstance(model, torch.nn.Module):
        from bounds.graph.torch_import import from_torch

        shape = tuple(input_shape) if input_shape is not None else (1, spec.n_inputs)
        graph = from_torch(model, shape)
        return graph, TorchReference(model, shape), type(model).__name__
    if isinstance(model, (str, Path)):
        from bounds.graph.onnx_import import load_onnx

        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"{path}: " + ("not a file" if path.exists() else "no such model file"))
        graph = load_onnx(path)
        return graph, OnnxReference(path, tuple(graph.input.shape)), _stem(path)
    raise TypeError(f"model must be an ONNX path, a torch.nn.Module or a Graph, not {type(model).__name__}")


# ----------------------------------------------------------------------------------------
# the pipeline

def _refutes_the_box(problem: SpecTensors, lower: torch.Tensor) -> bool:
    """Whether the spec rows' lower bounds (1, R) refute every polytope of a one-box problem."""
    case = torch.zeros(1, dtype=torch.long, device=problem.lower.device)
    return bool(problem.refuted(case, lower).all())


@dataclass
class _Run:
    """Per-call state of one verification run (never shared between calls)."""

    graph: Graph                 # float32 on the chosen device (attacks)
    cpu_graph: Graph             # float32 on the CPU, for cross-checks
    bound_graph: Graph           # in the bound precision (options.precision) on the chosen device
    bound_dtype: torch.dtype
    spec: Spec
    reference: Reference
    options: VerifyOptions
    deadline: Deadline
    instance: str
    gen: torch.Generator
    device: torch.device
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    rejected: int = 0
    # margins[k][p]: certified margin of polytope p of case k (None: no bound computed)
    margins: list[list[float]] | None = None
    bound_error: str = ""
    attack_loss: dict[tuple[int, int], float] = field(default_factory=dict)
    open_targets: atk.Targets | None = None
    found_during_bab: Result | None = None
    pgd_best: tuple[torch.Tensor, torch.Tensor] | None = None   # best PGD points and losses so far
    crown_intervals: tuple[dict[str, Interval], float] | None = None  # every value's CROWN interval, seconds
    #: (case, polytope) -> signs of the input coefficients of the CROWN bound of the polytope's
    #: best row (n_in,): the box corners it picks start the first PGD round
    crown_signs: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    #: polytopes the bounds refute when the network is read in exact arithmetic (float64
    #: bounds, margin above EXACT_SLACK only): with the default float32 allowance, a run that
    #: ends open although every polytope is here says that --arithmetic exact decides it
    exact_refuted: set[tuple[int, int]] = field(default_factory=set)

    # ---- helpers -----------------------------------------------------------------------
    def result(self, outcome: Outcome, stage: str, message: str, **kw: Any) -> Result:
        details = dict(self.details)
        details["timings"] = {k: round(v, 6) for k, v in self.timings.items()}
        if self.rejected:
            details["rejected_candidates"] = self.rejected
        details.update(kw.pop("details", {}))
        return Result(outcome, time_s=self.deadline.elapsed(), message=message, stage=stage,
                      instance=self.instance, details=details, **kw)

    def retime(self, res: Result) -> Result:
        """`res` with the timings recorded since it was made."""
        details = dict(res.details)
        details["timings"] = {k: round(v, 6) for k, v in self.timings.items()}
        return dataclasses.replace(res, details=details, time_s=self.deadline.elapsed())

    def with_exact_hint(self, res: Result) -> Result:
        """An open result whose every polytope the bounds refute in exact arithmetic (inside
        the default float32 allowance only) says so, and how to get that answer."""
        if (res.outcome not in (Outcome.UNKNOWN, Outcome.TIMEOUT) or self.options.arithmetic != "float32"
                or self.margins is None
                or not all((k, p) in self.exact_refuted or m > 0
                           for k, ms in enumerate(self.margins) for p, m in enumerate(ms))):
            return res
        hint = ("the bounds refute every output polytope when the network is read in exact arithmetic: "
                "the margins left are below the float32 allowance; --arithmetic exact answers unsat for "
                "the network computed exactly on its weights")
        message = res.message.rstrip(".") + "; " + hint + "."
        return dataclasses.replace(res, message=message, details={**res.details, "exact_arithmetic_refutes": True})

    def timed(self, name: str, start: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - start

    def check(self, during: str) -> None:
        if self.deadline.expired():
            raise _Timeout(during)

    def live_cases(self) -> list[int]:
        """Cases whose box is not empty."""
        return [k for k, c in enumerate(self.spec.cases) if np.all(c.lower <= c.upper)]

    # ---- stages ------------------------------------------------------------------------
    def try_candidates(self, cands: list[atk.Candidate]) -> Result | None:
        for cand in cands:
            rep = replay(self.reference, self.spec, cand.x, cand.case)
            if rep.ok:
                poly = self.spec.cases[rep.case].polytopes[rep.polytope]
                violation = float(np.max(poly.C @ rep.y - poly.d)) if poly.n_rows else -math.inf
                msg = (f"counterexample found by {cand.stage} in case {rep.case} (polytope {rep.polytope}); "
                       f"{rep.message}")
                return self.result(Outcome.SAT, cand.stage, msg, witness_x=rep.x, witness_y=rep.y,
                                   best_bound=violation if math.isfinite(violation) else None,
                                   details={"violated": {"case": rep.case, "polytope": rep.polytope}})
            self.rejected += 1
        return None

    def trivial(self) -> Result | None:
        """Specs decided without looking at the network."""
        live = self.live_cases()
        if not live:
            why = "the spec has no case" if not self.spec.cases else "every input box of the spec is empty"
            return self.result(Outcome.UNSAT, "spec", f"{why}, so no input can violate it", best_bound=math.inf)
        for k in live:
            case = self.spec.cases[k]
            if any(p.n_rows == 0 for p in case.polytopes):
                # no output condition: every point of the box is a counterexample
                cand = atk.Candidate(x=(case.lower + case.upper) / 2, y=np.zeros(self.spec.n_outputs),
                                     case=k, polytope=0, loss=-math.inf, stage="sampling")
                found = self.try_candidates([cand])
                if found is not None:
                    return found
        return None

    def targets(self, keep: set[tuple[int, int]] | None = None) -> atk.Targets | None:
        rows = []
        for k in self.live_cases():
            case = self.spec.cases[k]
            polys = [(p, poly.C, poly.d) for p, poly in enumerate(case.polytopes)
                     if poly.n_rows and (keep is None or (k, p) in keep)]
            if polys:
                rows.append((k, case.lower, case.upper, polys))
        return atk.build_targets(rows, self.device) if rows else None

    def record_attack(self, targets: atk.Targets, res: atk.AttackResult) -> None:
        for i, loss in enumerate(res.best_loss.tolist()):
            key = (targets.case[i], targets.polytope[i])
            if loss < self.attack_loss.get(key, math.inf):
                self.attack_loss[key] = loss

    def crosscheck(self) -> None:
        live = self.live_cases()[:CROSSCHECK_POINTS]
        xs = np.stack([(self.spec.cases[k].lower + self.spec.cases[k].upper) / 2 for k in live])
        diff = crosscheck(self.reference, self.cpu_graph, xs)
        self.details["crosscheck_max_diff"] = diff

    def sampling(self, targets: atk.Targets) -> tuple[Result | None, atk.AttackResult]:
        n = self.options.attack.random_samples
        while True:
            try:
                res = atk.random_search(self.graph, targets, n, self.gen, self.deadline, self.options.attack.batch_size)
                break
            except (RuntimeError, MemoryError) as exc:
                if n <= 1 or not is_out_of_memory(exc):
                    raise
                n //= 2
                log.info("out of memory sampling; retrying with %d points per box", n)
        self.record_attack(targets, res)
        return self.try_candidates(res.candidates), res

    def bounds(self) -> None:
        """Certified margins of every polytope of every live case (self.margins)."""
        method = self.options.bound_method
        live = self.live_cases()
        margins = [[-math.inf] * len(c.polytopes) for c in self.spec.cases]
        for k, c in enumerate(self.spec.cases):
            if k not in live:
                margins[k] = [math.inf] * len(c.polytopes)
        chunk = MAX_CASES_PER_BATCH
        pos = 0
        while pos < len(live):
            self.check(method)
            batch = live[pos:pos + chunk]
            try:
                self._bound_batch(batch, margins, method)
            except (RuntimeError, MemoryError) as exc:  # the CPU allocator reports RuntimeError
                if chunk == 1 or not is_out_of_memory(exc):
                    raise
                chunk = max(1, chunk // 2)
                log.info("out of memory bounding %d boxes (%s); retrying with %d", len(batch), exc, chunk)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            pos += len(batch)
        self.margins = margins

    def _bound_batch(self, batch: list[int], margins: list[list[float]], method: str) -> None:
        cases = [self.spec.cases[k] for k in batch]
        stacks = [c.stacked() for c in cases]
        S = max(1, max(st[0].shape[0] for st in stacks))
        n_out = self.spec.n_outputs
        B = len(batch)
        C = np.zeros((B, S, n_out))
        d = np.full((B, S), math.inf)          # padded rows: margin -inf, they never refute
        for b, (Cb, db, _) in enumerate(stacks):
            C[b, : Cb.shape[0]] = Cb
            d[b, : db.shape[0]] = db
        graph = self.bound_graph
        dtype = self.bound_dtype
        shape = graph.input.shape
        lower = np.stack([c.lower for c in cases])
        upper = np.stack([c.upper for c in cases])
        if dtype == torch.float64:
            box = Interval(torch.as_tensor(lower).reshape(B, *shape).to(self.device),
                           torch.as_tensor(upper).reshape(B, *shape).to(self.device))
        else:
            box = Interval(round_outward(lower, -1).reshape(B, *shape).to(self.device),
                           round_outward(upper, +1).reshape(B, *shape).to(self.device))
        Ct = torch.as_tensor(C, dtype=dtype, device=self.device)
        known: dict[str, Interval] = {}
        record = RecordOnly([graph.inputs[0]])   # the attack's corner starts need the input's alone
        start = time.monotonic()
        lb = spec_lower_bounds(graph, box, Ct, method=method, bounds=known,
                               record=record).double().cpu().numpy()  # (B, S)
        coefficients = record.get(graph.inputs[0])
        if method == "crown" and batch == list(range(len(self.spec.cases))):
            # the same intervals start alpha-CROWN later (these boxes contain its boxes)
            self.crown_intervals = (known, time.monotonic() - start)
        # the bound is of C32·y; C·y differs by at most |C - C32|·max|y|
        rounding = np.abs(C - Ct.double().cpu().numpy())
        if rounding.any():
            out = known.get(graph.outputs[0])
            if out is None:
                lb = np.full_like(lb, -math.inf)
            else:
                y_abs = torch.maximum(out.lower.abs(), out.upper.abs()).double().cpu().numpy().reshape(-1, n_out)
                y_abs = np.broadcast_to(y_abs, (B, n_out))
                lb = lb - np.einsum("bso,bo->bs", rounding, y_abs)
        with np.errstate(invalid="ignore"):
            row_margin = lb - d
            # NaN compares False: never refutes; padded rows (d = inf) never either
            lb_t, d_t = torch.from_numpy(lb), torch.from_numpy(d)
            refutes = (certified_margin(lb_t, d_t, self.options.refute_slack(dtype)) > 0).numpy()
            # refuted when the network is read in exact arithmetic (only float64 bounds can say)
            exact = (certified_margin(lb_t, d_t, EXACT_SLACK) > 0).numpy()
        for b, k in enumerate(batch):
            _, _, group = stacks[b]
            for p in range(len(self.spec.cases[k].polytopes)):
                rows = np.nonzero(group == p)[0]
                if rows.size == 0:
                    margins[k][p] = -math.inf
                    continue
                m = row_margin[b, rows]
                m = np.where(np.isnan(m), -math.inf, m)
                best = int(np.argmax(m))
                if coefficients is not None:
                    A = coefficients[b if coefficients.shape[0] == B else 0, rows[best]]
                    self.crown_signs[(k, p)] = (A.reshape(-1) > 0).to(self.device)
                if dtype == torch.float64 and exact[b, rows].any():
                    self.exact_refuted.add((k, p))
                # a polytope counts as refuted only through a row that clears the slack
                margins[k][p] = float(m[best]) if refutes[b, rows].any() else min(float(m[best]), 0.0)

    def pgd(self, open_targets: atk.Targets, starts: torch.Tensor, start_loss: torch.Tensor,
            budget: Deadline | None = None, stop_on_stall: bool = False,
            corners: torch.Tensor | None = None) -> Result | None:
        """PGD rounds until a replayed counterexample, pgd_rounds, max_seconds or the deadline
        (or, with `stop_on_stall`, a cycle of round scales without progress).
        Every round starts one restart per target at the best point so far; the first also
        starts restarts at `corners` (P, E, n_in)."""
        opts = self.options.attack
        budget = budget or self.deadline.within(opts.max_seconds)
        best_x, best_loss = starts.clone(), start_loss.clone()
        cycle = len(atk.ROUND_SCALES)
        cycle_start = best_loss.clone()
        for r in range(opts.pgd_rounds):
            if r == 1:
                cycle_start = best_loss.clone()  # the first round's gain over random sampling says little
            if stop_on_stall and r > 1 and (r - 1) % cycle == 0:
                # on a robust network the loss settles within the first cycle; later rounds
                # only delay the bounds (measured: 10 of a 12 s unsat run on mnist 256x2)
                gain = (cycle_start - best_loss) / (cycle_start.abs() + 1e-3)
                if not bool((gain > opts.stall_tol).any()):
                    break
                cycle_start = best_loss.clone()
            if budget.expired():
                break
            res = atk.pgd(self.graph, open_targets, opts, self.gen, budget, starts=best_x,
                          scale=atk.ROUND_SCALES[r % len(atk.ROUND_SCALES)],
                          extra_starts=corners if r == 0 else None)
            self.record_attack(open_targets, res)
            better = res.best_loss < best_loss
            best_x[better], best_loss[better] = res.best_x[better], res.best_loss[better]
            found = self.try_candidates(res.candidates)
            if found is not None:
                return found
            if res.timed_out:
                break
        self.pgd_best = (best_x, best_loss)
        return None

    # ---- driver ------------------------------------------------------------------------
    def run(self) -> Result:
        t = time.monotonic()
        res = self.trivial()
        self.timed("trivial", t)
        if res is not None:
            return res
        self.check("the model check")
        t = time.monotonic()
        self.crosscheck()
        self.timed("crosscheck", t)

        targets = self.targets()
        if targets is None:  # only row-less polytopes, whose box centre did not replay
            return self.result(Outcome.UNKNOWN, "", "every polytope of the spec is unconditional, but the box "
                               f"centre did not replay with {self.reference.description}")
        self.details["cases"] = len(self.spec.cases)
        self.details["polytopes"] = targets.count

        self.check("sampling")
        t = time.monotonic()
        found, sampled = self.sampling(targets)
        self.timed("sampling", t)
        if found is not None:
            return self.retime(found)

        method = self.options.bound_method
        self.check(method)
        t = time.monotonic()
        try:
            self.bounds()
        except UnsupportedBoundError as exc:
            self.bound_error = str(exc)
            log.info("no bounds: %s", exc)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            # even one box at a time does not fit: go on with the attack alone (a slower answer)
            self.bound_error = f"out of memory even for one input box ({' '.join(str(exc).split())[:200]})"
            log.warning("no bounds: %s", self.bound_error)
            self.margins = None
        self.timed(method, t)
        if self.margins is not None:
            open_keys = {(k, p) for k, ms in enumerate(self.margins) for p, m in enumerate(ms) if not m > 0}
            self.details["refuted_polytopes"] = sum(m > 0 for ms in self.margins for m in ms)
            if not open_keys:
                best = min(min(ms) for ms in self.margins if ms)
                return self.result(Outcome.UNSAT, method,
                                   f"{method.upper()} bounds refute every output polytope of all "
                                   f"{len(self.spec.cases)} input box(es); smallest margin {best:.4g}",
                                   best_bound=best)
        else:
            open_keys = {(targets.case[i], targets.polytope[i]) for i in range(targets.count)}

        self.check("pgd")
        t = time.monotonic()
        keep = [i for i in range(targets.count) if (targets.case[i], targets.polytope[i]) in open_keys]
        open_targets = targets.subset(keep)
        self.open_targets = open_targets
        complete = (self.options.branch_and_bound and self.margins is not None
                    and (self.input_split_applies() or self.relu_split_applies() or self.alpha_applies()))
        budget = None
        if complete:
            seconds = self.options.pre_bab_attack_seconds
            if not self.input_split_applies():  # neuron splitting looks for counterexamples less well
                seconds = max(seconds, min(self.options.pre_neuron_bab_attack_seconds, 0.1 * self.options.timeout))
            budget = self.deadline.within(seconds)
        found = self.pgd(open_targets, sampled.best_x[keep], sampled.best_loss[keep], budget, stop_on_stall=complete,
                         corners=self.bound_corners(open_targets))
        self.timed("pgd", t)
        if found is not None:
            return self.retime(found)
        self.check("pgd")
        if complete:
            t = time.monotonic()
            try:
                res = self.branch_and_bound()
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                # the searches shrink their batches first; this is one sub-problem not fitting
                log.warning("branch and bound ran out of memory: %s", " ".join(str(exc).split())[:200])
                self.details["bab_error"] = "out of memory"
                res = None
            self.timed("bab", t)
            if res is not None:
                return self.retime(res)
            self.check("branch and bound")
            if not (self.input_split_applies() or self.relu_split_applies()):
                # no complete search for this network: the attack gets the rest of the time
                t = time.monotonic()
                found = self.pgd(open_targets, *self.pgd_best) if self.pgd_best is not None else None
                self.timed("pgd", t)
                if found is not None:
                    return self.retime(found)
        return self.unknown(open_keys)

    def bound_corners(self, targets: atk.Targets) -> torch.Tensor | None:
        """(P, 2, n_in): per target, the box corner that minimises its CROWN bound's linear
        function and the opposite one (None without those bounds). Deterministic starts that
        random ones rarely hit: on ml4acopf 300_ieee_prop2, whose loss sits on a flat minimum
        at random points, PGD from the opposite corner finds the counterexample at once."""
        signs = [self.crown_signs.get((k, p)) for k, p in zip(targets.case, targets.polytope)]
        if not signs or any(sg is None for sg in signs):
            return None
        positive = torch.stack(signs)
        low_first = torch.where(positive, targets.lower, targets.upper)
        high_first = torch.where(positive, targets.upper, targets.lower)
        return torch.stack([low_first, high_first], 1)

    def input_split_applies(self) -> bool:
        return math.prod(self.graph.input.shape) <= self.options.input_split_max_inputs

    def relu_split_applies(self) -> bool:
        return any(node.op in ("Relu", "LeakyRelu") for node in self.graph.nodes)

    def general_split_applies(self) -> bool:
        """Some activation other than a ReLU: neuron splitting at chosen points (GenBaB-style)."""
        return any(isinstance(RULES.get(node.op), ActivationRule) and node.op not in ("Relu", "LeakyRelu")
                   for node in self.graph.nodes)

    def alpha_applies(self) -> bool:
        """Some activation has optimisable relaxations, so alpha-CROWN can beat CROWN."""
        return any(node.op in RULES and isinstance(RULES[node.op], ActivationRule) for node in self.graph.nodes)

    def falsify_from(self, points: torch.Tensor, cases: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        """A short PGD started at points that branch and bound found promising (one per case
        at most); a replayed counterexample as (x, case), or None."""
        targets = self.open_targets
        if targets is None or targets.count == 0:
            return None
        first: dict[int, int] = {}
        for i, k in enumerate(cases.tolist()):
            first.setdefault(int(k), i)
        chosen = [t for t in range(targets.count) if targets.case[t] in first]
        if not chosen:
            return None
        sub = targets.subset(chosen)
        starts = torch.stack([points[first[targets.case[t]]].reshape(-1) for t in chosen]).to(sub.lower)
        opts = dataclasses.replace(self.options.attack, pgd_steps=30, pgd_restarts=4)
        budget = self.deadline.within(min(1.0, 0.05 * self.deadline.remaining()))
        res = atk.pgd(self.graph, sub, opts, self.gen, budget, starts=starts, scale=0.3)
        self.record_attack(sub, res)
        found = self.try_candidates(res.candidates)
        if found is None:
            return None
        self.found_during_bab = found
        x = torch.tensor(np.array(found.witness_x), dtype=self.bound_dtype, device=self.device)
        return x.reshape(self.bound_graph.input.shape), int(found.details["violated"]["case"])

    def small_network_milp(self, graph: Graph, root: dict[str, Interval], refuted: torch.Tensor) -> Result | None:
        """Few unstable ReLUs left after alpha-CROWN: one exact MILP per open polytope is
        cheaper than branching. A verdict, or None to go on with branch and bound."""
        limit = self.options.bab.milp_max_unstable
        if limit <= 0 or not milp_encodable(graph) or unstable_relus(graph, root) > limit:
            return None
        t = time.monotonic()
        skip = {(k, p) for k, p in refuted.nonzero().tolist()}
        verdict, case, x, notes = exact_search(graph, self.spec, root, self.deadline, skip)
        self.timed("milp", t)
        self.details["milp"] = {"verdict": verdict, "notes": notes}
        if verdict == "unsat":
            return self.result(Outcome.UNSAT, "milp", "an exact MILP (HiGHS) over the alpha-CROWN intervals "
                               "refutes every open output polytope", best_bound=0.0)
        if verdict == "sat" and x is not None:
            with torch.no_grad():
                xt = torch.as_tensor(x, dtype=self.bound_dtype, device=self.device).reshape(1, *graph.input.shape)
                y = run_graph(graph, xt).reshape(-1).double().cpu().numpy()
            found = self.try_candidates([atk.Candidate(x=np.asarray(x, dtype=np.float64), y=y, case=case,
                                                       polytope=0, loss=0.0, stage="milp")])
            if found is not None:
                return found
        if verdict == "timeout":
            raise _Timeout("the exact MILP")
        return None

    def tighten_root(self, graph: Graph, problem: SpecTensors, root: dict[str, Interval], budget: Deadline,
                     method: str, slopes: dict[str, IntermediateSlopes] | None = None
                     ) -> tuple[dict[str, Interval], torch.Tensor, dict[str, torch.Tensor]]:
        """Tighten intervals valid on the (one) box layer by layer, by `method` ("splits":
        branching.split_refine; "milp": branching.milp_refine), then alpha-CROWN over them:
        (intervals of every value, lower bounds of the spec rows, the output bound's slopes);
        `slopes` receives the intermediate bounds' slopes. Details go to self.details under
        "split_refine" / "milp_refine"."""
        return run_to_end(self.tighten_root_steps(graph, problem, root, budget, method, slopes))

    def tighten_root_steps(self, graph: Graph, problem: SpecTensors, root: dict[str, Interval], budget: Deadline,
                           method: str, slopes: dict[str, IntermediateSlopes] | None = None):
        """tighten_root as a generator that yields between batches of the splitting method's
        sub-problems (the MILPs run through without yielding); its return value is
        tighten_root's."""
        t = time.monotonic()
        g64 = graph_to(graph, "cpu", torch.float64)
        box = Interval(problem.lower[:1].cpu().double(), problem.upper[:1].cpu().double())
        C64 = problem.C[:1].cpu().double()

        latest: list[torch.Tensor] = []
        kept: dict[str, Interval] = {}

        def retighten(bounds: dict[str, Interval]) -> dict[str, Interval]:
            # the next layer only needs its still-unstable neurons. Every call's intervals and
            # spec bounds hold on the box, so the best of all calls so far are kept: alpha-CROWN
            # over tighter intervals is not always tighter (mnist_fc 256x6 prop_10 eps 0.05:
            # the worst row -5.6, then -11.5 ten seconds of splitting later)
            start = {k: v.intersect(kept[k]) if k in kept else v for k, v in bounds.items()}
            lower, tighter = optimise_all(g64, box, C64, self.options.alpha, budget, initial=(start, 0.0))
            kept.update({k: v.intersect(kept[k]) if k in kept else v for k, v in tighter.items()})
            latest[:] = [lower if not latest else torch.maximum(latest[0], lower)]
            return dict(kept)

        def decided() -> bool:
            # no later layer is needed once the intervals so far refute every polytope
            return bool(latest) and _refutes_the_box(problem, latest[0].to(problem.lower))

        start = {k: Interval(v.lower[:1].cpu().double(), v.upper[:1].cpu().double()) for k, v in root.items()}
        if method == "splits":
            refined, report = yield from refine_by_splits_steps(g64, box, start, budget, SplitRefineOptions(),
                                                                retighten, decided)
        else:
            refined, report = refine_intervals(g64, box, start, budget, RefineOptions(
                per_solve=self.options.bab.milp_refine_per_solve), retighten, decided)
        back = {k: Interval(v.lower.to(self.device, self.bound_dtype), v.upper.to(self.device, self.bound_dtype))
                for k, v in refined.items()}
        alphas: dict[str, torch.Tensor] = {}
        lower, new_root = optimise_all(graph, Interval(problem.lower[:1], problem.upper[:1]), problem.C[:1],
                                       self.options.alpha, self.deadline.within(0.25 * self.deadline.remaining()),
                                       final_alphas=alphas, initial=(back, 0.0), intermediate_slopes=slopes)
        key = "split_refine" if method == "splits" else "milp_refine"
        self.timed(key.replace("_", "-"), t)
        self.details[key] = {"solves": report.solves, "tightened": report.tightened,
                             "stabilised": report.stabilised, "layers": report.layers,
                             "seconds": round(report.seconds, 3), "lower_after": float(lower.min())}
        return new_root, lower, alphas

    def refine_root(self, graph: Graph, problem: SpecTensors, lower: torch.Tensor, root: dict[str, Interval],
                    root_alphas: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Interval], dict]:
        """Tighten the root intervals by MILP (one box, ReLU nets), then alpha-CROWN again over
        them; the old results when this does not apply."""
        if problem.n_cases != 1 or not milp_encodable(graph):
            return lower, root, root_alphas
        budget = self.deadline.within(self.options.bab.milp_refine_share * self.deadline.remaining())
        new_root, new_lower, alphas = self.tighten_root(graph, problem, root, budget, "milp")
        self.details["milp_refine"]["lower_before"] = float(lower.min())
        # both runs are valid: keep the better bound per row (the new slopes go with the new run)
        return torch.maximum(lower, new_lower), new_root, alphas

    def tightening_applies(self, graph: Graph, problem: SpecTensors, method: str) -> bool:
        """Whether ReLU branch and bound tightens its root intervals midway by `method` (see
        BaBOptions.split_refine_after / milp_refine_after): one input box, a ReLU network
        of at most split_refine_max_relus ReLUs (for "milp" one that MILP encodes exactly with
        at most milp_refine_max_relus), and enough time left."""
        options = self.options.bab
        if problem.n_cases != 1:
            return False
        if method == "splits":
            return (options.split_refine_after is not None and relu_network(graph)
                    and relu_count(graph) <= options.split_refine_max_relus
                    and self.deadline.remaining() >= options.split_refine_min_seconds)
        return not (options.milp_refine_after is None or not milp_encodable(graph)
                    or relu_count(graph) > options.milp_refine_max_relus
                    or self.deadline.remaining() < options.milp_refine_min_seconds)

    def relu_search(self, graph: Graph, problem: SpecTensors, root: dict[str, Interval],
                    root_alphas: dict[str, torch.Tensor], root_slopes: dict[str, IntermediateSlopes],
                    progress) -> BaBOutcome:
        """ReLU splitting until the deadline; where tightening_applies, the root's intervals
        are tightened midway, first by splitting earlier ReLUs (BaBOptions.split_refine_after
        of the time), then by MILP (milp_refine_after) from the best intervals so far, and the
        search goes on from each tighter root too (relu_split_bab's `tighten`): easy instances
        never pay for either."""
        options = self.options.bab
        best = [root]

        def stage(method: str, share: float, label: str):
            least = options.split_refine_min_seconds if method == "splits" else options.milp_refine_min_seconds

            def tighten():
                if self.deadline.remaining() < least:
                    # the stages before took the time (HiGHS can overrun its limit at the root
                    # node by seconds: no MILPs close to the deadline)
                    return None
                budget = self.deadline.within(share * self.deadline.remaining())
                progress_log.info("branch and bound: tightening the root's intervals by %s for up to %.0f s",
                                  label, budget.remaining())
                slopes: dict[str, IntermediateSlopes] = {}
                tighter, lower, alphas = yield from self.tighten_root_steps(graph, problem, best[0], budget, method,
                                                                            slopes)
                best[0] = tighter
                report = self.details["split_refine" if method == "splits" else "milp_refine"]
                report["refutes"] = _refutes_the_box(problem, lower)
                progress_log.info("branch and bound: %s tightened %d bounds (%d neurons now stable) in %.1f s; "
                                  "alpha-CROWN over them: worst row %.4g", label, report["tightened"],
                                  report["stabilised"], report["seconds"], float(lower.min()))
                return TightenedRoot(tighter, alphas, slopes, report["refutes"])
            return tighten

        stages = []
        if self.tightening_applies(graph, problem, "splits"):
            stages.append((options.split_refine_after, stage("splits", options.split_refine_share,
                                                             "splitting earlier ReLUs per neuron")))
        if self.tightening_applies(graph, problem, "milp") and (options.milp_after_splits or not stages):
            stages.append((options.milp_refine_after, stage("milp", options.milp_refine_late_share, "MILP")))
        return relu_split_bab(graph, problem, self.deadline, options, progress, root, root_alphas,
                              falsify=self.falsify_from, root_slopes=root_slopes, tighten=stages)

    def branch_and_bound(self) -> Result | None:
        """Input-splitting BaB over every case; a verdict, or None (then `unknown`)."""
        graph = self.bound_graph
        problem = SpecTensors.from_spec(self.spec, tuple(graph.input.shape), self.device, self.bound_dtype,
                                        slack=self.options.refute_slack(self.bound_dtype))
        last = [time.monotonic()]

        def progress(state: BaBOutcome, waiting: int) -> None:
            if time.monotonic() - last[0] > 2.0:
                last[0] = time.monotonic()
                progress_log.info("branch and bound: %d sub-problems done, %d waiting, worst margin %.4g, %.1f s",
                         state.visited, waiting, state.worst_margin or 0.0, self.deadline.elapsed())

        if self.input_split_applies():
            kind = "input splitting"
            outcome = input_split_bab(graph, problem, self.deadline, self.options.bab, progress)
        else:
            kind = ("general-nonlinearity splitting" if self.general_split_applies() else
                    "ReLU splitting" if self.relu_split_applies() else "alpha-CROWN")
            t = time.monotonic()
            root_alphas: dict[str, torch.Tensor] = {}
            root_slopes: dict[str, IntermediateSlopes] = {}
            lower, root = optimise_all(graph, Interval(problem.lower, problem.upper), problem.C,
                                       self.options.alpha, self.deadline.within(0.25 * self.deadline.remaining()),
                                       final_alphas=root_alphas, initial=self.crown_intervals,
                                       intermediate_slopes=root_slopes)
            self.timed("alpha-crown", t)
            refuted = problem.refuted(torch.arange(problem.n_cases, device=problem.lower.device), lower)
            if bool(refuted.all()):
                margin = float(problem.margins(torch.arange(problem.n_cases, device=problem.lower.device), lower).min())
                return self.result(Outcome.UNSAT, "alpha-crown", "alpha-CROWN (intermediate layers optimised) "
                                   f"refutes every output polytope; smallest margin {margin:.4g}", best_bound=margin)
            if self.relu_split_applies() and self.options.bab.milp_refine_share > 0:
                lower, root, root_alphas = self.refine_root(graph, problem, lower, root, root_alphas)
                refuted = problem.refuted(torch.arange(problem.n_cases, device=problem.lower.device), lower)
                if bool(refuted.all()):
                    return self.result(Outcome.UNSAT, "milp-refine", "alpha-CROWN over MILP-tightened "
                                       "intermediate intervals refutes every output polytope", best_bound=0.0)
            # the search only carries the polytopes alpha-CROWN left open (fewer rows to bound)
            problem, rows = problem.open_part(refuted)
            root_alphas = {k: SpecTensors.take_rows(v, rows) for k, v in root_alphas.items()
                           if v.dim() >= 2 and v.shape[1] == lower.shape[1]}
            lower = SpecTensors.take_rows(lower, rows)
            if self.general_split_applies():
                outcome = general_split_bab(graph, problem, self.deadline, self.options.bab, progress, root,
                                            root_alphas, falsify=self.falsify_from, root_lower=lower)
            elif not self.relu_split_applies():
                return None  # alpha-CROWN was the last word: no neuron splitting for this network
            else:
                exact = self.small_network_milp(graph, root, refuted)
                if exact is not None:
                    return exact
                outcome = self.relu_search(graph, problem, root, root_alphas, root_slopes, progress)
        self.details["bab"] = {"kind": kind, "visited": outcome.visited, "max_depth": outcome.max_depth,
                               "seconds": round(outcome.elapsed, 3)}
        for key, how in (("split_refine", "by splitting earlier ReLUs"), ("milp_refine", "by MILP")):
            if outcome.status == "unsat" and self.details.get(key, {}).get("refutes"):
                return self.result(Outcome.UNSAT, key.replace("_", "-"), f"{kind} ({outcome.visited} sub-problems) "
                                   f"left the spec open; alpha-CROWN over the root's intervals tightened {how} then "
                                   "refuted every output polytope", best_bound=0.0)
        if outcome.status == "unsat":
            return self.result(Outcome.UNSAT, "bab", f"{kind} refuted every output polytope "
                               f"({outcome.visited} sub-problems, depth {outcome.max_depth})", best_bound=0.0)
        if outcome.status == "sat" and self.found_during_bab is not None:
            return self.found_during_bab
        if outcome.status == "sat" and outcome.witness is not None:
            x = outcome.witness.reshape(-1).double().cpu().numpy()
            with torch.no_grad():
                y = run_graph(graph, outcome.witness.unsqueeze(0)).reshape(-1).double().cpu().numpy()
            cand = atk.Candidate(x=x, y=y, case=outcome.witness_case, polytope=0, loss=0.0, stage="bab")
            return self.try_candidates([cand])
        if outcome.status == "timeout":
            raise _Timeout("branch and bound", outcome.worst_margin,
                           {k: self.details[k] for k in ("bab", "split_refine", "milp_refine") if k in self.details})
        self.details["bab"]["notes"] = outcome.notes
        if outcome.worst_margin is not None:
            self.details["bab"]["worst_margin"] = outcome.worst_margin
        return None

    def unknown(self, open_keys: set[tuple[int, int]]) -> Result:
        method = self.options.bound_method.upper()
        parts = []
        best_bound = None
        if self.margins is not None:
            total = sum(len(ms) for ms in self.margins)
            opened = sorted(open_keys, key=lambda kp: self.margins[kp[0]][kp[1]])
            worst, closest = opened[0], opened[-1]
            wm, cm = self.margins[worst[0]][worst[1]], self.margins[closest[0]][closest[1]]
            parts.append(f"{method} refuted {total - len(open_keys)} of {total} output polytopes")
            if worst == closest:
                parts.append(f"the open one is case {worst[0]} polytope {worst[1]} (bound margin {wm:.4g}, "
                             "needs > 0)")
            else:
                parts.append(f"{len(open_keys)} stay open, from case {worst[0]} polytope {worst[1]} "
                             f"(bound margin {wm:.4g}, the weakest) to case {closest[0]} polytope {closest[1]} "
                             f"({cm:.4g}, the closest to a proof)")
            best_bound = min(min(ms) for ms in self.margins if ms)
        else:
            parts.append(f"no bounds could be computed ({self.bound_error}); only the attack ran")
        if self.attack_loss:
            key = min((k for k in self.attack_loss if k in open_keys), key=lambda k: self.attack_loss[k],
                      default=min(self.attack_loss, key=lambda k: self.attack_loss[k]))
            parts.append(f"the attack came within {self.attack_loss[key]:.4g} of a violation "
                         f"(case {key[0]} polytope {key[1]}) without reaching it")
        if self.rejected:
            parts.append(f"{self.rejected} candidate counterexample(s) did not replay with "
                         f"{self.reference.description}")
        bab = self.details.get("bab")
        if bab is not None and "notes" in bab:
            # the search ran and stopped without a verdict: say why and how far it got
            why = "; ".join(bab["notes"]) or "no verdict"
            text = f"{bab['kind']} stopped undecided after {bab['visited']} sub-problems ({why})"
            if bab.get("worst_margin") is not None:
                text += f", its worst open sub-problem at bound margin {bab['worst_margin']:.4g}"
                best_bound = bab["worst_margin"] if best_bound is None else max(best_bound, bab["worst_margin"])
            parts.insert(0, text)   # first: suite results keep a message's first 300 characters
        else:
            parts.append("deciding it needs a complete search (branch and bound)")
        msg = "; ".join(parts) + "."
        details = {"open_polytopes": [list(k) for k in sorted(open_keys)]}
        if self.attack_loss:
            details["attack_best_loss"] = min(self.attack_loss.values())
        stage = self.options.bound_method if self.margins is not None else ""
        return self.result(Outcome.UNKNOWN, stage, msg[0].upper() + msg[1:], best_bound=best_bound, details=details)


def _check_boxes(spec: Spec) -> None:
    for k, case in enumerate(spec.cases):
        bad = ~(np.isfinite(case.lower) & np.isfinite(case.upper))
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            side = "lower" if not np.isfinite(case.lower[i]) else "upper"
            where = f"{spec.source}: " if spec.source else ""
            raise SpecError(f"{where}input X_{i} has no finite {side} bound in input box {k}; "
                            "every input needs a finite range")


def check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"unknown device '{name}': {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' was asked for but CUDA is not available here; use --device cpu")
    if device.type == "cuda":
        # TF32 keeps 10 mantissa bits: convolutions (cuDNN's default) and matmuls in it would
        # err by ~1e-3 relative, far beyond the refutation slack; bounds need true float32/64
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return device


def verify(model: ModelLike, spec: SpecLike, *, options: VerifyOptions | None = None,
           input_shape: tuple[int, ...] | None = None) -> Result:
    """Decide whether `model` violates `spec`.

    model        an ONNX file (str/Path, .onnx or .onnx.gz), a torch.nn.Module (in eval mode;
                 `input_shape` defaults to (1, spec.n_inputs)) or a bounds Graph
    spec         a VNN-LIB file (str/Path, optionally gzipped) or a specs.Spec
    options      VerifyOptions (defaults: 300 s, cpu, CROWN)
    input_shape  the module's input shape, batch dimension included (torch modules only)

    Returns a Result (sat / unsat / unknown / timeout). Raises SpecError for a bad or
    mismatched spec, ModelLoadError / UnsupportedOpError for a bad model, ValueError for bad
    options.
    """
    options = options or VerifyOptions()
    deadline = Deadline(options.timeout)
    device = check_device(options.device)
    t = time.monotonic()
    spec_obj = load_spec(spec)
    graph, reference, model_name = load_model(model, spec_obj, input_shape)
    n_in = math.prod(graph.input.shape)
    n_out = math.prod(graph.output.shape)
    spec_obj.check_shapes(n_in, n_out)
    _check_boxes(spec_obj)
    spec_name = _stem(spec_obj.source) if spec_obj.source else "spec"
    instance = f"{model_name} {spec_name}"
    cpu_graph = graph_to(graph, "cpu", torch.float32)
    attack_graph = cpu_graph if device.type == "cpu" else graph_to(graph, device, torch.float32)
    bound_dtype = options.bound_dtype(device.type)
    run = _Run(graph=attack_graph, cpu_graph=cpu_graph,
               bound_graph=attack_graph if bound_dtype == torch.float32 else graph_to(graph, device, bound_dtype),
               bound_dtype=bound_dtype, spec=spec_obj, reference=reference, options=options,
               deadline=deadline, instance=instance,
               gen=torch.Generator().manual_seed(options.seed), device=device)
    run.details["precision"] = str(bound_dtype).replace("torch.", "")
    run.details["arithmetic"] = options.arithmetic
    run.timed("load", t)
    progress_log.info("%s: %d input box(es), %d inputs, %d outputs, loaded in %.2f s",
                      instance, len(spec_obj.cases), n_in, n_out, time.monotonic() - t)
    try:
        run.check("loading")
        return run.with_exact_hint(run.run())
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        # the stages back off on their own where they can; past that, a clean `unknown`
        reason = " ".join(str(exc).split())[:300]
        log.warning("out of memory: %s", reason)
        return Result(Outcome.UNKNOWN, time_s=deadline.elapsed(), instance=instance,
                      details={"timings": run.timings, "error": "out of memory"},
                      message=f"ran out of memory ({reason}); no verdict within the memory available")
    except _Timeout as exc:
        details = {"during": exc.during, "timings": run.timings, **exc.details}
        message = f"the time limit of {options.timeout:g} s ran out during {exc.during}"
        if exc.best_bound is not None:
            message += f"; the open sub-problems' worst bound margin was {exc.best_bound:.4g} (needs > 0)"
        return run.with_exact_hint(Result(Outcome.TIMEOUT, time_s=deadline.elapsed(), instance=instance,
                                          details=details, message=message, best_bound=exc.best_bound))
