"""The ARD radial basis function kernel of the latent GP (Dharmawardena et al. 2022, eq. 2).

    k(x1, x2) = alpha^2 exp(-1/2 (x1 - x2)^T gamma^-2 (x1 - x2))

on heliocentric Cartesian positions (pc), with ``gamma = diag(gamma_x, gamma_y, gamma_z)`` the
three scale lengths (pc) and ``alpha`` the amplitude of phi = log10(rho) in dex. (The paper's
"scale factor" is GPyTorch's outputscale, a variance; we parameterise its square root so that the
initial value reads directly as "typical deviation from the mean in dex", sect. 2.4.)

Kernels are plain functions of the positive hyperparameters; the variational model keeps their
logarithms as free parameters.
"""

from __future__ import annotations

import jax.numpy as jnp


def scaled_sq_dist(x1, x2, scale_lengths):
    """sum_k ((x1_k - x2_k) / gamma_k)^2 for ``(N, 3)`` x ``(M, 3)`` -> ``(N, M)``.

    Written as a broadcast difference (not |a|^2 + |b|^2 - 2ab) so it never goes negative and
    keeps full precision for nearby points; XLA fuses it into one pass.
    """
    a = x1 / scale_lengths
    b = x2 / scale_lengths
    diff = a[:, None, :] - b[None, :, :]
    return jnp.sum(diff * diff, axis=-1)


def rbf(x1, x2, scale_lengths, amplitude):
    """ARD RBF Gram matrix ``(N, M)`` (eq. 2); amplitude in dex, scale lengths and x in pc."""
    return amplitude**2 * jnp.exp(-0.5 * scaled_sq_dist(x1, x2, scale_lengths))


def rbf_diag(x, amplitude):
    """The prior variance k(x, x) = alpha^2 at every point ``(N,)``."""
    return jnp.full(x.shape[:1], amplitude**2, dtype=x.dtype)
