"""Optional interior-point path through cvxpy (Clarabel or SCS): small nets and test oracle.

Needs the `sdp` extra (`pip install nnverify[sdp]`). The LMI is the full block-tridiagonal
one of certify.py, written out directly with no reduction, so it checks our own solver
independently. Its multipliers are certified like ours before anything is reported.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from bounds.lipschitz.certify import Certificate, Multipliers, certify
from bounds.lipschitz.chain import DTYPE, Chain
from bounds.lipschitz.dag import Dag


def available() -> bool:
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        return False
    return True


def _layer_qc(cp, act, method: str):
    """cvxpy (P, R, Q) of one layer and the variables per piece."""
    n = act.size
    P = R = Q = np.zeros((n, n))
    variables = []
    for piece in act.pieces:
        if not piece.is_group:
            idx = piece.index.numpy()
            E = len(idx)
            t = cp.Variable(E, nonneg=True) if method == "neuron" else cp.Variable(nonneg=True)
            tv = t if method == "neuron" else t * np.ones(E)
            sel = np.zeros((n, E))
            sel[idx, np.arange(E)] = 1.0
            a, b = piece.lower, piece.upper
            v = sel @ tv
            P = P + cp.diag(-2 * a * b * v)
            R = R + cp.diag((a + b) * v)
            Q = Q + cp.diag(2 * v)
            variables.append(("e", t, E))
        else:
            G, g = piece.index.shape
            l1 = cp.Variable(G, nonneg=True) if method == "neuron" else cp.Variable(nonneg=True)
            l1v = l1 if method == "neuron" else l1 * np.ones(G)
            ind = np.zeros((n, G))
            ind[piece.index.numpy(), np.arange(G)[:, None]] = 1.0
            T = cp.diag(ind @ l1v)
            if piece.sum_preserving:
                l2 = cp.Variable(G) if method == "neuron" else cp.Variable()
                l2v = l2 if method == "neuron" else l2 * np.ones(G)
                T = T + ind @ cp.diag(l2v) @ ind.T
            else:
                l2 = None
            P, Q = P + T, Q + T
            variables.append(("g", (l1, l2), G))
    return P, R, Q, variables


def solve_cvxpy(chain: Chain | Dag, method: str = "neuron", norm: float = 2, solver: str = "CLARABEL",
                **solver_kw) -> tuple[float, Certificate]:
    """(the solver's raw bound, our certificate of its multipliers)."""
    import cvxpy as cp

    if isinstance(chain, Dag):
        return _solve_dag(chain, method, norm, solver, **solver_kw)
    W = [w.numpy() for w in chain.weights]
    l = len(chain.activations)
    layers = [_layer_qc(cp, a, method) for a in chain.activations]
    n = [W[0].shape[1]] + [a.size for a in chain.activations]
    if norm == 2:
        rho = cp.Variable(nonneg=True)
        top = -rho * np.eye(n[0])
        objective = rho
    else:
        gamma = cp.Variable(n[0], nonneg=True)
        top = -cp.diag(gamma)
        objective = cp.sum(gamma)
    Pn = [lay[0] for lay in layers] + [np.eye(W[-1].shape[0])]
    blocks = [[None] * (l + 1) for _ in range(l + 1)]
    for i in range(l + 1):
        diag = W[i].T @ Pn[i] @ W[i]
        diag = diag + (top if i == 0 else -layers[i - 1][2])
        blocks[i][i] = diag
        for j in range(l + 1):
            if abs(i - j) > 1 or i == j:
                if blocks[i][j] is None:
                    blocks[i][j] = np.zeros((n[i], n[j]))
        if i >= 1:
            B = W[i - 1].T @ layers[i - 1][1]
            blocks[i - 1][i] = B
            blocks[i][i - 1] = B.T
    M = cp.bmat(blocks)
    Msym = (M + M.T) / 2
    prob = cp.Problem(cp.Minimize(objective), [Msym << 0])
    prob.solve(solver=solver, **solver_kw)
    if prob.status not in ("optimal", "optimal_inaccurate"):
        raise ArithmeticError(f"cvxpy/{solver} ended with status {prob.status}")
    raw = math.sqrt(max(float(prob.value), 0.0))
    mult_layers = tuple(_values(variables) for (_, _, _, variables) in layers)
    g = None if norm == 2 else torch.as_tensor(gamma.value, dtype=DTYPE)
    return raw, _pull_back(chain, Multipliers(mult_layers, g), method, norm)


def _solve_dag(net: Dag, method: str, norm: float, solver: str, **solver_kw) -> tuple[float, Certificate]:
    """The full (dense) LMI over v = (x, h_1, ..., h_l) of a network with skip connections:
    |W_out v|^2 - rho|x|^2 + sum_i QC_i(F_i v, E_i v) <= 0, F_i = weights[i-1] padded to v."""
    import cvxpy as cp

    off = net.offsets
    N = off[-1]
    layers = [_layer_qc(cp, a, method) for a in net.activations]
    Wo = np.zeros((net.n_outputs, N))
    Wo[:, :net.weights[-1].shape[1]] = net.weights[-1].numpy()
    M = Wo.T @ Wo
    E0 = np.zeros((off[1], N))
    E0[:, :off[1]] = np.eye(off[1])
    if norm == 2:
        rho = cp.Variable(nonneg=True)
        M = M - rho * (E0.T @ E0)
        objective = rho
    else:
        gamma = cp.Variable(off[1], nonneg=True)
        M = M - E0.T @ cp.diag(gamma) @ E0
        objective = cp.sum(gamma)
    for i, (P, R, Q, _) in enumerate(layers, start=1):
        F = np.zeros((net.activations[i - 1].size, N))
        F[:, :off[i]] = net.weights[i - 1].numpy()
        E = np.zeros((net.activations[i - 1].size, N))
        E[:, off[i]:off[i + 1]] = np.eye(net.activations[i - 1].size)
        cross = F.T @ R @ E
        M = M + F.T @ P @ F + cross + cross.T - E.T @ Q @ E
    prob = cp.Problem(cp.Minimize(objective), [(M + M.T) / 2 << 0])
    prob.solve(solver=solver, **solver_kw)
    if prob.status not in ("optimal", "optimal_inaccurate"):
        raise ArithmeticError(f"cvxpy/{solver} ended with status {prob.status}")
    raw = math.sqrt(max(float(prob.value), 0.0))
    mult = Multipliers(tuple(_values(variables) for (_, _, _, variables) in layers),
                       None if norm == 2 else torch.as_tensor(gamma.value, dtype=DTYPE))
    return raw, _pull_back(net, mult, method, norm)


def _values(variables) -> tuple[torch.Tensor, ...]:
    ms = []
    for kind, var, size in variables:
        if kind == "e":
            ms.append(torch.as_tensor(np.broadcast_to(var.value, (size,)).copy(), dtype=DTYPE))
        else:
            l1, l2 = var
            a = np.broadcast_to(l1.value, (size,))
            b = np.broadcast_to(l2.value, (size,)) if l2 is not None else np.zeros(size)
            ms.append(torch.as_tensor(np.stack([a, b], -1), dtype=DTYPE))
    return tuple(ms)


def _pull_back(chain: Chain | Dag, mult: Multipliers, method: str, norm: float) -> Certificate:
    """Interior-point answers sit on the boundary of the LMI: certify them mixed with a
    little of a strictly feasible point (the LMI is convex, so the mix is feasible)."""
    from bounds.lipschitz.formulations import build
    from bounds.lipschitz.solver import initial_point

    cert = certify(chain, mult, norm)
    if math.isfinite(cert.value):
        return cert
    problem = build(chain, method, norm)
    inner = problem.unpack(initial_point(problem))
    for theta in (1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
        layers = tuple(tuple((1 - theta) * a + theta * b for a, b in zip(ms, ns))
                       for ms, ns in zip(mult.layers, inner.layers))
        gamma = None if norm == 2 else (1 - theta) * mult.gamma + theta * inner.gamma
        cert = certify(chain, Multipliers(layers, gamma), norm)
        if math.isfinite(cert.value):
            return cert
    return cert


__all__ = ["available", "solve_cvxpy"]
