"""bounds.alpha.adam: the fused kernel where torch has one, the same Adam steps either way."""
from __future__ import annotations

import pytest
import torch

from bounds.alpha import adam


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_takes_the_same_steps_as_plain_adam(dtype):
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=gen, dtype=dtype), torch.randn(7, generator=gen, dtype=dtype)]
    target = [torch.randn(5, 3, generator=gen, dtype=dtype), torch.randn(7, generator=gen, dtype=dtype)]
    ours = [p.clone().requires_grad_(True) for p in start]
    plain = [p.clone().requires_grad_(True) for p in start]
    opt_ours, opt_plain = adam(ours, 0.1), torch.optim.Adam(plain, lr=0.1)
    for _ in range(20):
        for params, opt in ((ours, opt_ours), (plain, opt_plain)):
            opt.zero_grad()
            sum(((p - t) ** 2).sum() for p, t in zip(params, target)).backward()
            opt.step()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b, s in zip(ours, plain, start):
        assert not torch.equal(a.detach(), s), "the parameters moved"
        torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol)


def test_adam_accepts_parameter_groups():
    x = torch.zeros(3, requires_grad=True)
    y = torch.zeros(2, requires_grad=True)
    opt = adam([{"params": [x], "lr": 0.5}, {"params": [y]}], 0.1)
    (-(x.sum() + y.sum())).backward()
    opt.step()
    torch.testing.assert_close(x.detach(), torch.full((3,), 0.5))
    torch.testing.assert_close(y.detach(), torch.full((2,), 0.1))
