"""Batched branch-and-bound with input splitting (for networks with few inputs)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from bounds.crown import pre_activation_nodes, spec_lower_bounds
from bounds.graph.interpret import run
from bounds.graph.ir import Graph
from bounds.types import Interval
from branching.domains import DomainBatch
from branching.queue import DomainQueue
from branching.input_split import bisect, split_scores
from branching.problem import SpecTensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaBOptions:
    #: sub-problems bounded per round: ReLU splitting this many spec rows' worth,
    #: general-nonlinearity splitting an eighth (costlier relaxations)
    batch_size: int = 512
    #: sub-problems bounded per round by input splitting (both capped by free memory). Its
    #: sub-problems are cheap, so small rounds are mostly per-round overhead: acasxu 3_3
    #: prop_2 (1.22 million sub-problems, the same tree at every size) took 97.5 s in rounds
    #: of 512, 63 s of 2048, 55 s of 4096 and 63 s of 8192 on a 2-core CPU
    input_batch_size: int = 4096
    #: stop (unknown) rather than exhaust memory once this many domains wait
    max_domains: int = 2_000_000
    #: ... or once the waiting sub-problems' tensors need more than this share of the memory
    #: free when the search started (an answer instead of the process killed for memory)
    queue_memory_share: float = 0.5
    #: domains narrower than this in every dimension are not split further
    min_width: float = 1e-7
    #: gradient steps on the split multipliers (beta) and slopes per neuron-split round
    beta_iterations: int = 8
    #: re-derive the intermediate bounds after each neuron split by CROWN (tighter per
    #: sub-problem, several times slower); otherwise the parent's bounds are kept, clamped by
    #: the splits, and the split multipliers (beta) carry the decisions to the output bound
    refine_intermediate: bool = False
    #: seconds between attacks started from the most promising open sub-problems' points
    falsify_every: float = 2.0
    #: networks with at most this many unstable ReLUs after alpha-CROWN are decided by one
    #: exact MILP per open polytope instead of branching (0: never)
    milp_max_unstable: int = 12
    #: share of the time left after alpha-CROWN spent tightening the root's intermediate
    #: intervals by time-limited MILPs per unstable neuron (branching.milp_refine) before ReLU
    #: splitting, for single-box specs on ReLU networks (0: off). Tightens the root a lot
    #: (mnist 256x4 eps 0.05: -0.83 -> -0.31 with 2 s per bound) but HiGHS on one core needs
    #: minutes for a 256-wide layer, so it is off unless the time limit is generous
    milp_refine_share: float = 0.0
    #: HiGHS seconds per bound (lower or upper) of one neuron in that refinement
    milp_refine_per_solve: float = 1.0
    #: ReLU splitting on one input box: once this share of the time left when it began has
    #: passed undecided, the root's intervals are tightened by splitting, for each unstable
    #: neuron, the earlier ReLUs that cost its bound most (branching.split_refine), and the
    #: same searches start again from them beside the running ones; None: never. mnist_fc
    #: 256x4 eps 0.05 (open at 300 s before): prop_0's worst row -2.23 -> +0.01 in 25 s of it,
    #: prop_10's -1.64 -> +0.07 in 100 s
    split_refine_after: float | None = 0.05
    #: ... spending this share of the time left then (the split trees grow as long as they may;
    #: mnist_fc 256x4 prop_7 eps 0.05 at 300 s: open at -0.30 with 0.8 and no MILP stage after
    #: it, -0.75 with 0.6 and the MILP stage)
    split_refine_share: float = 0.8
    #: ... and only with at least this much time left, on networks of at most this many ReLUs
    #: (oval21 cifar_wide img3458, 6244 ReLUs in conv layers: 90 s of the tightening alone move
    #: the root's worst row from -0.4534 to -0.3736, far from deciding, while the searches
    #: would get a quarter of the time)
    split_refine_min_seconds: float = 20.0
    split_refine_max_relus: int = 2048
    #: ReLU splitting on one input box: once this share of the time left when it began has
    #: passed undecided, the root's intervals (the tightest so far) are tightened by the same MILPs and the same
    #: searches start again from them beside the running ones (relu_split_bab's `tighten`,
    #: verifier.api._Run.relu_search); None: never. eran mnist_relu_9_200 at 300 s: 2697,
    #: 2954 and 3857 decided (open before), 225 and 1385 sooner
    milp_refine_after: float | None = 0.2
    #: ... also after the tightening by splits (otherwise only where that one does not apply):
    #: after the split trees the MILPs add little (mnist_fc 256x6 prop_10 eps 0.05: worst row
    #: -10.37 -> -10.2 in 55 s, no neuron stabilised) and their time is better left to the trees
    milp_after_splits: bool = False
    #: share of the time left then that the MILPs may take
    milp_refine_late_share: float = 0.5
    #: ... only for networks with at most this many ReLUs (HiGHS on a conv net's thousands of
    #: binaries rarely proves more than the LP in a second) and at least this much time left
    milp_refine_max_relus: int = 2048
    milp_refine_min_seconds: float = 60.0
    #: neuron choice: "babsr" (a cheap estimate from the output bound's coefficients),
    #: "fsb" (filtered smart branching: the best `fsb_candidates` by that estimate are tried
    #: by bounding both children once, and the one whose worse child is best wins) or
    #: "layer" (the earliest layer that still has an unstable neuron, the babsr choice within
    #: it: with refine_intermediate, a split there tightens every later layer's intervals,
    #: which the output-bound estimates do not see)
    branching: str = "fsb"
    fsb_candidates: int = 4
    #: ReLU splitting on deep narrow networks (see relu_split.layer_search_applies): a second
    #: search with "layer" branching and refine_intermediate runs beside the usual one, the two
    #: taking turns, this share of the time to it (0: none). On such nets the output bound is
    #: lost in the last layers' loose intervals, which splits of early neurons tighten only
    #: when the intervals are re-derived: eran mnist_relu_9_200 (9 ReLU layers of 200) 3 of 7
    #: open instances decided in 15-47 s by it alone where the usual search decided none in
    #: 60 s; mnist_fc 256x4 prop_3_0.05 in 5 s (open at 300 s before). On conv nets the
    #: re-derivation costs too much per sub-problem (oval21 deep: 126 sub-problems in 45 s)
    layer_search_share: float = 0.5
    #: ... which after this share of its time goes on from its own sub-problems with the usual
    #: choice and their intervals fixed (mnist 256x4 prop_11_0.05: 43 s this way, 221 s without)
    layer_search_switch: float = 0.5
    #: ... for networks with at least this many ReLU layers, each at most this many neurons wide
    layer_search_min_layers: int = 3
    layer_search_max_width: int = 1024
    #: with re-derived intervals (refine_intermediate), each sub-problem's intervals are
    #: concretised over its input box cut by at most this many of its first-layer active
    #: splits (those neurons' pre-activations are affine in the input; bounds.cuts); 0: none.
    #: Off: on eran mnist_relu_9_200 3539 (the layer search alone, one thread each, side by
    #: side) the cuts on every layer cut the sub-problems to unsat from 386 to about 320, but
    #: the multiplier search made each 1.5-3x dearer (unsat in 28 s without; timeout at 60 s
    #: with 8 cuts on every layer, 36 s with cuts on the first two layers only)
    input_cuts: int = 0
    #: how "fsb" rates a candidate from its children's margins (each capped at 0, refuted):
    #: "min" the worse child, "max" the better one (one child refuted halves the work left)
    fsb_reduce: str = "min"
    #: "fsb" falls back to "babsr" for the rest of a run once trying the candidates takes
    #: longer than this many times the round's bounding (then more rounds beat better choices)
    fsb_max_cost: float = 1.0

    def __post_init__(self) -> None:
        if self.branching not in ("babsr", "fsb", "layer"):
            raise ValueError(f"BaBOptions.branching must be 'babsr', 'fsb' or 'layer', got {self.branching!r}")
        if not 0.0 <= self.layer_search_switch <= 1.0:
            raise ValueError(f"BaBOptions.layer_search_switch must be in [0, 1], got {self.layer_search_switch!r}")
        if not 0.0 <= self.layer_search_share < 1.0:
            raise ValueError(f"BaBOptions.layer_search_share must be in [0, 1), got {self.layer_search_share!r}")
        if self.fsb_reduce not in ("min", "max"):
            raise ValueError(f"BaBOptions.fsb_reduce must be 'min' or 'max', got {self.fsb_reduce!r}")


@dataclass
class BaBOutcome:
    status: str                               # "unsat" | "sat" | "timeout" | "unknown"
    witness: torch.Tensor | None = None       # (*input_shape) when sat
    witness_case: int = 0                     # the spec case whose box holds the witness
    visited: int = 0
    max_depth: int = 0
    worst_margin: float | None = None
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)


def stop_reason(outcome: BaBOutcome, deadline, waiting: DomainQueue, options: BaBOptions,
                last_round: float = 0.0, pushing: int = 0) -> bool:
    """Set the outcome's status and return True when the search has to stop unfinished.

    A round that would not finish before the deadline (judged by the last one, plus the time
    to grow the queue's storage if pushing `pushing` more sub-problems needs that) is not
    begun, so the time limit is kept to within one round's jitter rather than one round.
    """
    # a round that would grow the queue's storage also waits for that memory
    last_round = last_round + waiting.growth_seconds(pushing)
    if deadline.expired() or (hasattr(deadline, "remaining") and last_round > deadline.remaining()):
        outcome.status = "timeout"
        return True
    if len(waiting) > options.max_domains:
        outcome.status = "unknown"
        outcome.notes.append(f"more than {options.max_domains} open sub-problems")
        return True
    if waiting.full:
        outcome.status = "unknown"
        outcome.notes.append(f"{len(waiting)} open sub-problems fill the memory set aside for them "
                             f"({options.queue_memory_share:.0%} of what was free when the search began)")
        return True
    return False


def new_queue(build, device: torch.device, options: BaBOptions,
              zero_fill: Callable[[str], bool] = lambda name: False) -> DomainQueue:
    """A queue for waiting sub-problems, capped at options.queue_memory_share of the free memory."""
    return DomainQueue(build, zero_fill, max_bytes=int(options.queue_memory_share * available_memory(device)))


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on the device (physical memory on the CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def rate_children(margins: torch.Tensor, reduce: str, dim: int) -> torch.Tensor:
    """A split candidate's rating from its children's margins along `dim` (see fsb_reduce)."""
    capped = margins.clamp(max=0.0)
    return capped.amin(dim) if reduce == "min" else capped.amax(dim)


def memory_batch_size(graph: Graph, rows: int, dtype: torch.dtype, device: torch.device, cap: int,
                      share: float = 0.25) -> int:
    """Sub-problems per batch such that one backward pass's coefficient matrices (about ten
    live copies of rows x the widest value) fit in `share` of the free memory; at most `cap`."""
    import math

    widest = max((math.prod(n.shape) for n in graph.nodes if n.shape and not n.is_constant), default=1)
    per_domain = 10 * max(1, rows) * widest * torch.finfo(dtype).bits // 8
    fit = int(share * available_memory(device)) // max(1, per_domain)
    return max(1, min(cap, fit))


def input_coefficients(record: dict[str, torch.Tensor], name: str, n: int, rows: int,
                       like: torch.Tensor) -> torch.Tensor:
    """(n, rows, *input shape) coefficients of the input `name` in a recorded linear bound;
    zeros when every path to the input was cut (an op bounded by IBP only), so that no input
    corner is preferred. `like` is a batched input tensor (dtype, device, shape)."""
    A = record.get(name)
    return A if A is not None else like.new_zeros(n, rows, *like.shape[1:])


def is_out_of_memory(exc: BaseException) -> bool:
    """torch reports exhausted memory as OutOfMemoryError on GPUs and RuntimeError on the CPU."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc) or "can't allocate memory" in str(exc))


def requeue_smaller(exc: BaseException, batch_size: int, domains: DomainQueue, batch, device: torch.device) -> int:
    """After `exc` bounding `batch`: put the batch back and return the halved batch size when
    it was out of memory; re-raise anything else, or when the batch cannot shrink."""
    if not is_out_of_memory(exc) or batch_size <= 1:
        raise exc
    domains.push(batch)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log.info("out of memory with %d sub-problems per batch; retrying with %d", batch_size, batch_size // 2)
    return batch_size // 2


def _corner_candidates(domains: DomainBatch, coeffs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Points most likely to violate: the corner minimising the deciding row's linear bound."""
    n = len(domains)
    A = coeffs[torch.arange(n, device=coeffs.device), rows]
    return torch.where(A > 0, domains.lower, domains.upper)


def input_split_bab(graph: Graph, problem: SpecTensors, deadline, options: BaBOptions = BaBOptions(),
                    progress: Callable[[BaBOutcome, int], None] | None = None) -> BaBOutcome:
    """Decide the spec by bisecting input boxes until every piece is verified or one violates."""
    start = time.perf_counter()
    K = problem.n_cases
    device = problem.lower.device
    domains: DomainQueue[DomainBatch] = new_queue(DomainBatch.from_fields, device, options)
    domains.push(DomainBatch(problem.lower, problem.upper, torch.arange(K, device=device),
                             torch.full((K,), -torch.inf, device=device), torch.zeros(K, dtype=torch.long, device=device)))
    outcome = BaBOutcome("unsat")
    input_name = graph.inputs[0]
    relaxed = pre_activation_nodes(graph)
    last_round = 0.0
    batch_size = memory_batch_size(graph, problem.C.shape[1], problem.C.dtype, device, options.input_batch_size)
    while len(domains):
        if stop_reason(outcome, deadline, domains, options, last_round, 2 * min(batch_size, len(domains))):
            break
        round_start = time.perf_counter()
        batch = domains.pop_worst(batch_size)
        coeffs: dict[str, torch.Tensor] = {}
        computed: dict[str, Interval] = {}
        try:
            lower = spec_lower_bounds(graph, Interval(batch.lower, batch.upper), problem.C[batch.case], "crown",
                                      bounds=computed, record=coeffs, prior=batch.inter or None,
                                      deadline=deadline)
        except (RuntimeError, MemoryError) as exc:
            batch_size = requeue_smaller(exc, batch_size, domains, batch, device)
            continue
        outcome.visited += len(batch)
        outcome.max_depth = max(outcome.max_depth, int(batch.depth.max()))
        margins = problem.margins(batch.case, lower)
        open_ = margins <= 0
        if not bool(open_.any()):
            continue
        batch = DomainBatch(batch.lower, batch.upper, batch.case, batch.score, batch.depth,
                            {k: computed[k] for k in relaxed})
        batch, lower, margins = batch.take(open_.nonzero().flatten()), lower[open_], margins[open_]
        # the row deciding each domain: the best row of its worst polytope ~ the most negative margin row
        rows = _deciding_rows(problem, batch.case, lower)
        A = input_coefficients(coeffs, input_name, len(open_), problem.C.shape[1], batch.lower)[open_]
        candidates = torch.cat([_corner_candidates(batch, A, rows), (batch.lower + batch.upper) / 2])
        cases = batch.case.repeat(2)
        with torch.no_grad():
            y = run(graph, candidates)
        hit = problem.violated(cases, y)
        if bool(hit.any()):
            outcome.status = "sat"
            first = hit.nonzero()[0, 0]
            outcome.witness, outcome.witness_case = candidates[first], int(cases[first])
            break
        width = (batch.upper - batch.lower).reshape(len(batch), -1)
        splittable = width.amax(1) > options.min_width
        if not bool(splittable.all()):
            outcome.status = "unknown"
            outcome.notes.append("a sub-problem became too small to split without being decided")
            outcome.worst_margin = float(margins.min())
            break
        dims = split_scores(batch, A, rows).argmax(1)
        batch = DomainBatch(batch.lower, batch.upper, batch.case, margins, batch.depth, batch.inter)
        domains.push(bisect(batch, dims))
        if len(domains):  # the worst open sub-problem anywhere, not just in this batch
            outcome.worst_margin = domains.worst_score()
        last_round = time.perf_counter() - round_start
        if progress is not None:
            progress(outcome, len(domains))
    outcome.elapsed = time.perf_counter() - start
    return outcome


def _deciding_rows(problem: SpecTensors, case: torch.Tensor, row_lower: torch.Tensor) -> torch.Tensor:
    """Per domain, the row whose improvement would help most: best row of the worst open polytope."""
    margin = (row_lower - problem.d[case]).unsqueeze(-1)
    member = problem.onehot[case] > 0
    masked = torch.where(member, margin, torch.full_like(margin, -torch.inf))
    best_val, best_row = masked.max(1)  # (N, P)
    best_val = torch.where(problem.real[case], best_val, torch.full_like(best_val, torch.inf))
    worst_poly = best_val.argmin(1)
    return best_row[torch.arange(len(case), device=case.device), worst_poly]
