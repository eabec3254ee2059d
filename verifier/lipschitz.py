"""Lipschitz bounds of a network, as an interval [lower, upper].

    from verifier.lipschitz import lipschitz_bounds, certified_radius
    res = lipschitz_bounds("net.onnx", norm=2, method="neuron")
    print(res.lower, res.upper)                   # upper is certified in float64
    radius, label = certified_radius("net.onnx", x)   # no input within `radius` changes the label

`upper` is the smaller of the chosen method's certified bound and the product of layer norms.
Norms: 2 means l2 -> l2; inf means l-inf -> l-inf (the SDP bounds l-inf -> l2, which is
larger, so it is valid too). With `pair=(i, j)` the bound is on the margin y_i - y_j, with
`output=k` on the single output y_k. `per_output=True` (l-inf only) bounds every output by its
own SDP and reports the largest: exactly the l-inf -> l-inf constant's LipSDP bound, tighter
than the l-inf -> l2 one, at the cost of one SDP per output.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from bounds.graph.ir import Graph
from bounds.lipschitz.bound import METHODS, upper_bound
from bounds.lipschitz.chain import DTYPE, Chain, margin_vector, output_vector
from bounds.lipschitz.composed import Composition
from bounds.lipschitz.dag import Dag
from bounds.lipschitz.extract import MAX_SDP_WIDTH, load_network, network_from_graph
from bounds.lipschitz.lower import lower_bound
from bounds.lipschitz.naive import naive_bound
from bounds.lipschitz.solver import SolverOptions

ModelLike = Union[str, Path, Graph, Chain, Dag, Composition, torch.nn.Module]


@dataclass(frozen=True)
class LipschitzResult:
    upper: float                  # certified upper bound
    lower: float                  # a difference quotient actually attained (sound lower bound)
    method: str
    norm: float
    pair: tuple[int, int] | None
    time_s: float
    details: dict[str, Any] = field(default_factory=dict)
    output: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"upper": self.upper, "lower": self.lower, "method": self.method,
                "norm": "inf" if self.norm == math.inf else 2,
                "pair": list(self.pair) if self.pair else None, "output": self.output,
                "time_s": round(self.time_s, 4),
                "details": self.details}

    def summary(self) -> str:
        which = (f"margin y{self.pair[0]}-y{self.pair[1]}" if self.pair else
                 f"output y{self.output}" if self.output is not None else "output")
        n = "inf" if self.norm == math.inf else "2"
        return (f"Lipschitz constant (l{n}, {which}) in [{self.lower:.6g}, {self.upper:.6g}]  "
                f"({self.method}, {self.time_s:.2f} s)")


def load_chain(model: ModelLike, input_shape: tuple[int, ...] | None = None,
               max_sdp_width: int | None = None) -> Chain | Dag | Composition:
    """A Chain (a Dag when there are skip connections) from an ONNX / .mat path, a Graph, a
    torch module (needs input_shape), a Chain or a Dag. Networks with layers too large for
    dense matrices come back as a Composition (bounded part by part)."""
    width = MAX_SDP_WIDTH if max_sdp_width is None else max_sdp_width
    if isinstance(model, (Chain, Dag, Composition)):
        return model
    if isinstance(model, Graph):
        return network_from_graph(model, width)
    if isinstance(model, torch.nn.Module):
        from bounds.graph.torch_import import from_torch

        if input_shape is None:
            raise ValueError("a torch module needs input_shape, e.g. (1, 784)")
        return network_from_graph(from_torch(model, tuple(input_shape)), width)
    if isinstance(model, (str, Path)):
        from bounds.errors import ModelLoadError

        if not Path(model).is_file():
            raise ModelLoadError(f"{model}: no such model file")
        return load_network(model, width)
    raise TypeError(f"model must be a path, Graph, Chain, Dag or torch module, not {type(model).__name__}")


def _parse_norm(norm: float | str) -> float:
    if str(norm).lower() in ("inf", "infinity", "linf"):
        return math.inf
    if float(norm) == 2:
        return 2
    raise ValueError(f"norm must be 2 or inf, got {norm}")


def lipschitz_bounds(model: ModelLike, norm: float | str = 2, pair: tuple[int, int] | None = None,
                     method: str = "neuron", timeout: float | None = None, *, lower: bool = True,
                     input_shape: tuple[int, ...] | None = None,
                     box: tuple[torch.Tensor, torch.Tensor] | None = None, tol: float = 1e-6,
                     output: int | None = None, per_output: bool = False,
                     max_sdp_width: int | None = None) -> LipschitzResult:
    """Certified upper and attained lower bound on the Lipschitz constant of `model`.

    max_sdp_width: activation layers wider than this (default extract.MAX_SDP_WIDTH) are
    bounded by their slope alone, and the network by the product of its parts (composed.py);
    convolutions too large for dense matrices get their Fourier norm bound either way."""
    begin = time.monotonic()
    norm = _parse_norm(norm)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got '{method}'")
    if sum(x is not None and x is not False for x in (pair, output, per_output)) > 1:
        raise ValueError("choose at most one of pair, output and per_output")
    if per_output and norm != math.inf:
        raise ValueError("per_output bounds l-inf -> l-inf; for l2 the whole output needs one SDP")
    chain = load_chain(model, input_shape, max_sdp_width)
    if pair is not None:
        chain = chain.with_output(margin_vector(chain.n_outputs, tuple(pair)))
    if output is not None:
        chain = chain.with_output(output_vector(chain.n_outputs, output))
    deadline = None if timeout is None else begin + timeout
    naive = naive_bound(chain, norm)
    details: dict[str, Any] = {"network": chain.describe(), "naive": naive}
    upper = naive
    if method != "naive":
        # leave a fifth of the time to the lower bound
        options = SolverOptions(tol=tol, deadline=None if deadline is None else begin + 0.8 * timeout)
        if per_output:
            upper, details["per_output"] = _largest_output_bound(chain, method, options)
            upper = min(upper, naive)
        else:
            res = upper_bound(chain, method, norm, options)
            details["sdp"] = res.details()
            upper = min(upper, res.value)
    low = 0.0
    if lower:
        lb = lower_bound(chain, chain.n_inputs, norm, box=box, deadline=deadline)
        low = lb.value
        details["lower_time_s"] = round(lb.time_s, 4)
    if low > upper * (1 + 1e-6):
        raise ArithmeticError(f"lower bound {low} above the certified upper bound {upper}: please report this bug")
    return LipschitzResult(upper, low, method, norm, tuple(pair) if pair else None, time.monotonic() - begin,
                           details, output)


def _largest_output_bound(chain: Chain | Dag, method: str, options: SolverOptions) -> tuple[float, list[dict]]:
    """max_k of each output's certified l-inf bound (the l-inf -> l-inf constant is the
    largest over outputs of each output's l-inf -> |.| constant); naive per output where the
    time ran out before its SDP."""
    largest, each = 0.0, []
    for k in range(chain.n_outputs):
        single = chain.with_output(output_vector(chain.n_outputs, k))
        res = upper_bound(single, method, math.inf, options)
        value = min(res.value, naive_bound(single, math.inf))
        each.append({"output": k, "upper": value, "time_s": round(res.time_s, 3)})
        largest = max(largest, value)
    return largest, each


def certified_radius(model: ModelLike, x: torch.Tensor, norm: float | str = 2, method: str = "neuron",
                     timeout: float | None = None, input_shape: tuple[int, ...] | None = None) -> tuple[float, int]:
    """(radius, label): every input within `radius` (in the given norm) of x gets the label
    f predicts at x, because each margin y_label - y_j moves at most L_j per unit distance."""
    norm = _parse_norm(norm)
    chain = load_chain(model, input_shape)
    with torch.no_grad():
        y = chain(x.to(DTYPE).reshape(1, -1))[0]
    label = int(y.argmax())
    radius = math.inf
    for j in range(chain.n_outputs):
        if j == label:
            continue
        res = lipschitz_bounds(chain, norm, (label, j), method, timeout, lower=False)
        radius = min(radius, float(y[label] - y[j]) / res.upper)
    return radius, label


__all__ = ["LipschitzResult", "lipschitz_bounds", "certified_radius", "load_chain"]
