#!/usr/bin/env python3
"""Bound width and time per method (IBP, CROWN) per network of VNN-COMP suites.

For each network the first instance of the suite that uses it supplies the input box; the
script reports the mean width of the output bounds (upper - lower, every output neuron), the
mean lower bound of the property's rows, and the median wall time of the bound computation.

    .venv/bin/python benchmarks/bound_tightness.py [--suites acasxu mnist_fc] [--repeat 3]
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from bounds.crown import spec_lower_bounds
from bounds.graph.onnx_import import load_onnx
from bounds.types import Interval
from specs import parse_vnnlib

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"


def first_instances(suite: Path) -> dict[str, str]:
    chosen: dict[str, str] = {}
    with open(suite / "instances.csv") as fh:
        for row in csv.reader(fh):
            if row and row[0] not in chosen:
                chosen[row[0]] = row[1]
    return chosen


def measure(graph, spec, method: str, repeat: int) -> dict[str, float]:
    case = spec.cases[0]
    shape = graph.input.shape
    lower = torch.tensor(case.lower, dtype=torch.float32).reshape(1, *shape)
    upper = torch.tensor(case.upper, dtype=torch.float32).reshape(1, *shape)
    box = Interval(lower, upper)
    n_out = spec.n_outputs
    eye = torch.eye(n_out).unsqueeze(0)
    C_rows, d_rows, _ = case.stacked()
    C_spec = torch.tensor(C_rows, dtype=torch.float32).unsqueeze(0)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = spec_lower_bounds(graph, box, torch.cat([eye, -eye, C_spec], 1), method)
        times.append(time.perf_counter() - start)
    low, up = out[0, :n_out], -out[0, n_out:2 * n_out]
    margins = out[0, 2 * n_out:] - torch.tensor(d_rows, dtype=torch.float32)
    return {"width": float((up - low).mean()), "margin": float(margins.mean()),
            "min_margin": float(margins.min()), "time_ms": 1000 * statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", default=["acasxu", "mnist_fc"])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="networks per suite (0 = all)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("| suite | network | method | mean output width | mean spec margin | min spec margin | time ms |")
    print("|---|---|---|---|---|---|---|")
    for suite_name in args.suites:
        suite = args.shared / suite_name
        items = list(first_instances(suite).items())
        if args.limit:
            items = items[: args.limit]
        for onnx_rel, spec_rel in items:
            graph = load_onnx(suite / onnx_rel)
            spec = parse_vnnlib(suite / spec_rel)
            for method in ("ibp", "crown"):
                r = measure(graph, spec, method, args.repeat)
                print(f"| {suite_name} | {Path(onnx_rel).name} | {method} | {r['width']:.4g} | {r['margin']:.4g} | "
                      f"{r['min_margin']:.4g} | {r['time_ms']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
