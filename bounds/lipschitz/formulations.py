"""LipSDP as a linear matrix inequality in low-rank form, ready for the barrier solver.

The quadratic form q(v) of certify.py is written as

    M(y) = M0 + sum_r y[var_r] * c_r * d_r d_r'      (want M(y) <= 0, i.e. N(y) = -M(y) >= 0)

where every "direction" d_r lives on the blocks (h_{i-1}, h_i) of one activation layer i and
is made of a unit vector e_k (the neuron's output) and/or the weight row w_k (its
pre-activation z_k = w_k' h_{i-1}):

* slope-restricted neuron in [a, b]: 2(h - a z)(b z - h) = u'Cu with u = (h, z) and
  C = [[-2, a+b], [a+b, -2ab]]; C's two eigenvectors give two directions;
* group of g neurons, lambda1: sum z_m^2 - h_m^2 (2g directions, coefficients +1 / -1);
* sort group, lambda2 (free sign): (sum z_m)^2 - (sum h_m)^2 (2 directions);
* rho (l2): -|x|^2 (unit directions of the input block); gamma_k (l-inf): -x_k^2.

Methods: "neuron" gives every neuron / group its own variable, "layer" one per piece of a
layer. Exact reductions applied here: every weight matrix is divided by a power of two near
its norm (the value and the certificate are unchanged: multipliers scale back exactly), and
for l2 the first weight matrix is replaced by W0 V (its right singular vectors), which has
the same Gram eigenvalues, so the input block has min(n0, n1) dimensions instead of n0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bounds.lipschitz.certify import Multipliers
from bounds.lipschitz.chain import DTYPE, Chain
from bounds.lipschitz.dag import Dag

METHODS = ("neuron", "layer")


@dataclass
class Atoms:
    """The directions of one activation layer i, in factor form.

    Factors: z_k = w_k' h_{i-1} (k < n_i; the rows of `W`) and h_k (the unit vectors of block
    i). Direction r is d_r = sum_f U[f, r] factor_f, with U sparse (a direction combines the
    z and h of one neuron or one group). The input block's atoms (rho / gamma) have W None and
    the unit vectors of block 0 as factors.
    """

    block: int
    W: torch.Tensor | None     # (n_i, n_{i-1}) pre-activation rows, or None (input block)
    U: torch.Tensor            # sparse (n_factors, R): z factors first, then h factors
    coef: torch.Tensor         # (R,)
    var: torch.Tensor          # (R,) int64 variable index
    src: int = -1              # first block W reads (W's columns: blocks src..block-1); -1: block-1

    @property
    def first(self) -> int:
        """The first block this atom set touches."""
        if self.W is None:
            return self.block
        return self.block - 1 if self.src < 0 else self.src

    @property
    def n_z(self) -> int:
        return 0 if self.W is None else self.W.shape[0]

    @property
    def couples(self) -> bool:
        """True when some direction mixes a z factor and an h factor (then blocks i-1 and i
        are coupled in N; MaxMin / GroupSort layers keep them apart)."""
        if self.W is None:
            return False
        U = self.U.coalesce()
        rows, cols = U.indices()
        has_z = torch.zeros(U.shape[1], dtype=torch.bool).index_fill_(0, cols[rows < self.n_z], True)
        has_h = torch.zeros(U.shape[1], dtype=torch.bool).index_fill_(0, cols[rows >= self.n_z], True)
        return bool((has_z & has_h).any())

    def __post_init__(self) -> None:
        # every pair of entries of one column of U: C(y)[f1, f2] += w_r U[f1, r] U[f2, r]
        U = self.U.coalesce()
        rows, cols = U.indices()
        vals = U.values()
        order = torch.argsort(cols, stable=True)
        rows, cols, vals = rows[order], cols[order], vals[order]
        counts = torch.bincount(cols, minlength=U.shape[1])
        starts = torch.cumsum(counts, 0) - counts
        f1, f2, rr, pv = [], [], [], []
        for k in torch.unique(counts).tolist():
            if k == 0:
                continue
            sel = (counts == k).nonzero().reshape(-1)                   # directions with k entries
            base = starts[sel][:, None] + torch.arange(k)[None, :]       # (m, k) entry positions
            i1 = base[:, :, None].expand(-1, k, k).reshape(-1)
            i2 = base[:, None, :].expand(-1, k, k).reshape(-1)
            f1.append(rows[i1])
            f2.append(rows[i2])
            rr.append(cols[i1])
            pv.append(vals[i1] * vals[i2])
        self._pairs = (torch.cat(f1), torch.cat(f2), torch.cat(rr), torch.cat(pv))

    def weights(self, y: torch.Tensor) -> torch.Tensor:
        """C(y) = U diag(coef * y[var]) U' (dense, n_factors^2): the layer's quadratic form in
        factor coordinates."""
        f1, f2, r, prod = self._pairs
        w = (self.coef * y[self.var])[r] * prod
        n = self.U.shape[0]
        return torch.zeros(n * n, dtype=w.dtype).index_add(0, f1 * n + f2, w).reshape(n, n)

    def blocks(self, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """This layer's share of M(y) on blocks (i-1, i-1), (i-1, i) and (i, i)."""
        C = self.weights(y)
        nz = self.n_z
        if self.W is None:
            return None, None, C
        ll = self.W.T @ C[:nz, :nz] @ self.W
        lh = self.W.T @ C[:nz, nz:]
        return ll, lh, C[nz:, nz:]


@dataclass
class Problem:
    sizes: list[int]                  # block sizes: input (reduced), then hidden layers
    atoms: list[Atoms]
    const: torch.Tensor               # M0 restricted to blocks const_src..last
    cost: torch.Tensor                # (V,) objective: 1 on rho / gamma
    positive: torch.Tensor            # (V,) bool: variables that must stay > 0
    layout: list[list[tuple[torch.Tensor, ...]]]   # layer -> piece -> variable indices to unpack
    objective_vars: torch.Tensor      # indices of rho (one) or gamma (n0)
    norm: float
    factors: list[float]              # multiplier scale per layer back to the original chain
    objective_factor: float           # rho / gamma scale back to the original chain
    const_src: int = -1               # first block M0 covers (blocks const_src..last); -1: last only

    @property
    def offsets(self) -> list[int]:
        out = [0]
        for s in self.sizes:
            out.append(out[-1] + s)
        return out

    @property
    def n_vars(self) -> int:
        return int(self.cost.numel())

    def pack(self, mult: Multipliers) -> torch.Tensor:
        """The solver's variables from multipliers of the original chain (a warm start; for
        the "layer" method, a piece's shared variable takes the mean of its multipliers)."""
        y = torch.zeros(self.n_vars, dtype=DTYPE)
        count = torch.zeros(self.n_vars, dtype=DTYPE)
        for pieces, ms, f in zip(self.layout, mult.layers, self.factors):
            for idx, m in zip(pieces, ms):
                cols = [m] if m.dim() == 1 else [m[:, 0], m[:, 1]]
                if len(idx) == 2 and idx[1] is idx[0]:   # Householder: no lambda2
                    idx, cols = idx[:1], cols[:1]
                for v, col in zip(idx, cols):
                    y.index_add_(0, v, col.to(DTYPE) / f)
                    count.index_add_(0, v, torch.ones_like(col, dtype=DTYPE))
        if self.norm != 2 and mult.gamma is not None:
            y[self.objective_vars] = mult.gamma.to(DTYPE) / self.objective_factor
            count[self.objective_vars] = 1.0
        return y / count.clamp(min=1.0)

    def unpack(self, y: torch.Tensor) -> Multipliers:
        """Multipliers of the ORIGINAL chain from the solver's variables."""
        layers = []
        for pieces, f in zip(self.layout, self.factors):
            ms = []
            for idx in pieces:
                if len(idx) == 1:
                    ms.append(y[idx[0]] * f)
                else:
                    ms.append(torch.stack([y[idx[0]], y[idx[1]]], -1) * f)
            layers.append(tuple(ms))
        gamma = None
        if self.norm != 2:
            gamma = y[self.objective_vars] * self.objective_factor
        return Multipliers(tuple(layers), gamma)


def _pow2(x: float) -> float:
    return 2.0 ** round(math.log2(x)) if x > 0 else 1.0


def _layer_maps(net: Chain | Dag) -> list[tuple[torch.Tensor, int]]:
    """(matrix, first block read) of every pre-activation map and of the output map k
    (k = 0..l): the matrix reads the blocks src..k side by side."""
    if isinstance(net, Chain):
        return [(w, k) for k, w in enumerate(net.weights)]
    off = net.offsets
    return [(w[:, off[s]:], s) for w, s in zip(net.weights, net.sources)]


def build(chain: Chain | Dag, method: str = "neuron", norm: float = 2) -> Problem:
    """The low-rank LMI of LipSDP-`method` for the chain or the network with skips (norm 2 or inf)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got '{method}'")
    if norm not in (2, math.inf):
        raise ValueError(f"norm must be 2 or inf, got {norm}")
    maps = _layer_maps(chain)
    srcs = [s for _, s in maps]
    l = len(chain.activations)
    n0 = chain.n_inputs
    block_sizes = [n0] + [a.size for a in chain.activations]
    # exact rescaling by powers of two: h_j = c_j h~_j (c_0 = 1) and z_k = c_k z~_k keep every
    # quadratic constraint homogeneous; map k becomes W_k diag(c_src..c_k) / c_{k+1}, with
    # c_{k+1} a power of two near that matrix's norm (for a chain, c_i = s_0 ... s_{i-1})
    c = [1.0]
    W = []
    for k, (w, src) in enumerate(maps):
        scale = torch.cat([torch.full((block_sizes[j],), c[j], dtype=DTYPE) for j in range(src, k + 1)])
        ws = w * scale
        c.append(_pow2(float(torch.linalg.matrix_norm(ws, 2))) if ws.numel() else 1.0)
        W.append(ws / c[-1])
    S2 = c[-1] ** 2                               # the output's scale S
    factors = [S2 / c[i] ** 2 for i in range(1, l + 1)]
    # l2: only the row space of the maps that read x matters (the rest of x only adds
    # -rho |x_perp|^2 <= 0), so the input block shrinks to its dimension when that is smaller
    readers = [k for k in range(l + 1) if srcs[k] == 0]
    rows = sum(W[k].shape[0] for k in readers)
    if norm == 2 and n0 > rows:
        _, _, Vh = torch.linalg.svd(torch.cat([W[k][:, :n0] for k in readers]), full_matrices=False)
        for k in readers:
            W[k] = torch.cat([W[k][:, :n0] @ Vh.T, W[k][:, n0:]], 1)
        n0 = Vh.shape[0]
    sizes = [n0] + [a.size for a in chain.activations]

    nv = 0
    atoms: list[Atoms] = []
    positive: list[torch.Tensor] = []
    layout: list[list[tuple[torch.Tensor, ...]]] = []

    def new_vars(count: int, pos: bool) -> torch.Tensor:
        nonlocal nv
        idx = torch.arange(nv, nv + count)
        nv += count
        positive.append(torch.full((count,), pos))
        return idx

    # objective block: rho (one variable, all input directions) or gamma (one per input)
    if norm == 2:
        obj = new_vars(1, True)
        var0 = obj.expand(n0).clone()
    else:
        obj = new_vars(n0, True)
        var0 = obj.clone()
    eye = torch.sparse_coo_tensor(torch.arange(n0).expand(2, n0), torch.ones(n0, dtype=DTYPE), (n0, n0),
                                  check_invariants=False)
    atoms.append(Atoms(0, None, eye.coalesce(), -torch.ones(n0, dtype=DTYPE), var0))

    for i, act in enumerate(chain.activations, start=1):
        n = act.size
        rows: list[torch.Tensor] = []             # factor index of each entry of U
        cols: list[torch.Tensor] = []             # direction index
        vals: list[torch.Tensor] = []
        coefs: list[torch.Tensor] = []
        vars_: list[torch.Tensor] = []
        R = 0

        def add(factor: torch.Tensor, value: torch.Tensor, count: int, coef: torch.Tensor, var: torch.Tensor) -> None:
            """`count` new directions; factor/value (count, k): k entries each."""
            nonlocal R
            k = factor.shape[1]
            rows.append(factor.reshape(-1))
            cols.append((R + torch.arange(count))[:, None].expand(count, k).reshape(-1))
            vals.append(value.reshape(-1).to(DTYPE))
            coefs.append(coef.expand(count).to(DTYPE))
            vars_.append(var)
            R += count

        pieces_layout: list[tuple[torch.Tensor, ...]] = []
        for piece in act.pieces:
            if not piece.is_group:
                idx = piece.index
                E = idx.numel()
                v = new_vars(E, True) if method == "neuron" else new_vars(1, True).expand(E)
                a, b = piece.lower, piece.upper
                # 2 (h - a z)(b z - h) = u'Cu with u = (h, z); one direction per eigenvector
                C = torch.tensor([[-2.0, a + b], [a + b, -2.0 * a * b]], dtype=DTYPE)
                lam, V = torch.linalg.eigh(C)
                for p in range(2):
                    factor = torch.stack([idx, n + idx], 1)                       # (z_k, h_k)
                    value = torch.tensor([V[1, p], V[0, p]], dtype=DTYPE).expand(E, 2)
                    add(factor, value, E, lam[p], v)
                pieces_layout.append((v,))
            else:
                G, g = piece.index.shape
                v1 = new_vars(G, True) if method == "neuron" else new_vars(1, True).expand(G)
                flat = piece.index.reshape(-1, 1)
                vg = v1.repeat_interleave(g)
                one = torch.ones(G * g, 1, dtype=DTYPE)
                add(flat, one, G * g, torch.tensor(1.0), vg)                      # + z_m^2
                add(n + flat, one, G * g, torch.tensor(-1.0), vg)                 # - h_m^2
                if piece.sum_preserving:
                    v2 = new_vars(G, False) if method == "neuron" else new_vars(1, False).expand(G)
                    ones = torch.ones(G, g, dtype=DTYPE)
                    add(piece.index, ones, G, torch.tensor(1.0), v2)              # + (sum z)^2
                    add(n + piece.index, ones, G, torch.tensor(-1.0), v2)         # - (sum h)^2
                    pieces_layout.append((v1, v2))
                else:
                    pieces_layout.append((v1, None))  # type: ignore[arg-type]
        U = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals),
                                    (2 * n, R), check_invariants=False).coalesce()
        atoms.append(Atoms(i, W[i - 1], U, torch.cat(coefs), torch.cat(vars_), srcs[i - 1]))
        layout.append(pieces_layout)

    cost = torch.zeros(nv, dtype=DTYPE)
    cost[obj] = 1.0
    const = W[l].T @ W[l]
    problem = Problem(sizes, atoms, const, cost, torch.cat(positive), layout, obj, norm, factors, S2, srcs[l])
    _fix_householder_layout(problem)
    return problem


def _fix_householder_layout(problem: Problem) -> None:
    """Householder pieces have no lambda2: unpack them as (lambda1, 0)."""
    for pieces in problem.layout:
        for k, idx in enumerate(pieces):
            if len(idx) == 2 and idx[1] is None:
                pieces[k] = (idx[0], idx[0])   # value ignored: certify zeroes lambda2 of non-sorts


def assemble(problem: Problem, y: torch.Tensor) -> torch.Tensor:
    """N(y) = -M(y), dense (sum of sizes)^2."""
    off = problem.offsets
    n = off[-1]
    N = torch.zeros(n, n, dtype=DTYPE)
    c0 = off[-2] if problem.const_src < 0 else off[problem.const_src]
    N[c0:, c0:] -= problem.const
    for at in problem.atoms:
        ll, lh, hh = at.blocks(y)
        b0, b1 = off[at.block], off[at.block + 1]
        N[b0:b1, b0:b1] -= hh
        if ll is not None:
            a0, a1 = off[at.first], off[at.block]
            N[a0:a1, a0:a1] -= ll
            N[a0:a1, b0:b1] -= lh
            N[b0:b1, a0:a1] -= lh.T
    return N


__all__ = ["Atoms", "Problem", "build", "assemble", "METHODS"]
