"""Products of two variable tensors: Mul, Div and MatMul when neither operand is constant.

The registry entries for Mul / Div / MatMul are the classes below. Each one subclasses the
affine rule of bounds.ops.linear and dispatches on constness: with a constant operand the
op is affine and the linear rule does everything (unchanged behaviour, MILP-encodable);
with two variable operands (attention scores Q·K^T, attn·V, x * g(x) gates, x / y) the
relaxation is McCormick's.

McCormick planes for z = x*y on [lx, ux] x [ly, uy], all four exact on the box edges:

    z >= ly*x + lx*y - lx*ly   (L1: (x - lx)(y - ly) >= 0)
    z >= uy*x + ux*y - ux*uy   (L2: (ux - x)(uy - y) >= 0)
    z <= uy*x + lx*y - lx*uy   (U1: (x - lx)(y - uy) <= 0)
    z <= ly*x + ux*y - ux*ly   (U2: (ux - x)(y - ly) >= 0)

Any convex combination a*L1 + (1-a)*L2 (a in [0, 1]) is a valid lower plane, likewise for
U1/U2. Both planes of a pair have the same mean gap over the box (wx*wy/4), so a = 1/2 is
the neutral default; alpha-CROWN may optimise a per output element and spec row. Pairing
L1 with U1 (both pass through the lx edge) makes the y-coefficient the same for the lower
and the upper plane, which keeps the MatMul backward to a few matrix products.

Div x / y is x * r with r = 1/y: McCormick on (x, r), then r relaxed linearly in y (tangent
and chord of 1/y) on intervals of y that exclude 0. Where y may be 0 there is no finite
bound: IBP returns (-inf, inf) and CROWN cuts the node (bounds.crown.backward_lower).
"""
from __future__ import annotations

from typing import Sequence

import torch

from bounds.graph.ir import Node
from bounds.ops import linear
from bounds.ops.base import align_ranks, flat_sum, relaxation_backward, sample_rank, unbroadcast
from bounds.types import Interval, Relaxation


# ----------------------------------------------------------------------------------------
# interval products

def _nan_to(t: torch.Tensor, value: float) -> torch.Tensor:
    return torch.where(torch.isnan(t), torch.full_like(t, value), t)


def product_interval(x: Interval, y: Interval) -> Interval:
    """Exact elementwise enclosure of x*y (broadcasting): min / max over the four corners.

    0 * inf corners are nan; they stand for an edge on which the product is 0, and the
    unbounded corners carry the infinity, so they are read as 0.
    """
    lx, ux, ly, uy = align_ranks(x.lower, x.upper, y.lower, y.upper)
    corners = torch.stack(torch.broadcast_tensors(lx * ly, lx * uy, ux * ly, ux * uy))
    corners = _nan_to(corners, 0.0)
    return Interval(corners.min(0).values, corners.max(0).values)


def _split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return t.clamp(min=0), t.clamp(max=0)


def matmul_interval(x: Interval, y: Interval, mm) -> Interval:
    """Enclosure of mm(x, y) for a matrix product `mm` of two intervals.

    Two sound enclosures, intersected: the sign split x = x+ + x- (each part sign-definite,
    so every product of parts is bounded by endpoint products; exact when at most one of
    the two factors of each product straddles 0), and the centre-radius form (tight when
    both straddle symmetrically).
    """
    lxp, lxn = _split(x.lower)
    uxp, uxn = _split(x.upper)
    lyp, lyn = _split(y.lower)
    uyp, uyn = _split(y.upper)
    lo = mm(lxp, lyp) + mm(uxp, lyn) + mm(lxn, uyp) + mm(uxn, uyn)
    hi = mm(uxp, uyp) + mm(lxp, uyn) + mm(uxn, lyp) + mm(lxn, lyn)
    mx, rx, my, ry = x.center, x.radius, y.center, y.radius
    if bool(torch.isfinite(mx).all() and torch.isfinite(my).all()):
        mid = mm(mx, my)
        rad = mm(mx.abs(), ry) + mm(rx, my.abs()) + mm(rx, ry)
        lo, hi = torch.maximum(lo, mid - rad), torch.minimum(hi, mid + rad)
    return Interval(_nan_to(lo, -torch.inf), _nan_to(hi, torch.inf))


def reciprocal_interval(y: Interval) -> Interval:
    """1/y on intervals excluding 0; (-inf, inf) where y may be 0."""
    safe = (y.lower > 0) | (y.upper < 0)
    one = torch.ones_like(y.lower)
    lo = torch.where(safe, one / torch.where(safe, y.upper, one), torch.full_like(one, -torch.inf))
    hi = torch.where(safe, one / torch.where(safe, y.lower, one), torch.full_like(one, torch.inf))
    return Interval(lo, hi)


def reciprocal_relaxation(y: Interval) -> Relaxation:
    """Linear bounds of 1/y valid on [l, u] with 0 outside [l, u].

    1/y is convex for y > 0 (chord above, tangent below) and concave for y < 0 (the other
    way round). The tangent is taken at the geometric mean sign*sqrt(l*u), where its slope
    -1/(l*u) equals the chord's: the two lines are parallel, minimising the maximal gap.
    """
    l, u = y.lower, y.upper
    slope = -1.0 / (l * u)
    chord_b = 1.0 / l + 1.0 / u
    t = torch.sign(l) * torch.sqrt(l * u)
    tangent_b = 2.0 / t
    pos = l > 0
    return Relaxation(lw=slope, lb=torch.where(pos, tangent_b, chord_b),
                      uw=slope, ub=torch.where(pos, chord_b, tangent_b))


# ----------------------------------------------------------------------------------------
# McCormick backward steps

def _alpha_or_half(alpha: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return like.new_tensor(0.5) if alpha is None else alpha


def _check_finite(*ts: torch.Tensor) -> None:
    if not all(bool(torch.isfinite(t).all()) for t in ts):
        raise NotImplementedError("McCormick planes need finite operand bounds")


def mul_backward(A: torch.Tensor, x: Interval, y: Interval,
                 alpha: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower bound of A·(x*y) (elementwise, broadcasting): coefficients on x and y, bias.

    A: (B, S, *out); x, y: (B|1, *shape) broadcasting to out; alpha: (B, S, *out) in [0, 1].
    Returned coefficients have the shapes of x and y (behind (B, S)).
    """
    x_shape, y_shape = x.lower.shape[1:], y.lower.shape[1:]
    lx, ux, ly, uy = (t.unsqueeze(1) for t in align_ranks(x.lower, x.upper, y.lower, y.upper))
    _check_finite(lx, ux, ly, uy)
    a = _alpha_or_half(alpha, A)
    pos = A.clamp(min=0)
    neg = A - pos
    # lower plane for pos, upper plane for neg (see module docstring for the pairing)
    p1 = pos * a + neg * (1 - a)     # weight of planes with x-coefficient ly
    p2 = A - p1                      # weight of planes with x-coefficient uy
    coeff_x = p1 * ly + p2 * uy
    coeff_y = A * (a * lx + (1 - a) * ux)
    off_pos = a * (lx * ly) + (1 - a) * (ux * uy)
    off_neg = a * (lx * uy) + (1 - a) * (ux * ly)
    bias = -(flat_sum(pos * off_pos) + flat_sum(neg * off_neg))
    ax = unbroadcast(coeff_x, _aligned(x_shape, A.dim() - 2)).reshape(A.shape[0], A.shape[1], *x_shape)
    ay = unbroadcast(coeff_y, _aligned(y_shape, A.dim() - 2)).reshape(A.shape[0], A.shape[1], *y_shape)
    return ax, ay, bias


def _aligned(shape: torch.Size, rank: int) -> torch.Size:
    return torch.Size([1] * (rank - len(shape)) + list(shape))


def matmul_backward(A: torch.Tensor, x: Interval, y: Interval,
                    alpha: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower bound of A·(x @ y) for x (B|1, ..., M, K), y (B|1, ..., K, N), both rank >= 2.

    Each product x_mk * y_kn gets the McCormick plane pair selected by the sign of A_mn and
    weighted by alpha_mn, so everything reduces to products of (M, N) weights with the
    (M, K) / (K, N) bound matrices: no (M, K, N) tensor is formed.
    """
    x_shape, y_shape = x.lower.shape[1:], y.lower.shape[1:]
    lx, ux, ly, uy = (t.unsqueeze(1) for t in align_ranks(x.lower, x.upper, y.lower, y.upper))
    _check_finite(lx, ux, ly, uy)
    a = _alpha_or_half(alpha, A)
    pos = A.clamp(min=0)
    neg = A - pos
    p1 = pos * a + neg * (1 - a)
    p2 = A - p1
    coeff_x = p1 @ ly.transpose(-1, -2) + p2 @ uy.transpose(-1, -2)
    aA = A * a
    coeff_y = lx.transpose(-1, -2) @ aA + ux.transpose(-1, -2) @ (A - aA)
    # plane offsets per output entry (small when alpha is the scalar default)
    off_pos = a * (lx @ ly) + (1 - a) * (ux @ uy)
    off_neg = a * (lx @ uy) + (1 - a) * (ux @ ly)
    bias = -(flat_sum(pos * off_pos) + flat_sum(neg * off_neg))
    rank = A.dim() - 2
    ax = unbroadcast(coeff_x, _aligned(x_shape, rank)).reshape(A.shape[0], A.shape[1], *x_shape)
    ay = unbroadcast(coeff_y, _aligned(y_shape, rank)).reshape(A.shape[0], A.shape[1], *y_shape)
    return ax, ay, bias


# ----------------------------------------------------------------------------------------
# the registry rules: dispatch on constness

class _Bilinear:
    """Shared parts of the dispatching rules (mixed in front of the linear rule)."""

    def needs_bounds(self, node: Node, is_const: Sequence[bool]) -> bool:
        """Nonlinear (needs input intervals) only when both operands are variable."""
        return not any(is_const[:2])

    def init_alpha_for(self, node: Node, xs: Sequence[Interval], is_const: Sequence[bool],
                       out_shape: torch.Size) -> torch.Tensor | None:
        """Plane weights (B, *out) at the neutral 1/2, or None for the affine case."""
        if not self.needs_bounds(node, is_const):
            return None
        batch = max(x.lower.shape[0] for x in xs)
        return xs[0].lower.new_full((batch, *out_shape), 0.5)

    def project_alpha(self, node: Node, alpha: torch.Tensor) -> torch.Tensor:
        return alpha.clamp(0.0, 1.0)

    def exact_on(self, x: Interval) -> torch.Tensor:
        return x.lower == x.upper


def square_interval(x: Interval) -> Interval:
    """x*x for the same x: non-negative, exact."""
    lo2, hi2 = x.lower * x.lower, x.upper * x.upper
    straddle = (x.lower < 0) & (x.upper > 0)
    return Interval(torch.where(straddle, torch.zeros_like(lo2), torch.minimum(lo2, hi2)), torch.maximum(lo2, hi2))


def square_relaxation(x: Interval, alpha: torch.Tensor | None = None) -> Relaxation:
    """x^2 is convex: chord above, tangent below at l + alpha*(u - l) (midpoint by default,
    which minimises the integrated gap)."""
    l, u = x.lower, x.upper
    if alpha is not None:
        l, u = l.unsqueeze(1), u.unsqueeze(1)
    t = l + (0.5 if alpha is None else alpha) * (u - l)
    return Relaxation(lw=2 * t, lb=-t * t, uw=(l + u).expand_as(t), ub=(-l * u).expand_as(t))


class Mul(_Bilinear, linear.Mul):
    def ibp(self, node, xs):
        a, b = xs
        if node.inputs[0] == node.inputs[1]:
            return square_interval(a)
        if torch.equal(a.lower, a.upper) or torch.equal(b.lower, b.upper):
            return super().ibp(node, xs)
        return product_interval(a, b)

    def backward(self, node, A, xs, is_const, alpha=None):
        if any(is_const[:2]):
            return super().backward(node, A, xs, is_const)
        if node.inputs[0] == node.inputs[1]:
            _check_finite(xs[0].lower, xs[0].upper)
            # both operands are the same value: the whole coefficient goes to the first
            ax, bias = relaxation_backward(A, square_relaxation(xs[0], alpha))
            return [ax, None], bias
        ax, ay, bias = mul_backward(A, xs[0], xs[1], alpha)
        return [ax, ay], bias


class Div(_Bilinear, linear.Div):
    constant_inputs = ()

    def needs_bounds(self, node, is_const):
        return not is_const[1]

    def ibp(self, node, xs):
        a, b = xs
        if torch.equal(b.lower, b.upper) and (not b.lower.is_floating_point() or bool((b.lower != 0).all())):
            return super().ibp(node, xs)
        return product_interval(a, reciprocal_interval(b))

    def backward(self, node, A, xs, is_const, alpha=None):
        if is_const[1]:
            return super().backward(node, A, xs, is_const)
        x, y = xs
        if not bool(((y.lower > 0) | (y.upper < 0)).all()):
            raise NotImplementedError("Div by an interval that may contain 0")
        r = reciprocal_interval(y)
        if is_const[0]:
            # constant numerator c: c * r is linear in r, relax r in y
            c = align_ranks(x.lower, r.lower)[0].unsqueeze(1)
            ar = unbroadcast(A * c, _aligned(y.lower.shape[1:], A.dim() - 2))
            ar = ar.reshape(A.shape[0], A.shape[1], *y.lower.shape[1:])
            ay, bias2 = relaxation_backward(ar, reciprocal_relaxation(y))
            return [None, ay], bias2
        ax, ar, bias = mul_backward(A, x, r, alpha)
        ay, bias2 = relaxation_backward(ar, reciprocal_relaxation(y))
        return [ax, ay], bias + bias2


class MatMul(_Bilinear, linear.MatMul):
    def ibp(self, node, xs):
        a, b = xs
        if torch.equal(a.lower, a.upper) or torch.equal(b.lower, b.upper):
            return super().ibp(node, xs)
        return matmul_interval(a, b, lambda p, q: self.forward(node, [p, q]))

    def backward(self, node, A, xs, is_const, alpha=None):
        if any(is_const[:2]):
            return super().backward(node, A, xs, is_const)
        x, y = xs
        vec_x, vec_y = sample_rank(x.lower) == 1, sample_rank(y.lower) == 1
        # 1-D operands: ONNX promotes them to a row (x) / column (y) and drops that axis again
        if vec_x:
            x = Interval(x.lower.unsqueeze(-2), x.upper.unsqueeze(-2))
        if vec_y:
            y = Interval(y.lower.unsqueeze(-1), y.upper.unsqueeze(-1))
        dims = (-1, -1) if vec_x and vec_y else (-2,) if vec_x else (-1,) if vec_y else ()
        for d in dims:
            A = A.unsqueeze(d)
            alpha = None if alpha is None else alpha.unsqueeze(d)
        ax, ay, bias = matmul_backward(A, x, y, alpha)
        if vec_x:
            ax = ax.squeeze(-2)
        if vec_y:
            ay = ay.squeeze(-1)
        return [ax, ay], bias
