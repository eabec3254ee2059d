"""Certified training: IBP / CROWN-IBP / CROWN losses for an ordinary PyTorch training loop.

    from verifier.training import CertifiedLoss, EpsScheduler, ibp_init_

    ibp_init_(model)
    criterion = CertifiedLoss(method="ibp", clamp=(0.0, 1.0))
    eps_at = EpsScheduler(target=0.1, warmup=200, ramp=1000)
    for step, (x, y) in enumerate(batches):
        loss, margins = criterion(model, x, y, eps_at(step))
        loss.backward(); opt.step(); opt.zero_grad()
        verified = (margins > 0).all(1)          # certified at this eps (in eval mode)

The model is a plain `torch.nn.Module` (anything `bounds.graph.torch_import` reads: Linear,
Conv, the supported activations, BatchNorm, Flatten, residual adds, pooling). It is traced
once per structure (`bounds.graph.bind`); every call binds the module's live parameters into
that graph, so the loss is differentiable and runs wherever the parameters live.

The same code computes the bounds here and in `verify`: the margins are
`bounds.crown.spec_lower_bounds` on the model's graph with the rows e_y - e_j of the
margin matrix (so CROWN bounds each margin directly). The graph is the verifier's: BatchNorm
is folded into the previous layer, here from the live tensors at every call, so the folded
weights differ from the exported model's only by float rounding
(tests/verifier/test_training.py holds this).

Methods
  "ibp"        interval bounds everywhere (cheapest; the usual choice for training)
  "crown-ibp"  IBP intermediate bounds, CROWN backward pass from the margins; the bound is
               mix * crown_ibp + (1 - mix) * ibp, mix falling from 1 to 0 (MixScheduler)
  "crown"      CROWN intermediate bounds too: the verifier's default bound (costly)

BatchNorm: in training mode the bounds use the current batch's statistics (computed on the
clean inputs, as the module's own forward does, which also updates the running statistics);
margins are then a training signal, not a certificate. In eval mode the running statistics
are used and the margins are sound bounds of the deployed network: report verified accuracy
with `model.eval()`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from bounds.crown import backward_lower, spec_lower_bounds
from bounds.graph.bind import ParametricGraph, module_signature, module_tensors, parametric_graph
from bounds.graph.ir import Graph
from bounds.types import Interval

log = logging.getLogger(__name__)

Method = Literal["ibp", "crown-ibp", "crown"]
METHODS: tuple[str, ...] = ("ibp", "crown-ibp", "crown")
Bound = Union[float, torch.Tensor, None]

__all__ = ["certified_loss", "certified_bounds", "CertifiedLoss", "MarginBounds", "BoundModel",
           "ibp_init_", "warmup_regularisers", "EpsScheduler", "MixScheduler", "margin_matrix",
           "input_box", "robust_cross_entropy", "export_onnx", "robustness_vnnlib", "METHODS"]


# ----------------------------------------------------------------------------------------
# the traced graph, cached per module structure

class BoundModel:
    """A module's parametric graph, traced once and re-traced only when its structure, the
    input shape, device or dtype change. Holds no tensors of its own between calls."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        self.model = model
        self.input_shape = tuple(int(d) for d in input_shape)
        self._key: tuple | None = None
        self._template: ParametricGraph | None = None

    def template(self) -> ParametricGraph:
        ref = next(iter(module_tensors(self.model).values()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        key = (module_signature(self.model), self.input_shape, device, dtype)
        if self._template is None or key != self._key:
            log.debug("tracing %s for certified training", type(self.model).__name__)
            self._template = parametric_graph(self.model, self.input_shape).to(device, dtype)
            self._key = key
        return self._template

    def graph(self, overrides: dict[str, torch.Tensor] | None = None) -> Graph:
        """The graph with the module's current tensors (and `overrides`) bound in."""
        tensors = module_tensors(self.model)
        if overrides:
            tensors.update(overrides)
        return self.template().bind(tensors)


# ----------------------------------------------------------------------------------------
# margins

@dataclass(frozen=True, eq=False)
class MarginBounds:
    """What one bound computation produced (all tensors differentiable).

    margins    (B, K-1) lower bounds of f_y - f_j over the box, j != y in increasing order:
               the bound the loss uses
    ibp        (B, K-1) the IBP margins (None for method "crown")
    crown      (B, K-1) the CROWN(-IBP) margins (None for method "ibp")
    intervals  every value's interval by graph name (the IBP ones for "ibp"/"crown-ibp")
    graph      the bound graph (live parameters bound in)
    box        the input box, (B, *input_shape)
    logits     (B, K) clean outputs when the clean forward ran, else None
    """

    margins: torch.Tensor
    ibp: torch.Tensor | None
    crown: torch.Tensor | None
    intervals: dict[str, Interval]
    graph: Graph
    box: Interval
    logits: torch.Tensor | None

    @property
    def verified(self) -> torch.Tensor:
        """(B,) bool: every margin certified positive."""
        return (self.margins > 0).all(1)


def margin_matrix(y: torch.Tensor, n_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """C (B, K-1, K) with rows e_y - e_j for every j != y, in increasing j."""
    eye = torch.eye(n_classes, dtype=dtype, device=y.device)
    classes = torch.arange(n_classes, device=y.device).expand(y.shape[0], n_classes)
    others = classes[classes != y.unsqueeze(1)].reshape(y.shape[0], n_classes - 1)
    return eye[y].unsqueeze(1) - eye[others]


def input_box(x: torch.Tensor, eps: float | torch.Tensor, clamp: tuple[Bound, Bound] | None) -> Interval:
    """The L-infinity ball of radius eps around x, intersected with the input domain.

    eps may be a tensor broadcasting against x (per-feature radii for normalised inputs).
    """
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if bool((eps_t < 0).any()):
        raise ValueError(f"eps must be >= 0, got {eps}")
    lower, upper = x - eps_t, x + eps_t
    lo, hi = clamp if clamp is not None else (None, None)
    if lo is not None:
        lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
        lower, upper = torch.maximum(lower, lo_t), torch.maximum(upper, lo_t)
    if hi is not None:
        hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
        lower, upper = torch.minimum(lower, hi_t), torch.minimum(upper, hi_t)
    return Interval(lower, upper)


def _batchnorm_statistics(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the module on x; return its output and, for every BatchNorm in training mode, the
    batch statistics it normalised with (bound in place of the running ones)."""
    stats: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name: str):
        def capture(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            z = inputs[0]
            dims = [d for d in range(z.dim()) if d != 1]
            # two-pass biased variance, as BatchNorm normalises with; written out because
            # torch.var over (N, H, W) is ~4x slower on the CPU than these elementwise passes
            mean = z.mean(dims, keepdim=True)
            centred = z - mean
            stats[f"{name}.running_mean"] = mean.reshape(-1)
            stats[f"{name}.running_var"] = (centred * centred).mean(dims)
        return capture

    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            handles.append(m.register_forward_hook(hook(name)))
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, stats


def _has_training_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


def certified_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
                     method: Method = "ibp", *, mix: float | None = None,
                     clamp: tuple[Bound, Bound] | None = (0.0, 1.0), input_shape: Sequence[int] | None = None,
                     bound_model: BoundModel | None = None, clean: bool = False) -> MarginBounds:
    """Lower bounds of the margins f_y(x') - f_j(x') over the eps-box around each x.

    x (B, *features) as the model takes it, y (B,) labels. `mix` (crown-ibp only, default 1)
    weighs the CROWN-IBP bound against IBP. `clean=True` also runs the plain forward (done
    anyway when BatchNorm is in training mode). Pass a `bound_model` to trace only once.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if mix is not None and method != "crown-ibp":
        raise ValueError(f"mix weighs CROWN-IBP against IBP; method {method!r} has nothing to mix")
    mix = 1.0 if mix is None else float(mix)
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must lie in [0, 1], got {mix}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must hold one label per input: x {tuple(x.shape)}, y {tuple(y.shape)}")
    if bound_model is None:
        bound_model = BoundModel(model, input_shape or (1, *x.shape[1:]))
    elif bound_model.model is not model:
        raise ValueError("bound_model was built for another module")
    logits, overrides = None, {}
    if clean or _has_training_batchnorm(model):
        logits, overrides = _batchnorm_statistics(model, x)
    graph = bound_model.graph(overrides)
    box = input_box(x, eps, clamp)
    batched = Interval(box.lower.unsqueeze(1), box.upper.unsqueeze(1))  # the module's batch dim is 1
    n_out = math.prod(graph.output.shape)
    C = margin_matrix(y, n_out, x.dtype)
    known: dict[str, Interval] = {}
    ibp = crown = None
    if method == "crown":
        crown = spec_lower_bounds(graph, batched, C, method="crown", bounds=known, grad=True)
        margins = crown
    else:
        ibp = spec_lower_bounds(graph, batched, C, method="ibp", bounds=known, grad=True)
        margins = ibp
        if method == "crown-ibp" and mix > 0:
            out = graph.outputs[0]
            crown = backward_lower(graph, out, C.reshape(*C.shape[:2], *graph[out].shape), known)
            margins = mix * crown + (1.0 - mix) * ibp if mix < 1 else crown
    return MarginBounds(margins, ibp, crown, known, graph, box, logits)


def robust_cross_entropy(margins: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the worst-case logits the margin bounds allow: the true class at 0,
    class j at -margin_j. Equals mean log(1 + sum_j exp(-margin_j))."""
    z = torch.cat([margins.new_zeros(margins.shape[0], 1), -margins], dim=1)
    return F.cross_entropy(z, margins.new_zeros(margins.shape[0], dtype=torch.long))


def certified_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
                   method: Method = "ibp", *, mix: float | None = None, kappa: float = 0.0,
                   clamp: tuple[Bound, Bound] | None = (0.0, 1.0), regulariser: float = 0.0,
                   input_shape: Sequence[int] | None = None,
                   bound_model: BoundModel | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, margins): kappa * CE(clean) + (1 - kappa) * CE(worst case) [+ regulariser * warm-up terms].

    margins (B, K-1) are the certified lower bounds of f_y - f_j that the loss used (in eval
    mode a row of positive margins certifies the input). `regulariser` weighs the two
    warm-up regularisers (`warmup_regularisers`; Shi et al. 2021 decay it to 0 as eps ramps).
    """
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
    if regulariser < 0:
        raise ValueError(f"regulariser must be >= 0, got {regulariser}")
    mb = certified_bounds(model, x, y, eps, method, mix=mix, clamp=clamp, input_shape=input_shape,
                          bound_model=bound_model, clean=kappa > 0)
    loss = robust_cross_entropy(mb.margins)
    if kappa > 0:
        loss = kappa * F.cross_entropy(mb.logits.reshape(x.shape[0], -1), y) + (1.0 - kappa) * loss
    if regulariser > 0:
        tight, balance = warmup_regularisers(mb)
        loss = loss + regulariser * (tight + balance)
    return loss, mb.margins


class CertifiedLoss(nn.Module):
    """`certified_loss` as a loss module that traces each model once.

    Constructor arguments are the defaults; a call may pass `mix`, `kappa`, `regulariser`
    for this step (schedules). Nothing is overridden silently: `mix` with a method that does
    not mix raises.
    """

    def __init__(self, method: Method = "ibp", *, mix: float | None = None, kappa: float = 0.0,
                 clamp: tuple[Bound, Bound] | None = (0.0, 1.0), regulariser: float = 0.0,
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.method, self.mix, self.kappa = method, mix, kappa
        self.clamp, self.regulariser, self.input_shape = clamp, regulariser, input_shape
        self._cache: dict[int, BoundModel] = {}

    def bound_model(self, model: nn.Module, x: torch.Tensor) -> BoundModel:
        shape = tuple(self.input_shape or (1, *x.shape[1:]))
        bm = self._cache.get(id(model))
        if bm is None or bm.model is not model or bm.input_shape != shape:
            bm = self._cache[id(model)] = BoundModel(model, shape)
        return bm

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, *,
                mix: float | None = None, kappa: float | None = None,
                regulariser: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return certified_loss(model, x, y, eps, self.method, mix=self.mix if mix is None else mix,
                              kappa=self.kappa if kappa is None else kappa, clamp=self.clamp,
                              regulariser=self.regulariser if regulariser is None else regulariser,
                              bound_model=self.bound_model(model, x))

    def bounds(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, *,
               mix: float | None = None) -> MarginBounds:
        """Every bound of one call (margins, IBP/CROWN parts, intervals), nothing reduced."""
        return certified_bounds(model, x, y, eps, self.method, mix=self.mix if mix is None else mix,
                                clamp=self.clamp, bound_model=self.bound_model(model, x))


# ----------------------------------------------------------------------------------------
# Shi et al. 2021: initialisation and warm-up regularisers

def ibp_init_(model: nn.Module) -> nn.Module:
    """IBP initialisation: weights ~ N(0, (sqrt(2*pi) / fan_in)^2), biases 0, for every
    Linear and Conv. Then E|w| * fan_in = 2, which keeps the expected interval width
    constant through a layer followed by a ReLU (that halves it on average), instead of
    growing with depth as under the usual initialisations. Returns the model."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            fan_in = m.weight[0].numel()  # in_features, or in_channels / groups * kernel size
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in)
                if m.bias is not None:
                    m.bias.zero_()
    return model


def _relu_inputs(graph: Graph) -> list[str]:
    """Inputs of ReLU-family activations, in graph order."""
    names = []
    for node in graph.nodes:
        if node.op in ("Relu", "LeakyRelu") and node.inputs[0] not in names and not graph[node.inputs[0]].is_constant:
            names.append(node.inputs[0])
    return names


def warmup_regularisers(bounds: MarginBounds, *, growth: float = 1.0,
                        imbalance: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(tightness, balance): the two warm-up regularisers, our formulation of Shi et al. 2021.

    tightness  penalises interval widths that grow from one activation layer to the next:
               mean over ReLU layers of relu(w_i / w_{i-1} / growth - 1), w_i the mean width of
               the pre-activation intervals of layer i, w_0 that of the input box. IBP
               initialisation starts near ratio 1; the term keeps training from blowing the
               bounds up while eps ramps.
    balance    penalises neurons whose pre-activation (the interval centre) sits far on one
               side of zero for the whole batch: mean over neurons of
               relu(|mean_batch c| / std_batch c - imbalance). IBP training otherwise kills
               ReLUs (always inactive), which loses capacity.
    Both are 0 when nothing is wrong; weigh them with a factor decaying to 0 at the end of
    the eps ramp (`EpsScheduler.regulariser_weight`).
    """
    zero = bounds.margins.new_zeros(())
    layers = _relu_inputs(bounds.graph)
    layers = [n for n in layers if n in bounds.intervals]
    if not layers:
        return zero, zero
    prev = (bounds.box.upper - bounds.box.lower).mean()
    ratios, balance = [], []
    for name in layers:
        iv = bounds.intervals[name]
        width = (iv.upper - iv.lower).mean()
        if float(prev.detach()) > 0:
            ratios.append(F.relu(width / prev / growth - 1.0))
        prev = width
        centre = iv.center.flatten(1)
        if centre.shape[0] > 1:
            std = centre.std(0) + 1e-6
            balance.append(F.relu(centre.mean(0).abs() / std - imbalance).mean())
    tight = torch.stack(ratios).mean() if ratios else zero
    bal = torch.stack(balance).mean() if balance else zero
    return tight, bal


# ----------------------------------------------------------------------------------------
# schedules

def _ramp(step: int, warmup: int, ramp: int) -> float:
    """Progress in [0, 1] of a ramp that starts after `warmup` steps and lasts `ramp` steps."""
    if step < warmup:
        return 0.0
    if ramp <= 0:
        return 1.0
    return min(1.0, (step - warmup) / ramp)


@dataclass(frozen=True)
class EpsScheduler:
    """eps at a training step: 0 for `warmup` steps, then a ramp of `ramp` steps to `target`.

    shape "linear", or "smooth" (3p^2 - 2p^3: starts and ends gently, so the loss does not
    jump when bounds first matter).
    """

    target: float
    warmup: int = 0
    ramp: int = 0
    shape: Literal["linear", "smooth"] = "smooth"

    def __post_init__(self) -> None:
        if not self.target >= 0:
            raise ValueError(f"EpsScheduler.target must be >= 0, got {self.target!r}")
        if self.warmup < 0 or self.ramp < 0:
            raise ValueError("EpsScheduler.warmup and ramp must be >= 0")
        if self.shape not in ("linear", "smooth"):
            raise ValueError(f"EpsScheduler.shape must be 'linear' or 'smooth', got {self.shape!r}")

    def progress(self, step: int) -> float:
        p = _ramp(step, self.warmup, self.ramp)
        return p if self.shape == "linear" else p * p * (3 - 2 * p)

    def __call__(self, step: int) -> float:
        return self.target * self.progress(step)

    def regulariser_weight(self, step: int, initial: float) -> float:
        """Shi et al.'s warm-up weight: initial * (1 - eps/target) while eps ramps, else 0."""
        if step < self.warmup or step >= self.warmup + self.ramp:
            return 0.0
        return initial * (1.0 - self.progress(step))


@dataclass(frozen=True)
class MixScheduler:
    """A weight going linearly from `start` to `end` over `ramp` steps after `warmup`.

    For CROWN-IBP's mix (start 1, end 0: from CROWN-IBP bounds to pure IBP) or kappa, the
    weight of the clean loss (e.g. start 1, end 0.5)."""

    start: float = 1.0
    end: float = 0.0
    warmup: int = 0
    ramp: int = 0

    def __post_init__(self) -> None:
        for v in (self.start, self.end):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"MixScheduler weights must lie in [0, 1], got {v!r}")
        if self.warmup < 0 or self.ramp < 0:
            raise ValueError("MixScheduler.warmup and ramp must be >= 0")

    def __call__(self, step: int) -> float:
        p = _ramp(step, self.warmup, self.ramp)
        return self.start + (self.end - self.start) * p


# ----------------------------------------------------------------------------------------
# hand-over to `verify`

def export_onnx(model: nn.Module, path: str | Path, input_shape: Sequence[int]) -> Path:
    """Write the model (eval mode, BatchNorm folded) as ONNX: the graph `verify` bounds."""
    from bounds.graph.onnx_export import to_onnx
    from bounds.graph.torch_import import from_torch

    import onnx

    path = Path(path)
    graph = from_torch(model, tuple(input_shape), name=type(model).__name__)
    onnx.save(to_onnx(graph), str(path))
    return path


def robustness_vnnlib(x: torch.Tensor, label: int, eps: float | torch.Tensor, n_classes: int,
                      clamp: tuple[Bound, Bound] | None = (0.0, 1.0), comment: str = "") -> str:
    """VNN-LIB text of "the class stays `label` on the eps-box around x" (the box exactly as
    `input_box` computes it in x's dtype, so `verify` and the training call see one box)."""
    box = input_box(x.detach().unsqueeze(0), eps, clamp)
    lower, upper = box.lower.reshape(-1).tolist(), box.upper.reshape(-1).tolist()
    lines = [f"; {comment}"] if comment else []
    lines.append(f"; unsafe: some class scores at least as high as class {label}")
    lines += [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_classes)]
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines += [f"(assert (>= X_{i} {lo!r}))", f"(assert (<= X_{i} {hi!r}))"]
    others = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_classes) if j != label)
    lines.append(f"(assert (or {others}))")
    return "\n".join(lines) + "\n"
