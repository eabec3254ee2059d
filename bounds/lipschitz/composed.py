"""Networks too large for one LipSDP: a composition of parts, bounded part by part.

    f = part_k o ... o part_1,    Lip(f) <= prod_i Lip(part_i)

Parts are Chains small enough for the SDP, StructuredAffine segments (convolutions on large
images: Fourier norm bound, see structured.py), activation layers too wide for the SDP
standing alone (their slope bound) and max poolings (Pooling). The extractor cuts a network this way only where it must:
a network whose segments all fit densely stays one Chain and gets one SDP.

l-infinity (norm=inf): the first part is bounded l-inf -> l2 and every later part l2 -> l2,
which bounds the whole network's l-inf -> l2 constant and therefore its l-inf -> l-inf one;
the product of l-inf induced norms is the other candidate (naive_bound), and the smaller wins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from bounds.lipschitz.chain import DTYPE, Activation, Chain
from bounds.lipschitz.structured import StructuredAffine


@dataclass(frozen=True)
class Pooling:
    """Max pooling: each output is the max over a window, so |dy_j| <= max over the window of
    |dx_i|, and |dy|_2^2 <= sum_i (windows covering i) dx_i^2: the l2 constant is at most the
    square root of the largest number of windows covering one input; the l-inf constant is 1."""

    n_in: int
    n_out: int
    max_cover: int
    fn: Callable[[torch.Tensor], torch.Tensor] = field(compare=False, repr=False)
    name: str = "maxpool"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def norm(self, norm: float = 2) -> float:
        return math.sqrt(self.max_cover) if norm == 2 else 1.0

    def norm_inf_to_2(self) -> float:
        return min(math.sqrt(self.n_in) * self.norm(2), math.sqrt(self.n_out))

    def describe(self) -> str:
        return f"{self.name}[{self.n_in}->{self.n_out}]"


Part = Chain | StructuredAffine | Activation | Pooling


def part_inputs(part: Part) -> int:
    if isinstance(part, Chain):
        return part.n_inputs
    return part.n_in if isinstance(part, (StructuredAffine, Pooling)) else part.size


def part_outputs(part: Part) -> int:
    if isinstance(part, Chain):
        return part.n_outputs
    return part.n_out if isinstance(part, (StructuredAffine, Pooling)) else part.size


@dataclass(frozen=True)
class Composition:
    parts: tuple[Part, ...]
    name: str = "network"

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("a composition needs at least one part")
        for a, b in zip(self.parts, self.parts[1:]):
            if part_outputs(a) != part_inputs(b):
                raise ValueError(f"a part with {part_outputs(a)} outputs feeds one with {part_inputs(b)} inputs")

    @property
    def n_inputs(self) -> int:
        return part_inputs(self.parts[0])

    @property
    def n_outputs(self) -> int:
        return part_outputs(self.parts[-1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for part in self.parts:
            h = part(h)
        return h

    def with_output(self, c: torch.Tensor) -> "Composition":
        """The network whose output is c @ y."""
        c = c.to(DTYPE).reshape(-1, self.n_outputs)
        last = self.parts[-1]
        if isinstance(last, Chain):
            return Composition(self.parts[:-1] + (last.with_output(c),), self.name)
        return Composition(self.parts + (Chain((c,), ()),), self.name)

    def describe(self) -> str:
        def one(p: Part) -> str:
            if isinstance(p, Chain):
                return "sdp[" + ", ".join(a.describe() for a in p.activations) + "]" if p.activations else \
                    f"linear[{p.n_inputs}->{p.n_outputs}]"
            return p.describe()
        return f"{self.name}: {self.n_inputs} inputs -> " + " -> ".join(one(p) for p in self.parts) + \
            f" -> {self.n_outputs} outputs"


def assemble_parts(segments: list, activations: list[Activation], biases: list, max_sdp_width: int,
                   name: str) -> Chain | Composition:
    """segments[i]: a dense weight (tensor) or a StructuredAffine; activations[i] (an
    Activation or a Pooling) follows segments[i]. Runs of dense segments and activations no
    wider than max_sdp_width become Chains (an identity weight closes a run that starts or ends
    at an activation); poolings stand alone."""
    items: list[tuple[str, object, object]] = []
    for i, seg in enumerate(segments):
        items.append(("struct" if isinstance(seg, StructuredAffine) else "dense", seg, biases[i]))
        if i < len(activations):
            act = activations[i]
            if isinstance(act, Pooling):
                items.append(("pool", act, None))
            else:
                items.append(("act" if act.size <= max_sdp_width else "wide", act, None))
    if all(kind in ("dense", "act") for kind, _, _ in items):
        return Chain(tuple(s for s in segments), tuple(activations), tuple(biases), name)
    parts: list[Part] = []
    run: list[tuple[str, object, object]] = []

    def close() -> None:
        if all(kind == "act" for kind, _, _ in run):      # activations alone: their slope bound is the SDP's
            parts.extend(obj for _, obj, _ in run)
            run.clear()
            return
        ws, acts, bs = [], [], []
        for kind, obj, b in run:
            if kind == "act":
                if len(ws) == len(acts):              # two activations in a row, or one first
                    ws.append(torch.eye(obj.size, dtype=DTYPE))
                    bs.append(torch.zeros(obj.size, dtype=DTYPE))
                acts.append(obj)
            else:
                ws.append(obj)
                bs.append(b)
        if len(ws) == len(acts):
            ws.append(torch.eye(acts[-1].size, dtype=DTYPE))
            bs.append(torch.zeros(acts[-1].size, dtype=DTYPE))
        parts.append(Chain(tuple(ws), tuple(acts), tuple(bs), name))
        run.clear()

    for item in items:
        kind, obj, _ = item
        if kind in ("dense", "act"):
            run.append(item)
        else:
            close()
            parts.append(obj)
    close()
    return Composition(tuple(parts), name)


__all__ = ["Composition", "Pooling", "assemble_parts", "Part"]
