"""What the runner hands a worker and what comes back (standard library only, so that the
parent never has to import torch).

The worker protocol (benchmarks/worker.py, one JSON object per line):
    worker -> parent   {"ready": true, "pid": 123}              once its imports are done
    parent -> worker   Job.to_wire()                            one instance
    worker -> parent   {"id": ..., "result": "unsat", ...}      its answer (JobResult fields)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: the parent kills a worker this long after the instance's limit; under the 1 s that the
#: competition tolerates, and over the time a worker needs to report a verdict it has
KILL_GRACE_S = 0.5
#: the verifier is asked to stop this long before the limit (capped at 10% of it), so that a
#: verdict normally arrives before the parent has to kill anything
VERIFY_MARGIN_S = 0.3

#: result words that end an instance without a verdict
NO_VERDICT = ("unknown", "timeout", "error")


@dataclass(frozen=True)
class Job:
    """One instance for a worker.

    id        the runner's index of the instance
    onnx      absolute path of the network
    vnnlib    absolute path of the property
    limit     the hard wall-clock limit, seconds (the parent kills at limit + KILL_GRACE_S)
    options   VerifyOptions fields to set (device, seed, bound_method, ...), JSON values only
    """

    id: int
    onnx: str
    vnnlib: str
    limit: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def budget(self) -> float:
        """Seconds the verifier itself may use."""
        return max(0.05, self.limit - min(VERIFY_MARGIN_S, 0.1 * self.limit))

    def to_wire(self) -> dict[str, Any]:
        return {**asdict(self), "budget": self.budget}


@dataclass(frozen=True)
class JobResult:
    """A finished instance.

    result     sat / unsat / unknown / timeout / error
    time_s     wall-clock seconds from handing the job over to the answer (parent's clock)
    stage      the verifier stage that decided ("" if none)
    bound      best certified margin (unsat / unknown) or the witness' violation (sat)
    message    why, in words
    witness    the VNN-COMP result-file text after a `sat` (word and counterexample), else ""
    killed     the parent killed the worker at the hard limit
    """

    id: int
    result: str
    time_s: float
    stage: str = ""
    bound: float | None = None
    message: str = ""
    witness: str = ""
    killed: bool = False

    @staticmethod
    def from_wire(data: dict[str, Any], time_s: float) -> "JobResult":
        bound = data.get("bound")
        return JobResult(id=int(data["id"]), result=str(data.get("result", "error")), time_s=time_s,
                         stage=str(data.get("stage") or ""),
                         bound=float(bound) if isinstance(bound, (int, float)) else None,
                         message=str(data.get("message") or ""), witness=str(data.get("witness") or ""))
