"""The small pieces of the verifier package: options, deadline, results, errors, replay, attack."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from bounds.errors import ModelLoadError, NumericalError, UnsupportedOpError
from specs import Polytope, Spec, SpecCase, SpecParseError, SpecShapeError, parse_witness
from verifier import attack as atk
from verifier.deadline import Deadline, DeadlineExceeded
from verifier.errors import EXIT_INTERNAL, EXIT_MODEL, EXIT_SPEC, GraphMismatchError, exit_code
from verifier.options import AttackOptions, VerifyOptions
from verifier.replay import Replay, replay, snap_to_box
from verifier.result import Outcome, Result
from tests.verifier import verifier_fixtures as F


# ---------------------------------------------------------------------------------------
# options and deadline

def test_options_defaults_and_validation():
    opts = VerifyOptions()
    assert (opts.timeout, opts.device, opts.bound_method, opts.seed) == (300.0, "cpu", "crown", 0)
    assert opts.attack.pgd_steps > 0 and opts.attack.random_samples > 0
    assert opts.with_(bound_method="ibp").bound_method == "ibp"
    with pytest.raises(ValueError, match="bound_method"):
        VerifyOptions(bound_method="alpha")
    with pytest.raises(ValueError, match="timeout"):
        VerifyOptions(timeout=-1)
    with pytest.raises(ValueError, match="step"):
        AttackOptions(step_size=0.01, final_step_size=0.1)
    with pytest.raises(Exception):
        opts.timeout = 3  # frozen


def test_deadline():
    d = Deadline(0.05)
    assert not d.expired() and 0 < d.remaining() <= 0.05
    d.check()
    child = d.within(10)
    assert child.remaining() <= 0.05
    time.sleep(0.06)
    assert d.expired() and d.remaining() == 0 and child.expired()
    with pytest.raises(DeadlineExceeded):
        d.check()
    assert not Deadline(math.inf).expired()
    assert Deadline(math.inf).within(0).expired()


# ---------------------------------------------------------------------------------------
# results

def test_result_vnncomp_and_json():
    x, y = np.array([0.1, 1 / 3]), np.array([-2.5, 1e-12])
    sat = Result(Outcome.SAT, 1.25, x, y, "found", "pgd", -0.5, "net prop", {"violated": {"case": 0, "polytope": 1}})
    text = sat.to_vnncomp()
    assert text.startswith("sat\n((X_0 0.1)\n (X_1 0.3333333333333333)\n (Y_0 -2.5)\n (Y_1 1e-12))")
    px, py = parse_witness(text)
    assert np.array_equal(px, x) and np.array_equal(py, y)  # full precision round trip
    obj = json.loads(json.dumps(sat.to_json()))
    assert {"result", "time_s", "stage", "message", "best_bound", "witness", "details", "instance"} <= obj.keys()
    assert obj["result"] == "sat" and obj["witness"]["x"] == x.tolist()
    assert sat.summary().startswith("sat ") and "net prop" in sat.summary() and "PGD" in sat.summary()

    unsat = Result(Outcome.UNSAT, 0.42, message="proved", stage="crown", best_bound=0.013, instance="a b")
    assert unsat.to_vnncomp() == "unsat\n"
    assert unsat.summary() == "unsat    a b  0.42 s  (CROWN, min margin 0.013)"
    for outcome in Outcome:
        if outcome is not Outcome.SAT:
            assert Result(outcome).to_vnncomp() == outcome.word + "\n"
    assert [o.word for o in Outcome] == ["sat", "unsat", "unknown", "timeout", "error"]
    with pytest.raises(ValueError):
        Result(Outcome.SAT)  # sat needs a witness
    assert "inf" in json.dumps(Result(Outcome.UNSAT, details={"m": math.inf}).to_json())


# ---------------------------------------------------------------------------------------
# errors

def test_exit_codes():
    assert exit_code(ModelLoadError("x")) == EXIT_MODEL == 3
    assert exit_code(UnsupportedOpError([("Foo", "n", 13)])) == EXIT_MODEL
    assert exit_code(SpecParseError("p", 1, 2, "x")) == EXIT_SPEC == 4
    assert exit_code(SpecShapeError("x")) == EXIT_SPEC
    assert exit_code(RuntimeError("x")) == EXIT_INTERNAL == 1
    assert exit_code(NumericalError("x")) == EXIT_INTERNAL
    assert exit_code(GraphMismatchError("x")) == EXIT_INTERNAL


# ---------------------------------------------------------------------------------------
# replay

def test_snap_to_box_is_float32_and_inside():
    lower = np.array([0.1, -0.3, 0.7])
    upper = np.array([0.1 + 1e-12, 0.3, 0.7])  # the first and last box hold no float32 value exactly
    x = snap_to_box(np.array([0.1, 5.0, 0.7]), lower, upper)
    assert np.array_equal(x, x.astype(np.float32).astype(np.float64))
    assert x[1] <= 0.3 and np.all(np.abs(np.clip(x, lower, upper) - x) <= 1e-7)


class _Fixed:
    description = "a fixed reference"
    input_dtype = np.float32

    def __init__(self, y):
        self.y = np.asarray(y, dtype=np.float64)

    def outputs(self, x):
        return np.tile(self.y, (x.shape[0], 1))


def test_replay_accepts_only_real_violations():
    spec = Spec(2, 2, (SpecCase([0, 0], [1, 1], (Polytope([[1.0, -1.0]], [0.0]),)),))
    ok = replay(_Fixed([0.0, 1.0]), spec, np.array([0.5, 0.5]), 0)
    assert isinstance(ok, Replay) and ok.ok and (ok.case, ok.polytope) == (0, 0)
    assert not replay(_Fixed([1.0, 0.0]), spec, np.array([0.5, 0.5]), 0).ok
    assert not replay(_Fixed([math.nan, 0.0]), spec, np.array([0.5, 0.5]), 0).ok


# ---------------------------------------------------------------------------------------
# attack

def _tiny_graph(tmp_path):
    from bounds.graph.onnx_import import load_onnx

    return load_onnx(F.write_tiny_net(tmp_path / "net.onnx"))


def test_targets_pad_rows_without_effect():
    cases = [(0, np.zeros(2), np.ones(2), [(0, np.array([[1.0, 0.0]]), np.array([5.0]))]),
             (1, np.zeros(2), np.ones(2), [(0, np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), np.zeros(3))])]
    t = atk.build_targets(cases, "cpu")
    assert t.C.shape == (2, 3, 2) and t.valid.tolist() == [[True, False, False], [True, True, True]]
    y = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    loss = atk.violation_loss(y, t, torch.tensor([0, 1]))
    assert loss.tolist() == [-4.0, 3.0]


def test_pgd_finds_a_thin_unsafe_band(tmp_path):
    graph = _tiny_graph(tmp_path)
    # unsafe: 0.040 <= y0 <= 0.041 on [-1, 1]^2 -- a thin band that sampling mostly misses
    C = np.array([[1.0, 0.0], [-1.0, 0.0]])
    d = np.array([0.041, -0.040])
    targets = atk.build_targets([(0, -np.ones(2), np.ones(2), [(0, C, d)])], "cpu")
    gen = torch.Generator().manual_seed(0)
    res = atk.pgd(graph, targets, AttackOptions(pgd_restarts=8, pgd_steps=60), gen, Deadline(30))
    assert res.found
    cand = res.candidates[0]
    y = F.tiny_forward(cand.x)
    assert 0.040 - 1e-5 <= y[0] <= 0.041 + 1e-5 and np.all(np.abs(cand.x) <= 1)


def test_pgd_starts_restarts_at_the_extra_starts(tmp_path):
    import onnx

    from bounds.graph.onnx_import import load_onnx

    # y = relu(x0 + x1 - 1.9) on [-1, 1]^2: zero (no gradient) except near the corner (1, 1)
    path = tmp_path / "corner.onnx"
    onnx.save(F.mlp_model([(np.array([[1.0, 1.0]]), np.array([-1.9])), (np.array([[1.0]]), np.array([0.0]))],
                          (1, 2)), str(path))
    graph = load_onnx(path)
    targets = atk.build_targets([(0, -np.ones(2), np.ones(2), [(0, np.array([[-1.0]]), np.array([-0.05]))])], "cpu")
    opts = AttackOptions(pgd_restarts=3, pgd_steps=1)
    corner = torch.tensor([[[1.0, 1.0]]])
    gen = torch.Generator().manual_seed(0)
    assert not atk.pgd(graph, targets, opts, gen, Deadline(30)).found
    res = atk.pgd(graph, targets, opts, gen, Deadline(30), extra_starts=corner)
    assert res.found and np.allclose(res.candidates[0].x, [1.0, 1.0])


def test_attack_respects_the_deadline(tmp_path):
    graph = _tiny_graph(tmp_path)
    targets = atk.build_targets([(0, -np.ones(2), np.ones(2), [(0, np.array([[1.0, -1.0]]), np.array([0.0]))])], "cpu")
    gen = torch.Generator().manual_seed(0)
    res = atk.pgd(graph, targets, AttackOptions(pgd_steps=10_000), gen, Deadline(0.0))
    assert res.timed_out and not res.found
    res = atk.random_search(graph, targets, 100, gen, Deadline(30))
    assert not res.found and res.best_loss.item() >= 0.5 - 1e-5  # y0 - y1 >= 0.5 everywhere


def test_bounds_default_to_float64_on_the_cpu_and_float32_on_request(tmp_path):
    from specs import parse_vnnlib_text
    from tests.verifier import verifier_fixtures as F
    from verifier import VerifyOptions, verify

    assert VerifyOptions().bound_dtype("cpu") == torch.float64
    assert VerifyOptions().bound_dtype("cuda") == torch.float32
    assert VerifyOptions(precision="float32").bound_dtype("cpu") == torch.float32
    with pytest.raises(ValueError, match="precision"):
        VerifyOptions(precision="half")
    net = F.write_tiny_net(tmp_path / "tiny.onnx")
    for precision, word in (("auto", "float64"), ("float32", "float32")):
        res = verify(net, parse_vnnlib_text(F.UNSAT), options=VerifyOptions(timeout=30, precision=precision))
        assert res.outcome.word == "unsat" and res.details["precision"] == word


def test_exact_arithmetic_decides_a_spec_tight_against_a_saturated_output():
    """y = 6.53 * sigmoid(x) on x in [40, 50] never exceeds 6.53: the spec's unsafe set
    y >= 6.530001 is 1e-6 away, inside the float32 allowance but far outside float64 rounding."""
    from verifier import VerifyOptions, verify

    model = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Sigmoid(), torch.nn.Linear(1, 1))
    with torch.no_grad():
        model[0].weight.fill_(1.0), model[0].bias.zero_()
        model[2].weight.fill_(6.53), model[2].bias.zero_()
    spec = Spec(1, 1, (SpecCase([40.0], [50.0], (Polytope([[-1.0]], [-6.530001]),)),))
    with pytest.raises(ValueError, match="arithmetic"):
        VerifyOptions(arithmetic="real")
    default = verify(model, spec, options=VerifyOptions(timeout=4))
    exact = verify(model, spec, options=VerifyOptions(timeout=30, arithmetic="exact"))
    assert default.outcome.word != "unsat" and default.outcome.word != "sat"
    assert exact.outcome.word == "unsat" and exact.details["arithmetic"] == "exact"
    assert VerifyOptions(arithmetic="exact").refute_slack(torch.float32) == VerifyOptions().refute_slack(torch.float64)


def test_an_open_result_says_when_exact_arithmetic_would_decide_it():
    from verifier import VerifyOptions, verify

    model = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Sigmoid(), torch.nn.Linear(1, 1))
    with torch.no_grad():
        model[0].weight.fill_(1.0), model[0].bias.zero_()
        model[2].weight.fill_(6.53), model[2].bias.zero_()
    tight = Spec(1, 1, (SpecCase([40.0], [50.0], (Polytope([[-1.0]], [-6.530001]),)),))
    res = verify(model, tight, options=VerifyOptions(timeout=4))
    assert res.details.get("exact_arithmetic_refutes") is True
    assert "--arithmetic exact" in res.message and "exact arithmetic" in res.summary()
    # a spec that exact arithmetic does not refute either gets no such hint
    wide = Spec(1, 1, (SpecCase([-5.0], [50.0], (Polytope([[-1.0]], [-6.0]),)),))
    res = verify(model, wide, options=VerifyOptions(timeout=4))
    assert res.outcome.word == "sat" or not res.details.get("exact_arithmetic_refutes")
