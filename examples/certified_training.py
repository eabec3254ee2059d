#!/usr/bin/env python3
"""Certified training on the 8x8 digits: standard vs IBP vs CROWN-IBP, checked by `verify`.

    PYTHONPATH=. .venv/bin/python examples/certified_training.py            # ~3 min on 2 CPU cores
    PYTHONPATH=. .venv/bin/python examples/certified_training.py --arch cnn --eps 0.05

Trains one small network per method on scikit-learn's bundled digits (1797 images, 8x8,
inputs scaled to [0, 1]; `pip install -e .[examples]`; without scikit-learn a generated
look-alike data set is used and the run says so), then reports on the test set

  clean     accuracy on the unperturbed inputs
  PGD       accuracy under a PGD attack in the L-inf ball of radius eps (an upper bound on
            robust accuracy)
  IBP / CROWN-IBP   verified accuracy from the training call's own bounds (model.eval())
  complete  verified accuracy by `verifier.api.verify` (attack + CROWN + alpha-CROWN +
            branch and bound) on the exported ONNX and one VNN-LIB property per test point,
            on the first --verify-points test points; timeouts count as not verified
  agree     of those points certified by the training call, how many `verify` proved unsat
            (must be all: the training bounds are the verifier's bounds)

Writes into --out: one folder per model with model.onnx and props/point_<i>.vnnlib,
results.md (the table), results.json, and verified_vs_eps.png (if matplotlib is installed).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from verifier.api import verify
from verifier.options import AttackOptions, VerifyOptions
from verifier.result import Outcome
from verifier.training import (CertifiedLoss, EpsScheduler, MixScheduler, certified_bounds, export_onnx,
                               ibp_init_, robustness_vnnlib)

log = logging.getLogger("certified_training")

METHODS = ("standard", "ibp", "crown-ibp")
N_CLASSES = 10


@dataclass(frozen=True)
class Config:
    """One run of the example. Defaults finish in a few minutes on a 2-core CPU."""

    out: Path = Path("out/certified_training")
    methods: tuple[str, ...] = METHODS
    arch: str = "mlp"               # "mlp" (64-128-128-10) or "cnn" (two conv layers)
    width: int = 128
    batchnorm: bool = False
    eps: float = 0.1                # L-inf radius in [0, 1] input units, training and test
    epochs: int = 40
    batch: int = 64
    lr: float = 2e-3
    warmup_epochs: int = 2          # eps = 0 (clean training) for these epochs
    ramp_epochs: int = 20           # then eps ramps to its target over these epochs
    regulariser: float = 0.5        # initial weight of Shi et al.'s warm-up regularisers
    train_limit: int | None = None  # use only this many training points (tests)
    test_limit: int | None = None   # evaluate only this many test points
    verify_points: int = 100        # test points checked by the complete verifier
    verify_timeout: float = 5.0     # seconds per point
    pgd_steps: int = 50
    pgd_restarts: int = 3
    plot: bool = True
    seed: int = 0


@dataclass
class Report:
    """What one trained model scored (accuracies are fractions of the points evaluated)."""

    model: str
    eps: float
    clean: float
    pgd: float
    ibp: float                       # verified by the training call's IBP bounds
    crown_ibp: float                 # verified by its CROWN-IBP bounds
    certified: float                 # by either of the two (both are sound)
    complete: float                  # `verify` answered unsat, over the verified subset
    verify_points: int
    verify_outcomes: dict[str, int]
    agree: tuple[int, int]           # (certified by the training call and unsat, certified by it)
    train_s: float
    verify_s: float                  # seconds `verify` took over all its points
    final_loss: float
    losses: list[float] = field(default_factory=list)   # mean loss per epoch
    curve: list[tuple[float, float]] = field(default_factory=list)   # (eps, certified accuracy)
    onnx: str = ""


# ----------------------------------------------------------------------------------------
# data and models

def load_digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """(x_train, y_train, x_test, y_test, source): 8x8 digits in [0, 1], flat (N, 64), 300 test points."""
    try:
        from sklearn.datasets import load_digits as sk_digits
        data = sk_digits()
        x = torch.tensor(data.data, dtype=torch.float32) / 16.0
        y = torch.tensor(data.target, dtype=torch.long)
        source = "scikit-learn digits"
    except ImportError:
        log.warning("scikit-learn is not installed (pip install -e .[examples]); "
                    "using a generated stand-in for the 8x8 digits")
        x, y = generated_digits(1797, seed)
        source = "generated digits (scikit-learn missing)"
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return x[300:], y[300:], x[:300], y[:300], source


def generated_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in with the digits' shape: 10 random blurry 8x8 prototypes, shifted and noised."""
    g = torch.Generator().manual_seed(seed + 1)
    protos = (torch.rand(N_CLASSES, 1, 8, 8, generator=g) > 0.6).float()
    protos = F.avg_pool2d(F.pad(protos, (1, 1, 1, 1)), 3, stride=1)   # blur, keep 8x8
    y = torch.arange(n) % N_CLASSES
    x = protos[y]
    shift = torch.randint(-1, 2, (n, 2), generator=g)
    x = torch.stack([torch.roll(img, tuple(s.tolist()), dims=(1, 2)) for img, s in zip(x, shift)])
    x = (x + 0.15 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x.reshape(n, 64), y


def make_model(cfg: Config) -> nn.Module:
    bn = cfg.batchnorm
    if cfg.arch == "mlp":
        w = cfg.width
        layers: list[nn.Module] = [nn.Linear(64, w)] + ([nn.BatchNorm1d(w)] if bn else []) + [nn.ReLU()]
        layers += [nn.Linear(w, w)] + ([nn.BatchNorm1d(w)] if bn else []) + [nn.ReLU(), nn.Linear(w, N_CLASSES)]
        return nn.Sequential(*layers)
    if cfg.arch == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), *([nn.BatchNorm2d(16)] if bn else []), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1), *([nn.BatchNorm2d(32)] if bn else []), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 4 * 4, cfg.width), nn.ReLU(), nn.Linear(cfg.width, N_CLASSES))
    raise ValueError(f"--arch must be mlp or cnn, got {cfg.arch!r}")


def shaped(cfg: Config, x: torch.Tensor) -> torch.Tensor:
    """Inputs as the architecture takes them: flat for the MLP, (N, 1, 8, 8) for the CNN."""
    return x.reshape(-1, 1, 8, 8) if cfg.arch == "cnn" else x


# ----------------------------------------------------------------------------------------
# training

class Progress:
    """An epoch bar on stderr: redrawn in place on a terminal, one line per epoch otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.t0 = label, total, time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, **values: float) -> None:
        filled = round(20 * done / self.total)
        extra = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        line = (f"{self.label:10} [{'#' * filled}{'.' * (20 - filled)}] epoch {done}/{self.total} "
                f"{extra} {time.monotonic() - self.t0:.1f}s")
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if done == self.total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def train(cfg: Config, method: str, x: torch.Tensor, y: torch.Tensor) -> tuple[nn.Module, list[float], float]:
    """Train one model; returns (model in eval mode, mean loss per epoch, seconds)."""
    torch.manual_seed(cfg.seed)
    model = make_model(cfg)
    if method != "standard":
        ibp_init_(model)   # Shi et al. 2021: interval widths do not blow up with depth at init
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(x.shape[0] / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    eps_at = EpsScheduler(cfg.eps, warmup=cfg.warmup_epochs * steps_per_epoch,
                          ramp=cfg.ramp_epochs * steps_per_epoch)
    # clean-loss weight kappa: 1 while eps is 0, down to 0.5 over the ramp (Gowal et al.)
    kappa_at = MixScheduler(1.0, 0.5, warmup=eps_at.warmup, ramp=eps_at.ramp)
    # CROWN-IBP mix: from the CROWN-IBP bound to pure IBP over the ramp (Zhang et al.)
    mix_at = MixScheduler(1.0, 0.0, warmup=eps_at.warmup, ramp=eps_at.ramp)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.75 * total), int(0.9 * total)], 0.2)
    criterion = CertifiedLoss(method if method != "standard" else "ibp", clamp=(0.0, 1.0))
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = Progress(method, cfg.epochs)
    losses, step, t0 = [], 0, time.monotonic()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        total_loss = 0.0
        for i in range(0, x.shape[0], cfg.batch):
            xb, yb = shaped(cfg, x[perm[i:i + cfg.batch]]), y[perm[i:i + cfg.batch]]
            eps = eps_at(step)
            if method == "standard" or eps == 0:
                loss = F.cross_entropy(model(xb), yb)
            else:
                extra = {"mix": mix_at(step)} if method == "crown-ibp" else {}
                loss, _ = criterion(model, xb, yb, eps, kappa=kappa_at(step),
                                    regulariser=eps_at.regulariser_weight(step, cfg.regulariser), **extra)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * xb.shape[0]
            step += 1
        losses.append(total_loss / x.shape[0])
        bar.update(epoch + 1, loss=losses[-1], **({} if method == "standard" else {"eps": eps_at(step - 1)}))
    return model.eval(), losses, time.monotonic() - t0


# ----------------------------------------------------------------------------------------
# evaluation

def pgd_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, restarts: int,
                seed: int) -> torch.Tensor:
    """(N,) bool: still classified correctly after `restarts` PGD runs on the margin loss
    max_j f_j - f_y in the eps-box clamped to [0, 1]. Ties count as attacks that succeed."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)

    def robust(xa: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = model(xa)
            others = out.scatter(1, y.unsqueeze(1), -math.inf)
            return out.gather(1, y.unsqueeze(1)).squeeze(1) > others.max(1).values

    correct = robust(x)
    for r in range(restarts):
        start = x if r == 0 else lo + (hi - lo) * torch.rand(x.shape, generator=gen)
        xa = start.clone()
        for k in range(steps):
            xa.requires_grad_(True)
            out = model(xa)
            others = out.scatter(1, y.unsqueeze(1), -math.inf)
            loss = (others.max(1).values - out.gather(1, y.unsqueeze(1)).squeeze(1)).sum()
            (grad,) = torch.autograd.grad(loss, xa)
            size = eps * (0.5 if k < steps // 2 else 0.1)   # coarse, then fine steps
            xa = torch.minimum(torch.maximum(xa.detach() + size * grad.sign(), lo), hi)
        correct &= robust(xa)
    return correct


def training_call_certified(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(IBP certified, CROWN-IBP certified), (N,) bool each, from one training-call bound."""
    with torch.no_grad():
        mb = certified_bounds(model, x, y, eps, "crown-ibp", mix=1.0, clamp=(0.0, 1.0))
    return (mb.ibp > 0).all(1), (mb.crown > 0).all(1)


def complete_verification(cfg: Config, folder: Path, model: nn.Module, x: torch.Tensor,
                          y: torch.Tensor) -> tuple[Path, list[Outcome]]:
    """Export the model and one robustness property per point; run `verify` on each."""
    props = folder / "props"
    props.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, folder / "model.onnx", (1, *x.shape[1:]))
    options = VerifyOptions(timeout=cfg.verify_timeout, attack=AttackOptions(max_seconds=min(2.0, cfg.verify_timeout)))
    outcomes = []
    for i in range(x.shape[0]):
        path = props / f"point_{i}.vnnlib"
        path.write_text(robustness_vnnlib(x[i], int(y[i]), cfg.eps, N_CLASSES, clamp=(0.0, 1.0),
                                          comment=f"test point {i}, label {int(y[i])}, eps {cfg.eps}"))
        outcomes.append(verify(onnx_path, path, options=options).outcome)
    return onnx_path, outcomes


def evaluate(cfg: Config, method: str, model: nn.Module, losses: list[float], seconds: float,
             x: torch.Tensor, y: torch.Tensor) -> Report:
    xs = shaped(cfg, x)
    with torch.no_grad():
        clean = (model(xs).argmax(1) == y).float().mean().item()
    pgd = pgd_correct(model, xs, y, cfg.eps, cfg.pgd_steps, cfg.pgd_restarts, cfg.seed).float().mean().item()
    ibp_ok, crown_ok = training_call_certified(model, xs, y, cfg.eps)
    certified = ibp_ok | crown_ok
    n = min(cfg.verify_points, x.shape[0])
    t0 = time.monotonic()
    onnx_path, outcomes = complete_verification(cfg, cfg.out / method, model, xs[:n], y[:n])
    verify_s = time.monotonic() - t0
    unsat = torch.tensor([o is Outcome.UNSAT for o in outcomes], dtype=torch.bool)
    cert_n = certified[:n]
    agree = (int((cert_n & unsat).sum()), int(cert_n.sum()))
    if agree[0] != agree[1]:
        log.error("%s: %d point(s) certified by the training call were not proved by verify",
                  method, agree[1] - agree[0])
    curve = []
    for e in np.linspace(0.0, 2.0 * cfg.eps, 9).tolist():
        a, b = training_call_certified(model, xs, y, e)
        curve.append((e, (a | b).float().mean().item()))
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.word] = counts.get(o.word, 0) + 1
    return Report(model=method, eps=cfg.eps, clean=clean, pgd=pgd, ibp=ibp_ok.float().mean().item(),
                  crown_ibp=crown_ok.float().mean().item(), certified=certified.float().mean().item(),
                  complete=unsat.float().mean().item() if n else float("nan"), verify_points=n,
                  verify_outcomes=counts, agree=agree, train_s=seconds, verify_s=verify_s, final_loss=losses[-1],
                  losses=losses, curve=curve, onnx=str(onnx_path))


# ----------------------------------------------------------------------------------------
# output

def table(reports: list[Report], cfg: Config, n_test: int) -> str:
    head = (f"| model | eps | clean | PGD | verified (IBP) | verified (CROWN-IBP) | "
            f"verified (complete, {reports[0].verify_points if reports else 0} pts) | agree | train s |")
    lines = [head, "|" + "---|" * 9]
    for r in reports:
        lines.append(f"| {r.model} ({cfg.arch}) | {r.eps:g} | {100 * r.clean:.1f}% | {100 * r.pgd:.1f}% | "
                     f"{100 * r.ibp:.1f}% | {100 * r.crown_ibp:.1f}% | {100 * r.complete:.1f}% | "
                     f"{r.agree[0]}/{r.agree[1]} | {r.train_s:.1f} |")
    lines.append("")
    lines.append(f"{n_test} test points; `verify` ran on the first {reports[0].verify_points if reports else 0} "
                 f"({cfg.verify_timeout:g} s limit each):")
    for r in reports:
        words = ", ".join(f"{v} {k}" for k, v in sorted(r.verify_outcomes.items()))
        lines.append(f"- {r.model}: {words} in {r.verify_s:.0f} s")
    return "\n".join(lines) + "\n"


def plot(reports: list[Report], cfg: Config) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install -e .[report]); skipping the plot")
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in reports:
        eps, acc = zip(*r.curve)
        line, = ax.plot(eps, [100 * a for a in acc], marker="o", label=f"{r.model} (IBP / CROWN-IBP)")
        ax.plot([r.eps], [100 * r.complete], marker="*", markersize=12, color=line.get_color(), linestyle="")
    ax.axvline(cfg.eps, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("eps (L-inf, inputs in [0, 1])")
    ax.set_ylabel("verified accuracy (%)")
    ax.set_title(f"8x8 digits, {cfg.arch}, trained at eps {cfg.eps:g} (* = complete verifier)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = cfg.out / "verified_vs_eps.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(cfg: Config) -> list[Report]:
    """Train, evaluate and export every model of `cfg`; writes results into cfg.out."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te, source = load_digits(cfg.seed)
    if cfg.train_limit:
        x_tr, y_tr = x_tr[:cfg.train_limit], y_tr[:cfg.train_limit]
    if cfg.test_limit:
        x_te, y_te = x_te[:cfg.test_limit], y_te[:cfg.test_limit]
    log.info("%s: %d training and %d test points; eps %g", source, x_tr.shape[0], x_te.shape[0], cfg.eps)
    reports = []
    for method in cfg.methods:
        model, losses, seconds = train(cfg, method, x_tr, y_tr)
        reports.append(evaluate(cfg, method, model, losses, seconds, x_te, y_te))
    text = table(reports, cfg, x_te.shape[0])
    (cfg.out / "results.md").write_text(f"Data: {source}\n\n{text}")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    (cfg.out / "results.json").write_text(json.dumps(
        {"data": source, "config": config, "reports": [asdict(r) for r in reports]}, indent=1))
    if cfg.plot:
        plot(reports, cfg)
    return reports


def parse_args(argv: list[str] | None) -> Config:
    d = Config()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", type=Path, default=d.out, help="output folder")
    ap.add_argument("--methods", default=",".join(d.methods), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--arch", choices=("mlp", "cnn"), default=d.arch)
    ap.add_argument("--width", type=int, default=d.width, help="hidden width")
    ap.add_argument("--batchnorm", action="store_true", help="BatchNorm after every hidden layer")
    ap.add_argument("--eps", type=float, default=d.eps, help="L-inf radius, inputs in [0, 1]")
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    ap.add_argument("--ramp-epochs", type=int, default=d.ramp_epochs)
    ap.add_argument("--regulariser", type=float, default=d.regulariser)
    ap.add_argument("--train-limit", type=int, default=None, help="use only this many training points")
    ap.add_argument("--test-limit", type=int, default=None, help="evaluate only this many test points")
    ap.add_argument("--verify-points", type=int, default=d.verify_points)
    ap.add_argument("--verify-timeout", type=float, default=d.verify_timeout, help="seconds per point")
    ap.add_argument("--pgd-steps", type=int, default=d.pgd_steps)
    ap.add_argument("--pgd-restarts", type=int, default=d.pgd_restarts)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("-v", "--verbose", action="store_true", help="log the verifier's progress too")
    a = ap.parse_args(argv)
    methods = tuple(m.strip() for m in a.methods.split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        ap.error(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    if a.epochs < 1 or a.eps < 0:
        ap.error("--epochs must be >= 1 and --eps >= 0")
    if not logging.getLogger().handlers:   # run as a script (a host program keeps its own set-up)
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        if not a.verbose:
            for name in ("verifier", "bounds", "branching"):
                logging.getLogger(name).setLevel(logging.WARNING)
    return replace(d, out=a.out, methods=methods, arch=a.arch, width=a.width, batchnorm=a.batchnorm, eps=a.eps,
                   epochs=a.epochs, batch=a.batch, lr=a.lr, warmup_epochs=a.warmup_epochs,
                   ramp_epochs=min(a.ramp_epochs, a.epochs), regulariser=a.regulariser, train_limit=a.train_limit,
                   test_limit=a.test_limit, verify_points=a.verify_points, verify_timeout=a.verify_timeout,
                   pgd_steps=a.pgd_steps, pgd_restarts=a.pgd_restarts, plot=not a.no_plot, seed=a.seed)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    reports = run(cfg)
    print((cfg.out / "results.md").read_text(), end="")
    print(f"\nwrote {cfg.out}/results.md, results.json and the ONNX models with VNN-LIB properties; "
          f"check one from the command line with:")
    print(f"  verify {reports[-1].onnx} {cfg.out / reports[-1].model / 'props' / 'point_0.vnnlib'} --timeout 60")
    print("(`python -m verifier ...` is the same program)")
    bad = [r.model for r in reports if r.agree[0] != r.agree[1]]
    if bad:
        print(f"MISMATCH: verify did not prove every point the training call certified ({', '.join(bad)})")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
