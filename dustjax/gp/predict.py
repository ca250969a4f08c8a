"""Prediction from a fitted latent GP: samples, percentiles, extinction maps and dust masses.

After fitting (Dharmawardena et al. 2022, sect. 2.3-2.4) we draw samples of phi on a finer
"prediction grid" with the same bounds, exponentiate them (rho = 10^phi) and report the 16th,
50th and 84th percentiles of the density and of the extinction integrated along each line of
sight (percentiles, not Gaussian errors: sums of log-normal variates are not Gaussian).

Samples are joint through the inducing points (v_s ~ q(v), shared by every cell) plus the
independent conditional variance of each cell, exactly as in the ELBO. The prediction grid is
processed in chunks of whole (l, b) columns, so memory stays at M x (cells per chunk) however
fine the grid.

Dust mass (sect. 7, eq. 9): the optical depth is tau = A ln(10) / 2.5, the dust surface density
tau / kappa with kappa = 26,000 cm^2/g at 547 nm, and

    M_dust = (ln 10 / 2.5) / kappa * D^2 * sum_columns A_tot(l, b) Omega(l, b),

with A_tot the extinction to the far edge of the region of interest, Omega the solid angle of
each column and D = d_max. The gas mass is 124 times the dust mass (Draine 2003). Each sample
of the density gives one mass, whose percentiles are reported.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dustjax.geometry import PC_CM
from dustjax.gp import svgp
from dustjax.gp.grid import LBDGrid
from dustjax.los import apply_star_operator, exclusive_column_integral

KAPPA_547NM_CM2_PER_G = 26_000.0
GAS_TO_DUST = 124.0
MSUN_G = 1.98847e33
PERCENTILES = (16.0, 50.0, 84.0)


def prediction_grid(train_grid: LBDGrid, shape) -> LBDGrid:
    """The training grid's bounds cut into ``shape`` cells; ghost and background cells keep
    the same distance spans (their counts scale with the refinement in distance)."""
    ratio = shape[2] / train_grid.shape[2]
    background = int(round(train_grid.background_cells * ratio))
    ghost = int(round(train_grid.ghost_cells * ratio))
    grid = LBDGrid(
        l_range_deg=train_grid.l_range_deg,
        b_range_deg=train_grid.b_range_deg,
        d_range_pc=train_grid.d_range_pc,
        shape=tuple(shape),
        ghost_cells=ghost,
        background_cells=background,
    )
    return grid


@functools.partial(jax.jit, static_argnames=("link", "num_samples", "nd_total", "roi_end"))
def _column_chunk(
    params, key, eps_inducing, cells_xyz, d_widths, *, link, num_samples, nd_total, roi_end, jitter
):
    """Percentiles of rho and of the extinction to each cell centre for one chunk of columns.

    Returns (rho_pct (3, C, nd), ext_pct (3, C, nd), total extinction samples (S, C)).
    """
    num_cells = cells_xyz.shape[0]
    eps_cells = jax.random.normal(key, (num_samples, num_cells), cells_xyz.dtype)
    phi = svgp.sample_phi(params, cells_xyz, eps_inducing, eps_cells, jitter=jitter)
    rho = svgp.density_from_phi(phi, link).reshape(num_samples, -1, nd_total)
    to_edge = exclusive_column_integral(rho, d_widths)
    to_centre = to_edge + 0.5 * rho * d_widths
    total = to_edge[..., roi_end - 1] + rho[..., roi_end - 1] * d_widths[roi_end - 1]
    q = jnp.asarray(PERCENTILES, cells_xyz.dtype)
    return jnp.percentile(rho, q, axis=0), jnp.percentile(to_centre, q, axis=0), total


def predict_maps(
    params,
    grid: LBDGrid,
    *,
    link="log10",
    jitter=1e-6,
    num_samples=100,
    seed=0,
    max_chunk_cells=2**20 // 4,
    progress=True,
):
    """Percentile cubes of density and extinction on ``grid`` and dust-mass samples.

    Returns a dict of numpy arrays: ``density_pct`` and ``extinction_pct`` of shape
    ``(3, nl, nb, nd_total)`` (16/50/84th percentiles; mag/pc and mag, extinction to the cell
    centres), ``total_extinction_pct`` ``(3, nl, nb)`` (to d_max), ``dust_mass_msun`` and
    ``gas_mass_msun`` sample arrays ``(num_samples,)``.
    """
    from tqdm.auto import tqdm

    dtype = params["mean"].dtype
    nl, nb, nd_total = grid.full_shape
    m = params["inducing_points"].shape[0]
    key = jax.random.key(seed)
    key_u, key_cells = jax.random.split(key)
    eps_inducing = jax.random.normal(key_u, (num_samples, m), dtype)
    xyz = grid.cell_centres_xyz().reshape(nl * nb, nd_total, 3)
    d_widths = jnp.asarray(grid.d_widths_pc(), dtype)
    roi_end = grid.ghost_cells + grid.shape[2]
    cols_per_chunk = max(1, min(nl * nb, max_chunk_cells // nd_total))
    # Keep every chunk the same shape (one compilation): pad the last one with copies.
    num_chunks = -(-nl * nb // cols_per_chunk)
    rho_pct, ext_pct, totals = [], [], []
    for i in tqdm(range(num_chunks), desc="GP predict", disable=not progress, leave=False):
        start = i * cols_per_chunk
        idx = np.minimum(np.arange(start, start + cols_per_chunk), nl * nb - 1)
        cells = jnp.asarray(xyz[idx].reshape(-1, 3), dtype)
        r, e, t = _column_chunk(
            params,
            jax.random.fold_in(key_cells, i),
            eps_inducing,
            cells,
            d_widths,
            link=link,
            num_samples=num_samples,
            nd_total=nd_total,
            roi_end=roi_end,
            jitter=jnp.asarray(jitter, dtype),
        )
        n_valid = min(cols_per_chunk, nl * nb - start)
        rho_pct.append(np.asarray(r)[:, :n_valid])
        ext_pct.append(np.asarray(e)[:, :n_valid])
        totals.append(np.asarray(t)[:, :n_valid])
    rho_pct = np.concatenate(rho_pct, axis=1).reshape(3, nl, nb, nd_total)
    ext_pct = np.concatenate(ext_pct, axis=1).reshape(3, nl, nb, nd_total)
    totals = np.concatenate(totals, axis=1).reshape(num_samples, nl, nb)
    dust = dust_mass_msun(totals, grid)
    return dict(
        density_pct=rho_pct,
        extinction_pct=ext_pct,
        total_extinction_pct=np.percentile(totals, PERCENTILES, axis=0),
        dust_mass_msun=dust,
        gas_mass_msun=GAS_TO_DUST * dust,
    )


def dust_mass_msun(total_extinction, grid: LBDGrid, kappa_cm2_per_g=KAPPA_547NM_CM2_PER_G):
    """Eq. 9: dust mass (M_sun) from the extinction to d_max, ``(..., nl, nb)`` mag."""
    distance_cm = grid.d_range_pc[1] * PC_CM
    omega = grid.column_solid_angle_sr()
    tau_sum = (math.log(10.0) / 2.5) * np.sum(np.asarray(total_extinction) * omega, axis=(-2, -1))
    return tau_sum * distance_cm**2 / kappa_cm2_per_g / MSUN_G


def predict_star_extinctions(
    params,
    grid: LBDGrid,
    flat_index,
    partial_pc,
    *,
    link="log10",
    jitter=1e-6,
    num_samples=64,
    seed=1,
    star_chunk=262_144,
):
    """Percentiles ``(3, num_stars)`` of the model extinction of stars on the training grid."""
    dtype = params["mean"].dtype
    cells = jnp.asarray(grid.cell_centres_xyz(), dtype)
    model = svgp.SVGPModel(link=link, num_samples=num_samples, max_log10_density=None)
    density = _density_samples(
        params, jax.random.key(seed), cells, grid.full_shape, model, jnp.asarray(jitter, dtype)
    )
    d_widths = jnp.asarray(grid.d_widths_pc(), dtype)
    flat_index = np.asarray(flat_index)
    partial_pc = np.asarray(partial_pc)
    out = []
    for start in range(0, len(flat_index), star_chunk):
        sl = slice(start, start + star_chunk)
        idx = jnp.asarray(flat_index[sl])
        out.append(
            np.asarray(
                _star_percentiles(density, idx, jnp.asarray(partial_pc[sl], dtype), d_widths)
            )
        )
    return np.concatenate(out, axis=1)


_density_samples = jax.jit(svgp.density_samples, static_argnums=(3, 4))


@jax.jit
def _star_percentiles(density, flat_index, partial_pc, d_widths):
    """16/50/84th percentiles of the model extinction of a chunk of stars. The density samples
    are an argument, not a closed-over constant: XLA would otherwise fold the column integral
    at compile time on the host (seconds to tens of seconds at the paper's size)."""
    ext = apply_star_operator(density, flat_index, partial_pc, d_widths)
    return jnp.percentile(ext, jnp.asarray(PERCENTILES, density.dtype), axis=0)


def percentile_summary(samples) -> dict[str, float]:
    p16, p50, p84 = np.percentile(np.asarray(samples), PERCENTILES)
    return dict(p16=float(p16), p50=float(p50), p84=float(p84))
