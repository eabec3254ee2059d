"""CROWN bounds of single neurons of a convolutional layer over their receptive fields only.

Bounding the neurons of a convolution's output one row each (the intermediate bounds of
CROWN and alpha-CROWN) with dense coefficients costs a transposed convolution over the whole
image per row, yet a neuron depends on a small window of each earlier value: on oval21's
cifar_wide the second convolution's neurons see 4x4 of the first ReLU layer's 16x16 and
10x10 of the 32x32 input. Here each row carries only its window, at its own offset, through
a chain Input -> Conv -> activation -> Conv ... -> target; every per-neuron quantity the
relaxations read (intervals, per-row slopes) is cut to the same windows, and positions that
fall outside a value (the convolutions' zero padding) get zero coefficients. The result equals
the dense pass up to rounding; anything else in the chain (residual adds, pooling, shape ops)
makes `neuron_rows_lower` return None and the caller takes the dense pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bounds.crown import concretize_lower
from bounds.graph.ir import INPUT, Graph, Node
from bounds.ops import RULES
from bounds.ops.base import ActivationRule
from bounds.ops.conv import spatial_pads
from bounds.types import Interval


def conv_chain(graph: Graph, target: str) -> list[Node] | None:
    """The nodes from `target`, a 2-D convolution, back to the input (target first) when they
    form a chain of such convolutions with constant weights and unary activations; else None."""
    node = graph[target]
    if node.op != "Conv" or len(node.shape) != 4:
        return None
    chain = []
    while node.op != INPUT:
        variable = [n for n in node.inputs if not graph[n].is_constant]
        if len(variable) != 1 or variable[0] != node.inputs[0]:
            return None
        if node.op == "Conv":
            weight = graph[node.inputs[1]]
            if not weight.is_constant or weight.value.dim() != 4 or len(node.shape) != 4:
                return None
        elif not isinstance(RULES.get(node.op), ActivationRule):
            return None
        chain.append(node)
        node = graph[node.inputs[0]]
    if node.name != graph.inputs[0]:
        return None
    return chain


def _windows(x: torch.Tensor, batch: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
             h: int, w: int) -> torch.Tensor:
    """x (Bx, ..., H, W) -> (N, M, h, w), M the product of the middle dims: for each n the
    window of x[batch[n]] whose corner is (top[n], left[n]), zero where it reaches outside x."""
    H, W = x.shape[-2:]
    x = x.reshape(x.shape[0], -1, H, W)
    pad_h = max(0, -int(top.min()), int(top.max()) + h - H)
    pad_w = max(0, -int(left.min()), int(left.max()) + w - W)
    padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h))
    rows = (top + pad_h).unsqueeze(1) + torch.arange(h, device=x.device)      # (N, h)
    cols = (left + pad_w).unsqueeze(1) + torch.arange(w, device=x.device)     # (N, w)
    picked = padded[batch[:, None, None], :, rows[:, :, None], cols[:, None, :]]   # (N, h, w, C)
    return picked.permute(0, 3, 1, 2)


def _inside(top: torch.Tensor, left: torch.Tensor, h: int, w: int, H: int, W: int) -> torch.Tensor:
    """(N, 1, 1, h, w) mask of the window positions that lie inside an H x W value."""
    rows = top.unsqueeze(1) + torch.arange(h, device=top.device)
    cols = left.unsqueeze(1) + torch.arange(w, device=top.device)
    ok = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
    return ok[:, None, None]


def neuron_rows_lower(graph: Graph, target: str, idx: torch.Tensor, bounds: dict[str, Interval],
                      alphas: dict[str, torch.Tensor] | None = None, batch: int = 1) -> torch.Tensor | None:
    """Lower bounds of +z_i and -z_i for the neurons idx of `target`, as backward_lower gives
    them for C = [e_idx; -e_idx]: (B, 2k), the first k the lower bounds of z_idx, the last k
    those of -z_idx. idx (k,) flat indices shared by the batch, or (B, k) per sub-problem.
    `alphas` as in backward_lower, (B|1, 2k|1, *shape) per activation; `batch`: the least B
    of the result (the caller's batch where no tensor here has it). None when the target is
    not at the end of a convolution chain (conv_chain) or an activation's input has no interval."""
    chain = conv_chain(graph, target)
    if chain is None or any(n.op != "Conv" and n.inputs[0] not in bounds for n in chain):
        return None
    box = bounds[graph.inputs[0]]
    device = box.lower.device
    dtype = box.lower.dtype
    batch_sizes = [box.lower.shape[0]] + [v.shape[0] for v in (alphas or {}).values()]
    batch_sizes += [bounds[n.inputs[0]].lower.shape[0] for n in chain if n.op != "Conv"]
    B = max(batch_sizes + [idx.shape[0] if idx.dim() == 2 else 1, batch])
    idx = idx.to(device).reshape(-1, idx.shape[-1]).expand(B, -1)
    k = idx.shape[1]
    S = 2 * k
    channels, H, W = graph[target].shape[1:]
    flat = torch.cat([idx, idx], dim=1).reshape(-1)                          # (N,), N = B * 2k
    N = flat.numel()
    sample = torch.arange(B, device=device).repeat_interleave(S)
    row = torch.arange(S, device=device).repeat(B)
    sign = torch.cat([torch.ones(k, dtype=dtype, device=device),
                      -torch.ones(k, dtype=dtype, device=device)]).repeat(B)
    A = torch.zeros(N, 1, channels, 1, 1, dtype=dtype, device=device)
    A[torch.arange(N, device=device), 0, flat // (H * W), 0, 0] = sign
    top, left = (flat % (H * W)) // W, flat % W
    h = w = 1
    bias = torch.zeros(N, dtype=dtype, device=device)
    for node in chain:
        source = graph[node.inputs[0]]
        if node.op == "Conv":
            weight = graph[node.inputs[1]].value.to(device, dtype)
            strides = list(node.attrs.get("strides", [1, 1]))
            dilations = list(node.attrs.get("dilations", [1, 1]))
            in_h, in_w = source.shape[-2:]
            pads = spatial_pads(node, [in_h, in_w], list(weight.shape[2:]), strides, dilations)
            if len(node.inputs) > 2:
                b = graph[node.inputs[2]].value.to(device, dtype)
                bias = bias + (A[:, 0] * b.reshape(1, -1, 1, 1)).sum((1, 2, 3))
            A = F.conv_transpose2d(A[:, 0], weight, stride=strides, dilation=dilations,
                                   groups=node.attrs.get("group", 1)).unsqueeze(1)
            top, left = top * strides[0] - pads[0], left * strides[1] - pads[1]
            h, w = A.shape[-2:]
            A = A * _inside(top, left, h, w, in_h, in_w)
            continue
        x = bounds[source.name]
        x_batch = sample if x.lower.shape[0] > 1 else torch.zeros_like(sample)
        interval = Interval(_windows(x.lower, x_batch, top, left, h, w), _windows(x.upper, x_batch, top, left, h, w))
        alpha = None
        if alphas is not None and node.name in alphas:
            a = alphas[node.name]                       # (B|1, 2k, *per-neuron extra, *shape)
            a_row = row if a.shape[1] == S else torch.zeros_like(row)
            a_batch = sample * a.shape[1] + a_row if a.shape[0] > 1 else a_row
            extra = a.shape[2:a.dim() - len(node.shape)]
            alpha = _windows(a.flatten(0, 1), a_batch, top, left, h, w)
            alpha = alpha.reshape(N, 1, *extra, -1, h, w)
            A_in, b = RULES[node.op].backward(node, A, [interval], [False], alpha=alpha)
        else:
            A_in, b = RULES[node.op].backward(node, A, [interval], [False])
        A = A_in[0]
        bias = bias + b[:, 0]
    box_batch = sample if box.lower.shape[0] > 1 else torch.zeros_like(sample)
    window_box = Interval(_windows(box.lower, box_batch, top, left, h, w), _windows(box.upper, box_batch, top, left, h, w))
    bias = bias + concretize_lower(A, window_box)[:, 0]
    return bias.reshape(B, S)
