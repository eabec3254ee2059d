#!/usr/bin/env python3
"""The Lipschitz targets of issue 5, measured: exact cases, agreement with an interior-point
solver, scale (5x100 and 2x400 ReLU nets on 784 inputs), Pauli et al. Table 1.

    .venv/bin/python benchmarks/lipschitz_bench.py [--skip-pauli] [--threads 2]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-pauli", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    exact_cases()
    interior_point()
    scale()
    if not args.skip_pauli:
        pauli()


if __name__ == "__main__":
    main()
