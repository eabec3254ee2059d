#!/usr/bin/env python3
"""alpha-CROWN side by side with auto_LiRPA (if importable) on the same networks and specs.

Both optimise every layer's slopes for the spec's rows with the same number of iterations
(each with its own default step sizes); reported: the worst row's lower bound margin
(higher is tighter) and wall time, measured in one process, alternating the two tools.

    python benchmarks/compare_alpha_crown.py --iterations 20
    (auto_LiRPA is not a dependency: run with an interpreter where it is installed and this
    repository is on PYTHONPATH; without it only our figures are printed)
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bounds.alpha import AlphaOptions, optimise_all
from bounds.graph.ir import Graph, graph_to
from bounds.graph.onnx_import import load_onnx
from bounds.types import Interval
from branching.problem import SpecTensors
from specs import parse_vnnlib

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
DEFAULT_PAIRS = [
    ("mnist_fc", "mnist-net_256x2.onnx", "prop_1_0.03.vnnlib"),
    ("mnist_fc", "mnist-net_256x4.onnx", "prop_1_0.03.vnnlib"),
    ("mnist_fc", "mnist-net_256x6.onnx", "prop_1_0.03.vnnlib"),
    ("eran_mnist_sigmoid_relu", "ffnnSIGMOID__Point_6x200.onnx", None),
    ("eran_mnist_sigmoid_relu", "mnist_relu_9_200.onnx", None),
    ("oval21", "cifar_base_kw.onnx", "cifar_base_kw-img8194-eps0.018300653594771243.vnnlib"),
    ("oval21", "cifar_wide_kw.onnx", "cifar_wide_kw-img3458-eps0.022875816993464054.vnnlib"),
    ("oval21", "cifar_deep_kw.onnx", "cifar_deep_kw-img1052-eps0.010718954248366015.vnnlib"),
]


class GraphModule(torch.nn.Module):
    """Our IR as plain torch ops (MLPs: Gemm/MatMul/Add/Sub/Mul/Div, Relu/Sigmoid/Tanh,
    Flatten/Reshape), so that another library can trace it."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self.consts = torch.nn.ParameterDict()
        for node in graph.nodes:
            if node.is_constant:
                self.consts[node.name.replace(".", "_")] = torch.nn.Parameter(node.value.float(), requires_grad=False)

    def forward(self, x):
        env = {self.graph.inputs[0]: x.reshape(1, *self.graph.input.shape[1:])}
        for node in self.graph.nodes:
            if node.is_constant:
                env[node.name] = self.consts[node.name.replace(".", "_")]
                continue
            if node.op == "Input":
                continue
            a = [env[i] for i in node.inputs]
            op = node.op
            if op == "Gemm":
                w = a[1].t() if node.attrs.get("transB", 0) else a[1]
                y = a[0] @ w
                env[node.name] = y + a[2] if len(a) > 2 else y
            elif op == "MatMul":
                env[node.name] = a[0] @ a[1]
            elif op in ("Add", "Sub", "Mul", "Div"):
                env[node.name] = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](a[0], a[1])
            elif op == "Conv":
                pads = node.attrs.get("pads", [0, 0, 0, 0])
                env[node.name] = F.conv2d(a[0], a[1], a[2] if len(a) > 2 else None,
                                          stride=tuple(node.attrs.get("strides", [1, 1])),
                                          padding=(pads[0], pads[1]),
                                          dilation=tuple(node.attrs.get("dilations", [1, 1])),
                                          groups=node.attrs.get("group", 1))
            elif op == "Relu":
                env[node.name] = F.relu(a[0])
            elif op == "Sigmoid":
                env[node.name] = torch.sigmoid(a[0])
            elif op == "Tanh":
                env[node.name] = torch.tanh(a[0])
            elif op == "Gelu":
                env[node.name] = F.gelu(a[0], approximate=node.attrs.get("approximate", "none"))
            elif op in ("Flatten", "Reshape"):
                env[node.name] = a[0].reshape(1, -1)
            else:
                raise NotImplementedError(op)
        return env[self.graph.outputs[0]].reshape(1, -1)


def synthetic(act: str, seed: int = 0, eps: float = 0.02) -> tuple[str, Graph, SpecTensors]:
    """A He-initialised 784-100-100-100-10 MLP with `act` and a margin spec (class 0 against
    the others) on an l-inf box around a random input: networks of activations no shared
    suite has (Tanh, GELU), the same for both tools."""
    import numpy as np

    from bounds.graph.torch_import import from_torch
    from specs import Polytope, Spec, SpecCase

    gen = torch.Generator().manual_seed(seed)
    layer = {"Tanh": torch.nn.Tanh, "Gelu": torch.nn.GELU}[act]
    sizes = [784, 100, 100, 100, 10]
    mods: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        lin = torch.nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen) * (2.0 / a) ** 0.5)
            lin.bias.copy_(torch.randn(b, generator=gen) * 0.1)
        mods.append(lin)
        if i < len(sizes) - 2:
            mods.append(layer())
    graph = from_torch(torch.nn.Sequential(*mods).eval(), (1, 784))
    x0 = torch.rand(784, generator=gen, dtype=torch.float64).numpy()
    polys = []
    for j in range(1, 10):
        C = np.zeros((1, 10))
        C[0, 0], C[0, j] = 1.0, -1.0      # unsafe: y_0 - y_j <= 0
        polys.append(Polytope(C, np.zeros(1)))
    spec = Spec(784, 10, (SpecCase(x0 - eps, x0 + eps, tuple(polys)),))
    return f"synthetic {act} 3x100", graph, SpecTensors.from_spec(spec, tuple(graph.input.shape), "cpu",
                                                                  torch.float64)


def ours(graph: Graph, problem: SpecTensors, iterations: int, dtype: torch.dtype) -> tuple[float, float]:
    g = graph_to(graph, "cpu", dtype)
    box = Interval(problem.lower.to(dtype), problem.upper.to(dtype))
    t = time.perf_counter()
    lower, _ = optimise_all(g, box, problem.C.to(dtype), AlphaOptions(iterations=iterations, stop_above=None))
    return float((lower - problem.d.to(dtype)).min()), time.perf_counter() - t


def lirpa(graph: Graph, problem: SpecTensors, iterations: int) -> tuple[float, float] | None:
    try:
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
    except ImportError:
        return None
    module = GraphModule(graph)
    n_in = problem.lower[0].numel()
    lower, upper = problem.lower.reshape(1, n_in).float(), problem.upper.reshape(1, n_in).float()
    try:
        bounded = BoundedModule(module, torch.zeros(1, n_in), verbose=0,
                                bound_opts={"optimize_bound_args": {"iteration": iterations}})
    except NotImplementedError:   # an op it cannot bound (it reports which on its log)
        return math.nan, math.nan
    x = BoundedTensor((lower + upper) / 2, PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper))
    t = time.perf_counter()
    lb, _ = bounded.compute_bounds(x=(x,), C=problem.C.float(), method="CROWN-Optimized", bound_upper=False)
    return float((lb.double() - problem.d).min()), time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--suite", action="append", help="only these shared suites (repeatable); "
                        "the synthetic networks run only without it")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # the first torch optimiser of a process imports torch._dynamo (about 1 s here): paid
    # before the timings, which are of the bound computations
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    print(f"{'network':34} {'spec':22} {'ours f64':>10} {'s':>6} {'ours f32':>10} {'s':>6} {'auto_LiRPA':>10} {'s':>6}")
    for suite, net, spec in DEFAULT_PAIRS:
        folder = SHARED / suite
        if not folder.is_dir() or (args.suite and suite not in args.suite):
            continue
        if spec is None:
            spec = sorted(p.name for p in (folder / "vnnlib").iterdir())[0]
        graph = load_onnx(folder / "onnx" / net)
        sp = parse_vnnlib(folder / "vnnlib" / spec)
        problem = SpecTensors.from_spec(sp, tuple(graph.input.shape), "cpu", torch.float64)
        b64, t64 = ours(graph, problem, args.iterations, torch.float64)
        b32, t32 = ours(graph, problem, args.iterations, torch.float32)
        other = lirpa(graph, problem, args.iterations)
        theirs = f"{other[0]:10.4f} {other[1]:6.2f}" if other else f"{'n/a':>10} {'':>6}"
        print(f"{net:34} {spec:22} {b64:10.4f} {t64:6.2f} {b32:10.4f} {t32:6.2f} {theirs}", flush=True)
    for act in () if args.suite else ("Tanh", "Gelu"):
        name, graph, problem = synthetic(act)
        b64, t64 = ours(graph, problem, args.iterations, torch.float64)
        b32, t32 = ours(graph, problem, args.iterations, torch.float32)
        other = lirpa(graph, problem, args.iterations)
        theirs = f"{other[0]:10.4f} {other[1]:6.2f}" if other else f"{'n/a':>10} {'':>6}"
        print(f"{name:34} {'eps 0.02':22} {b64:10.4f} {t64:6.2f} {b32:10.4f} {t32:6.2f} {theirs}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
