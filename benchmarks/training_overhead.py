"""Cost of a certified-training step relative to a standard one, on the same model and batch.

    PYTHONPATH=. python benchmarks/training_overhead.py [--device cpu|cuda] [--batch 128] [--steps 30]

A step is forward + loss + backward + optimiser update. "standard" uses cross-entropy on
the clean batch; "ibp" / "crown-ibp" use verifier.training.CertifiedLoss (traced once,
before timing: tracing is a one-off cost per model structure); the three kinds of step take
turns, so load from other processes affects them alike. Reports the median step time
and its ratio to the standard step for a small MLP and a small CNN with BatchNorm
(in training mode, so the certified step also runs the clean forward for the batch
statistics).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from verifier.training import CertifiedLoss, ibp_init_


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 14 * 14, 128), nn.BatchNorm1d(128), nn.ReLU(),
                         nn.Linear(128, 10))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(steps_by_name: dict[str, Callable[[], None]], rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds of one step of each kind (after 3 warm-up steps each). The kinds take
    turns, one step each per round, so a load change on a shared machine hits all alike."""
    for step in steps_by_name.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            _sync(device)
            t = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(make: Callable[[], nn.Module], batch: int, steps: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = ibp_init_(make()).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def standard() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def certified(crit: CertifiedLoss, **kw) -> Callable[[], None]:
        def step() -> None:
            loss, _ = crit(model, x, y, 0.1, **kw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    return time_steps({"standard": standard, "ibp": certified(CertifiedLoss("ibp")),
                       "crown-ibp": certified(CertifiedLoss("crown-ibp"), mix=0.5)}, steps, device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, batch {args.batch}, median of {args.steps} steps, torch threads {torch.get_num_threads()}")
    print(f"{'model':6} {'standard ms':>12} {'ibp ms':>9} {'ibp x':>6} {'crown-ibp ms':>13} {'crown-ibp x':>12}")
    for name, make in (("mlp", mlp), ("cnn", cnn)):
        t = measure(make, args.batch, args.steps, device)
        print(f"{name:6} {t['standard'] * 1e3:12.2f} {t['ibp'] * 1e3:9.2f} {t['ibp'] / t['standard']:6.2f} "
              f"{t['crown-ibp'] * 1e3:13.2f} {t['crown-ibp'] / t['standard']:12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
