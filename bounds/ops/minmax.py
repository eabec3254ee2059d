"""Piecewise-linear selections: Max / Min (variadic), ReduceMax / ReduceMin, MaxPool,
GlobalMaxPool, TopK and the sorting activations GroupSort / MaxMin.

Everything here is built from one exact identity and one relaxation. For two values a, b

    max(a, b) = a + relu(b - a),        min(a, b) = b - relu(b - a),

so a bound on A_hi·max + A_lo·min is A_hi·a + A_lo·b plus (A_hi - A_lo)·relu(d), d = b - a,
and only the ReLU of d is relaxed (with d's interval [l_b - u_a, u_b - l_a]). For a
compare-exchange (MaxMin) the max and min share one relaxation, so max + min = a + b stays
exact ("sum preservation"); relaxing max and min separately would lose that whenever the
two coefficients differ in sign.

Many inputs are reduced pairwise: a max over n values is a chain of n - 1 pairs (the
partial maxima have exact intervals), a sort is an odd-even transposition network of
compare-exchanges. Both are sound by composition; neither is the tightest possible linear
bound for n > 2, which is the price of one simple, well-tested step.

GroupSort / MaxMin are nnverify's own ops ("nnverify.GroupSort", "nnverify.MaxMin"), fused
from their ONNX export patterns by bounds.graph.fuse_minmax. Attributes (all explicit):
    axis        ONNX axis the groups run along
    group       group size g (MaxMin: 2)
    strided     0: groups are consecutive blocks of g; 1: group j holds j, j+k, j+2k, ...
                (k = size / g; for g = 2 this is "first half against second half")
    descending  1: each group's outputs go from largest to smallest (MaxMin: max first)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bounds.ops.base import (LinearRule, MonotoneRule, align_ranks, int_list, sample_axis, sample_rank,
                             unbroadcast)
from bounds.ops.conv import _drop_padding_windows, merge_batch, spatial_pads, torch_pad_arg
from bounds.ops.relu import leaky_relu_relaxation
from bounds.types import Interval

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
#: sorting networks longer than this are not built (the node is cut and bounded by IBP)
MAX_SORT_GROUP = 64


# ----------------------------------------------------------------------------------------
# the shared steps

def _rows(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B|1, *shape) relaxation data -> (B|1, 1, *shape) to meet coefficients (B, S, *shape)."""
    return t.unsqueeze(1) if t.dim() < like.dim() else t


def pair_backward(A_hi: torch.Tensor | None, A_lo: torch.Tensor | None, a: Interval, b: Interval,
                  diff: Interval | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower bound of A_hi·max(a, b) + A_lo·min(a, b) as A_a·a + A_b·b + bias.

    A_* are (B, S, *shape) (None = 0, at least one given); a, b (B|1, *shape) intervals;
    `diff`, when known, bounds b - a (tighter than the intervals of a and b when they are
    correlated, e.g. CROWN bounds of the difference). Returns (A_a, A_b, bias (B, S)).
    """
    ref = A_hi if A_hi is not None else A_lo
    A_hi = torch.zeros_like(ref) if A_hi is None else A_hi
    A_lo = torch.zeros_like(ref) if A_lo is None else A_lo
    d = Interval(b.lower - a.upper, b.upper - a.lower)
    if diff is not None:
        d = d.intersect(diff)
        d = Interval(d.lower, torch.maximum(d.lower, d.upper))   # rounding must not empty it
    r = leaky_relu_relaxation(d, 0.0)
    lw, lb, uw, ub = (_rows(t, ref) for t in (r.lw, r.lb, r.uw, r.ub))
    c = A_hi - A_lo
    pos = c.clamp(min=0)
    neg = c - pos
    c_d = pos * lw + neg * uw
    bias = (pos * lb + neg * ub).reshape(*c.shape[:2], -1).sum(-1)
    return A_hi - c_d, A_lo + c_d, bias


def max_chain_backward(A: torch.Tensor, xs: list[Interval], valid: list[torch.Tensor] | None = None
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Lower bound of A·max_k x_k as sum_k A_k·x_k + bias, reducing pairwise left to right.

    xs are intervals of one shape (B|1, *shape), A is (B, S, *shape); `valid[k]` (bool,
    broadcastable to the trailing dims) marks where x_k takes part (max-pooling windows cut
    by padding); every element needs at least one valid entry. Returns one coefficient per
    x_k (zero where invalid) and the bias.
    """
    n = len(xs)
    if valid is None:
        valid = [torch.ones((), dtype=torch.bool, device=A.device)] * n
    # forward: intervals of the partial maxima (exact); a placeholder where none is valid yet
    partial: list[Interval] = [xs[0]] * n
    started = valid[0]
    started_before = [torch.zeros((), dtype=torch.bool, device=A.device)]
    cur = xs[0]
    for k in range(1, n):
        x = xs[k]
        started_before.append(started)
        prev = Interval(torch.where(started, cur.lower, x.lower), torch.where(started, cur.upper, x.upper))
        partial[k] = prev
        cur = Interval(torch.where(valid[k], torch.maximum(prev.lower, x.lower), prev.lower),
                       torch.where(valid[k], torch.maximum(prev.upper, x.upper), prev.upper))
        started = started | valid[k]
    coeffs: list[torch.Tensor] = [A] * n
    bias = A.new_zeros(A.shape[:2])
    zero = torch.zeros((), dtype=A.dtype, device=A.device)
    for k in range(n - 1, 0, -1):
        both = valid[k] & started_before[k]           # a real pair: max(partial, x_k)
        only_x = valid[k] & ~started_before[k]        # x_k starts the chain here
        A_m, A_x, b = pair_backward(torch.where(both, A, zero), None, partial[k], xs[k])
        bias = bias + b
        coeffs[k] = A_x + torch.where(only_x, A, zero)
        A = A_m + torch.where(valid[k], zero, A)      # skipped entries pass A through
    coeffs[0] = torch.where(valid[0], A, zero)
    return coeffs, bias


def sort_backward(A: torch.Tensor, x: Interval, diff: Interval | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bound of A·sort_desc(x) along the last dim, as A_x·x + bias.

    Odd-even transposition network: g stages of compare-exchanges of neighbours, stage t
    comparing (i, i+1) for i = t mod 2, t mod 2 + 2, ... Intervals between stages by IBP
    (exact per value). A: (B, S, *shape, g); x: (B|1, *shape, g). For g = 2, `diff`
    (B|1, *shape) bounds x[..., 1] - x[..., 0].
    """
    g = x.lower.shape[-1]
    stages: list[tuple[Interval, torch.Tensor]] = []
    cur = x
    for t in range(g):
        first = torch.arange(t % 2, g - 1, 2, device=A.device)
        if first.numel() == 0:
            continue
        stages.append((cur, first))
        a, b = _take(cur, first), _take(cur, first + 1)
        lo = cur.lower.index_copy(-1, first, torch.maximum(a.lower, b.lower))
        lo = lo.index_copy(-1, first + 1, torch.minimum(a.lower, b.lower))
        up = cur.upper.index_copy(-1, first, torch.maximum(a.upper, b.upper))
        up = up.index_copy(-1, first + 1, torch.minimum(a.upper, b.upper))
        cur = Interval(lo, up)
    bias = A.new_zeros(A.shape[:2])
    for before, first in reversed(stages):
        d = None if diff is None or g != 2 else Interval(diff.lower.unsqueeze(-1), diff.upper.unsqueeze(-1))
        A_a, A_b, b = pair_backward(A.index_select(-1, first), A.index_select(-1, first + 1),
                                    _take(before, first), _take(before, first + 1), d)
        A = A.index_copy(-1, first, A_a).index_copy(-1, first + 1, A_b)
        bias = bias + b
    return A, bias


def _take(x: Interval, idx: torch.Tensor) -> Interval:
    return Interval(x.lower.index_select(-1, idx), x.upper.index_select(-1, idx))


def _const_bias(A: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A·value for a constant (B|1, *shape) operand whose coefficient is A (B, S, *shape)."""
    return (A * _rows(value, A)).reshape(*A.shape[:2], -1).sum(-1)


# ----------------------------------------------------------------------------------------
# elementwise Max / Min

class Max(MonotoneRule):
    """ONNX Max: elementwise over any number of broadcasting inputs (monotone in each)."""

    needs_input_bounds = True
    #: +1: max; -1: min, bounded as -max(-x)
    sign = 1

    def forward(self, node, xs):
        xs = align_ranks(*xs)
        out = xs[0]
        for x in xs[1:]:
            out = torch.maximum(out, x) if self.sign > 0 else torch.minimum(out, x)
        return out

    def backward(self, node, A, xs, is_const):
        out_shape = A.shape[2:]
        s = self.sign
        lows = align_ranks(*[x.lower for x in xs])
        ups = align_ranks(*[x.upper for x in xs])
        intervals = []
        for lo, up in zip(lows, ups):
            lo, up = lo.expand(lo.shape[0], *out_shape), up.expand(up.shape[0], *out_shape)
            intervals.append(Interval(lo, up) if s > 0 else Interval(-up, -lo))
        coeffs, bias = max_chain_backward(s * A, intervals)
        result: list[torch.Tensor | None] = []
        for x, lo, coef, const in zip(xs, lows, coeffs, is_const):
            coef = s * coef                        # back from -x to x for Min
            if const:
                bias = bias + _const_bias(coef, lo.expand(lo.shape[0], *out_shape))
                result.append(None)
            else:
                result.append(unbroadcast(coef, x.lower.shape[1:]))
        return result, bias


class Min(Max):
    sign = -1


# ----------------------------------------------------------------------------------------
# reductions

def _reduce_axes(node, xs) -> list[int] | None:
    """ONNX axes (opset 18 input or attribute) as batched dims; None = reduce nothing."""
    rank = sample_rank(xs[0])
    if len(xs) > 1 and xs[1] is not None and xs[1].numel():
        axes = int_list(xs[1])
    else:
        axes = list(node.attrs.get("axes", []))
    if not axes:
        return None if node.attrs.get("noop_with_empty_axes", 0) else [d + 1 for d in range(rank)]
    return sorted(sample_axis(a, rank) for a in axes)


class ReduceMax(MonotoneRule):
    needs_input_bounds = True
    constant_inputs = (1,)
    sign = 1

    def forward(self, node, xs):
        x = xs[0]
        dims = _reduce_axes(node, xs)
        if dims is None:
            return x
        keep = bool(node.attrs.get("keepdims", 1))
        return x.amax(dim=dims, keepdim=keep) if self.sign > 0 else x.amin(dim=dims, keepdim=keep)

    def backward(self, node, A, xs, is_const):
        x = xs[0]
        dims = _reduce_axes(node, [x.lower] + [v.lower for v in xs[1:]])
        if dims is None:
            return [A, None][: len(xs)], A.new_zeros(A.shape[:2])
        s = self.sign
        kept = [d for d in range(1, x.lower.dim()) if d not in dims]
        perm = [0] + kept + dims
        k = math.prod(x.lower.shape[d] for d in dims)
        lo, up = (t.permute(perm).flatten(len(kept) + 1) for t in (x.lower, x.upper))
        if s < 0:
            lo, up = -up, -lo
        kept_shape = [x.lower.shape[d] for d in kept]
        A_flat = (s * A).reshape(*A.shape[:2], *kept_shape)
        coeffs, bias = max_chain_backward(A_flat, [Interval(lo[..., i], up[..., i]) for i in range(k)])
        stacked = torch.stack(coeffs, -1).reshape(*A.shape[:2], *kept_shape, *[x.lower.shape[d] for d in dims])
        inverse = [0] * len(perm)
        for i, p in enumerate(perm):
            inverse[p] = i
        new_A = s * stacked.permute([0, 1] + [i + 1 for i in inverse[1:]])
        return [new_A, None][: len(xs)], bias


class ReduceMin(ReduceMax):
    sign = -1


# ----------------------------------------------------------------------------------------
# pooling

def _pool_geometry(node, in_shape: tuple[int, ...]) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(node.attrs["kernel_shape"])
    n = len(kernel)
    strides = list(node.attrs.get("strides", [1] * n))
    dil = list(node.attrs.get("dilations", [1] * n))
    pads = spatial_pads(node, list(in_shape[-n:]), kernel, strides, dil)
    return kernel, strides, dil, pads


def _window_index(sizes: list[int], out_sizes: list[int], kernel: list[int], strides: list[int],
                  dil: list[int], pads: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """For every kernel offset and output position: flat input index and validity.

    Returns (index, valid), both (K, P): K = prod(kernel) offsets, P = prod(out_sizes).
    """
    n = len(kernel)
    outs = torch.meshgrid(*[torch.arange(o, device=device) for o in out_sizes], indexing="ij")
    offs = torch.meshgrid(*[torch.arange(k, device=device) for k in kernel], indexing="ij")
    index = torch.zeros(math.prod(kernel), math.prod(out_sizes), dtype=torch.long, device=device)
    valid = torch.ones_like(index, dtype=torch.bool)
    for d in range(n):
        coord = (outs[d].reshape(1, -1) * strides[d] - pads[d] + offs[d].reshape(-1, 1) * dil[d])
        valid &= (coord >= 0) & (coord < sizes[d])
        index = index * sizes[d] + coord.clamp(0, sizes[d] - 1)
    return index, valid


class MaxPool(MonotoneRule):
    """ONNX MaxPool (pads ignored as -inf, dilations, ceil_mode, auto_pad): each output is
    the max over its window, bounded by the pairwise chain over the kernel offsets."""

    needs_input_bounds = True

    def forward(self, node, xs):
        x = xs[0]
        kernel, strides, dil, pads = _pool_geometry(node, tuple(x.shape))
        n = len(kernel)
        flat, lead = merge_batch(x, n + 1)
        if any(pads):
            flat = F.pad(flat, torch_pad_arg(pads), value=float("-inf"))
        ceil = bool(node.attrs.get("ceil_mode", 0))
        y = _MAX[n](flat, kernel, strides, dilation=dil, ceil_mode=ceil)
        if ceil:
            y = _drop_padding_windows(y, list(x.shape[-n:]), kernel, strides, dil, pads)
        return y.reshape(*lead, *y.shape[1:])

    def _windows(self, node, x: Interval, out_spatial: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        kernel, strides, dil, pads = _pool_geometry(node, tuple(x.lower.shape))
        n = len(kernel)
        return _window_index(list(x.lower.shape[-n:]), out_spatial, kernel, strides, dil, pads, x.lower.device)

    def backward(self, node, A, xs, is_const):
        x = xs[0]
        n = sample_rank(x.lower) - 2
        out_spatial = list(A.shape[-n:])
        index, valid = self._windows(node, x, out_spatial)
        lead = x.lower.shape[1: x.lower.dim() - n]               # (N, C)
        lo, up = x.lower.flatten(-n), x.upper.flatten(-n)        # (B, N, C, Q)
        B, S = A.shape[:2]
        A_flat = A.flatten(-n)                                   # (B, S, N, C, P)
        windows = [Interval(lo[..., index[k]], up[..., index[k]]) for k in range(index.shape[0])]
        coeffs, bias = max_chain_backward(A_flat, windows, [valid[k] for k in range(index.shape[0])])
        new_A = A_flat.new_zeros(B, S, *lead, lo.shape[-1])
        for k, coef in enumerate(coeffs):
            new_A.index_add_(new_A.dim() - 1, index[k], coef)
        return [new_A.reshape(B, S, *x.lower.shape[1:])], bias


class GlobalMaxPool(MaxPool):
    def forward(self, node, xs):
        x = xs[0]
        return x.amax(dim=tuple(range(3, x.dim())), keepdim=True)

    def _windows(self, node, x, out_spatial):
        q = math.prod(x.lower.shape[3:])
        index = torch.arange(q, device=x.lower.device).reshape(q, 1)
        return index, torch.ones_like(index, dtype=torch.bool)


# ----------------------------------------------------------------------------------------
# sorting: GroupSort / MaxMin / TopK

def _to_groups(t: torch.Tensor, axis: int, g: int, strided: bool) -> torch.Tensor:
    """Move batched dim `axis` last and split it into (groups, g) with the group members last."""
    t = t.movedim(axis, -1)
    k = t.shape[-1] // g
    if strided:
        return t.reshape(*t.shape[:-1], g, k).transpose(-1, -2)
    return t.reshape(*t.shape[:-1], k, g)


def _from_groups(t: torch.Tensor, axis: int, strided: bool) -> torch.Tensor:
    if strided:
        t = t.transpose(-1, -2)
    return t.flatten(-2).movedim(-1, axis)


class GroupSort(MonotoneRule):
    """Sort each group (IBP: sorting both ends is exact, each output is an order statistic)."""

    needs_input_bounds = True
    default_group = 0

    def _layout(self, node, x: torch.Tensor) -> tuple[int, int, bool, bool]:
        axis = sample_axis(int(node.attrs.get("axis", -1)), sample_rank(x))
        g = int(node.attrs.get("group", self.default_group)) or x.shape[axis]
        if x.shape[axis] % g:
            raise ValueError(f"{node.describe()}: axis size {x.shape[axis]} is not a multiple of group {g}")
        return axis, g, bool(node.attrs.get("strided", 0)), bool(node.attrs.get("descending", 1))

    def forward(self, node, xs):
        x = xs[0]
        axis, g, strided, desc = self._layout(node, x)
        y = _to_groups(x, axis, g, strided).sort(dim=-1, descending=desc).values
        return _from_groups(y, axis, strided)

    def backward(self, node, A, xs, is_const):
        x = xs[0]
        axis, g, strided, desc = self._layout(node, x.lower)
        if g > MAX_SORT_GROUP:
            raise NotImplementedError(f"sorting groups of {g} > {MAX_SORT_GROUP} values")
        grouped = Interval(_to_groups(x.lower, axis, g, strided), _to_groups(x.upper, axis, g, strided))
        A_g = _to_groups(A, axis + 1, g, strided)
        if not desc:
            A_g = A_g.flip(-1)                   # ascending = descending read backwards
        diff = xs[1] if len(xs) > 1 and g == 2 else None
        new_A, bias = sort_backward(A_g, grouped, diff)
        return [_from_groups(new_A, axis + 1, strided)] + [None] * (len(xs) - 1), bias


def group_index(node, shape: tuple[int, ...]) -> torch.Tensor:
    """(numel / g, g) flat positions (in a value of unbatched `shape`) of each group of a
    GroupSort / MaxMin node, ordered so that the group's largest value lands in column 0."""
    probe = torch.arange(math.prod(shape)).reshape(1, *shape)
    rule = MaxMin() if node.op == "nnverify.MaxMin" else GroupSort()
    axis, g, strided, desc = rule._layout(node, probe)
    index = _to_groups(probe, axis, g, strided).reshape(-1, g)
    return index if desc else index.flip(-1)


class MaxMin(GroupSort):
    """GroupSort with groups of two: (max, min) of each pair, sum-preserving.

    An optional second input, the pair differences (nnverify.PairDiff of the first), is
    read for its bounds only: it is linear in x, so CROWN bounds it far tighter than the
    difference of the two intervals when the pair is correlated (the usual case after a
    linear layer), and every pair's relaxation uses that.
    """

    default_group = 2


class PairDiff(LinearRule):
    """x[second of pair] - x[first of pair] per MaxMin pair, shaped like the grouped layout
    without its last dimension (the axis moved last, halved). Attributes as MaxMin."""

    def forward(self, node, xs):
        x = xs[0]
        axis = sample_axis(int(node.attrs.get("axis", -1)), sample_rank(x))
        grouped = _to_groups(x, axis, 2, bool(node.attrs.get("strided", 0)))
        return grouped[..., 1] - grouped[..., 0]

    def ibp(self, node, xs):
        x = xs[0]
        axis = sample_axis(int(node.attrs.get("axis", -1)), sample_rank(x.lower))
        strided = bool(node.attrs.get("strided", 0))
        lo, up = _to_groups(x.lower, axis, 2, strided), _to_groups(x.upper, axis, 2, strided)
        return Interval(lo[..., 1] - up[..., 0], up[..., 1] - lo[..., 0])


class TopK(MonotoneRule):
    """ONNX TopK values (constant k): the first k outputs of a full sort along the axis
    (order statistics are monotone in every input, so IBP evaluates the endpoints)."""

    needs_input_bounds = True
    constant_inputs = (1,)

    def _k(self, node, xs) -> int:
        return int_list(xs[1])[0] if len(xs) > 1 and xs[1] is not None else int(node.attrs["k"])

    def forward(self, node, xs):
        x = xs[0]
        axis = sample_axis(int(node.attrs.get("axis", -1)), sample_rank(x))
        largest = bool(node.attrs.get("largest", 1))
        return torch.topk(x, self._k(node, xs), dim=axis, largest=largest, sorted=True).values

    def backward(self, node, A, xs, is_const):
        x = xs[0]
        axis = sample_axis(int(node.attrs.get("axis", -1)), sample_rank(x.lower))
        k = self._k(node, [x.lower] + [v.lower for v in xs[1:]])
        n = x.lower.shape[axis]
        largest = bool(node.attrs.get("largest", 1))
        lo, up = x.lower.movedim(axis, -1), x.upper.movedim(axis, -1)
        A_m = A.movedim(axis + 1, -1)
        if k == 1:   # a max (or min) of n values: the chain is cheaper than a network
            s = 1 if largest else -1
            ends = (lo, up) if largest else (-up, -lo)
            coeffs, bias = max_chain_backward(s * A_m[..., 0], [Interval(ends[0][..., i], ends[1][..., i])
                                                                 for i in range(n)])
            new_A = s * torch.stack(coeffs, -1)
        else:
            if n > MAX_SORT_GROUP:
                raise NotImplementedError(f"TopK over {n} > {MAX_SORT_GROUP} values")
            full = A_m.new_zeros(*A_m.shape[:-1], n)
            full[..., :k] = A_m
            if not largest:
                full = full.flip(-1)
            new_A, bias = sort_backward(full, Interval(lo, up))
        return [new_A.movedim(-1, axis + 1), None][: len(xs)], bias


__all__ = ["Max", "Min", "ReduceMax", "ReduceMin", "MaxPool", "GlobalMaxPool", "GroupSort", "MaxMin",
           "TopK", "PairDiff", "group_index", "pair_backward", "max_chain_backward", "sort_backward"]
