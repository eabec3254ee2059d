"""Every knob of a verification run, as frozen dataclasses with defaults that work.

No option can trade soundness away: they only decide how much effort goes where.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from bounds.alpha import AlphaOptions
from branching.bab import BaBOptions

BoundMethod = Literal["crown", "ibp"]
BOUND_METHODS: tuple[str, ...] = ("crown", "ibp")
Precision = Literal["auto", "float64", "float32"]
PRECISIONS: tuple[str, ...] = ("auto", "float64", "float32")
Arithmetic = Literal["float32", "exact"]
ARITHMETICS: tuple[str, ...] = ("float32", "exact")


@dataclass(frozen=True)
class AttackOptions:
    """How hard to look for a counterexample.

    random_samples   points tried per input box in the cheap first stage (the box centre and
                     random vertices are always among them)
    pgd_steps        signed-gradient steps per PGD round
    pgd_restarts     starting points per output polytope per round (all run as one batch)
    pgd_rounds       most PGD rounds; each starts one restart per polytope at the best point so
                     far and the others at random, and the rounds cycle through coarse, finer
                     and finest first steps (the finer ones also search around the best point)
    step_size        first PGD step of a coarse round, as a fraction of each input's range
    final_step_size  last PGD step, same unit; steps decay geometrically in between
    max_seconds      wall-clock cap of the whole PGD stage (None: only the run's deadline)
    stall_tol        before branch and bound (which goes on attacking from its open
                     sub-problems) the PGD stage stops once a whole cycle of round scales
                     lowered no polytope's best loss by more than this, relative
    batch_size       most points evaluated in one forward pass
    """

    random_samples: int = 512
    pgd_steps: int = 100
    pgd_restarts: int = 16
    pgd_rounds: int = 20
    step_size: float = 0.1
    final_step_size: float = 1e-4
    max_seconds: float | None = 30.0
    stall_tol: float = 1e-3
    batch_size: int = 2048

    def __post_init__(self) -> None:
        for name in ("random_samples", "pgd_steps", "pgd_restarts", "pgd_rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"AttackOptions.{name} must be a non-negative integer, got {value!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"AttackOptions.batch_size must be a positive integer, got {self.batch_size!r}")
        if not (0 < self.final_step_size <= self.step_size <= 1):
            raise ValueError("AttackOptions needs 0 < final_step_size <= step_size <= 1, "
                             f"got {self.final_step_size!r} and {self.step_size!r}")
        if self.max_seconds is not None and not self.max_seconds >= 0:
            raise ValueError(f"AttackOptions.max_seconds must be >= 0 or None, got {self.max_seconds!r}")


@dataclass(frozen=True)
class VerifyOptions:
    """One verification run.

    timeout       wall-clock seconds for the whole run (loading included)
    device        torch device for bounds and attacks ("cpu", "cuda", "cuda:1", ...)
    bound_method  "crown" (tighter) or "ibp" (interval arithmetic, cheaper)
    seed          seed of every random choice, so runs are reproducible
    attack        falsification effort, see AttackOptions
    branch_and_bound  run the complete search when bounds and attack leave the spec open
    alpha         alpha-CROWN effort before neuron splitting, see bounds.alpha.AlphaOptions
    bab           branch-and-bound effort, see branching.bab.BaBOptions
    input_split_max_inputs  networks with at most this many inputs are decided by input
                  splitting once cheap bounds fail
    pre_bab_attack_seconds  most seconds PGD may take before branch and bound (which keeps
                  looking for counterexamples itself)
    pre_neuron_bab_attack_seconds  the same before neuron splitting (ReLU or general), which
                  attacks less often than input splitting, capped at a tenth of the time
                  limit. Longer attacks found no more counterexamples on mnist_fc's 18 `sat`
                  instances (branch and bound's own attacks found the rest) but delayed
                  every instance that branch and bound proves (mnist 256x2 prop_9 eps 0.05:
                  7 s of attack before a 0.1 s search)
    precision     floating point of every bound that can decide `unsat`: "float64" keeps the
                  rounding error some ten orders of magnitude below the refutation slack;
                  "float32" is faster on GPUs and relies on that slack alone; "auto" (default)
                  picks float64 on the CPU and float32 on a GPU. Attacks always run in float32
                  (their answers are replayed anyway).
    arithmetic    which network `unsat` speaks about. "float32" (default): every certified
                  margin must exceed an allowance of 1e-6 x (1 + |d| + |bound|), so the answer
                  also holds for the model as onnxruntime runs it in float32, where a margin of
                  a few units in the last place can go either way. "exact": the network computed
                  exactly on its stored weights, as VNN-LIB declares its variables Real and as
                  other verifiers read it; with float64 bounds the allowance then only covers
                  their own rounding (1e-10 relative; float32 bounds keep 1e-6). Specs written
                  with a 1e-6 tolerance against outputs that saturate (ml4acopf) are decided
                  only this way. `sat` is the same either way: replayed in onnxruntime.
    """

    timeout: float = 300.0
    device: str = "cpu"
    bound_method: BoundMethod = "crown"
    seed: int = 0
    attack: AttackOptions = field(default_factory=AttackOptions)
    branch_and_bound: bool = True
    alpha: AlphaOptions = field(default_factory=lambda: AlphaOptions(iterations=50, lr=0.1, stop_above=None))
    bab: BaBOptions = field(default_factory=BaBOptions)
    input_split_max_inputs: int = 16
    pre_bab_attack_seconds: float = 0.25
    pre_neuron_bab_attack_seconds: float = 2.0
    precision: Precision = "auto"
    arithmetic: Arithmetic = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.timeout, (int, float)) or math.isnan(self.timeout) or self.timeout < 0:
            raise ValueError(f"VerifyOptions.timeout must be a number of seconds >= 0, got {self.timeout!r}")
        if self.bound_method not in BOUND_METHODS:
            raise ValueError(f"VerifyOptions.bound_method must be one of {', '.join(BOUND_METHODS)}, "
                             f"got {self.bound_method!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"VerifyOptions.device must be a device name such as 'cpu' or 'cuda', got {self.device!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"VerifyOptions.seed must be an integer, got {self.seed!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"VerifyOptions.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.arithmetic not in ARITHMETICS:
            raise ValueError(f"VerifyOptions.arithmetic must be one of {', '.join(ARITHMETICS)}, "
                             f"got {self.arithmetic!r}")
        if not isinstance(self.attack, AttackOptions):
            raise ValueError("VerifyOptions.attack must be an AttackOptions")

    def bound_dtype(self, device_type: str) -> "torch.dtype":
        """The dtype bounds are computed in on a device of this type ("cpu", "cuda", ...)."""
        import torch

        choice = self.precision if self.precision != "auto" else ("float64" if device_type == "cpu" else "float32")
        return torch.float64 if choice == "float64" else torch.float32

    def refute_slack(self, dtype: "torch.dtype") -> float:
        """Relative rounding allowance a certified margin must exceed to refute a row."""
        import torch

        from branching.problem import EXACT_SLACK, REFUTE_SLACK

        return EXACT_SLACK if self.arithmetic == "exact" and dtype == torch.float64 else REFUTE_SLACK

    def with_(self, **changes) -> "VerifyOptions":
        """A copy with some fields changed (dataclasses.replace, validated again)."""
        return replace(self, **changes)
