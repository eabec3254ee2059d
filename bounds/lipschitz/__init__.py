"""Lipschitz bounds of networks: LipSDP (slope-restricted activations) and the quadratic
constraints of Pauli et al. for GroupSort / MaxMin / Householder, solved by our own barrier
method and always certified in float64 (certify.py)."""
