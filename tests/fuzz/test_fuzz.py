"""A small soundness-fuzzing campaign (the long one is benchmarks/fuzz_campaign.py).

Random networks from every discovered op, random specs; every bound must contain every
sampled output, and no search may say `unsat` where an oracle holds a counterexample.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from bounds.ops import RULES
from bounds.ops.base import ActivationRule
from tests.fuzz import checks, regression
from tests.fuzz.generators import EXCLUDED, CaseParams, build_case, discover_ops, random_params, shrink_candidates
from tests.fuzz.oracles import gather

BOUND_CHECKS = ("ibp", "crown", "ibp32", "crown32", "alpha", "beta")
#: cases per parametrised chunk: bound checks are cheap, searches cost up to `SECONDS` each
BOUND_CHUNKS, BOUND_CHUNK = 6, 25
VERDICT_CHUNKS, VERDICT_CHUNK = 3, 8
SECONDS = 1.0


def _failures(results) -> list[str]:
    return [f"{f.check} {f.kind}: {f.detail}" for r in results for f in r.failures]


def test_every_activation_of_the_registry_is_fuzzed() -> None:
    unary, _ = discover_ops()
    expected = {op for op, rule in RULES.items() if isinstance(rule, ActivationRule) and rule.has_ibp}
    # a registered activation that fails the probe is left out; say which, so it gets looked at
    missing = expected - set(unary) - EXCLUDED
    assert {"Relu", "LeakyRelu", "Sigmoid", "Tanh"} <= set(unary)
    assert not missing, f"activations the generator cannot use: {sorted(missing)}"


def test_generated_specs_are_both_sat_and_unsat() -> None:
    words = []
    for seed in range(40):
        fc = build_case(random_params(seed))
        ev = gather(fc.graph, fc.spec, seed, n_samples=300, pgd_steps=20, milp_seconds=5.0)
        words.append("sat" if ev.sat else (ev.exact or "open"))
    sat, unsat = words.count("sat"), words.count("unsat")
    assert sat >= 10 and unsat >= 8, words


@pytest.mark.parametrize("chunk", range(BOUND_CHUNKS))
def test_bounds_contain_every_sample(chunk: int) -> None:
    bad = []
    for seed in range(1000 + chunk * BOUND_CHUNK, 1000 + (chunk + 1) * BOUND_CHUNK):
        fc = build_case(random_params(seed))
        ev = gather(fc.graph, fc.spec, seed, n_samples=200, pgd_steps=0, milp_seconds=0)
        results = checks.run_all(fc, ev, seed, BOUND_CHECKS)
        bad += [f"seed {seed}: {msg}" for msg in _failures(results)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("chunk", range(VERDICT_CHUNKS))
def test_searches_never_contradict_the_oracles(chunk: int) -> None:
    bad, words = [], []
    for seed in range(5000 + chunk * VERDICT_CHUNK, 5000 + (chunk + 1) * VERDICT_CHUNK):
        fc = build_case(random_params(seed, max_width=6))
        ev = gather(fc.graph, fc.spec, seed, n_samples=400, pgd_steps=20, milp_seconds=5.0)
        results = checks.run_all(fc, ev, seed, checks.VERDICT_CHECKS, seconds=SECONDS)
        bad += [f"seed {seed}: {msg}" for msg in _failures(results)]
        words += [r.status for r in results]
    assert not bad, "\n".join(bad)
    assert words.count("unsat") >= 2 and words.count("sat") >= 2, words  # both verdicts exercised


@pytest.mark.parametrize("path", regression.saved(), ids=lambda p: p.stem)
def test_saved_regressions_stay_fixed(path) -> None:
    result = regression.replay(path)
    assert not result.failures, _failures([result])


# ----------------------------------------------------------------------------------------
# the harness itself: it must be able to fail, shrink and save

def test_a_broken_relaxation_is_caught(monkeypatch) -> None:
    from bounds.ops import relu
    from bounds.types import Relaxation

    honest = relu.Relu.relax

    def lifted(self, node, x, alpha=None):
        r = honest(self, node, x, alpha)
        return Relaxation(r.lw, r.lb + 0.3, r.uw, r.ub)   # the lower line moved up: unsound

    monkeypatch.setattr(relu.Relu, "relax", lifted)
    p = CaseParams(seed=3, width=6, depth=2, acts=("Relu",), radius=0.8)
    fc = build_case(p)
    ev = gather(fc.graph, fc.spec, p.seed, n_samples=300, pgd_steps=0, milp_seconds=0)
    result = checks.run_check("crown", fc, ev, p.seed)
    assert any(f.kind == "unsound-bound" for f in result.failures), result


def test_unsat_with_a_known_counterexample_is_reported() -> None:
    p = CaseParams(seed=7, spec_kind="box", offset=0.5)      # threshold inside the range: sat
    fc = build_case(p)
    ev = gather(fc.graph, fc.spec, p.seed, n_samples=300, pgd_steps=0, milp_seconds=0)
    assert ev.sat
    fails = checks._judge("fake", "unsat", None, None, fc, ev)
    assert fails and fails[0].kind == "unsound-unsat"
    bogus = checks._judge("fake", "sat", np.full(fc.spec.n_inputs, 1e3), 0, fc, ev)
    assert bogus and bogus[0].kind == "bogus-sat"


def test_shrinking_reaches_a_minimal_case_and_saves_it(monkeypatch, tmp_path) -> None:
    # a fake defect that shows whenever the network is at least 3 wide and 2 deep
    def fake(check, fc, ev, seed, seconds=3.0):
        p = fc.params
        fails = (checks.Failure(check, "unsound-bound", "fake"),) if p.width >= 3 and p.depth >= 2 else ()
        return checks.CheckResult(check, "fail" if fails else "ok", fails)

    monkeypatch.setattr(regression, "run_check", fake)
    start = CaseParams(seed=11, family="residual", n_in=4, n_out=3, width=7, depth=3, acts=("Relu", "Tanh"),
                       spec_kind="polytope", n_cases=2, n_polytopes=2, n_rows=3, radius=0.8)
    oracle = {"n_samples": 50, "pgd_steps": 0, "milp_seconds": 0}
    p, fc, ev, failure = regression.shrink(start, checks.Failure("crown", "unsound-bound", "x"), oracle=oracle)
    assert (p.width, p.depth, p.n_cases, p.n_rows, p.family) == (3, 2, 1, 1, "mlp")
    assert len(p.acts) == 1 and p.n_in == 1 and p.n_out == 1
    assert not any(fake("crown", build_case(c), None, 0).failures for c in shrink_candidates(p)
                   if c.width < 3 or c.depth < 2)
    path = regression.save("crown_fake", p, fc, ev, failure, tmp_path)
    data, loaded = regression.load(path)
    assert data["check"] == "crown" and CaseParams.from_json(json.loads(path.read_text())["params"]) == p
    xs = torch.randn(16, *fc.graph.input.shape)
    from bounds.graph.interpret import run
    assert torch.allclose(run(fc.graph, xs), run(loaded.graph, xs), atol=1e-6)
    assert loaded.spec.cases[0].polytopes[0].C.shape == fc.spec.cases[0].polytopes[0].C.shape


def test_params_round_trip_through_json() -> None:
    p = random_params(42)
    assert CaseParams.from_json(json.loads(json.dumps(p.to_json()))) == p
    assert all(dataclasses.replace(c) != p for c in shrink_candidates(p))
