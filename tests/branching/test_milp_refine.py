"""MILP refinement of intermediate intervals: sound (sampled points stay inside), never wider,
and tighter than alpha-CROWN somewhere on a net where integrality matters."""
from __future__ import annotations

import math

import torch

from bounds.alpha import AlphaOptions, optimise_all
from bounds.crown import pre_activation_nodes
from bounds.graph.interpret import evaluate
from bounds.graph.ir import graph_to
from bounds.graph.torch_import import from_torch
from bounds.types import Interval
from branching.milp_refine import RefineOptions, refine_intervals
from verifier.deadline import Deadline


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 10), torch.nn.ReLU(), torch.nn.Linear(10, 10), torch.nn.ReLU(),
                               torch.nn.Linear(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()


def test_refined_intervals_contain_samples_and_never_widen() -> None:
    tightened = 0
    for seed in range(8):
        graph = graph_to(from_torch(_net(seed), (1, 4)), "cpu", torch.float64)
        box = Interval(-torch.ones(1, 1, 4, dtype=torch.float64), torch.ones(1, 1, 4, dtype=torch.float64))
        C = torch.eye(3, dtype=torch.float64).unsqueeze(0)
        _, alpha = optimise_all(graph, box, C, AlphaOptions(iterations=20))
        refined, report = refine_intervals(graph, box, alpha, Deadline(math.inf), RefineOptions(per_solve=5.0))
        assert report.solves > 0
        x = box.lower + (box.upper - box.lower) * torch.rand(4000, 1, 4, dtype=torch.float64)
        values = evaluate(graph, x, keep=pre_activation_nodes(graph))
        for name in pre_activation_nodes(graph):
            new, old = refined[name], alpha[name]
            assert bool((new.lower >= old.lower - 1e-12).all() and (new.upper <= old.upper + 1e-12).all())
            v = values[name].reshape(x.shape[0], -1)
            assert bool((v >= new.lower.reshape(1, -1) - 1e-9).all() and (v <= new.upper.reshape(1, -1) + 1e-9).all())
            tightened += int(((new.upper - new.lower) < (old.upper - old.lower) - 1e-6).sum())
    assert tightened > 0


def test_threads_prove_the_same_intervals_as_one() -> None:
    """Neurons solved by two HiGHS models in parallel threads: the same optima (solved to
    optimality here) as one model solving them in turn."""
    graph = graph_to(from_torch(_net(3), (1, 4)), "cpu", torch.float64)
    box = Interval(-torch.ones(1, 1, 4, dtype=torch.float64), torch.ones(1, 1, 4, dtype=torch.float64))
    _, alpha = optimise_all(graph, box, torch.eye(3, dtype=torch.float64).unsqueeze(0), AlphaOptions(iterations=20))
    one, r1 = refine_intervals(graph, box, alpha, Deadline(math.inf), RefineOptions(per_solve=5.0, workers=1))
    two, r2 = refine_intervals(graph, box, alpha, Deadline(math.inf), RefineOptions(per_solve=5.0, workers=2))
    assert r1.solves == r2.solves > 0 and r1.tightened == r2.tightened
    for name in one:
        assert torch.allclose(one[name].lower, two[name].lower, atol=1e-7)
        assert torch.allclose(one[name].upper, two[name].upper, atol=1e-7)


def test_layered_encoding_has_the_same_optima_as_the_substituted_one() -> None:
    """Every ReLU output as its own variable (sparse rows) describes the same set: the same
    minimum and maximum of every output, with and without fixed signs, for ReLU and LeakyReLU
    nets, and only feasible points the network really computes."""
    import numpy as np

    from bounds.crown import intermediate_bounds
    from bounds.graph.interpret import run
    from branching.milp import encode, new_model
    from tests.bounds.random_graphs import random_mlp

    for seed in range(10):
        graph = graph_to(random_mlp(seed, width=6, depth=3, acts=["Relu", "LeakyRelu"]), "cpu", torch.float64)
        box = Interval(-torch.ones(1, 1, 4, dtype=torch.float64), torch.ones(1, 1, 4, dtype=torch.float64))
        bounds = intermediate_bounds(graph, box, "crown")
        relaxed = [n.name for n in graph.nodes if n.name in pre_activation_nodes(graph)]
        gen = torch.Generator().manual_seed(seed)
        fixed = {relaxed[1]: torch.randint(-1, 2, (math.prod(graph[relaxed[1]].shape),), generator=gen)}
        for signs in (None, fixed):
            optima = []
            for layered in (False, True):
                enc = encode(graph, box.lower, box.upper, bounds, fixed=signs, layered=layered)
                M, c = enc.affine(graph.outputs[0])
                found = []
                for row in range(M.shape[0]):
                    for sign in (1.0, -1.0):
                        h = new_model(enc.lbs, enc.ubs, enc.integer, enc.rows, 30.0, presolve=False)
                        h.changeColsCost(len(enc.lbs), np.arange(len(enc.lbs), dtype=np.int32), sign * M[row].numpy())
                        h.run()
                        if h.getModelStatus().name == "kInfeasible":
                            found.append(math.inf)
                            continue
                        x = np.array(h.getSolution().col_value)
                        value = sign * h.getInfo().objective_function_value + float(c[row])
                        found.append(value)
                        y = run(graph, torch.tensor(x[:4]).reshape(1, 1, 4)).reshape(-1)
                        assert abs(float(y[row]) - value) < 1e-5
                optima.append(found)
            assert np.allclose(optima[0], optima[1], atol=1e-6), (seed, signs is None, optima)


def test_refinement_stops_once_done() -> None:
    graph = graph_to(from_torch(_net(5), (1, 4)), "cpu", torch.float64)
    box = Interval(-torch.ones(1, 1, 4, dtype=torch.float64), torch.ones(1, 1, 4, dtype=torch.float64))
    _, alpha = optimise_all(graph, box, torch.eye(3, dtype=torch.float64).unsqueeze(0), AlphaOptions(iterations=5))
    calls = []
    _, report = refine_intervals(graph, box, alpha, Deadline(math.inf), RefineOptions(per_solve=5.0),
                                 retighten=lambda b: (calls.append(1), b)[1], done=lambda: True)
    assert report.reason == "done" and report.layers == 1 and calls == [1]
