"""The product of layer norms: the baseline every other bound must beat."""
from __future__ import annotations

import math

import torch

from bounds.lipschitz.certify import ROUNDING_SLACK
from bounds.lipschitz.chain import Activation, Chain
from bounds.lipschitz.composed import Composition, Pooling
from bounds.lipschitz.dag import Dag
from bounds.lipschitz.structured import StructuredAffine


def layer_norm(w: torch.Tensor, norm: float) -> float:
    """Induced norm of one matrix: spectral for l2, largest absolute row sum for l-infinity."""
    if norm == 2:
        return float(torch.linalg.matrix_norm(w, 2))
    return float(w.abs().sum(1).max())


def naive_bound(chain: Chain | Dag | Composition, norm: float = 2) -> float:
    """prod_i |W_i| * prod_i Lip(act_i): l2 -> l2, or l-inf -> l-inf for norm=inf.

    (An l-inf -> l-inf bound also bounds the l-inf -> l2 constant only up to sqrt(outputs),
    so for whole-output l-infinity the SDP and this baseline measure different things; for
    one margin y_i - y_j they coincide.)

    With skip connections: L_0 = 1, L_i = Lip(act_i) sum_j |W_ij| L_j over the blocks j that
    layer i reads (the triangle inequality), and the output likewise."""
    if isinstance(chain, Composition):
        value = 1.0
        for part in chain.parts:
            if isinstance(part, (StructuredAffine, Pooling)):
                value *= part.norm(norm)
            elif isinstance(part, Activation):
                value *= part.lipschitz
            else:
                value *= naive_bound(part, norm)
        return value
    if isinstance(chain, Dag):
        lips = [1.0]
        for i in range(len(chain.weights)):
            total = sum(layer_norm(chain.block(i, j), norm) * lips[j] for j in range(i + 1))
            lips.append(total * (chain.activations[i].lipschitz if i < len(chain.activations) else 1.0))
        return lips[-1] * (1 + ROUNDING_SLACK * (2 * len(chain.weights) + 1))
    value = math.prod(layer_norm(w, norm) for w in chain.weights)
    value *= math.prod(a.lipschitz for a in chain.activations)
    return value * (1 + ROUNDING_SLACK * (len(chain.weights) + 1))


__all__ = ["naive_bound", "layer_norm"]
