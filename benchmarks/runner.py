"""Run instances on a pool and write each answer to the results CSV as it arrives (resumable).

    instances = sample(read_suite("../shared/benchmarks/acasxu").instances, every=6)
    summary = run_instances(instances, ResultsFile("out/acasxu.csv"), LocalPool(PoolOptions(workers=2)))
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from benchmarks.jobs import Job, JobResult
from benchmarks.progress import Progress
from benchmarks.results import ResultsFile, Row
from benchmarks.suite import Instance

log = logging.getLogger(__name__)


class Backend(Protocol):
    slots: int

    def run(self, jobs: Iterable[Job]) -> Iterator[JobResult]: ...


@dataclass(frozen=True)
class RunOptions:
    """timeout_scale  each instance's published limit is multiplied by this
    max_timeout       ... and then capped at this many seconds (0: no cap)
    device, seed, bound_method, arithmetic  passed to VerifyOptions in the workers
    """

    timeout_scale: float = 1.0
    max_timeout: float = 0.0
    device: str = "cpu"
    seed: int = 0
    bound_method: str = "crown"
    arithmetic: str = "float32"

    def __post_init__(self) -> None:
        if not self.timeout_scale > 0:
            raise ValueError(f"timeout_scale must be > 0, got {self.timeout_scale}")
        if self.max_timeout < 0:
            raise ValueError(f"max_timeout must be >= 0, got {self.max_timeout}")

    def limit(self, inst: Instance) -> float:
        limit = inst.timeout * self.timeout_scale
        return min(limit, self.max_timeout) if self.max_timeout > 0 else limit

    def verify_options(self) -> dict[str, object]:
        return {"device": self.device, "seed": self.seed, "bound_method": self.bound_method,
                "arithmetic": self.arithmetic}


@dataclass
class RunSummary:
    ran: int = 0
    skipped: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    wrong: list[tuple[str, str, str]] = field(default_factory=list)
    max_overrun: float = 0.0


def is_wrong(result: str, expected: str) -> bool:
    return result in ("sat", "unsat") and expected in ("sat", "unsat") and result != expected


def run_instances(instances: list[Instance], results: ResultsFile, backend: Backend,
                  options: RunOptions | None = None, progress_stream: TextIO | None = None,
                  tty: bool | None = None) -> RunSummary:
    """Run every instance not yet in `results`; each row is on disk before the next result is read."""
    options = options or RunOptions()
    done = results.done()
    todo = [inst for inst in instances if inst.key not in done]
    summary = RunSummary(skipped=len(instances) - len(todo))
    jobs = [Job(id=i, onnx=str(inst.onnx_path), vnnlib=str(inst.vnnlib_path), limit=options.limit(inst),
                options=options.verify_options()) for i, inst in enumerate(todo)]
    previously: dict[str, int] = {}
    for inst in instances:
        if inst.key in done:
            word = results.rows[inst.key].result
            previously[word] = previously.get(word, 0) + 1
    progress = Progress(len(todo), stream=progress_stream, tty=tty, previously=previously)
    progress.begin()
    stream = backend.run(jobs)
    try:
        for res in stream:
            inst, job = todo[res.id], jobs[res.id]
            row = _row(inst, job, res, results)
            results.append(row)
            summary.ran += 1
            summary.counts[row.result] = summary.counts.get(row.result, 0) + 1
            summary.max_overrun = max(summary.max_overrun, row.overrun)
            wrong = is_wrong(row.result, inst.expected)
            if wrong:
                summary.wrong.append(inst.key)
                log.error("WRONG: %s %s %s: %s but truth.csv says %s", *inst.key, row.result, inst.expected)
            progress.update(row.result, wrong, f"{inst.category} {inst.onnx} {inst.vnnlib}", row.run_time)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # kills the workers still running when we stop early (Ctrl-C, an error)
        progress.finish()
    return summary


def _row(inst: Instance, job: Job, res: JobResult, results: ResultsFile) -> Row:
    witness = ""
    if res.result == "sat" and res.witness:
        witness = results.write_witness(inst.category, inst.onnx, inst.vnnlib, res.witness)
    elif res.result == "sat":
        log.warning("%s %s: sat without a counterexample from the worker", inst.onnx, inst.vnnlib)
    return Row(category=inst.category, onnx=inst.onnx, vnnlib=inst.vnnlib, prepare_time=0.0,
               result=res.result, run_time=res.time_s, timeout=job.limit, overrun=max(0.0, res.time_s - job.limit),
               stage=res.stage, bound=res.bound, witness=witness, expected=inst.expected,
               message=res.message[:300])
