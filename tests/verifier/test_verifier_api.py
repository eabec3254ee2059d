"""verify() on tiny ONNX models with known answers; every `sat` witness is replayed here too."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bounds.errors import ModelLoadError
from specs import SpecShapeError, parse_vnnlib, parse_vnnlib_text, parse_witness
from verifier import AttackOptions, Outcome, Result, VerifyOptions, verify
from tests.verifier import verifier_fixtures as F

FAST = VerifyOptions(timeout=30, attack=AttackOptions(pgd_rounds=1, pgd_steps=50))
#: bounds and attack only: what a spec beyond plain CROWN reports without the complete search
NO_BAB = FAST.with_(branch_and_bound=False)


@pytest.fixture()
def net(tmp_path: Path) -> Path:
    return F.write_tiny_net(tmp_path / "net.onnx")


def _spec(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name.lower()}.vnnlib"
    path.write_text(getattr(F, name))
    return path


def _ort(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    return sess.run(None, {inp.name: x.astype(np.float32).reshape(inp.shape)})[0].reshape(-1).astype(np.float64)


def _assert_replays(result: Result, model: Path, spec_path: Path) -> None:
    """The witness as the VNN-COMP checker sees it: parse the file text, rerun onnxruntime."""
    assert result.outcome is Outcome.SAT
    x, y = parse_witness(result.to_vnncomp())
    spec = parse_vnnlib(spec_path)
    y_ort = _ort(model, x)
    assert np.allclose(y, y_ort, atol=1e-6)
    assert spec.is_violated_by(x, y_ort, tol=0.0)


def test_unsat_is_proved_by_crown(net, tmp_path):
    res = verify(net, _spec(tmp_path, "UNSAT"), options=FAST)
    assert res.outcome is Outcome.UNSAT and res.stage == "crown"
    assert res.best_bound == pytest.approx(0.5, abs=1e-4)
    assert res.witness_x is None and res.to_vnncomp() == "unsat\n"
    assert res.summary().startswith("unsat") and "CROWN" in res.summary()


def test_unsat_with_ibp(net):
    # y1 <= 1.5 on [0.5, 1]^2, which interval arithmetic sees too
    spec = parse_vnnlib_text(F.declarations(2, 2) + F.box([0.5, 0.5], [1.0, 1.0]) + "(assert (>= Y_1 1.6))\n")
    res = verify(net, spec, options=FAST.with_(bound_method="ibp"))
    assert res.outcome is Outcome.UNSAT and res.stage == "ibp"
    assert res.best_bound == pytest.approx(0.1, abs=1e-4)
    # y0 - y1 = 0.5 there, but IBP loses the correlation: unknown, not a wrong answer
    res = verify(net, parse_vnnlib_text(F.UNSAT), options=NO_BAB.with_(bound_method="ibp"))
    assert res.outcome is Outcome.UNKNOWN and "IBP" in res.message
    # branch and bound (input splitting) then decides it
    res = verify(net, parse_vnnlib_text(F.UNSAT), options=FAST.with_(bound_method="ibp"))
    assert res.outcome is Outcome.UNSAT and res.stage == "bab"


def test_sat_writes_a_witness_that_replays(net, tmp_path):
    spec = _spec(tmp_path, "SAT")
    res = verify(net, spec, options=FAST)
    _assert_replays(res, net, spec)
    assert res.stage in ("sampling", "pgd") and res.best_bound <= 0
    lines = res.to_vnncomp().splitlines()
    assert lines[0] == "sat" and lines[1].startswith("((X_0 ") and lines[2].startswith(" (X_1 ")
    assert lines[3].startswith(" (Y_0 ") and lines[4].startswith(" (Y_1 ") and lines[4].endswith("))")


def test_unknown_names_the_open_polytope(net, tmp_path):
    res = verify(net, _spec(tmp_path, "HARD"), options=NO_BAB)
    assert res.outcome is Outcome.UNKNOWN
    assert "case 0 polytope 0" in res.message and "-1.5" in res.message
    assert res.best_bound is not None and res.best_bound < 0
    assert res.details["attack_best_loss"] >= 0.5 - 1e-4  # y0 - y1 >= 0.5: nothing to find


def test_disjunctive_boxes(net, tmp_path):
    res = verify(net, _spec(tmp_path, "DISJUNCTIVE_UNSAT"), options=FAST)
    assert res.outcome is Outcome.UNSAT
    spec = _spec(tmp_path, "DISJUNCTIVE_SAT")
    res = verify(net, spec, options=FAST)
    _assert_replays(res, net, spec)
    assert res.details["violated"]["case"] == 1 and np.all(res.witness_x >= 0.9)


def test_padded_rows_never_refute(net, tmp_path):
    res = verify(net, _spec(tmp_path, "PADDED"), options=NO_BAB)
    assert res.outcome is Outcome.UNKNOWN, res.message
    assert res.details["open_polytopes"] == [[0, 0]]


def test_branch_and_bound_decides_what_crown_leaves_open(net, tmp_path):
    for name in ("HARD", "PADDED"):
        res = verify(net, _spec(tmp_path, name), options=FAST)
        assert res.outcome is Outcome.UNSAT and res.stage == "bab", res.message


def test_spec_object_and_graph_inputs(net):
    from bounds.graph.onnx_import import load_onnx

    spec = parse_vnnlib_text(F.UNSAT, "inline")
    assert verify(str(net), spec, options=FAST).outcome is Outcome.UNSAT
    graph = load_onnx(net)
    res = verify(graph, parse_vnnlib_text(F.SAT, "inline"), options=FAST)
    assert res.outcome is Outcome.SAT and "our graph" in res.message


def test_replay_disagreement_is_not_reported_as_sat(net, tmp_path, monkeypatch):
    import verifier.api as api
    from verifier.replay import OnnxReference

    class Lying(OnnxReference):
        def outputs(self, x):  # the truth, except where the counterexamples are
            y = super().outputs(x)
            y[x.sum(axis=1) > 1.0, 1] = -10.0
            return y

    real = api.load_model

    def fake(model, spec, input_shape):
        graph, _, name = real(model, spec, input_shape)
        return graph, Lying(model), name

    monkeypatch.setattr(api, "load_model", fake)
    res = verify(net, _spec(tmp_path, "SAT"), options=FAST)
    assert res.outcome is Outcome.UNKNOWN
    assert res.details["rejected_candidates"] >= 1 and "did not replay" in res.message


def test_timeout(net, tmp_path):
    res = verify(net, _spec(tmp_path, "HARD"), options=VerifyOptions(timeout=0))
    assert res.outcome is Outcome.TIMEOUT and res.to_vnncomp() == "timeout\n"


def test_bad_inputs_raise(net, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(ModelLoadError):
        verify(bad, _spec(tmp_path, "UNSAT"), options=FAST)
    with pytest.raises(ModelLoadError):
        verify(tmp_path / "missing.onnx", _spec(tmp_path, "UNSAT"), options=FAST)
    three = tmp_path / "three.vnnlib"
    three.write_text(F.declarations(3, 2) + F.box([0, 0, 0], [1, 1, 1]) + "(assert (<= Y_0 Y_1))\n")
    with pytest.raises(SpecShapeError, match="3 inputs"):
        verify(net, three, options=FAST)


class _TinyTorch(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(2, 3)
        self.fc2 = torch.nn.Linear(3, 2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.from_numpy(F.W1))
            self.fc1.bias.copy_(torch.from_numpy(F.B1))
            self.fc2.weight.copy_(torch.from_numpy(F.W2))
            self.fc2.bias.copy_(torch.from_numpy(F.B2))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_torch_module():
    pytest.importorskip("bounds.graph.torch_import", reason="the torch.nn.Module frontend is not there yet")
    module = _TinyTorch().eval()
    res = verify(module, parse_vnnlib_text(F.UNSAT, "unsat"), options=FAST)
    assert res.outcome is Outcome.UNSAT
    res = verify(module, parse_vnnlib_text(F.SAT, "sat"), options=FAST)
    assert res.outcome is Outcome.SAT and "torch module" in res.message
    with torch.no_grad():
        y = module(torch.tensor(res.witness_x, dtype=torch.float32).reshape(1, 2)).double().numpy().reshape(-1)
    assert np.allclose(y, res.witness_y) and y[1] >= 1.2
    assert math.isfinite(res.time_s)


def test_attack_before_branch_and_bound_stops_when_its_loss_settles(net, tmp_path, monkeypatch):
    """A robust property: the pre-BaB PGD rounds stop after one cycle of scales without
    progress instead of using all pgd_rounds (BaB attacks its open sub-problems anyway)."""
    import verifier.api as api

    calls = []
    real = api.atk.pgd

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(api.atk, "pgd", counting)
    many = VerifyOptions(timeout=30, attack=AttackOptions(pgd_rounds=20, pgd_steps=20, max_seconds=None))
    res = verify(net, _spec(tmp_path, "HARD"), options=many)
    assert res.outcome is Outcome.UNSAT and res.stage == "bab", res.message
    assert len(calls) <= 1 + 2 * len(api.atk.ROUND_SCALES)
    calls.clear()
    res = verify(net, _spec(tmp_path, "HARD"), options=many.with_(branch_and_bound=False))
    assert len(calls) == 20          # without a complete search the attack keeps its rounds


def _robust_wide_net(tmp_path):
    """A 30-input ReLU net and the spec "the runner-up class overtakes the top one" on a small box."""
    import onnxruntime as ort

    model = F.write_wide_net(tmp_path / "mlp.onnx", n_in=30, width=24, depth=3, seed=3)
    sess = ort.InferenceSession(str(model))
    y0 = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 30), np.float32)})[0].reshape(-1)
    top, second = np.argsort(-y0)[:2]
    spec = tmp_path / "robust.vnnlib"
    spec.write_text(F.declarations(30, 10) + F.box([-0.05] * 30, [0.05] * 30) + f"(assert (>= Y_{second} Y_{top}))\n")
    return model, spec


def test_milp_refined_root_tightens_and_keeps_the_verdict(tmp_path):
    from branching.bab import BaBOptions

    model, spec = _robust_wide_net(tmp_path)
    verdicts = {}
    for share in (0.0, 0.2):
        res = verify(model, spec, options=VerifyOptions(timeout=30, bab=BaBOptions(
            milp_refine_share=share, milp_refine_per_solve=0.2, milp_max_unstable=0)))
        verdicts[share] = res.outcome
        if share:
            refine = res.details["milp_refine"]
            assert refine["solves"] > 0 and refine["lower_after"] > refine["lower_before"]
    assert verdicts[0.0] is verdicts[0.2] is Outcome.UNSAT


def test_late_milp_tightening_inside_branch_and_bound_keeps_the_verdict(tmp_path):
    from branching.bab import BaBOptions

    model, spec = _robust_wide_net(tmp_path)
    res = verify(model, spec, options=VerifyOptions(timeout=30, bab=BaBOptions(
        milp_refine_after=0.0, milp_refine_min_seconds=0.0, milp_refine_per_solve=0.2, milp_max_unstable=0,
        split_refine_after=None)))
    assert res.outcome is Outcome.UNSAT
    assert res.details["milp_refine"]["solves"] > 0  # the search ran and tightened once


def test_tightening_by_splits_then_milp_inside_branch_and_bound_keeps_the_verdict(tmp_path):
    from branching.bab import BaBOptions

    model, spec = _robust_wide_net(tmp_path)
    res = verify(model, spec, options=VerifyOptions(timeout=30, bab=BaBOptions(
        split_refine_after=0.0, split_refine_min_seconds=0.0, split_refine_share=0.1,
        milp_refine_after=0.0, milp_refine_min_seconds=0.0, milp_refine_per_solve=0.2, milp_max_unstable=0,
        milp_after_splits=True)))
    assert res.outcome is Outcome.UNSAT
    splits = res.details["split_refine"]
    assert splits["solves"] > 0 and splits["layers"] > 0
    # the MILP stage ran after it, from its intervals, unless those decided already
    assert splits["refutes"] or res.details["milp_refine"]["solves"] > 0


def test_no_milp_stage_after_the_tightening_by_splits_by_default(tmp_path):
    from branching.bab import BaBOptions

    model, spec = _robust_wide_net(tmp_path)
    res = verify(model, spec, options=VerifyOptions(timeout=30, bab=BaBOptions(
        split_refine_after=0.0, split_refine_min_seconds=0.0, split_refine_share=0.1,
        milp_refine_after=0.0, milp_refine_min_seconds=0.0, milp_refine_per_solve=0.2, milp_max_unstable=0)))
    assert res.outcome is Outcome.UNSAT
    assert res.details["split_refine"]["solves"] > 0 and "milp_refine" not in res.details


def test_attack_before_neuron_splitting_is_capped(tmp_path, monkeypatch):
    """Neuron splitting attacks by itself, so the attack before it gets at most
    pre_neuron_bab_attack_seconds (and at most a tenth of the limit), not the tenth alone."""
    from verifier import api

    model, spec = _robust_wide_net(tmp_path)
    budgets = []
    real = api._Run.pgd

    def recording(self, targets, starts, loss, budget=None, **kw):
        budgets.append(math.inf if budget is None else budget.remaining())
        return real(self, targets, starts, loss, budget, **kw)

    monkeypatch.setattr(api._Run, "pgd", recording)
    for cap, most in ((0.5, 0.5), (1e9, 0.1 * 60)):
        budgets.clear()
        res = verify(model, spec, options=VerifyOptions(timeout=60, pre_neuron_bab_attack_seconds=cap))
        assert res.outcome is Outcome.UNSAT
        assert budgets and most - 1.0 < budgets[0] <= most


def test_unknown_after_the_search_says_why_it_stopped_and_how_far_it_got(net, tmp_path):
    from branching.bab import BaBOptions

    crown_only = verify(net, _spec(tmp_path, "HARD"), options=NO_BAB)
    res = verify(net, _spec(tmp_path, "HARD"), options=FAST.with_(bab=BaBOptions(max_domains=1)))
    assert res.outcome is Outcome.UNKNOWN
    assert "stopped undecided after" in res.message and "more than 1 open sub-problems" in res.message
    assert "needs a complete search" not in res.message
    # first, so that it survives the suite runner's 300-character cut of messages
    assert res.message.index("stopped undecided") < res.message.index("CROWN refuted")
    # the search's worst open sub-problem bounds the spec at least as well as CROWN did
    assert res.best_bound is not None and res.best_bound >= crown_only.best_bound
