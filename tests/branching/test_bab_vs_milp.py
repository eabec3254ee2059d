"""Branch-and-bound verdicts equal the exact MILP's on random small ReLU networks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from branching.bab import input_split_bab
from branching.milp import verify_milp
from branching.problem import SpecTensors
from specs import Polytope, Spec, SpecCase
from tests.bounds.random_graphs import random_mlp
from verifier.deadline import Deadline as _Deadline


def _random_spec(graph, seed: int) -> Spec:
    """A box and a threshold chosen near the sampled output range, so sat and unsat both occur."""
    rng = np.random.default_rng(seed)
    n_in = int(np.prod(graph.input.shape))
    center = rng.normal(size=n_in)
    radius = rng.uniform(0.05, 0.6, size=n_in)
    from bounds.graph.interpret import run
    xs = torch.tensor(center + radius * rng.uniform(-1, 1, size=(2000, n_in)), dtype=torch.float32)
    ys = run(graph, xs.reshape(-1, *graph.input.shape)).reshape(2000, -1).double().numpy()
    n_out = ys.shape[1]
    polys = []
    for p in range(1 + seed % 2):
        rows = 1 + (seed + p) % 2
        C = rng.normal(size=(rows, n_out))
        vals = ys @ C.T
        # threshold slightly below the sampled minimum of the polytope's max-row: borderline cases
        d = vals.min(0) + rng.uniform(-0.3, 0.05) * (vals.max(0) - vals.min(0) + 1e-3)
        polys.append(Polytope(C, d))
    case = SpecCase(center - radius, center + radius, tuple(polys))
    return Spec(n_in, n_out, (case,))


@pytest.mark.parametrize("seed", range(40))
def test_input_split_bab_agrees_with_milp(seed: int) -> None:
    graph = random_mlp(seed, width=6, depth=2, n_in=3, n_out=3, acts=["Relu", "LeakyRelu"])
    spec = _random_spec(graph, seed)
    exact, _, best = verify_milp(graph, spec, time_limit=30)
    if abs(best) < 1e-4:
        pytest.skip("borderline: the MILP optimum is within solver tolerance of 0")
    problem = SpecTensors.from_spec(spec, graph.input.shape)
    outcome = input_split_bab(graph, problem, _Deadline(30))
    assert outcome.status in ("sat", "unsat"), outcome
    assert outcome.status == exact, f"BaB says {outcome.status}, MILP says {exact} (t*={best})"
    if outcome.status == "sat":
        from bounds.graph.interpret import run
        y = run(graph, outcome.witness.unsqueeze(0)).reshape(-1).double().numpy()
        x = outcome.witness.reshape(-1).double().numpy()
        assert spec.is_violated_by(x, y)


#: the usual search alone, the two searches taking turns, the layer-by-layer search with nearly
#: all the turns, and one that goes on with the usual choice after its first round (its
#: sub-problems keep their re-derived intervals, then fixed), and the layer search with its
#: intervals concretised over the box cut by first-layer active splits (bounds.cuts)
_PHASES = {"usual": {"layer_search_share": 0.0}, "both": {"layer_search_share": 0.5},
           "layer": {"layer_search_share": 0.99}, "switch": {"layer_search_share": 0.99, "layer_search_switch": 1e-6},
           "cuts": {"layer_search_share": 0.99, "input_cuts": 8}}


@pytest.mark.parametrize("phase", sorted(_PHASES))
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "root-bounds"])
@pytest.mark.parametrize("seed", range(30))
def test_relu_split_bab_agrees_with_milp(seed: int, warm: bool, phase: str) -> None:
    """`root-bounds`: started as the verifier starts it, from alpha-CROWN's intervals and
    slopes (the output bound's and the intermediate bounds', which re-derived intervals use),
    so that rounds keep the case's intervals and run the warm beta search alone."""
    from branching.bab import BaBOptions
    from branching.relu_split import layer_search_applies, relu_split_bab

    graph = random_mlp(100 + seed, width=8, depth=3, n_in=4, n_out=3, acts=["Relu"])
    spec = _random_spec(graph, seed)
    exact, _, best = verify_milp(graph, spec, time_limit=30)
    if abs(best) < 1e-4:
        pytest.skip("borderline: the MILP optimum is within solver tolerance of 0")
    problem = SpecTensors.from_spec(spec, graph.input.shape)
    root, alphas, slopes = None, None, None
    if warm:
        from bounds.alpha import AlphaOptions, optimise_all
        from bounds.types import Interval

        alphas, slopes = {}, {}
        _, root = optimise_all(graph, Interval(problem.lower, problem.upper), problem.C,
                               AlphaOptions(iterations=5, stop_above=None), final_alphas=alphas,
                               intermediate_slopes=slopes)
    options = BaBOptions(**_PHASES[phase])
    assert layer_search_applies(graph, options) == (phase != "usual")
    outcome = relu_split_bab(graph, problem, _Deadline(30), options, root_bounds=root, root_alphas=alphas,
                             root_slopes=slopes)
    if exact == "sat" and outcome.status == "unknown":
        return  # neuron splitting alone need not find a counterexample; it must never say unsat
    assert outcome.status == exact, f"ReLU BaB says {outcome.status}, MILP says {exact} (t*={best})"


def _relu_case_with_alpha_root(net_seed: int, spec_seed: int, depth: int):
    """A random float64 ReLU MLP, a random spec on it, the MILP's verdict and optimum (skips
    borderline optima), and alpha-CROWN's root intervals and output slopes over its box."""
    from bounds.alpha import AlphaOptions, optimise_all
    from bounds.graph.ir import graph_to
    from bounds.types import Interval

    graph = graph_to(random_mlp(net_seed, width=8, depth=depth, n_in=4, n_out=3, acts=["Relu"]), "cpu", torch.float64)
    spec = _random_spec(graph, spec_seed)
    exact, _, best = verify_milp(graph, spec, time_limit=30)
    if abs(best) < 1e-4:
        pytest.skip("borderline: the MILP optimum is within solver tolerance of 0")
    problem = SpecTensors.from_spec(spec, graph.input.shape, dtype=torch.float64)
    box = Interval(problem.lower, problem.upper)
    alphas = {}
    _, root = optimise_all(graph, box, problem.C, AlphaOptions(iterations=5, stop_above=None), final_alphas=alphas)
    return graph, problem, box, root, alphas, exact, best


def _search_agrees_with_milp(graph, problem, tighter, alphas, exact: str, best: float) -> None:
    """ReLU splitting from pre-tightened root intervals (no layer search) reaches the MILP's
    verdict (an `unknown` on a sat case, when the search's attack misses, is let pass)."""
    from branching.bab import BaBOptions
    from branching.relu_split import relu_split_bab

    outcome = relu_split_bab(graph, problem, _Deadline(30), BaBOptions(layer_search_share=0.0), root_bounds=tighter,
                             root_alphas=alphas)
    if exact == "sat" and outcome.status == "unknown":
        return
    assert outcome.status == exact, f"ReLU BaB says {outcome.status}, MILP says {exact} (t*={best})"


@pytest.mark.parametrize("seed", range(12))
def test_relu_split_bab_from_milp_tightened_intervals_agrees_with_milp(seed: int) -> None:
    """The root's intervals tightened by MILP (layered encoding, no heuristics) before the
    search, with the looser run's slopes as the warm start: the verdict is still the MILP's."""
    from branching.milp_refine import RefineOptions, refine_intervals

    graph, problem, box, root, alphas, exact, best = _relu_case_with_alpha_root(100 + seed, seed, depth=3)
    tighter, report = refine_intervals(graph, box, root, _Deadline(10), RefineOptions(per_solve=1.0, workers=2))
    assert report.solves > 0 or report.layers == 0
    _search_agrees_with_milp(graph, problem, tighter, alphas, exact, best)


@pytest.mark.parametrize("seed", range(10))
def test_relu_split_bab_tightened_mid_search_agrees_with_milp(seed: int) -> None:
    """`tighten` hands the running search tighter root intervals (here before its first
    round, by splitting earlier ReLUs, at once or taking turns with the search, then by MILP
    from those): the running searches adopt them and new ones start from them, and the
    verdict is still the MILP's; a tightening that finds nothing (None) changes nothing."""
    from branching.milp_refine import RefineOptions, refine_intervals
    from branching.relu_split import TightenedRoot, relu_split_bab
    from branching.split_refine import SplitRefineOptions, refine_by_splits, refine_by_splits_steps

    graph, problem, box, root, alphas, exact, best = _relu_case_with_alpha_root(300 + seed, seed, depth=4)
    calls = []
    latest = [root]

    def by_splits():
        calls.append("splits")
        latest[0] = refine_by_splits(graph, box, root, _Deadline(10), SplitRefineOptions(max_leaves=8))[0]
        return TightenedRoot(latest[0], alphas, {})

    def by_splits_taking_turns():
        # the generator form: its batches take turns with the searches' rounds
        calls.append("splits")
        latest[0], _ = yield from refine_by_splits_steps(graph, box, root, _Deadline(10), SplitRefineOptions(max_leaves=8))
        return TightenedRoot(latest[0], alphas, {})

    def by_milp():
        calls.append("milp")
        if seed % 3 == 2:
            return None
        tighter = refine_intervals(graph, box, latest[0], _Deadline(10), RefineOptions(per_solve=1.0, workers=2))[0]
        return TightenedRoot(tighter, alphas, {})

    splits = by_splits_taking_turns if seed % 4 in (0, 1) else by_splits
    outcome = relu_split_bab(graph, problem, _Deadline(30), root_bounds=root, root_alphas=alphas,
                             tighten=[(0.0, by_milp), (0.0, splits)] if seed % 2 else [(0.0, splits)])
    if exact == "sat" and outcome.status == "unknown":
        return
    assert outcome.status == exact, f"ReLU BaB says {outcome.status}, MILP says {exact} (t*={best})"
    assert calls in (["splits"], ["milp", "splits"], ["splits", "milp"])


@pytest.mark.parametrize("seed", range(8))
def test_relu_split_bab_on_two_boxes_with_per_case_slopes_agrees_with_milp(seed: int) -> None:
    """Two input boxes: alpha-CROWN's intermediate slopes are per case (batch 2), and the
    layer search's sub-problems must read their own case's."""
    from bounds.alpha import AlphaOptions, optimise_all
    from bounds.types import Interval
    from branching.bab import BaBOptions
    from branching.relu_split import relu_split_bab

    graph = random_mlp(200 + seed, width=8, depth=3, n_in=4, n_out=3, acts=["Relu"])
    first, second = _random_spec(graph, seed), _random_spec(graph, seed + 1000)
    spec = Spec(first.n_inputs, first.n_outputs, first.cases + second.cases)
    exact, _, best = verify_milp(graph, spec, time_limit=30)
    if abs(best) < 1e-4:
        pytest.skip("borderline: the MILP optimum is within solver tolerance of 0")
    problem = SpecTensors.from_spec(spec, graph.input.shape)
    alphas, slopes = {}, {}
    _, root = optimise_all(graph, Interval(problem.lower, problem.upper), problem.C,
                           AlphaOptions(iterations=5, stop_above=None), final_alphas=alphas, intermediate_slopes=slopes)
    assert any(v.shape[0] == 2 for s in slopes.values() for v in s.params.values())
    outcome = relu_split_bab(graph, problem, _Deadline(30), BaBOptions(layer_search_share=0.99), root_bounds=root,
                             root_alphas=alphas, root_slopes=slopes)
    if exact == "sat" and outcome.status == "unknown":
        return
    assert outcome.status == exact, f"ReLU BaB says {outcome.status}, MILP says {exact} (t*={best})"


@pytest.mark.parametrize("seed", range(12))
def test_relu_split_bab_from_split_refined_intervals_agrees_with_milp(seed: int) -> None:
    """The root's intervals tightened by splitting earlier ReLUs before the search: the
    verdict is still the MILP's."""
    from branching.split_refine import SplitRefineOptions, refine_by_splits

    graph, problem, box, root, alphas, exact, best = _relu_case_with_alpha_root(500 + seed, seed, depth=4)
    tighter, report = refine_by_splits(graph, box, root, _Deadline(10), SplitRefineOptions(max_leaves=16))
    assert report.solves > 0 or report.layers == 0
    _search_agrees_with_milp(graph, problem, tighter, alphas, exact, best)
