"""The ReLU branch-and-bound engine: warm starts and out-of-memory back-off keep verdicts exact."""
from __future__ import annotations

import pytest
import torch

import branching.relu_split as relu_split
from bounds.alpha import AlphaOptions, optimise_all
from bounds.types import Interval
from branching.bab import BaBOptions, is_out_of_memory, rate_children
from branching.milp import verify_milp
from branching.problem import SpecTensors
from tests.bounds.random_graphs import random_mlp
from tests.branching.test_bab_vs_milp import _Deadline, _random_spec


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("refine,reduce", [(False, "min"), (True, "min"), (False, "max")])
def test_warm_started_relu_bab_agrees_with_milp(seed: int, refine: bool, reduce: str) -> None:
    graph = random_mlp(300 + seed, width=8, depth=3, n_in=4, n_out=3, acts=["Relu"])
    spec = _random_spec(graph, seed)
    exact, _, best = verify_milp(graph, spec, time_limit=30)
    if abs(best) < 1e-4:
        pytest.skip("borderline: the MILP optimum is within solver tolerance of 0")
    problem = SpecTensors.from_spec(spec, graph.input.shape)
    alphas: dict[str, torch.Tensor] = {}
    _, root = optimise_all(graph, Interval(problem.lower, problem.upper), problem.C,
                           AlphaOptions(iterations=5, stop_above=None), final_alphas=alphas)
    assert alphas, "optimise_all hands back the output bound's slopes"
    outcome = relu_split.relu_split_bab(graph, problem, _Deadline(30), BaBOptions(refine_intermediate=refine,
                                                                                    fsb_reduce=reduce,
                                                                                    layer_search_share=0.0),
                                        root_bounds=root, root_alphas=alphas)
    if exact == "sat" and outcome.status == "unknown":
        return
    assert outcome.status == exact, f"ReLU BaB says {outcome.status}, MILP says {exact} (t*={best})"


def _needs_splitting():
    """A small problem whose search visits more than one sub-problem."""
    for seed in range(40):
        graph = random_mlp(7 + seed, width=10, depth=3, n_in=4, n_out=3, acts=["Relu"])
        spec = _random_spec(graph, seed)
        exact, _, best = verify_milp(graph, spec, time_limit=30)
        if exact != "unsat" or abs(best) < 1e-4:
            continue
        problem = SpecTensors.from_spec(spec, graph.input.shape)
        if relu_split.relu_split_bab(graph, problem, _Deadline(30)).visited > 3:
            return graph, problem
    pytest.skip("no random problem needed splitting")


def test_out_of_memory_halves_the_batch_and_loses_nothing(monkeypatch) -> None:
    graph, problem = _needs_splitting()
    real = relu_split._bound_round
    sizes: list[int] = []

    def flaky(graph, problem, batch, *args, **kwargs):
        sizes.append(len(batch))
        if len(batch) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(graph, problem, batch, *args, **kwargs)

    monkeypatch.setattr(relu_split, "_bound_round", flaky)
    outcome = relu_split.relu_split_bab(graph, problem, _Deadline(30), BaBOptions(batch_size=64))
    assert max(sizes) > 1, "the batch that ran out of memory was retried smaller"
    assert outcome.status == "unsat", outcome
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_other_errors_are_not_swallowed(monkeypatch) -> None:
    graph = random_mlp(8, width=6, depth=2, n_in=3, n_out=2, acts=["Relu"])
    spec = _random_spec(graph, 1)
    problem = SpecTensors.from_spec(spec, graph.input.shape)

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(relu_split, "_bound_round", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        relu_split.relu_split_bab(graph, problem, _Deadline(30))


def test_falsify_callback_gets_promising_points_and_can_end_the_search() -> None:
    from bounds.graph.interpret import run

    for seed in range(40):
        graph = random_mlp(500 + seed, width=8, depth=3, n_in=4, n_out=3, acts=["Relu"])
        spec = _random_spec(graph, seed)
        exact, x_star, best = verify_milp(graph, spec, time_limit=30)
        if exact == "sat" and best < -1e-3:
            break
    else:
        pytest.skip("no clearly sat random problem")
    problem = SpecTensors.from_spec(spec, graph.input.shape)
    calls: list[tuple[torch.Size, torch.Size]] = []

    def falsify(points: torch.Tensor, cases: torch.Tensor):
        calls.append((points.shape, cases.shape))
        assert points.shape[0] == cases.shape[0] and points.shape[1:] == tuple(graph.input.shape)
        assert bool(((points >= problem.lower[cases]) & (points <= problem.upper[cases])).all())
        return torch.as_tensor(x_star, dtype=problem.lower.dtype).reshape(graph.input.shape), 0

    outcome = relu_split.relu_split_bab(graph, problem, _Deadline(30), BaBOptions(falsify_every=0.0),
                                        falsify=falsify)
    assert outcome.status == "sat"
    if calls:  # the corner search may win first; when the callback ran, its point is the witness
        y = run(graph, outcome.witness.unsqueeze(0)).reshape(-1).double().numpy()
        assert spec.is_violated_by(outcome.witness.reshape(-1).double().numpy(), y)


def test_small_networks_are_decided_by_the_exact_milp() -> None:
    """> 16 inputs (no input splitting) and a dozen ReLUs: the verifier hands the open
    polytopes to one MILP each, and its verdicts equal the reference MILP's."""
    from verifier import VerifyOptions, verify

    stages = []
    for seed in range(10):
        graph = random_mlp(900 + seed, width=6, depth=2, n_in=20, n_out=3, acts=["Relu"])
        spec = _random_spec(graph, seed)
        exact, _, best = verify_milp(graph, spec, time_limit=30)
        if abs(best) < 1e-4:
            continue
        res = verify(graph, spec, options=VerifyOptions(timeout=60))
        assert res.outcome.word in ("sat", "unsat", exact), res.summary()
        if res.outcome.word in ("sat", "unsat"):
            assert res.outcome.word == exact, (seed, res.summary())
        stages.append(res.stage)
    assert "milp" in stages, stages


def test_batch_size_follows_free_memory(monkeypatch) -> None:
    import branching.bab as bab

    graph = random_mlp(1, width=50, depth=2, n_in=30, n_out=3, acts=["Relu"])
    monkeypatch.setattr(bab, "available_memory", lambda device: 1 << 40)
    assert bab.memory_batch_size(graph, 9, torch.float64, torch.device("cpu"), cap=64) == 64
    monkeypatch.setattr(bab, "available_memory", lambda device: 4 * 10 * 9 * 50 * 8 * 5)
    assert bab.memory_batch_size(graph, 9, torch.float64, torch.device("cpu"), cap=64) == 5
    monkeypatch.setattr(bab, "available_memory", lambda device: 0)
    assert bab.memory_batch_size(graph, 9, torch.float64, torch.device("cpu"), cap=64) == 1


def test_split_candidates_are_rated_by_the_worse_or_the_better_child() -> None:
    margins = torch.tensor([[-1.0, 2.0], [-3.0, -0.5]])          # (candidates, children)
    assert rate_children(margins, "min", 1).tolist() == [-1.0, -3.0]
    assert rate_children(margins, "max", 1).tolist() == [0.0, -0.5]   # a refuted child counts as 0
    with pytest.raises(ValueError, match="fsb_reduce"):
        BaBOptions(fsb_reduce="mean")


@pytest.mark.parametrize("seed", range(10))
def test_child_multiplier_start_is_at_least_the_parent_bound(seed: int) -> None:
    """_child_betas: with the parent's slopes and the new split's multiplier it sets, each
    child's bound (the split neuron clamped, every other interval the parent's) is at least
    the parent's bound, so a split never starts a sub-problem below its parent."""
    from bounds.alpha import bound_with, optimise_lower
    from bounds.crown import apply_splits

    from bounds.crown import intermediate_bounds
    from bounds.graph.ir import graph_to

    graph = graph_to(random_mlp(500 + seed, width=10, depth=3, n_in=4, n_out=3, acts=["Relu"]), "cpu", torch.float64)
    box = Interval(-torch.ones(1, *graph.input.shape, dtype=torch.float64),
                   torch.ones(1, *graph.input.shape, dtype=torch.float64))
    bounds = intermediate_bounds(graph, box, "crown")
    C = torch.randn(1, 1, *graph.output.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    layers = relu_split._relu_layers(graph)
    splits = {pre: torch.zeros(1, bounds[pre].lower[0].numel(), dtype=torch.int8) for _, pre in layers}
    record: dict[str, torch.Tensor] = {}
    parent, params = optimise_lower(graph, graph.outputs[0], C, bounds, AlphaOptions(iterations=10, stop_above=None),
                                    splits=splits, record=record)
    offsets, total = {}, 0
    for _, pre in layers:
        offsets[pre] = total
        total += splits[pre].shape[1]
    unstable = torch.cat([((bounds[pre].lower < 0) & (bounds[pre].upper > 0)).reshape(1, -1) for _, pre in layers], 1)
    candidates = unstable[0].nonzero().flatten()
    if len(candidates) == 0:
        pytest.skip("no unstable neuron")
    for best in candidates[:6]:
        for sign in (1, -1):
            child_splits, _ = relu_split._with_split(splits, best.reshape(1), sign, layers, offsets,
                                                     {n.name: i for i, n in enumerate(graph.nodes)})
            inter = {k: apply_splits(v, child_splits[k]) if k in child_splits else v for k, v in bounds.items()}
            start = relu_split._child_betas(params, record, best.reshape(1), sign, layers, offsets)
            child = bound_with(graph, graph.outputs[0], C, inter, start, child_splits)
            assert float(child.min()) >= float(parent.min()) - 1e-9 * (1 + abs(float(parent.min())))


def test_root_sub_problems_keep_the_crown_bound() -> None:
    """Root sub-problems are bounded by plain CROWN as well as by the warm search: slopes
    handed down from the root (here deliberately poor ones) must not lose a refutation
    that CROWN alone makes."""
    from bounds.crown import spec_lower_bounds

    checked = 0
    for seed in range(30):
        graph = random_mlp(500 + seed, width=8, depth=3, n_in=4, n_out=3, acts=["Relu"])
        spec = _random_spec(graph, seed)
        problem = SpecTensors.from_spec(spec, graph.input.shape)
        box = Interval(problem.lower, problem.upper)
        root: dict[str, Interval] = {}
        crown = spec_lower_bounds(graph, box, problem.C, "crown", bounds=root)
        if not bool(problem.margins(torch.zeros(1, dtype=torch.long), crown).gt(0).all()):
            continue
        alphas: dict[str, torch.Tensor] = {}
        optimise_all(graph, box, problem.C, AlphaOptions(iterations=1, stop_above=None), final_alphas=alphas)
        poor = {k: torch.zeros_like(v) for k, v in alphas.items()}
        outcome = relu_split.relu_split_bab(graph, problem, _Deadline(30),
                                            BaBOptions(beta_iterations=1, layer_search_share=0.0),
                                            root_bounds=root, root_alphas=poor)
        assert outcome.status == "unsat" and outcome.max_depth == 0, (seed, outcome)
        checked += 1
    assert checked >= 3


def test_layer_branching_keeps_only_the_earliest_layer_with_candidates() -> None:
    layers = [("r1", "a"), ("r2", "b"), ("r3", "c")]
    offsets = {"a": 0, "b": 2, "c": 5}
    scores = torch.tensor([[-1.0, -1.0, 0.5, -1.0, 2.0, 9.0, 1.0],     # layer a done: b's best
                           [0.1, -1.0, 3.0, 3.0, 3.0, 9.0, 9.0],       # a still open
                           [-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 4.0],  # only c
                           [-1.0] * 7])                                # a leaf stays a leaf
    out = relu_split._earliest_layer(scores, layers, offsets)
    assert out.argmax(1)[:3].tolist() == [4, 0, 6]
    assert bool((out[0, 5:] < 0).all() and (out[1, 2:] < 0).all() and (out[3] < 0).all())


def test_layer_search_applies_to_deep_narrow_relu_networks_only() -> None:
    deep = random_mlp(1, width=8, depth=3, n_in=4, n_out=3, acts=["Relu"])
    shallow = random_mlp(1, width=8, depth=2, n_in=4, n_out=3, acts=["Relu"])
    assert relu_split.layer_search_applies(deep, BaBOptions())
    assert not relu_split.layer_search_applies(shallow, BaBOptions())
    assert not relu_split.layer_search_applies(deep, BaBOptions(layer_search_share=0.0))
    assert not relu_split.layer_search_applies(deep, BaBOptions(layer_search_max_width=4))
    with pytest.raises(ValueError):
        BaBOptions(layer_search_share=1.0)
    with pytest.raises(ValueError):
        BaBOptions(branching="deepest")


def test_only_a_finished_search_decides_the_combined_outcome() -> None:
    """A search still running carries the status it would end with if its queue emptied now
    ("unsat"): the combination must not report it while the other search says sat."""
    from branching.bab import BaBOutcome

    running, found = BaBOutcome("unsat", worst_margin=-2.0), BaBOutcome("sat", witness=torch.zeros(3))
    out = relu_split._combined([running, found], [False, True], 0.0)
    assert out.status == "sat" and out.witness is found.witness
    timed_out, unknown = BaBOutcome("timeout", worst_margin=-3.0), BaBOutcome("unknown", worst_margin=-1.0)
    out = relu_split._combined([timed_out, unknown], [True, True], 0.0)
    assert out.status == "timeout" and out.worst_margin == -1.0
    assert relu_split._combined([running, unknown], [False, True], 0.0).status == "unknown"
