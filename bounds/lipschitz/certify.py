"""The certificate: fix the multipliers, compute in float64 the smallest constant they prove.

LipSDP asks for multipliers T_i (one quadratic constraint per activation layer) and rho with

    q(v) = |W_l h_l|^2 - rho |x|^2 + sum_i QC_i(W_{i-1} h_{i-1}, h_i; T_i) <= 0   for all v,

v = (x, h_1, ..., h_l). Each QC_i(z, h) = z'P_i z + 2 z'R_i h - h'Q_i h is >= 0 on every pair
of activation increments, so q <= 0 gives |dy|^2 <= rho |dx|^2. The matrix of q is block
tridiagonal; eliminating h_l, h_{l-1}, ... by Schur complements leaves -rho I + K on x:

    S_l = D_l,  S_{i-1} = D_{i-1} - B_i S_i^{-1} B_i'  (each -S_i > 0 required),
    D_i = -Q_i + W_i'P_{i+1}W_i (P_{l+1} = I),  D_0 = W_0'P_1W_0,  B_i = W_{i-1}'R_i,

and the smallest rho the multipliers prove is lambda_max(K). For l-infinity, rho|x|^2 becomes
sum_k gamma_k x_k^2 <= (sum gamma) |x|_inf^2. This module repeats none of the solver's code on
purpose: it is the independent check of whatever the solver (or a user) hands in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bounds.lipschitz.chain import DTYPE, Activation, Chain
from bounds.lipschitz.dag import Dag

#: relative slack against rounding: -S_i must stay positive definite after subtracting
#: this fraction of its norm, and the final constant is raised by this fraction
ROUNDING_SLACK = 1e-12


@dataclass(frozen=True)
class Multipliers:
    """layers[i][k]: multipliers of piece k of activation layer i: (E,) for elementwise
    pieces (>= 0), (G, 2) for group pieces (lambda1 >= 0, lambda2 free; sort pieces only).
    `gamma` (n_inputs,) is used by the l-infinity certificate (rho is always recomputed)."""

    layers: tuple[tuple[torch.Tensor, ...], ...]
    gamma: torch.Tensor | None = None

    def scaled(self, factors: list[float], gamma_factor: float = 1.0) -> "Multipliers":
        layers = tuple(tuple(m * f for m in ms) for ms, f in zip(self.layers, factors))
        gamma = None if self.gamma is None else self.gamma * gamma_factor
        return Multipliers(layers, gamma)


@dataclass(frozen=True)
class Certificate:
    value: float          # the certified Lipschitz constant (math.inf when the multipliers prove nothing)
    squared: float        # rho (l2) or sum(gamma) + n * shift (l-infinity)
    reason: str = ""      # why the multipliers failed, when value is inf


def qc_matrices(act: Activation, mult: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, R, Q) of one layer: QC(z, h) = z'Pz + 2z'Rh - h'Qh >= 0 for increments."""
    n = act.size
    P = torch.zeros(n, n, dtype=DTYPE)
    R = torch.zeros(n, n, dtype=DTYPE)
    Q = torch.zeros(n, n, dtype=DTYPE)
    if len(mult) != len(act.pieces):
        raise ValueError(f"{len(mult)} multiplier tensors for {len(act.pieces)} activation pieces")
    for piece, m in zip(act.pieces, mult):
        m = m.to(DTYPE)
        if not piece.is_group:
            # 2 (h - a z)(b z - h): slope-restricted in [a, b]
            t = m.clamp(min=0).reshape(-1)
            idx = piece.index
            a, b = piece.lower, piece.upper
            P[idx, idx] += -2 * a * b * t
            R[idx, idx] += (a + b) * t
            Q[idx, idx] += 2 * t
        else:
            # z'Tz - h'Th with T = l1 I + l2 11' per group: |h| <= |z|, and 1'h = 1'z for sorts
            lam1 = m[:, 0].clamp(min=0)
            lam2 = m[:, 1] if piece.sum_preserving else torch.zeros_like(m[:, 1])
            g = piece.index.shape[1]
            blocks = lam1[:, None, None] * torch.eye(g, dtype=DTYPE) + lam2[:, None, None] * torch.ones(g, g, dtype=DTYPE)
            rows = piece.index[:, :, None].expand(-1, g, g)
            cols = piece.index[:, None, :].expand(-1, g, g)
            P.index_put_((rows, cols), blocks, accumulate=True)
            Q.index_put_((rows, cols), blocks, accumulate=True)
    return P, R, Q


def _negdef_factor(S: torch.Tensor) -> torch.Tensor | None:
    """Cholesky factor of -S when -S is safely positive definite, else None."""
    A = -(S + S.T) / 2
    scale = float(A.detach().abs().max()) if A.numel() else 0.0
    if not math.isfinite(scale):
        return None
    margin = ROUNDING_SLACK * max(scale, 1e-300) * A.shape[0]
    L, info = torch.linalg.cholesky_ex(A - margin * torch.eye(A.shape[0], dtype=DTYPE))
    if int(info) != 0:
        return None
    L, info = torch.linalg.cholesky_ex(A)
    return L if int(info) == 0 else None


def reduced_input_form(chain: Chain, mult: Multipliers) -> tuple[torch.Tensor | None, str]:
    """K with q(v) <= 0 for all v  iff  rho I - K >= 0 (or diag(gamma) - K >= 0); None when a
    layer's Schur complement is not negative definite."""
    first = _first_layer_form(chain, mult)
    if first[0] is None:
        return None, first[2]
    P1, Z, _ = first
    W0 = chain.weights[0]
    if Z is None:                                        # no activation layer
        return W0.T @ W0, ""
    Y = Z @ W0
    S = W0.T @ P1 @ W0 + Y.T @ Y
    return (S + S.T) / 2, ""


def input_factor(chain: Chain, mult: Multipliers) -> tuple[torch.Tensor | None, str]:
    """F with K <= F'F (rho = |F|_2^2 certifies the l2 bound), F having at most 2 n_1 rows:
    for a first layer much narrower than the input, this avoids every n_0 x n_0 matrix.
    K = W0'(P1 + Z'Z)W0 <= W0'(P1+ + Z'Z)W0 = F'F with F = [sqrt(P1+) W0; Z W0], where P1 is
    diagonal (elementwise pieces; None is returned for group pieces)."""
    P1, Z, reason = _first_layer_form(chain, mult)
    if P1 is None:
        return None, reason
    if Z is None:
        return chain.weights[0], ""
    d = P1.diagonal()
    if bool((P1 - torch.diag(d)).abs().max() > 0):
        return None, "group pieces in the first layer"
    W0 = chain.weights[0]
    keep = d > 0
    return torch.cat([d[keep].sqrt()[:, None] * W0[keep], Z @ W0]), ""


def _first_layer_form(chain: Chain, mult: Multipliers):
    """(P1, Z, reason): every layer after the first eliminated, so that
    K = W0'(P1 + Z'Z)W0; (None, None, reason) when a Schur complement is not negative
    definite; (0, None, "") for a chain without activations (K = W0'W0)."""
    W = chain.weights
    l = len(chain.activations)
    if len(mult.layers) != l:
        raise ValueError(f"{len(mult.layers)} multiplier layers for {l} activation layers")
    qcs = [qc_matrices(a, m) for a, m in zip(chain.activations, mult.layers)]
    if l == 0:
        return torch.zeros(0), None, ""
    S = W[l].T @ W[l] - qcs[l - 1][2]                     # the output term |W_l h_l|^2
    for i in range(l, 0, -1):
        L = _negdef_factor(S)
        if L is None:
            return None, None, f"the Schur complement of activation layer {i} is not negative definite"
        P_i, R_i, _ = qcs[i - 1]
        Z = torch.linalg.solve_triangular(L, R_i.T, upper=False)    # Y = Z W_{i-1}
        if i == 1:
            return P_i, Z, ""
        Y = Z @ W[i - 1]
        S = W[i - 1].T @ P_i @ W[i - 1] - qcs[i - 2][2] + Y.T @ Y
    raise AssertionError("unreachable")


def dag_reduced_input_form(net: Dag, mult: Multipliers) -> tuple[torch.Tensor | None, str]:
    """reduced_input_form for networks with skip connections.

    The matrix of q is no longer block tridiagonal: layer i's constraint couples its block
    with every block its pre-activation reads (sources[i-1] .. i-1), and the output term
    couples blocks sources[l] .. l. Eliminating h_l, h_{l-1}, ... by Schur complements still
    works; the matrix E being eliminated is dense on the window of blocks from the earliest
    block read by any layer already added up to the current one (two blocks for a chain, where
    this is exactly reduced_input_form)."""
    W = net.weights
    l = len(net.activations)
    if len(mult.layers) != l:
        raise ValueError(f"{len(mult.layers)} multiplier layers for {l} activation layers")
    off = net.offsets
    src = net.sources
    qcs = [qc_matrices(a, m) for a, m in zip(net.activations, mult.layers)]
    lo = src[l]
    Wo = W[l][:, off[lo]:]
    E = Wo.T @ Wo                                          # the output term |W_out v|^2
    for i in range(l, 0, -1):
        P_i, R_i, Q_i = qcs[i - 1]
        new_lo = min(lo, src[i - 1])
        if new_lo < lo:                                    # widen the window to the blocks layer i reads
            pad = off[lo] - off[new_lo]
            E = torch.nn.functional.pad(E, (pad, 0, pad, 0))
            lo = new_lo
        a = off[i] - off[lo]                               # block i starts at row a of the window
        Wi = W[i - 1][:, off[lo]:off[i]]
        E = E.clone()
        E[:a, :a] += Wi.T @ P_i @ Wi
        B = Wi.T @ R_i
        E[:a, a:] += B
        E[a:, :a] += B.T
        E[a:, a:] -= Q_i
        L = _negdef_factor(E[a:, a:])
        if L is None:
            return None, f"the Schur complement of activation layer {i} is not negative definite"
        Y = torch.linalg.solve_triangular(L, E[a:, :a], upper=False)
        E = E[:a, :a] + Y.T @ Y
    if lo > 0:                                             # nothing reads the input
        E = torch.zeros(net.n_inputs, net.n_inputs, dtype=DTYPE)
    return (E + E.T) / 2, ""


def input_form(net: Chain | Dag, mult: Multipliers, norm: float = 2) -> tuple[torch.Tensor | None, str]:
    """The matrix the certificate reads: K with q(v) <= 0 iff rho I - K >= 0 (or
    diag(gamma) - K >= 0); for l2 on a chain whose input is much wider than its first layer,
    F F' (F from input_factor: same top eigenvalue as F'F >= K, no n0 x n0 matrix)."""
    if isinstance(net, Dag):
        return dag_reduced_input_form(net, mult)
    if norm == 2 and net.n_inputs > 2 * net.weights[0].shape[0] + 64:
        F, reason = input_factor(net, mult)
        if F is not None:
            return F @ F.T, ""
        if reason != "group pieces in the first layer":
            return None, reason
    return reduced_input_form(net, mult)


def certify(chain: Chain | Dag, mult: Multipliers, norm: float = 2) -> Certificate:
    """The Lipschitz constant the multipliers prove (l2 -> l2, or l-inf -> l2 for norm=inf)."""
    K, reason = input_form(chain, mult, norm)
    if K is None:
        return Certificate(math.inf, math.inf, reason)
    n = K.shape[0]
    eye = torch.eye(n, dtype=DTYPE)
    # rounding in forming K: sums over up to n_inputs terms (F F' sums over the input)
    margin = ROUNDING_SLACK * (1 + chain.n_inputs / 1000) * float(K.abs().max()) + 1e-300
    if norm == 2:
        rho = max(float(torch.linalg.eigvalsh(K)[-1]), 0.0)
        rho = _confirm(lambda r: r * eye - K, rho * (1 + ROUNDING_SLACK) + margin)
        return Certificate(math.sqrt(rho), rho)
    if mult.gamma is None:
        raise ValueError("the l-infinity certificate needs gamma multipliers")
    gamma = mult.gamma.to(DTYPE).reshape(-1)
    if gamma.numel() != n:
        raise ValueError(f"gamma has {gamma.numel()} entries for {n} inputs")
    # the best uniform shift that makes diag(gamma) + shift I - K positive semidefinite
    shift = max(float(torch.linalg.eigvalsh(K - torch.diag(gamma))[-1]), 0.0)
    shift = shift * (1 + ROUNDING_SLACK) + margin
    shift = _confirm(lambda s: torch.diag(gamma) + s * eye - K, shift)
    # |dy|^2 <= sum_k (gamma_k + shift) dx_k^2 <= sum_k max(gamma_k + shift, 0) |dx|_inf^2
    total = float((gamma + shift).clamp(min=0).sum())
    return Certificate(math.sqrt(total), total)


def _confirm(matrix, value: float) -> float:
    """Raise `value` until matrix(value) passes a Cholesky test (it normally does at once)."""
    for _ in range(60):
        if int(torch.linalg.cholesky_ex(matrix(value))[1]) == 0:
            return value
        value = value * 1.001 + 1e-12
    raise ArithmeticError("the certificate's final Cholesky test keeps failing")


__all__ = ["Multipliers", "Certificate", "certify", "input_form", "qc_matrices", "reduced_input_form", "dag_reduced_input_form",
           "ROUNDING_SLACK"]
