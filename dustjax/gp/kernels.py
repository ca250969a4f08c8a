"""The ARD radial basis function kernel of the latent GP (Dharmawardena et al. 2022, eq. 2).

    k(x1, x2) = alpha^2 exp(-1/2 (x1 - x2)^T gamma^-2 (x1 - x2))

on heliocentric Cartesian positions (pc), with ``gamma = diag(gamma_x, gamma_y, gamma_z)`` the
three scale lengths (pc) and ``alpha`` the amplitude of phi = log10(rho) in dex. (The paper's
"scale factor" is GPyTorch's outputscale, a variance; we parameterise its square root so that the
initial value reads directly as "typical deviation from the mean in dex", sect. 2.4.)

Kernels are plain functions of the positive hyperparameters; the variational model keeps their
logarithms as free parameters.

Besides the paper's RBF, the Matern kernels with nu = 3/2 and 5/2 (Rasmussen & Williams 2006,
eq. 4.17), with r the same scaled distance sqrt(sum_k ((x1_k - x2_k) / gamma_k)^2):

    matern32: alpha^2 (1 + sqrt(3) r) exp(-sqrt(3) r)
    matern52: alpha^2 (1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)

Their sample paths are once and twice differentiable (the RBF's infinitely), so a sparse GP with
them can follow the sharper edges of real clouds (issue 18). `gram` picks one by name.
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


SQRT3 = 3.0**0.5
SQRT5 = 5.0**0.5


def _scaled_dist(x1, x2, scale_lengths):
    """r = sqrt(scaled_sq_dist), with a finite gradient at r = 0 (the double-where trick)."""
    d2 = scaled_sq_dist(x1, x2, scale_lengths)
    pos = d2 > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, d2, 1.0)), 0.0)


def matern32(x1, x2, scale_lengths, amplitude):
    """ARD Matern-3/2 Gram matrix ``(N, M)``: alpha^2 (1 + sqrt(3) r) exp(-sqrt(3) r)."""
    a = SQRT3 * _scaled_dist(x1, x2, scale_lengths)
    return amplitude**2 * (1.0 + a) * jnp.exp(-a)


def matern52(x1, x2, scale_lengths, amplitude):
    """ARD Matern-5/2 Gram matrix ``(N, M)``: alpha^2 (1 + sqrt(5) r + 5 r^2/3) exp(-sqrt(5) r)."""
    a = SQRT5 * _scaled_dist(x1, x2, scale_lengths)
    return amplitude**2 * (1.0 + a + a * a / 3.0) * jnp.exp(-a)


KERNELS = {"rbf": rbf, "matern32": matern32, "matern52": matern52}


def gram(name: str, x1, x2, scale_lengths, amplitude):
    """The Gram matrix of the kernel ``name`` (one of `KERNELS`), ``(N, M)``."""
    try:
        fn = KERNELS[name]
    except KeyError:
        raise ValueError(f"kernel must be one of {tuple(KERNELS)}, got {name!r}") from None
    return fn(x1, x2, scale_lengths, amplitude)
