"""Affine operators: Gemm, MatMul, Add, Sub, Neg, Mul, Div, BatchNormalization, reductions."""
from __future__ import annotations

import torch

from bounds.ops.base import (LinearRule, align_ranks, flat_sum, int_list, row_dot, sample_axis,
                             sample_rank, unbroadcast)
from bounds.types import Interval


def _interval_product(a: Interval, b: Interval, op) -> Interval:
    """Sound enclosure of op(a, b) for a bilinear op (matmul or elementwise product)."""
    ma, ra, mb, rb = a.center, a.radius, b.center, b.radius
    mid = op(ma, mb)
    rad = op(ma.abs(), rb) + op(ra, mb.abs()) + op(ra, rb)
    return Interval(mid - rad, mid + rad)


class Gemm(LinearRule):
    def _operands(self, node, a, b):
        if node.attrs.get("transA", 0):
            a = a.transpose(-1, -2)
        if node.attrs.get("transB", 0):
            b = b.transpose(-1, -2)
        return a, b

    def forward(self, node, xs):
        a, b = self._operands(node, xs[0], xs[1])
        y = node.attrs.get("alpha", 1.0) * torch.matmul(a, b)
        if len(xs) > 2 and xs[2] is not None:
            y, c = align_ranks(y, xs[2])
            y = y + node.attrs.get("beta", 1.0) * c
        return y

    def ibp(self, node, xs):
        alpha = node.attrs.get("alpha", 1.0)
        if xs[1].lower is xs[1].upper or torch.equal(xs[1].lower, xs[1].upper):
            # a constant weight (the usual case): centre/radius form, two products instead of
            # four. |W| is taken before the transpose and alpha scales the (small) products:
            # elementwise ops over a transposed view of a large weight are slow on the CPU, and
            # certified training pays for them again in the backward pass
            w = xs[1].lower
            if w.dim() == 3 and w.shape[0] == 1:
                w = w.squeeze(0)   # the constant's batch dim: a 2-D weight keeps matmul one mm
            w_abs = w.abs()
            mid_in, w = self._operands(node, xs[0].center, w)
            rad_in, w_abs = self._operands(node, xs[0].radius, w_abs)
            mid, rad = mid_in @ w, rad_in @ w_abs
            if alpha != 1.0:
                mid, rad = alpha * mid, abs(alpha) * rad
            out = Interval(mid - rad, mid + rad)
        else:
            a_lo, b_lo = self._operands(node, xs[0].lower, xs[1].lower)
            a_hi, b_hi = self._operands(node, xs[0].upper, xs[1].upper)
            a, b = Interval(a_lo, a_hi), Interval(b_lo, b_hi)
            p = _interval_product(a, b, torch.matmul)
            out = Interval(alpha * p.lower, alpha * p.upper) if alpha >= 0 else Interval(alpha * p.upper, alpha * p.lower)
        if len(xs) > 2:
            beta = node.attrs.get("beta", 1.0)
            lo, c_lo = align_ranks(out.lower, xs[2].lower)
            hi, c_hi = align_ranks(out.upper, xs[2].upper)
            cl, cu = (beta * c_lo, beta * c_hi) if beta >= 0 else (beta * c_hi, beta * c_lo)
            out = Interval(lo + cl, hi + cu)
        return out

    def backward(self, node, A, xs, is_const):
        if is_const[0] or not all(is_const[1:]):
            if not all(is_const[1:]) and not is_const[0]:
                raise NotImplementedError("Gemm of two variables has no linear relaxation yet")
            return super().backward(node, A, xs, is_const)
        b = xs[1].lower[0]
        if node.attrs.get("transB", 0):
            b = b.transpose(-1, -2)
        A_a = torch.matmul(A, b.transpose(-1, -2))
        if node.attrs.get("alpha", 1.0) != 1.0:
            A_a = node.attrs["alpha"] * A_a
        if node.attrs.get("transA", 0):
            A_a = A_a.transpose(-1, -2)
        bias = A.new_zeros(A.shape[:2])
        if len(xs) > 2:
            c = xs[2].lower[0] * node.attrs.get("beta", 1.0)
            bias = row_dot(A, c.unsqueeze(0))
        return [A_a, None, None][: len(xs)], bias


class MatMul(LinearRule):
    def forward(self, node, xs):
        a, b = xs
        squeeze_a, squeeze_b = sample_rank(a) == 1, sample_rank(b) == 1
        if squeeze_a:
            a = a.unsqueeze(-2)
        if squeeze_b:
            b = b.unsqueeze(-1)
        a, b = align_ranks(a, b)
        y = torch.matmul(a, b)
        if squeeze_b:
            y = y.squeeze(-1)
        if squeeze_a:
            y = y.squeeze(-2)
        return y

    def ibp(self, node, xs):
        a, b = xs
        if torch.equal(b.lower, b.upper):
            mid, rad = self.forward(node, [a.center, b.lower]), self.forward(node, [a.radius, b.lower.abs()])
            return Interval(mid - rad, mid + rad)
        if torch.equal(a.lower, a.upper):
            mid, rad = self.forward(node, [a.lower, b.center]), self.forward(node, [a.lower.abs(), b.radius])
            return Interval(mid - rad, mid + rad)
        return _interval_product(a, b, lambda p, q: self.forward(node, [p, q]))

    def backward(self, node, A, xs, is_const):
        a, b = xs
        if not is_const[0] and not is_const[1]:
            raise NotImplementedError("MatMul of two variables has no linear relaxation yet")
        if is_const[0] or sample_rank(a.lower) < 2 or sample_rank(b.lower) < 2:
            return super().backward(node, A, xs, is_const)
        w = b.lower[0]
        A_a = torch.matmul(A, w.transpose(-1, -2))
        return [unbroadcast(A_a, a.lower.shape[1:]), None], A.new_zeros(A.shape[:2])


class Add(LinearRule):
    sign = 1.0

    def forward(self, node, xs):
        a, b = align_ranks(*xs)
        return a + self.sign * b

    def backward(self, node, A, xs, is_const):
        bias = A.new_zeros(A.shape[:2])
        out: list[torch.Tensor | None] = []
        for i, (x, const) in enumerate(zip(xs, is_const)):
            s = 1.0 if i == 0 else self.sign
            if const:
                c = x.lower[0]
                bias = bias + s * row_dot(A, c.unsqueeze(0)) if c.dim() <= A.dim() - 2 else bias + s * flat_sum(A * c.sum(0))
                out.append(None)
            else:
                out.append(unbroadcast(A if s == 1.0 else s * A, x.lower.shape[1:]))
        return out, bias


class Sub(Add):
    sign = -1.0
    signs = (1, -1)


class Neg(LinearRule):
    signs = (-1,)

    def forward(self, node, xs):
        return -xs[0]

    def backward(self, node, A, xs, is_const):
        return [-A], A.new_zeros(A.shape[:2])


def scaled_backward(A: torch.Tensor, x: Interval, c: torch.Tensor, divide: bool) -> torch.Tensor | None:
    """Coefficients on x of A·(x * c) (or x / c) for a constant c (1, *shape'), without the
    generic vector-Jacobian product; None when c is not smaller than the output (then the
    generic rule applies)."""
    c = c[0]
    extra = A.dim() - 2 - c.dim()
    if extra < 0:
        return None
    c = c.reshape(*([1] * (2 + extra)), *c.shape)
    coeff = unbroadcast(A / c if divide else A * c, x.lower.shape[1:])
    return coeff.reshape(A.shape[0], A.shape[1], *x.lower.shape[1:])


class Mul(LinearRule):
    def forward(self, node, xs):
        a, b = align_ranks(*xs)
        return a * b

    def ibp(self, node, xs):
        a, b = xs
        if torch.equal(b.lower, b.upper) or torch.equal(a.lower, a.upper):
            x, c = (a, b.lower) if torch.equal(b.lower, b.upper) else (b, a.lower)
            mid, rad = self.forward(node, [x.center, c]), self.forward(node, [x.radius, c.abs()])
            return Interval(mid - rad, mid + rad)
        a_lo, a_hi, b_lo, b_hi = align_ranks(a.lower, a.upper, b.lower, b.upper)
        return _interval_product(Interval(a_lo, a_hi), Interval(b_lo, b_hi), torch.mul)

    def backward(self, node, A, xs, is_const):
        if not any(is_const):
            raise NotImplementedError("Mul of two variables has no linear relaxation yet")
        if is_const[0] != is_const[1]:
            var = 0 if is_const[1] else 1
            coeff = scaled_backward(A, xs[var], xs[1 - var].lower, divide=False)
            if coeff is not None:
                out: list[torch.Tensor | None] = [None, None]
                out[var] = coeff
                return out, A.new_zeros(A.shape[:2])
        return super().backward(node, A, xs, is_const)


class Div(LinearRule):
    constant_inputs = (1,)

    def forward(self, node, xs):
        a, b = align_ranks(*xs)
        if not a.is_floating_point() and not b.is_floating_point():  # ONNX integer Div truncates
            return torch.div(a, b, rounding_mode="trunc")
        return a / b

    def ibp(self, node, xs):
        a, b = xs
        if not torch.equal(b.lower, b.upper):
            raise NotImplementedError("Div by a variable has no bound rule yet")
        mid, rad = self.forward(node, [a.center, b.lower]), self.forward(node, [a.radius, b.lower.abs()])
        return Interval(mid - rad, mid + rad)

    def backward(self, node, A, xs, is_const):
        if not is_const[1]:
            raise NotImplementedError("Div by a variable has no linear relaxation yet")
        if not is_const[0] and xs[1].lower.is_floating_point():
            coeff = scaled_backward(A, xs[0], xs[1].lower, divide=True)
            if coeff is not None:
                return [coeff, None], A.new_zeros(A.shape[:2])
        return super().backward(node, A, xs, is_const)


class BatchNormalization(LinearRule):
    constant_inputs = (1, 2, 3, 4)

    def _affine(self, node, x, xs):
        scale, shift, mean, var = (t.reshape(-1) for t in xs[1:5])
        s = scale / torch.sqrt(var + node.attrs.get("epsilon", 1e-5))
        t = shift - mean * s
        view = [1] * x.dim()
        view[2] = -1
        return s.reshape(view), t.reshape(view)

    def forward(self, node, xs):
        s, t = self._affine(node, xs[0], xs)
        return xs[0] * s + t

    def ibp(self, node, xs):
        s, t = self._affine(node, xs[0].lower, [x.lower for x in xs])
        mid, rad = xs[0].center * s + t, xs[0].radius * s.abs()
        return Interval(mid - rad, mid + rad)


class _Reduce(LinearRule):
    """ReduceSum / ReduceMean: linear with non-negative weights, hence monotone."""

    mean = False

    def forward(self, node, xs):
        x = xs[0]
        axes = node.attrs.get("axes")
        if axes is None and len(xs) > 1 and xs[1] is not None:
            axes = int_list(xs[1])
        rank = sample_rank(x)
        if not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(rank))
        dims = [sample_axis(a, rank) for a in axes]
        keep = bool(node.attrs.get("keepdims", 1))
        return x.mean(dim=dims, keepdim=keep) if self.mean else x.sum(dim=dims, keepdim=keep)


class ReduceSum(_Reduce):
    constant_inputs = (1,)


class ReduceMean(_Reduce):
    constant_inputs = (1,)
    mean = True

