"""Conv's explicit transposed-convolution backward equals the generic vector-Jacobian product."""
from __future__ import annotations

import itertools

import pytest
import torch

from bounds.graph.ir import Node
from bounds.ops.base import LinearRule
from bounds.ops.conv import Conv
from bounds.types import Interval

CASES = list(itertools.product([1, 2], [1, 2, 3], [1, 2], ["sym", "asym", "same"], [1, 2], [True, False]))


@pytest.mark.parametrize("n,stride,dil,pads,group,bias", CASES)
def test_conv_backward_matches_autograd(n, stride, dil, pads, group, bias):
    torch.manual_seed(stride * 7 + dil)
    rule, k, cin, cout = Conv(), 3, 4, 6
    spatial = [9, 8][:n]
    attrs = {"strides": [stride] * n, "dilations": [dil] * n, "group": group}
    if pads == "sym":
        attrs["pads"] = [1] * n * 2
    elif pads == "asym":
        attrs["pads"] = [0] * n + [2] * n
    else:
        attrs["auto_pad"] = "SAME_UPPER"
    node = Node("y", "Conv", ("x", "w", "b"), attrs)
    w = torch.randn(1, cout, cin // group, *[k] * n, dtype=torch.float64)
    b = torch.randn(1, cout, dtype=torch.float64)
    x = torch.randn(2, 1, cin, *spatial, dtype=torch.float64)
    xs = [Interval(x, x), Interval(w, w)] + ([Interval(b, b)] if bias else [])
    out = rule.forward(node, [x, w] + ([b] if bias else []))
    A = torch.randn(2, 3, *out.shape[1:], dtype=torch.float64)
    is_const = [False, True] + ([True] if bias else [])
    (got_A, *_), got_bias = rule.backward(node, A, xs, is_const)
    (ref_A, *_), ref_bias = LinearRule.backward(rule, node, A, xs, is_const)
    assert got_A.shape == ref_A.shape
    assert torch.allclose(got_A, ref_A, atol=1e-9)
    assert torch.allclose(got_bias, ref_bias, atol=1e-9)
