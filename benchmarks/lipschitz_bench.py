#!/usr/bin/env python3
"""The Lipschitz targets of issue 5, measured: exact cases, agreement with an interior-point
solver, scale (5x100 and 2x400 ReLU nets on 784 inputs), residual networks (the whole-network
SDP against the product of per-block SDP bounds), a convolutional net too large for dense
matrices, Pauli et al. Table 1.

    .venv/bin/python benchmarks/lipschitz_bench.py [--skip-pauli] [--only convolution] [--threads 2]

Random networks use weights N(0, 2/fan_in) (He initialisation) and seed 0. Every "upper" is
the float64 certificate of the multipliers our solver returned; "lower" is a difference
quotient attained at two concrete inputs.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from bounds.lipschitz.bound import upper_bound
from bounds.lipschitz.chain import Chain, elementwise, maxmin
from bounds.lipschitz.dag import Dag
from bounds.lipschitz.extract import chain_from_mat
from bounds.lipschitz.lower import lower_bound
from bounds.lipschitz.naive import naive_bound
from bounds.lipschitz.solver import SolverOptions

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "lipschitz" / "maxmin_mnist"


def he_chain(sizes: list[int], act: str = "relu", seed: int = 0) -> Chain:
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(o, i, generator=gen, dtype=torch.float64) * math.sqrt(2 / i) for i, o in zip(sizes, sizes[1:])]
    if act == "maxmin":
        acts = tuple(maxmin(n) for n in sizes[1:-1])
    else:
        acts = tuple(elementwise(act, n, 0, 0.25 if act == "sigmoid" else 1) for n in sizes[1:-1])
    return Chain(tuple(ws), acts, name=f"{act} {'x'.join(map(str, sizes))}")


def exact_cases() -> None:
    print("== exact cases")
    w = torch.randn(30, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = upper_bound(Chain((w,), ()), "neuron", 2).value
    print(f"one linear layer: bound {got:.12g}  spectral norm {float(torch.linalg.matrix_norm(w, 2)):.12g}")
    q, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    got = upper_bound(Chain((q, torch.eye(64, dtype=torch.float64)), (maxmin(64),)), "neuron", 2).value
    print(f"one MaxMin layer (orthogonal weights): bound {got:.10f}  (exact 1; plain LipSDP on the ReLU form: sqrt 2)")


def interior_point() -> None:
    print("== agreement with an interior-point solver (cvxpy + Clarabel)")
    try:
        from bounds.lipschitz.sdp_cvxpy import solve_cvxpy
    except ImportError:
        print("cvxpy not installed (pip install nnverify[sdp]): skipped")
        return
    for sizes, act in (([20, 30, 30, 10], "relu"), ([20, 30, 30, 10], "sigmoid"), ([20, 32, 32, 10], "maxmin"),
                       ([100, 50, 50, 10], "relu")):
        chain = he_chain(sizes, act)
        for norm in (2, math.inf):
            if sizes[0] > 100 and norm != 2:
                continue
            t0 = time.monotonic()
            ours = upper_bound(chain, "neuron", norm).value
            t1 = time.monotonic()
            try:
                raw, cert = solve_cvxpy(chain, "neuron", norm)
            except Exception as exc:  # noqa: BLE001 - the oracle may fail; report it
                print(f"{chain.name} l{norm}: ours {ours:.8g} ({t1 - t0:.2f} s); cvxpy failed: {exc}")
                continue
            t2 = time.monotonic()
            print(f"{chain.name} l{'inf' if norm == math.inf else 2}: ours {ours:.8g} ({t1 - t0:.2f} s)  "
                  f"clarabel {raw:.8g} ({t2 - t1:.2f} s)  relative difference {(ours - raw) / raw:+.2e}")


def scale() -> None:
    print("== scale: LipSDP-Neuron l2, ReLU, 784 inputs")
    for sizes in ([784, 100, 100, 100, 100, 100, 10], [784, 400, 400, 10]):
        chain = he_chain(sizes)
        res = upper_bound(chain, "neuron", 2)
        low = lower_bound(chain, 784, 2, starts=8, steps=60).value
        print(f"{chain.name}: upper {res.value:.6g}  lower {low:.6g}  naive {naive_bound(chain, 2):.6g}  "
              f"layer {upper_bound(chain, 'layer', 2).value:.6g}  time {res.time_s:.1f} s "
              f"({res.newton_steps} Newton steps)")


def he_residual(n_in: int, width: int, hidden: int, blocks: int, n_out: int, act: str = "relu",
                seed: int = 0) -> tuple[Dag, float]:
    """x -> Win x -> blocks u <- u + W2 act(W1 u) -> R u, He-initialised (W2 scaled by 1/2), as a
    Dag; and the compositional bound |Win| * prod_k L(block k) * |R| with each block's own SDP."""
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    Win = torch.randn(width, n_in, generator=gen, dtype=f64) * math.sqrt(1 / n_in)
    A = Win                                          # the stream u as a linear map of v = (x, h_1, ...)
    weights, acts, product = [], [], float(torch.linalg.matrix_norm(Win, 2))
    make = (lambda n: maxmin(n)) if act == "maxmin" else (lambda n: elementwise(act, n))
    for _ in range(blocks):
        W1 = torch.randn(hidden, width, generator=gen, dtype=f64) * math.sqrt(2 / width)
        W2 = 0.5 * torch.randn(width, hidden, generator=gen, dtype=f64) * math.sqrt(1 / hidden)
        weights.append(W1 @ A)
        acts.append(make(hidden))
        A = torch.cat([A, W2], 1)
        block = Dag((W1, torch.cat([torch.eye(width, dtype=f64), W2], 1)), (make(hidden),))
        product *= upper_bound(block, "neuron", 2).value
    R = torch.randn(n_out, width, generator=gen, dtype=f64) * math.sqrt(1 / width)
    weights.append(R @ A)
    product *= float(torch.linalg.matrix_norm(R, 2))
    return Dag(tuple(weights), tuple(acts), name=f"res-{act} {n_in}->{width} {blocks}x[{hidden}] ->{n_out}"), product


def residual() -> None:
    print("== residual networks: the whole-network SDP vs the product of per-block SDP bounds (l2)")
    # (wider nets, e.g. 4 blocks of 256 on 784 inputs, take many minutes: see the README)
    for args in ((20, 20, 40, 2, 10, "relu"), (20, 20, 40, 2, 10, "maxmin"), (784, 100, 100, 3, 10, "relu")):
        net, product = he_residual(*args)
        res = upper_bound(net, "neuron", 2)
        low = lower_bound(net, net.n_inputs, 2, starts=8, steps=60).value
        line = (f"{net.name}: upper {res.value:.6g} ({res.time_s:.1f} s, {res.newton_steps} Newton steps)  "
                f"lower {low:.6g}  per-block product {product:.6g}  naive {naive_bound(net, 2):.6g}")
        if net.n_inputs <= 20:
            try:
                from bounds.lipschitz.sdp_cvxpy import solve_cvxpy

                t0 = time.monotonic()
                raw, _ = solve_cvxpy(net, "neuron", 2)
                line += f"  clarabel {raw:.8g} ({time.monotonic() - t0:.1f} s)"
            except ImportError:
                pass
        print(line)


def pauli() -> None:
    print("== Pauli et al. Table 1: weights_l2_18fc_128.mat (MaxMin, 18 layers of 128)")
    path = SHARED / "weights_l2_18fc_128.mat"
    if not path.is_file():
        print(f"{path} not found: skipped")
        return
    chain = chain_from_mat(path)
    res = upper_bound(chain, "neuron", 2, SolverOptions(tol=1e-5))
    print(f"l2: upper {res.value:.6g} (published 24271)  naive {naive_bound(chain, 2):.6g} (published 74167)  "
          f"time {res.time_s:.1f} s ({res.newton_steps} Newton steps)")
    res = upper_bound(chain, "neuron", math.inf, SolverOptions(tol=1e-5))
    print(f"l-inf -> l2, whole output: upper {res.value:.6g}  time {res.time_s:.1f} s")
    # l-inf -> l-inf: the largest of the per-output constants (one SDP per output)
    best, spent = 0.0, 0.0
    for k in range(chain.n_outputs):
        c = torch.zeros(1, chain.n_outputs, dtype=torch.float64)
        c[0, k] = 1.0
        r = upper_bound(chain.with_output(c), "neuron", math.inf, SolverOptions(tol=1e-4))
        best, spent = max(best, r.value), spent + r.time_s
    print(f"l-inf -> l-inf: upper {best:.6g} (published 1.97e5)  naive {naive_bound(chain, math.inf):.6g} "
          f"(published 2.79e16)  time {spent:.1f} s")


def cifar_conv_module(seed: int = 0) -> torch.nn.Module:
    """A CIFAR-size convolutional net (3x32x32 input, 32768 ReLUs in its widest layer)."""
    torch.manual_seed(seed)
    nn = torch.nn
    module = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                           nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
                           nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                           nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                           nn.Linear(64 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 10))
    with torch.no_grad():
        for m in module:
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return module.eval().double()


def _power_norm(f, n: int, iters: int = 60) -> float:
    """A lower estimate of a linear map's l2 norm (power iteration on f'f via autograd)."""
    v = torch.randn(1, n, dtype=torch.float64)
    for _ in range(iters):
        v = v / v.norm()
        x = v.clone().requires_grad_(True)
        y = f(x) - f(torch.zeros_like(x))
        (g,) = torch.autograd.grad(y, x, y)
        v = g
    v = v / v.norm()
    with torch.no_grad():
        return float((f(v) - f(torch.zeros_like(v))).norm())


def convolution() -> None:
    """A network whose convolutions are too large for dense matrices: bounded part by part,
    each convolution by its Fourier norm (against a power-iteration estimate of its exact norm)."""
    from bounds.lipschitz.structured import StructuredAffine
    from verifier.lipschitz import lipschitz_bounds, load_chain

    module = cifar_conv_module()
    begin = time.monotonic()
    net = load_chain(module, (1, 3, 32, 32))
    read = time.monotonic() - begin
    print(f"cifar conv net: {net.describe()}  (read in {read:.1f} s)")
    for part in net.parts:
        if isinstance(part, StructuredAffine):
            t0 = time.monotonic()
            bound = part.norm(2)
            spent = time.monotonic() - t0
            estimate = _power_norm(part, part.n_in)
            print(f"  {part.describe():28s} Fourier bound {bound:.6g} ({spent:.2f} s)  power-iteration "
                  f"estimate {estimate:.6g}  ratio {bound / estimate:.4f}")
    res = lipschitz_bounds(net, 2, timeout=600)
    print(f"l2: upper {res.upper:.6g}  naive {res.details['naive']:.6g}  lower {res.lower:.6g}  "
          f"time {res.time_s + read:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-pauli", action="store_true")
    parser.add_argument("--only", choices=("exact", "interior", "scale", "residual", "pauli", "convolution"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    if args.only:
        {"exact": exact_cases, "interior": interior_point, "scale": scale, "residual": residual,
         "pauli": pauli, "convolution": convolution}[args.only]()
        return
    exact_cases()
    interior_point()
    scale()
    residual()
    convolution()
    if not args.skip_pauli:
        pauli()


if __name__ == "__main__":
    main()
