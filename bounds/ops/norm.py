"""LayerNormalization (ONNX opset 17) as one native op.

    y = scale * z + bias,   z = c * r,   c = x - mean(x),   r = 1 / sqrt(var(x) + eps)

with mean and (biased) variance over the trailing axes from `axis` on. c = P x is linear
(P = I - 11^T / n, symmetric); the nonlinear part is the product z = c * r with r shared by
a normalisation group.

Bounds. r lies in [r_lo, r_hi] from an interval of var = mean(c^2); for each c, z = c * r is
then between min(r_lo c, r_hi c) and max(r_lo c, r_hi c): a concave and a convex piecewise-
linear function of c with the kink at 0, bounded by their tangent line (one-sided c) or chord
(c straddling 0). This treats r as independent of c, which is sound, and tight when r's
interval is narrow (perturbations small next to the spread of the features, the usual case
in transformers); wide boxes get loose bounds, never wrong ones. IBP also uses
|z_i| <= sqrt(n - 1): c sums to zero, so c_i^2 <= (n - 1) / n * sum_j c_j^2.
"""
from __future__ import annotations

import math

import torch

from bounds.ops.base import OpRule, sample_axis, sample_rank
from bounds.types import Interval, Relaxation


def _dims(node, x: torch.Tensor) -> tuple[int, ...]:
    """Batched dims normalised over: from `axis` to the last."""
    rank = sample_rank(x)
    start = sample_axis(int(node.attrs.get("axis", -1)), rank)
    return tuple(range(start, rank + 1))


def _affine(xs, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and bias (batched constants) reshaped to broadcast against x (B, *shape)."""
    def fit(t: torch.Tensor) -> torch.Tensor:
        t = t[0]                                   # constants are batched with B = 1
        missing = like.dim() - 1 - t.dim()
        return t.reshape(*([1] * (missing + 1)), *t.shape).to(like.dtype)
    scale = fit(xs[1])
    bias = fit(xs[2]) if len(xs) > 2 and xs[2] is not None and xs[2].numel() else None
    return scale, bias


class LayerNormalization(OpRule):
    needs_input_bounds = True
    constant_inputs = (1, 2)

    def _eps(self, node) -> float:
        return float(node.attrs.get("epsilon", 1e-5))

    def forward(self, node, xs):
        x = xs[0]
        dims = _dims(node, x)
        c = x - x.mean(dim=dims, keepdim=True)
        var = (c * c).mean(dim=dims, keepdim=True)
        scale, bias = _affine(xs, x)
        y = c / torch.sqrt(var + self._eps(node)) * scale
        return y if bias is None else y + bias

    # -- the pieces shared by IBP and CROWN ------------------------------------------------

    def _centred(self, node, x: Interval) -> tuple[Interval, tuple[int, ...], int]:
        """Interval of c = x - mean(x), exact per element for a box."""
        dims = _dims(node, x.lower)
        n = math.prod(x.lower.shape[d] for d in dims)
        mid, rad = x.center, x.radius
        c_mid = mid - mid.mean(dim=dims, keepdim=True)
        # |P| has 1 - 1/n on the diagonal and 1/n elsewhere
        c_rad = rad * (1 - 2 / n) + rad.mean(dim=dims, keepdim=True) if n > 1 else torch.zeros_like(rad)
        return Interval(c_mid - c_rad, c_mid + c_rad), dims, n

    def _inv_std(self, node, c: Interval, dims: tuple[int, ...]) -> Interval:
        """Interval of r = 1 / sqrt(mean(c^2) + eps) (one value per normalisation group)."""
        lo, up = c.lower, c.upper
        sq_hi = torch.maximum(lo * lo, up * up)
        sq_lo = torch.where((lo > 0) | (up < 0), torch.minimum(lo * lo, up * up), torch.zeros_like(lo))
        eps = self._eps(node)
        var_lo = sq_lo.mean(dim=dims, keepdim=True)
        var_hi = sq_hi.mean(dim=dims, keepdim=True)
        return Interval(torch.rsqrt(var_hi + eps), torch.rsqrt(var_lo + eps))

    def _normalised(self, node, x: Interval) -> tuple[Interval, Interval, Interval, int]:
        c, dims, n = self._centred(node, x)
        r = self._inv_std(node, c, dims)
        prods = [c.lower * r.lower, c.lower * r.upper, c.upper * r.lower, c.upper * r.upper]
        lo = torch.stack(prods).amin(0)
        up = torch.stack(prods).amax(0)
        cap = math.sqrt(max(n - 1, 0))
        return Interval(lo.clamp(min=-cap), up.clamp(max=cap)), c, r, n

    def ibp(self, node, xs):
        x = xs[0]
        z, _, _, _ = self._normalised(node, x)
        consts = [x.lower] + [v.lower if v is not None else None for v in xs[1:]]
        scale, bias = _affine(consts, x.lower)
        lo = torch.minimum(z.lower * scale, z.upper * scale)
        up = torch.maximum(z.lower * scale, z.upper * scale)
        if bias is not None:
            lo, up = lo + bias, up + bias
        return Interval(lo, up)

    def relax_product(self, c: Interval, r: Interval) -> Relaxation:
        """Linear bounds in c of z = c * r for any r in [r.lower, r.upper] (r >= 0)."""
        lc, uc = c.lower, c.upper
        rl, ru = r.lower.expand_as(lc), r.upper.expand_as(lc)
        pos, neg = lc >= 0, uc <= 0
        width = torch.where(pos | neg, torch.ones_like(lc), uc - lc)
        # straddling: chords of min(rl c, ru c) (below) and max(rl c, ru c) (above)
        low_slope = (rl * uc - ru * lc) / width
        low_icpt = ru * lc - low_slope * lc
        up_slope = (ru * uc - rl * lc) / width
        up_icpt = rl * lc - up_slope * lc
        zero = torch.zeros_like(lc)
        lw = torch.where(pos, rl, torch.where(neg, ru, low_slope))
        lb = torch.where(pos | neg, zero, low_icpt)
        uw = torch.where(pos, ru, torch.where(neg, rl, up_slope))
        ub = torch.where(pos | neg, zero, up_icpt)
        return Relaxation(lw, lb, uw, ub)

    def inv_std_lines(self, node, c: Interval, dims: tuple[int, ...], n: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Linear bounds a_L·c + b_L <= r(c) <= a_U·c + b_U on the box of c (per group).

        f(t) = (t + eps)^-1/2 is decreasing and convex. Below: q = mean(c^2) <= U(c), the
        secants of the c_i^2, so r >= f(U(c)), convex in c, >= its tangent at the centre.
        Above: q >= T(c), the tangent of q at the centre, and q >= var_lo, so r <= f(p)
        with p = max(T(c), var_lo) in [a, b]; f(p) <= f(a) + f'(b)(p - a) (f' increasing),
        and that line, decreasing, only grows when p is replaced by T(c) <= p.
        """
        eps = self._eps(node)
        f = lambda t: torch.rsqrt(t + eps)                       # noqa: E731
        df = lambda t: -0.5 * torch.rsqrt(t + eps) ** 3          # noqa: E731
        lc, uc, c0 = c.lower, c.upper, c.center
        mean = lambda t: t.mean(dim=dims, keepdim=True)          # noqa: E731
        s = lc + uc
        U0 = mean(s * c0 - lc * uc)
        a_L = df(U0) * s / n
        b_L = f(U0) - df(U0) * mean(s * c0)
        base = -mean(c0 * c0)                                     # T(c) = mean(2 c0 c) + base
        t_lo = mean(torch.minimum(2 * c0 * lc, 2 * c0 * uc)) + base
        t_hi = mean(torch.maximum(2 * c0 * lc, 2 * c0 * uc)) + base
        var_lo = self._var_lower(c, dims)
        lo_p, hi_p = torch.maximum(t_lo, var_lo), torch.maximum(t_hi, var_lo)
        m = df(hi_p)
        a_U = m * 2 * c0 / n
        b_U = f(lo_p) + m * (base - lo_p)
        return a_L, b_L, a_U, b_U

    def _var_lower(self, c: Interval, dims: tuple[int, ...]) -> torch.Tensor:
        lo, up = c.lower, c.upper
        sq_lo = torch.where((lo > 0) | (up < 0), torch.minimum(lo * lo, up * up), torch.zeros_like(lo))
        return sq_lo.mean(dim=dims, keepdim=True)

    def _linear_r(self, node, A_z: torch.Tensor, c: Interval, dims: tuple[int, ...], n: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower bound of A_z·z as A_c·c + bias per group: z_i = c_i r by the average of the
        two McCormick planes (slope r_mid on c_i, c_mid_i on r), then r by its linear bounds
        in c. First-order exact: tight on small boxes."""
        a_L, b_L, a_U, b_U = self.inv_std_lines(node, c, dims, n)
        r = self._inv_std(node, c, dims)
        rl = torch.maximum(r.lower, b_L + torch.minimum(a_L * c.lower, a_L * c.upper).sum(dim=dims, keepdim=True))
        ru = torch.minimum(r.upper, b_U + torch.maximum(a_U * c.lower, a_U * c.upper).sum(dim=dims, keepdim=True))
        ru = torch.maximum(ru, rl)             # rounding could cross them on point boxes
        lc, uc = c.lower, c.upper
        r_mid = (rl + ru) / 2
        beta_l = -(lc * rl + uc * ru) / 2
        beta_u = -(lc * ru + uc * rl) / 2
        A_dims = tuple(d + 1 for d in dims)
        pos, neg = A_z.clamp(min=0), A_z.clamp(max=0)
        kappa = (A_z * _rows(c.center)).sum(dim=A_dims, keepdim=True)          # coefficient on r
        k_pos, k_neg = kappa.clamp(min=0), kappa.clamp(max=0)
        A_c = A_z * _rows(r_mid) + k_pos * _rows(a_L) + k_neg * _rows(a_U)
        bias = (pos * _rows(beta_l) + neg * _rows(beta_u)).sum(dim=A_dims, keepdim=True)
        bias = bias + k_pos * _rows(b_L) + k_neg * _rows(b_U)
        return A_c, bias

    def _constant_r(self, node, A_z: torch.Tensor, c: Interval, dims: tuple[int, ...]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same with r only known to lie in its interval (relax_product): zeroth order,
        but better than _linear_r when the box is wide and r's linear bounds are poor."""
        relax = self.relax_product(c, self._inv_std(node, c, dims))
        pos, neg = A_z.clamp(min=0), A_z.clamp(max=0)
        A_c = pos * _rows(relax.lw) + neg * _rows(relax.uw)
        bias = (pos * _rows(relax.lb) + neg * _rows(relax.ub)).sum(dim=tuple(d + 1 for d in dims), keepdim=True)
        return A_c, bias

    def backward(self, node, A, xs, is_const):
        """Both relaxations of z, per normalisation group and spec row the one whose bound
        over the input box is higher (each group's term is a valid bound on its own)."""
        x = xs[0]
        c, dims, n = self._centred(node, x)
        consts = [x.lower] + [v.lower if v is not None else None for v in xs[1:]]
        scale, bias = _affine(consts, x.lower)
        total = A.new_zeros(A.shape[:2])
        if bias is not None:
            total = total + (A * bias.unsqueeze(1)).reshape(*A.shape[:2], -1).sum(-1)
        A_z = A * scale.unsqueeze(1)
        A_dims = tuple(d + 1 for d in dims)
        options = [self._linear_r(node, A_z, c, dims, n), self._constant_r(node, A_z, c, dims)]
        local = []
        for A_c, b in options:      # the group's lower bound over the input box
            A_x = A_c - A_c.mean(dim=A_dims, keepdim=True)
            local.append(b + torch.minimum(A_x * _rows(x.lower), A_x * _rows(x.upper)).sum(dim=A_dims, keepdim=True))
        first = local[0] >= local[1]
        A_c = torch.where(first, options[0][0], options[1][0])
        group_bias = torch.where(first, options[0][1], options[1][1])
        total = total + group_bias.reshape(*A.shape[:2], -1).sum(-1)
        A_x = A_c - A_c.mean(dim=A_dims, keepdim=True)          # P^T = P
        return [A_x] + [None] * (len(xs) - 1), total


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, *shape) -> (B, 1, *shape), to meet coefficients (B, S, *shape)."""
    return t.unsqueeze(1)


__all__ = ["LayerNormalization"]
