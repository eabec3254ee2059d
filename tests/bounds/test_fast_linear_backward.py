"""The shortcut backward steps of reshapes and of products/quotients with a constant, and the
matrix-vector form of the bias terms (bounds.ops.base.row_dot), against the generic rule:
one vector-Jacobian product of the op's forward (LinearRule.backward)."""
from __future__ import annotations

import pytest
import torch

from bounds.graph.ir import Node
from bounds.ops import RULES
from bounds.ops.base import LinearRule, flat_sum, row_dot
from bounds.types import Interval

CASES = [
    # op, variable sample shape, constant sample shape (None: no constant), attrs
    ("Mul", (3, 4, 5), (3, 4, 5), {}),
    ("Mul", (3, 4, 5), (3, 1, 1), {}),       # per channel
    ("Mul", (3, 4, 5), (5,), {}),            # right-aligned broadcast
    ("Mul", (4, 5), (2, 4, 5), {}),          # the constant widens the output
    ("Div", (1, 6, 6), (1, 1, 1), {}),
    ("Div", (7,), (7,), {}),
    ("Flatten", (2, 3, 4), None, {"axis": 1}),
    ("Reshape", (2, 3, 4), (2,), {}),
]


def _point(t: torch.Tensor) -> Interval:
    return Interval(t, t)


@pytest.mark.parametrize("op,var_shape,const_shape,attrs", CASES)
@pytest.mark.parametrize("const_first", [False, True])
def test_shortcut_equals_the_vector_jacobian_product(op, var_shape, const_shape, attrs, const_first) -> None:
    if const_first and op != "Mul":
        pytest.skip("only Mul has its constant on either side")
    g = torch.Generator().manual_seed(len(var_shape) + (const_shape and len(const_shape) or 0))
    x = torch.randn(1, *var_shape, generator=g, dtype=torch.float64)
    xs, is_const = [Interval(x - 1, x + 1)], [False]
    if op == "Reshape":
        xs.append(_point(torch.tensor([[6, 4]])))
        is_const.append(True)
    elif const_shape is not None:
        c = torch.rand(1, *const_shape, generator=g, dtype=torch.float64) + 0.5
        xs.append(_point(c))
        is_const.append(True)
    if const_first:
        xs, is_const = xs[::-1], is_const[::-1]
    rule = RULES[op]
    out_shape = rule.forward(Node("y", op, attrs=attrs), [v.lower for v in xs]).shape[1:]
    node = Node("y", op, inputs=tuple(f"in{i}" for i in range(len(xs))), attrs=attrs, shape=(1, *out_shape))
    A = torch.randn(3, 2, *out_shape, generator=g, dtype=torch.float64)
    fast, fast_bias = rule.backward(node, A, xs, is_const)
    slow, slow_bias = LinearRule.backward(rule, node, A, xs, is_const)
    var = is_const.index(False)
    assert fast[var].shape == slow[var].shape == (3, 2, *var_shape)
    torch.testing.assert_close(fast[var], slow[var])
    torch.testing.assert_close(fast_bias, slow_bias)


@pytest.mark.parametrize("v_shape", [(1, 4, 5), (3, 4, 5), (1, 5), (1, 4, 1)])
def test_row_dot_is_the_flat_sum_of_the_product(v_shape) -> None:
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 6, 4, 5, generator=g, dtype=torch.float64)
    v = torch.randn(*v_shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(row_dot(A, v), flat_sum(A * v.unsqueeze(1)))
    # also on a non-contiguous coefficient tensor (a crop, as conv backward leaves)
    wide = torch.randn(3, 6, 4, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(row_dot(wide[..., 1:6], v), flat_sum(wide[..., 1:6] * v.unsqueeze(1)))


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("ub_shape", ["full", "channel"])
def test_relaxation_backward_matches_the_textbook_sum(per_row, ub_shape):
    """A+ * lw + A- * uw and sum(A+ * lb + A- * ub), for shared and per-row lines, lower lines
    through 0 or not, and an upper offset broadcast over a dimension."""
    from bounds.ops.base import relaxation_backward
    from bounds.types import Relaxation

    g = torch.Generator().manual_seed(1 + per_row)
    B, S, shape = 3, 4, (2, 5)
    A = torch.randn(B, S, *shape, generator=g, dtype=torch.float64)
    rows = (B, S) if per_row else (B,)
    lead = (B, 1) if per_row else (B,)
    lw = torch.rand(*rows, *shape, generator=g, dtype=torch.float64)
    uw = torch.rand(*lead, *shape, generator=g, dtype=torch.float64)
    ub = torch.randn(*lead, *((2, 1) if ub_shape == "channel" else shape), generator=g, dtype=torch.float64)
    lower_offsets = (torch.zeros(*lead, *shape, dtype=torch.float64),
                     torch.randn(*lead, *shape, generator=g, dtype=torch.float64))
    for lb in lower_offsets:
        new_A, bias = relaxation_backward(A, Relaxation(lw, lb, uw, ub))
        widen = (lambda t: t) if per_row else (lambda t: t.unsqueeze(1))
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        assert torch.allclose(new_A, pos * widen(lw) + neg * widen(uw))
        assert torch.allclose(bias, flat_sum(pos * widen(lb) + neg * widen(ub).expand_as(A)))
