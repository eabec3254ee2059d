"""The operator-rule protocol and the few shared building blocks rules are made of.

Run-time convention (see bounds.types): every tensor handed to a rule is batched, i.e. it
has one leading batch dimension in front of its full ONNX shape; constants come with a batch
dimension of 1. Axis attributes therefore shift by one (`sample_axis`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from bounds.graph.ir import Node
from bounds.types import Interval, Relaxation


class OpRule:
    """Stateless knowledge of one operator: evaluation, intervals, linear relaxation.

    `backward` maps a linear bound on the output, A·out (A: (B, S, *out_shape)), to linear
    bounds on the variable inputs: returns one A per input (None for constants or inputs the
    output does not depend on linearly) and the bias (B, S) that the relaxation adds. For a
    lower bound it must satisfy A·out >= sum_i A_i·in_i + bias on the input intervals.
    """

    #: input positions that must be constant for bound propagation (weights, shapes, axes)
    constant_inputs: tuple[int, ...] = ()
    #: True when the relaxation depends on the input intervals (nonlinear ops)
    needs_input_bounds: bool = False

    def forward(self, node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def ibp(self, node: Node, xs: Sequence[Interval]) -> Interval:
        raise NotImplementedError

    def backward(self, node: Node, A: torch.Tensor, xs: Sequence[Interval],
                 is_const: Sequence[bool]) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        raise NotImplementedError

    def needs_bounds(self, node: Node, is_const: Sequence[bool]) -> bool:
        """`needs_input_bounds` for one node: Mul / Div / MatMul are affine with a constant
        operand and nonlinear (bilinear) with two variable ones, which only the node knows."""
        return self.needs_input_bounds

    @property
    def has_ibp(self) -> bool:
        return type(self).ibp is not OpRule.ibp

    @property
    def has_backward(self) -> bool:
        return type(self).backward is not OpRule.backward


# ----------------------------------------------------------------------------------------
# helpers shared by the rule families

def sample_axis(axis: int, rank: int) -> int:
    """ONNX axis of a rank-`rank` value -> dimension index of the batched tensor."""
    if axis < 0:
        axis += rank
    if not 0 <= axis < rank:
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis + 1


def sample_rank(t: torch.Tensor) -> int:
    return t.dim() - 1


def align_ranks(*ts: torch.Tensor) -> list[torch.Tensor]:
    """Right-align the sample dimensions of batched tensors for ONNX broadcasting."""
    rank = max(sample_rank(t) for t in ts)
    out = []
    for t in ts:
        missing = rank - sample_rank(t)
        if missing:
            t = t.reshape(t.shape[0], *([1] * missing), *t.shape[1:])
        out.append(t)
    return out


def expand_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    return t if t.shape[0] == batch else t.expand(batch, *t.shape[1:])


def batch_size(*ts: torch.Tensor) -> int:
    return max(t.shape[0] for t in ts)


def unbroadcast(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a (B, S, *out) coefficient down to (B, S, *shape) where `shape` broadcast to out."""
    lead = grad.dim() - len(shape) - 2
    if lead > 0:
        grad = grad.sum(dim=tuple(range(2, 2 + lead)))
    dims = tuple(i + 2 for i, s in enumerate(shape) if s == 1 and grad.shape[i + 2] != 1)
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad


def flat_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum everything behind the (B, S) dimensions."""
    # summing over the dims directly: flatten would copy a non-contiguous (e.g. expanded) t
    return t.sum(dim=tuple(range(2, t.dim()))) if t.dim() > 2 else t


def row_dot(A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """flat_sum(A * v.unsqueeze(1)) for A (B, S, *shape), v (B|1, *shape') broadcastable.

    When v holds exactly `shape` this is one batched matrix-vector product, which needs no
    (B, S, *shape) temporary (the product and the sum are most of a backward step's memory
    traffic on wide layers)."""
    if v.dim() == A.dim() - 1 and v.shape[1:] == A.shape[2:] and v.shape[0] in (1, A.shape[0]) and A.dim() > 2:
        flat = A.reshape(A.shape[0], A.shape[1], -1)
        return torch.matmul(flat, v.reshape(v.shape[0], -1, 1).to(A.dtype)).squeeze(-1)
    return flat_sum(A * v.unsqueeze(1))


def int_list(t: torch.Tensor) -> list[int]:
    """A constant (batched, B=1) integer tensor as a Python list."""
    return [int(v) for v in t.reshape(-1).tolist()]


class MonotoneRule(OpRule):
    """Ops that are monotone in each variable input: IBP evaluates the right endpoints.

    `signs[i]` is +1 (increasing in input i) or -1 (decreasing); missing entries are +1.
    Shape plumbing, max-pooling, Add/Sub/Neg/Concat and increasing activations are covered.
    """

    signs: tuple[int, ...] = ()

    def ibp(self, node: Node, xs: Sequence[Interval]) -> Interval:
        lo, hi = [], []
        for i, x in enumerate(xs):
            down = i < len(self.signs) and self.signs[i] < 0
            lo.append(x.upper if down else x.lower)
            hi.append(x.lower if down else x.upper)
        return Interval(self.forward(node, lo), self.forward(node, hi))


class LinearRule(MonotoneRule):
    """Ops that are affine in their variable inputs (for fixed constants).

    The default backward obtains the transposed map by one vector-Jacobian product, so a
    new linear op only writes `forward` (and `ibp` when it is not monotone).
    """

    def backward(self, node, A, xs, is_const):
        B, S = A.shape[:2]
        out_shape = A.shape[2:]
        # keep the autograd graph when A or a constant (a trained weight) needs gradients
        track = A.requires_grad or (torch.is_grad_enabled() and any(
            c and x.lower.requires_grad for x, c in zip(xs, is_const)))
        with torch.enable_grad():
            args, wrt = [], []
            for x, const in zip(xs, is_const):
                if const:
                    args.append(x.lower)
                else:
                    z = torch.zeros((B * S, *x.lower.shape[1:]), dtype=A.dtype, device=A.device,
                                    requires_grad=True)
                    args.append(z)
                    wrt.append(z)
            out = self.forward(node, args)
            out = expand_batch(out, B * S)
            grads = torch.autograd.grad(out, wrt, A.reshape(B * S, *out_shape),
                                        allow_unused=True, create_graph=track)
        with torch.no_grad() if not track else torch.enable_grad():
            zero_args = [x.lower if c else torch.zeros((1, *x.lower.shape[1:]), dtype=A.dtype, device=A.device)
                         for x, c in zip(xs, is_const)]
            offset = self.forward(node, zero_args)
        bias = flat_sum(A * offset.unsqueeze(1)) if offset.abs().max() > 0 else A.new_zeros(B, S)
        result: list[torch.Tensor | None] = []
        it = iter(grads)
        for x, const in zip(xs, is_const):
            if const:
                result.append(None)
            else:
                g = next(it)
                result.append(None if g is None else g.reshape(B, S, *x.lower.shape[1:]))
        return result, bias


def relaxation_backward(A: torch.Tensor, relax: Relaxation) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared elementwise backward step for a lower bound of A·f(x).

    The relaxation is (B, *shape), or (B, S, *shape) when it differs per spec row (alpha).
    """
    per_row = relax.lw.dim() == A.dim()
    lw, lb, uw, ub = (t if per_row else t.unsqueeze(1) for t in (relax.lw, relax.lb, relax.uw, relax.ub))
    pos = A.clamp(min=0)
    # A+ * lw + A- * uw, written with one clamp: A * uw + A+ * (lw - uw)
    new_A = torch.addcmul(A * uw, pos, lw - uw)
    if per_row:
        bias = flat_sum(torch.addcmul((A - pos) * ub, pos, lb))
    else:
        bias = row_dot(A - pos, relax.ub)
        if bool((relax.lb != 0).any()):   # ReLU-like lower lines pass through 0
            bias = bias + row_dot(pos, relax.lb)
    return new_A, bias


class ActivationRule(MonotoneRule):
    """Elementwise unary nonlinearity: writes `fn` and `relax`; the rest is shared."""

    needs_input_bounds = True

    def fn(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def relax(self, node: Node, x: Interval, alpha: torch.Tensor | None = None) -> Relaxation:
        """Linear bounds valid on x. With `alpha` (B, S, *shape) from `init_alpha`, the
        optimisable part of the relaxation is taken from it and the result is per spec row."""
        raise NotImplementedError

    def init_alpha(self, node: Node, x: Interval) -> torch.Tensor | None:
        """Initial optimisable parameters (B, *shape), or None when nothing is optimisable."""
        return None

    def project_alpha(self, node: Node, alpha: torch.Tensor) -> torch.Tensor:
        """Map parameters back into the set on which `relax` stays sound."""
        return alpha

    def prepare(self, node: Node, x: Interval):
        """`relax(node, x, alpha)` as a function of alpha alone, with what does not depend on
        alpha derived once here (a slope search calls it every step on the same intervals);
        None where the rule has nothing to gain from it (then `relax` is called each time)."""
        return None

    def exact_on(self, x: Interval) -> torch.Tensor:
        """Where the relaxation is exact already, so tighter input bounds cannot help."""
        return x.lower == x.upper

    def split_point(self, node: Node, x: Interval) -> torch.Tensor:
        """Where branch-and-bound should split each neuron's input interval (B, *shape) to
        shrink the relaxation gap most: a kink or inflection point inside, else the middle.
        Any point of [lower, upper] is sound; this only steers convergence."""
        return (x.lower + torch.maximum(x.upper, x.lower)) / 2

    def slope_bounds(self, node: Node) -> tuple[float, float] | None:
        """Global slope restriction [a, b] of the function (a <= f'(x) <= b everywhere, used
        by LipSDP); None when the slope is unbounded or not known."""
        return None

    def forward(self, node, xs):
        return self.fn(node, xs[0])

    def backward(self, node, A, xs, is_const, alpha: torch.Tensor | None = None):
        new_A, bias = relaxation_backward(A, self.relax(node, xs[0], alpha))
        return [new_A], bias
