"""Convolution, transposed convolution, padding and average pooling (all linear).

Max pooling lives with the other piecewise-linear selections in bounds.ops.minmax."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bounds.ops.base import LinearRule, int_list, sample_rank
from bounds.types import Interval

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def spatial_pads(node, x_spatial: list[int], kernel: list[int], strides: list[int],
                 dilations: list[int]) -> list[int]:
    """ONNX pads [b1..bn, e1..en] after resolving auto_pad."""
    n = len(kernel)
    auto = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_b, pads_e = [], []
        for size, k, s, d in zip(x_spatial, kernel, strides, dilations):
            out = math.ceil(size / s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            pads_b.append(small if auto == "SAME_UPPER" else big)
            pads_e.append(big if auto == "SAME_UPPER" else small)
        return pads_b + pads_e
    if auto == "VALID":
        return [0] * (2 * n)
    return list(node.attrs.get("pads", [0] * (2 * n)))


def torch_pad_arg(pads: list[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] for the trailing n dims -> F.pad's reversed (b, e) pairs."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def merge_batch(x: torch.Tensor, channel_rank: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, N, C, *spatial) -> (B*N, C, *spatial); returns the leading dims to restore."""
    lead = tuple(x.shape[: x.dim() - channel_rank])
    return x.reshape(-1, *x.shape[x.dim() - channel_rank:]), lead


class Conv(LinearRule):
    constant_inputs = (1, 2)

    def _conv(self, node, x, w, b):
        n = w.dim() - 2
        strides = list(node.attrs.get("strides", [1] * n))
        dil = list(node.attrs.get("dilations", [1] * n))
        pads = spatial_pads(node, list(x.shape[-n:]), list(w.shape[2:]), strides, dil)
        flat, lead = merge_batch(x, n + 1)
        if pads[:n] == pads[n:]:
            padding = pads[:n]
        else:
            flat, padding = F.pad(flat, torch_pad_arg(pads)), [0] * n
        y = _CONV[n](flat, w, b, stride=strides, padding=padding, dilation=dil,
                     groups=node.attrs.get("group", 1))
        return y.reshape(*lead, *y.shape[1:])

    def forward(self, node, xs):
        w = xs[1][0]
        b = xs[2][0] if len(xs) > 2 and xs[2] is not None else None
        return self._conv(node, xs[0], w, b)

    def backward(self, node, A, xs, is_const):
        """The transposed convolution applied to A directly: the generic vector-Jacobian
        product would run a forward and a backward convolution per call."""
        if not is_const[1] or (len(xs) > 2 and not is_const[2]) or is_const[0]:
            return super().backward(node, A, xs, is_const)
        w = xs[1].lower[0].to(A.dtype)
        n = w.dim() - 2
        in_shape = xs[0].lower.shape[1:]                       # (N, C_in, *spatial)
        strides = list(node.attrs.get("strides", [1] * n))
        dil = list(node.attrs.get("dilations", [1] * n))
        spatial = list(in_shape[-n:])
        pads = spatial_pads(node, spatial, list(w.shape[2:]), strides, dil)
        B, S = A.shape[:2]
        out_spatial = list(A.shape[-n:])
        flat = A.reshape(-1, *A.shape[-(n + 1):])
        padded = [size + pads[i] + pads[i + n] for i, size in enumerate(spatial)]
        extra = [p - ((o - 1) * s + d * (k - 1) + 1)
                 for p, o, s, d, k in zip(padded, out_spatial, strides, dil, w.shape[2:])]
        if any(e < 0 or e >= max(s, d) for e, s, d in zip(extra, strides, dil)):
            return super().backward(node, A, xs, is_const)
        grad = _CONV_T[n](flat, w, None, stride=strides, padding=0, output_padding=extra,
                          groups=node.attrs.get("group", 1), dilation=dil)
        index = [slice(None), slice(None)] + [slice(pads[i], pads[i] + spatial[i]) for i in range(n)]
        grad = grad[tuple(index)]
        new_A = grad.reshape(B, S, *in_shape)
        if len(xs) > 2 and xs[2] is not None:
            b = xs[2].lower[0].to(A.dtype).reshape(-1, *([1] * n))
            bias = (A * b).flatten(2).sum(-1)
        else:
            bias = A.new_zeros(B, S)
        return [new_A, None, None][: len(xs)], bias

    def ibp(self, node, xs):
        w = xs[1].lower[0]
        b = xs[2].lower[0] if len(xs) > 2 else None
        mid = self._conv(node, xs[0].center, w, b)
        rad = self._conv(node, xs[0].radius, w.abs(), None)
        return Interval(mid - rad, mid + rad)


class Pad(LinearRule):
    constant_inputs = (1, 2, 3)

    def forward(self, node, xs):
        x = xs[0]
        rank = sample_rank(x)
        pads = int_list(xs[1]) if len(xs) > 1 and xs[1] is not None else list(node.attrs.get("pads"))
        value = float(xs[2].reshape(-1)[0]) if len(xs) > 2 and xs[2] is not None and xs[2].numel() else float(node.attrs.get("value", 0.0))
        if len(xs) > 3 and xs[3] is not None:  # opset 18 axes input
            axes = [a % rank for a in int_list(xs[3])]
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[a + rank] = pads[i], pads[i + len(axes)]
            pads = full
        mode = node.attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        first = next((i for i in range(rank) if pads[i] or pads[i + rank]), rank)
        trailing = pads[first:rank] + pads[rank + first:]
        if not trailing:
            return x
        arg = torch_pad_arg(trailing)
        if mode == "constant":
            return F.pad(x, arg, value=value)
        torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
        # these modes are separable: pad one axis at a time (torch pads at most 3 dims at once)
        for axis in range(first, rank):
            if pads[axis] or pads[axis + rank]:
                moved = x.movedim(axis + 1, -1)
                out = F.pad(moved.reshape(-1, 1, moved.shape[-1]), [pads[axis], pads[axis + rank]], mode=torch_mode)
                x = out.reshape(*moved.shape[:-1], out.shape[-1]).movedim(-1, axis + 1)
        return x


def _window_sum(t: torch.Tensor, kernel: list[int], strides: list[int], ceil: bool) -> torch.Tensor:
    """Sum over each pooling window (no implicit padding); 1-D goes through the 2-D pool."""
    if len(kernel) == 1:
        y = F.avg_pool2d(t.unsqueeze(-2), [1, kernel[0]], [1, strides[0]], ceil_mode=ceil, divisor_override=1)
        return y.squeeze(-2)
    return _AVG[len(kernel)](t, kernel, strides, ceil_mode=ceil, divisor_override=1)


def _drop_padding_windows(y: torch.Tensor, sizes: list[int], kernel: list[int], strides: list[int],
                          dil: list[int], pads: list[int]) -> torch.Tensor:
    """ceil_mode: ONNX ignores windows that start in the right padding (torch, handed an
    explicitly padded tensor, cannot tell padding from data and keeps them)."""
    n = len(kernel)
    for i in range(n):
        span = sizes[i] + pads[i] + pads[i + n] - ((kernel[i] - 1) * dil[i] + 1)
        out = -(-span // strides[i]) + 1
        if (out - 1) * strides[i] >= sizes[i] + pads[i]:
            out -= 1
        dim = y.dim() - n + i
        if y.shape[dim] > out:
            y = y.narrow(dim, 0, out)
    return y


class AveragePool(LinearRule):
    def forward(self, node, xs):
        x = xs[0]
        kernel = list(node.attrs["kernel_shape"])
        n = len(kernel)
        strides = list(node.attrs.get("strides", [1] * n))
        pads = spatial_pads(node, list(x.shape[-n:]), kernel, strides, [1] * n)
        flat, lead = merge_batch(x, n + 1)
        ceil = bool(node.attrs.get("ceil_mode", 0))
        padded = F.pad(flat, torch_pad_arg(pads)) if any(pads) else flat
        total = _window_sum(padded, kernel, strides, ceil)
        ones = torch.ones_like(flat[:1, :1])
        if node.attrs.get("count_include_pad", 0):
            mask = F.pad(ones, torch_pad_arg(pads), value=1.0) if any(pads) else ones
        else:
            mask = F.pad(ones, torch_pad_arg(pads)) if any(pads) else ones
        count = _window_sum(mask, kernel, strides, ceil)  # windows cut by ceil_mode count less
        y = total / count
        if ceil:
            y = _drop_padding_windows(y, list(x.shape[-n:]), kernel, strides, [1] * n, pads)
        return y.reshape(*lead, *y.shape[1:])


class GlobalAveragePool(LinearRule):
    def forward(self, node, xs):
        x = xs[0]
        dims = tuple(range(3, x.dim()))
        return x.mean(dim=dims, keepdim=True)


class ConvTranspose(LinearRule):
    """ONNX ConvTranspose (strides, dilations, group, pads / auto_pad / output_shape,
    output_padding): the full transposed convolution, extended by output_padding and cropped
    by the pads. Linear: the generic vector-Jacobian backward applies."""

    constant_inputs = (1, 2)

    def _pads(self, node, in_spatial: list[int], kernel: list[int], strides: list[int],
              dil: list[int], out_pad: list[int]) -> list[int]:
        n = len(kernel)
        full = [s * (i - 1) + op + (k - 1) * d + 1
                for i, k, s, d, op in zip(in_spatial, kernel, strides, dil, out_pad)]
        auto = node.attrs.get("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        target = node.attrs.get("output_shape")
        if target is None and auto in ("SAME_UPPER", "SAME_LOWER"):
            target = [i * s for i, s in zip(in_spatial, strides)]
        if target is None:
            return list(node.attrs.get("pads", [0] * (2 * n)))
        target = list(target)[-n:]
        total = [f - t for f, t in zip(full, target)]
        if auto == "SAME_UPPER":
            return [t // 2 for t in total] + [t - t // 2 for t in total]
        return [t - t // 2 for t in total] + [t // 2 for t in total]

    def _conv_t(self, node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        n = w.dim() - 2
        kernel = list(w.shape[2:])
        strides = list(node.attrs.get("strides", [1] * n))
        dil = list(node.attrs.get("dilations", [1] * n))
        out_pad = list(node.attrs.get("output_padding", [0] * n))
        pads = self._pads(node, list(x.shape[-n:]), kernel, strides, dil, out_pad)
        if any(p < 0 for p in pads):
            raise NotImplementedError("ConvTranspose with negative pads")
        flat, lead = merge_batch(x, n + 1)
        y = _CONV_T[n](flat, w, None, stride=strides, padding=0, dilation=dil, groups=node.attrs.get("group", 1))
        if any(out_pad):   # positions past the last kernel reach: only the bias lands there
            y = F.pad(y, torch_pad_arg([0] * n + out_pad))
        index = [slice(None), slice(None)] + [slice(pads[i], y.shape[2 + i] - pads[i + n]) for i in range(n)]
        y = y[tuple(index)]
        if b is not None:
            y = y + b.reshape(-1, *([1] * n))
        return y.reshape(*lead, *y.shape[1:])

    def forward(self, node, xs):
        b = xs[2][0] if len(xs) > 2 and xs[2] is not None else None
        return self._conv_t(node, xs[0], xs[1][0], b)

    def ibp(self, node, xs):
        w = xs[1].lower[0]
        b = xs[2].lower[0] if len(xs) > 2 and xs[2] is not None else None
        mid = self._conv_t(node, xs[0].center, w, b)
        rad = self._conv_t(node, xs[0].radius, w.abs(), None)
        return Interval(mid - rad, mid + rad)
