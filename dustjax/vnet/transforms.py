"""Normalisation of extinction and density (Chen, Qin & Li, eqs. 1-2).

E_hat = ln(1 + E)           (eq. 1, E in mag)
rho_hat = 10 ln(1 + rho)    (eq. 2, rho in mag/pc)

Both maps are monotonic and exactly invertible; they bring E (0-50 mag) and rho (0-0.5 mag/pc)
to comparable orders of magnitude for the network.
"""

from __future__ import annotations

import jax.numpy as jnp

DENSITY_SCALE = 10.0


def normalise_extinction(extinction_mag):
    """Eq. 1: E_hat = ln(1 + E)."""
    return jnp.log1p(extinction_mag)


def denormalise_extinction(extinction_hat):
    """Inverse of eq. 1: E = exp(E_hat) - 1."""
    return jnp.expm1(extinction_hat)


def normalise_density(density_mag_per_pc):
    """Eq. 2: rho_hat = 10 ln(1 + rho)."""
    return DENSITY_SCALE * jnp.log1p(density_mag_per_pc)


def denormalise_density(density_hat):
    """Inverse of eq. 2: rho = exp(rho_hat / 10) - 1."""
    return jnp.expm1(density_hat / DENSITY_SCALE)
