"""The V-net's map as a prior, the extinctions as the likelihood: a physics refinement.

The V-net predicts, per cell, a median density and a calibrated 16-84 % band
(`dustjax.vnet.normalisation`); it does not make its map integrate back to the extinctions it
was given (on the real sky the check of fig. 11 fails: `dustjax.vnet.checks`). NNLS
(`dustjax.inversion`) does fit the extinctions, but needs an arbitrary regulariser where they do
not constrain the map. The refinement is the MAP density of the two together,

    min 1/2 sum_n ((A_n rho - E_n) / sigma_n)^2 + 1/2 sum_c ((rho_c - m_c) / s_c)^2, rho >= 0,

with m the V-net's median and s the half-width of its 16-84 % band in mag/pc (a Gaussian prior
per cell, cells independent), solved by FISTA with the prior in its prox
(`dustjax.inversion.solve_with_prior`). Nothing is fitted to the data:

- **catalogue** (`refine_catalog`): the rows are the stars themselves, A_n the exact integral
  from the Sun to star n (`dustjax.inversion.star_operator`), sigma_n = hypot(sigma_E,
  m(star) sigma_d) (the distance error moves E by dE/dd = rho at the star; the same sigma_eff as
  the fig.-11 check), so no gridding bias enters the likelihood;
- **cube** (`refine_cube`, the literature route: an extinction cube at the cell centres): the
  rows are the cells, A = `dustjax.los.los_operator`, sigma_n = hypot(sigma_floor, sigma_rel E_n),
  a stated noise model of the cube (exact cubes want a small floor; choose it on simulations,
  ``tools.sky_heldout --refine``).

Choices, and why: the prior is Gaussian in mag/pc with the band's half-width (the band is
asymmetric in mag/pc; the half-width is its symmetric summary) so the problem stays convex with a
closed-form prox; cells are independent (the V-net gives no covariance). The refined map's own
uncertainty is not computed here (the V-net's band stays the reported one).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from dustjax import inversion
from dustjax.geometry import Region
from dustjax.los import los_operator

# A floor on the prior's sd (mag/pc): a band of zero width (a cell the V-net is sure is empty)
# would pin that cell for good; 1e-7 mag/pc is 1000x below the faintest dust the scores count.
MIN_PRIOR_SD = 1e-7


def prior_from_hat(normalisation, mu_hat, sigma_hat):
    """(m, s) in mag/pc of a V-net output (mu_hat, sigma_hat) in its normalised space: the median
    and the half-width of the 16-84 % band, s >= `MIN_PRIOR_SD`."""
    mu = np.asarray(mu_hat, np.float64)
    sg = np.asarray(sigma_hat, np.float64)
    inv = normalisation.density_inverse
    m = np.maximum(np.asarray(inv(mu, xp=np)), 0.0)
    hi = np.asarray(inv(mu + sg, xp=np))
    lo = np.maximum(np.asarray(inv(mu - sg, xp=np)), 0.0)
    s = np.maximum(0.5 * (hi - lo), MIN_PRIOR_SD)
    return m.astype(np.float32), s.astype(np.float32)


def prior_of_model(hat_model, extinction):
    """(m, s) of `prior_from_hat` for one extinction cube ``(nx, ny, nz)`` (mag) through a model
    with a variance head (`dustjax.vnet.normalisation.ModelPredictor`)."""
    mu, sigma = hat_model.predict_hat(np.asarray(extinction, np.float32)[None])
    if sigma is None:
        raise ValueError("the refinement needs a model with a variance head")
    return prior_from_hat(hat_model.normalisation, np.asarray(mu)[0], np.asarray(sigma)[0])


def _weighted_rows(op, weights):
    lengths = op.lengths_pc * jnp.asarray(weights, jnp.float32).reshape(-1, 1)
    return dataclasses.replace(op, lengths_pc=lengths)


def refine_cube(
    extinction,
    prior_mean,
    prior_sd,
    region: Region,
    *,
    sigma_floor: float = 0.01,
    sigma_rel: float = 0.0,
    num_steps: int = inversion.DEFAULT_STEPS,
) -> np.ndarray:
    """The refined density ``(nx, ny, nz)`` from an extinction cube at the cell centres (mag),
    with noise sigma = hypot(sigma_floor, sigma_rel E) per cell."""
    e = np.maximum(np.asarray(extinction, np.float64), 0.0)
    if e.shape != tuple(region.shape):
        raise ValueError(f"extinction {e.shape} does not match the region {region.shape}")
    if sigma_floor <= 0 or sigma_rel < 0:
        raise ValueError(f"need sigma_floor > 0 and sigma_rel >= 0, got {sigma_floor}, {sigma_rel}")
    w = 1.0 / np.hypot(sigma_floor, sigma_rel * e).reshape(-1)
    op = _weighted_rows(los_operator(region), w)
    data = (e.reshape(-1) * w).reshape(e.shape)
    out = inversion.solve_with_prior(op, data, prior_mean, prior_sd, num_steps=num_steps)
    return np.asarray(out)


def star_sigma(catalog, prior_mean, region: Region) -> np.ndarray:
    """sigma_eff = hypot(sigma_E, m(star) sigma_d) per star (mag), m the prior median (mag/pc)
    in the star's cell (sigma_d 0 when the catalogue has none)."""
    sigma = np.asarray(catalog.sigma_extinction, np.float64)
    if catalog.sigma_distance is None:
        return sigma
    ijk = np.clip(region.cell_index(catalog.xyz_pc), 0, None)  # catalogue stars are inside
    idx = tuple(ijk[:, a] for a in range(3))
    rho = np.asarray(prior_mean, np.float64)[idx]
    return np.hypot(sigma, rho * np.asarray(catalog.sigma_distance, np.float64))


def refine_catalog(
    catalog,
    prior_mean,
    prior_sd,
    region: Region,
    *,
    num_steps: int = inversion.DEFAULT_STEPS,
) -> np.ndarray:
    """The refined density ``(nx, ny, nz)`` from the stars of `catalog` (a
    `dustjax.catalog.StarCatalog`), each weighted by 1 / `star_sigma`."""
    w = 1.0 / star_sigma(catalog, prior_mean, region)
    op = inversion.star_operator(region, catalog.xyz_pc, row_weights=w)
    data = jnp.asarray(np.asarray(catalog.extinction, np.float64) * w, jnp.float32)
    out = inversion.solve_with_prior(op, data, prior_mean, prior_sd, num_steps=num_steps)
    return np.asarray(out)
