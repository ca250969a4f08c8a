"""Prediction from a fitted latent GP: samples, percentiles, extinction maps and dust masses.

After fitting (Dharmawardena et al. 2022, sect. 2.3-2.4) we draw samples of phi on a finer
"prediction grid" with the same bounds, exponentiate them (rho = 10^phi) and report the 16th,
50th and 84th percentiles of the density and of the extinction integrated along each line of
sight (percentiles, not Gaussian errors: sums of log-normal variates are not Gaussian).

Samples are joint through the inducing points (v_s ~ q(v), shared by every cell) plus the
independent conditional variance of each cell, exactly as in the ELBO. The prediction grid is
processed in chunks of whole (l, b) columns, so memory stays at M x (cells per chunk) however
fine the grid.

Dust mass. The optical depth is tau = A ln(10) / 2.5 and the dust mass per unit optical depth
1 / kappa with kappa = 26,000 cm^2/g at 547 nm. Two numbers are reported:

* the paper's estimate (sect. 7, eq. 9, `dust_mass_msun`; `dust_mass_eq9_msun` in outputs):

      M_eq9 = (ln 10 / 2.5) / kappa * D^2 * sum_columns A_tot(l, b) Omega(l, b),

  with A_tot the extinction to d_max, Omega the solid angle of each column and D = d_max. It
  puts all the dust of a column at d_max (and counts the dust in front of d_min too), so it
  overestimates: by (d_max / d)^2 for dust at distance d (6x for dust at 150-250 pc in a box
  to 500 pc);
* the dust in the box (`dust_mass_in_box_msun`), the volume integral of the density over the
  region-of-interest cells, each a spherical shell segment of volume Omega (d1^3 - d0^3) / 3:

      M_box = (ln 10 / 2.5) / kappa * sum_cells rho Omega (d1^3 - d0^3) / 3.

The gas mass is 124 times the dust mass (Draine 2003). Each sample of the density gives one
mass of each kind, whose percentiles are reported.
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
    """The training grid's bounds cut into ``shape`` cells; the background cells keep their
    distance span (their count scales with the refinement in distance) and the ghost cells are
    the training grid's own.

    Ghost cells are not split: the stars see only the total dust in front of d_min, so the fit
    constrains the training ghost cells and nothing finer; split, their centres move towards
    the Sun, and in log-spherical kernel coordinates (u_3 = d_ref ln(d / d_ref)) a cell at
    12.5 pc lies several radial scale lengths from every inducing point, at the prior: in a
    real-sky fit the split grid over-predicted nearly every held-out star (median error 11.7 %
    instead of 5.2 % with the ghost cells kept; issue 18e, docs/validation.md).
    """
    ratio = shape[2] / train_grid.shape[2]
    background = int(round(train_grid.background_cells * ratio))
    ghost = train_grid.ghost_cells
    grid = LBDGrid(
        l_range_deg=train_grid.l_range_deg,
        b_range_deg=train_grid.b_range_deg,
        d_range_pc=train_grid.d_range_pc,
        shape=tuple(shape),
        ghost_cells=ghost,
        background_cells=background,
    )
    return grid


def refined_grid(train_grid: LBDGrid, factor) -> LBDGrid:
    """The training grid with every region-of-interest cell cut into ``factor`` = (fl, fb, fd)
    cells (`prediction_grid`: the ghost cells kept): the grid through which
    ``predict.star_grid_factor`` integrates the stars' extinctions."""
    factor = tuple(int(f) for f in factor)
    if len(factor) != 3 or min(factor) < 1:
        raise ValueError(f"a grid refinement is three integers >= 1, got {factor}")
    shape = tuple(n * f for n, f in zip(train_grid.shape, factor, strict=True))
    return prediction_grid(train_grid, shape)


@functools.partial(
    jax.jit,
    static_argnames=("link", "num_samples", "nd_total", "roi_start", "roi_end", "num_kept"),
)
def _column_chunk(
    params,
    key,
    eps_inducing,
    cells_xyz,
    d_widths,
    roi_shell_volumes,
    *,
    link,
    num_samples,
    nd_total,
    roi_start,
    roi_end,
    jitter,
    num_kept=0,
):
    """Percentiles of rho and of the extinction to each cell centre for one chunk of columns.

    ``roi_shell_volumes`` ``(nd_total,)``: (d1^3 - d0^3) / 3 (pc^3 per sr) of the region-of-
    interest cells, zero for ghost and background cells.

    Returns a dict: ``rho_pct`` (3, C, nd), ``ext_pct`` (3, C, nd), and per sample (S, C): the
    extinction to d_max ``total``, to d_min ``foreground`` (the ghost cells' dust; 0 without
    them) and ``volume``, sum_roi rho (d1^3 - d0^3) / 3 (mag pc^2 per sr); and ``samples``,
    the first ``num_kept`` density samples (num_kept, C, nd).
    """
    num_cells = cells_xyz.shape[0]
    eps_cells = jax.random.normal(key, (num_samples, num_cells), cells_xyz.dtype)
    phi = svgp.sample_phi(params, cells_xyz, eps_inducing, eps_cells, jitter=jitter)
    rho = svgp.density_from_phi(phi, link).reshape(num_samples, -1, nd_total)
    to_edge = exclusive_column_integral(rho, d_widths)
    to_centre = to_edge + 0.5 * rho * d_widths
    total = to_edge[..., roi_end - 1] + rho[..., roi_end - 1] * d_widths[roi_end - 1]
    column_volume_integral = jnp.sum(rho * roi_shell_volumes, axis=-1)
    q = jnp.asarray(PERCENTILES, cells_xyz.dtype)
    return dict(
        rho_pct=jnp.percentile(rho, q, axis=0),
        ext_pct=jnp.percentile(to_centre, q, axis=0),
        total=total,
        foreground=to_edge[..., roi_start],
        volume=column_volume_integral,
        samples=rho[:num_kept],
    )


def _cells(grid: LBDGrid, kernel_coords) -> np.ndarray:
    """Cell centres ``(num_cells, 3)`` in the kernel's coordinates (None: heliocentric XYZ)."""
    if kernel_coords is None:
        return grid.cell_centres_xyz()
    return kernel_coords.grid_cells(grid)


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
    num_posterior_samples=0,
    kernel_coords=None,
):
    """Percentile cubes of density and extinction on ``grid`` and dust-mass samples.

    Returns a dict of numpy arrays: ``density_pct`` and ``extinction_pct`` of shape
    ``(3, nl, nb, nd_total)`` (16/50/84th percentiles; mag/pc and mag, extinction to the cell
    centres), ``total_extinction_pct`` ``(3, nl, nb)`` (to d_max), ``foreground_pct``
    ``(3, nl, nb)`` (to d_min: the dust of the ghost cells in front of the region of interest,
    zero without ghost cells; mag), and sample arrays
    ``(num_samples,)`` of the dust and gas masses (M_sun): ``dust_mass_eq9_msun`` /
    ``gas_mass_eq9_msun`` the paper's eq. 9, ``dust_mass_in_box_msun`` / ``gas_mass_in_box_msun``
    the volume integral over the region of interest.

    With ``num_posterior_samples`` = K > 0 (at most ``num_samples``) also ``density_samples``
    ``(K, nl, nb, nd_total)`` (mag/pc, float32) and ``foreground_samples`` ``(K, nl, nb)`` (mag):
    K joint posterior draws of the whole grid (draw k shares its inducing-point sample across
    all chunks), from which any integrated quantity's percentiles can be computed.

    ``kernel_coords``: the `dustjax.gp.coords.KernelCoords` of the fit (None: XYZ, the paper);
    build it from the *training* grid so that stars, fit and prediction share one map.
    """
    if not 0 <= num_posterior_samples <= num_samples:
        raise ValueError(
            f"posterior samples to keep ({num_posterior_samples}) must be between 0 and the "
            f"number of prediction samples ({num_samples})"
        )
    from tqdm.auto import tqdm

    dtype = params["mean"].dtype
    nl, nb, nd_total = grid.full_shape
    m = params["inducing_points"].shape[0]
    key = jax.random.key(seed)
    key_u, key_cells = jax.random.split(key)
    eps_inducing = jax.random.normal(key_u, (num_samples, m), dtype)
    xyz = _cells(grid, kernel_coords).reshape(nl * nb, nd_total, 3)
    d_widths = jnp.asarray(grid.d_widths_pc(), dtype)
    roi_end = grid.ghost_cells + grid.shape[2]
    shells = jnp.asarray(roi_shell_volumes(grid), dtype)
    cols_per_chunk = max(1, min(nl * nb, max_chunk_cells // nd_total))
    # Keep every chunk the same shape (one compilation): pad the last one with copies.
    num_chunks = -(-nl * nb // cols_per_chunk)
    parts = []
    for i in tqdm(range(num_chunks), desc="GP predict", disable=not progress, leave=False):
        start = i * cols_per_chunk
        idx = np.minimum(np.arange(start, start + cols_per_chunk), nl * nb - 1)
        cells = jnp.asarray(xyz[idx].reshape(-1, 3), dtype)
        out = _column_chunk(
            params,
            jax.random.fold_in(key_cells, i),
            eps_inducing,
            cells,
            d_widths,
            shells,
            link=link,
            num_samples=num_samples,
            nd_total=nd_total,
            roi_start=grid.ghost_cells,
            roi_end=roi_end,
            jitter=jnp.asarray(jitter, dtype),
            num_kept=int(num_posterior_samples),
        )
        n_valid = min(cols_per_chunk, nl * nb - start)
        out["samples"] = out["samples"].astype(jnp.float32)
        parts.append({k: np.asarray(v)[:, :n_valid] for k, v in out.items()})

    def joined(name, lead):
        return np.concatenate([p[name] for p in parts], axis=1).reshape(lead, nl, nb, -1)

    rho_pct = joined("rho_pct", 3)
    ext_pct = joined("ext_pct", 3)
    totals, foreground, volume = (
        joined(k, num_samples)[..., 0] for k in ("total", "foreground", "volume")
    )
    dust = dust_mass_msun(totals, grid)
    in_box = _mass_from_volume_integral(
        np.sum(volume.astype(np.float64) * grid.column_solid_angle_sr(), axis=(-2, -1))
    )
    extra = {}
    if num_posterior_samples:
        extra = dict(
            density_samples=joined("samples", num_posterior_samples),
            foreground_samples=foreground[:num_posterior_samples],
        )
    return dict(
        **extra,
        density_pct=rho_pct,
        extinction_pct=ext_pct,
        total_extinction_pct=np.percentile(totals, PERCENTILES, axis=0),
        foreground_pct=np.percentile(foreground, PERCENTILES, axis=0),
        dust_mass_eq9_msun=dust,
        gas_mass_eq9_msun=GAS_TO_DUST * dust,
        dust_mass_in_box_msun=in_box,
        gas_mass_in_box_msun=GAS_TO_DUST * in_box,
    )


def dust_mass_msun(total_extinction, grid: LBDGrid, kappa_cm2_per_g=KAPPA_547NM_CM2_PER_G):
    """The paper's eq. 9 estimate (M_sun) from the extinction to d_max, ``(..., nl, nb)`` mag:
    all of a column's dust counted at D = d_max (an overestimate; see the module docstring)."""
    distance_cm = grid.d_range_pc[1] * PC_CM
    omega = grid.column_solid_angle_sr()
    tau_sum = (math.log(10.0) / 2.5) * np.sum(np.asarray(total_extinction) * omega, axis=(-2, -1))
    return tau_sum * distance_cm**2 / kappa_cm2_per_g / MSUN_G


def roi_shell_volumes(grid: LBDGrid) -> np.ndarray:
    """``(nd_total,)``: (d1^3 - d0^3) / 3 (pc^3 per sr) of each region-of-interest distance cell,
    zero for the ghost and background cells (a cell's volume is this times its solid angle)."""
    edges = grid.d_edges_pc()
    shells = (edges[1:] ** 3 - edges[:-1] ** 3) / 3.0
    out = np.zeros_like(shells)
    out[grid.roi_slice] = shells[grid.roi_slice]
    return out


def _mass_from_volume_integral(rho_volume, kappa_cm2_per_g=KAPPA_547NM_CM2_PER_G):
    """M_sun from sum rho V (mag pc^2): (ln 10 / 2.5) / kappa * sum rho V."""
    return (math.log(10.0) / 2.5) * np.asarray(rho_volume) * PC_CM**2 / kappa_cm2_per_g / MSUN_G


def dust_mass_in_box_msun(density, grid: LBDGrid, kappa_cm2_per_g=KAPPA_547NM_CM2_PER_G):
    """The dust in the region of interest (M_sun): the volume integral of ``density``
    ``(..., nl, nb, nd_total)`` (mag/pc) over its cells, each Omega (d1^3 - d0^3) / 3 in volume."""
    volume = grid.column_solid_angle_sr()[:, :, None] * roi_shell_volumes(grid)
    rho_volume = np.sum(np.asarray(density, np.float64) * volume, axis=(-3, -2, -1))
    return _mass_from_volume_integral(rho_volume, kappa_cm2_per_g)


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
    model_error=None,
    kernel_coords=None,
):
    """Percentiles ``(3, num_stars)`` of the model extinction of stars on the training grid.

    ``model_error`` = (f, s) (a fit's learned model error, `svgp.model_error_scales`): each
    sample gets N(0, (f A)^2 + s^2) added, so the percentiles are those of the true extinction
    (what the grid and the GP cannot represent included), not of the model's alone.
    ``kernel_coords``: as in `predict_maps`.
    """
    dtype = params["mean"].dtype
    cells = jnp.asarray(_cells(grid, kernel_coords), dtype)
    model = svgp.SVGPModel(link=link, num_samples=num_samples, max_log10_density=None)
    density = _density_samples(
        params, jax.random.key(seed), cells, grid.full_shape, model, jnp.asarray(jitter, dtype)
    )
    d_widths = jnp.asarray(grid.d_widths_pc(), dtype)
    flat_index = np.asarray(flat_index)
    partial_pc = np.asarray(partial_pc)
    out = []
    noise_key = jax.random.fold_in(jax.random.key(seed), 1)
    for i, start in enumerate(range(0, len(flat_index), star_chunk)):
        sl = slice(start, start + star_chunk)
        idx = jnp.asarray(flat_index[sl])
        partial = jnp.asarray(partial_pc[sl], dtype)
        if model_error is None:
            pct = _star_percentiles(density, idx, partial, d_widths)
        else:
            frac, floor = (jnp.asarray(v, dtype) for v in model_error)
            key = jax.random.fold_in(noise_key, i)
            pct = _star_percentiles_with_error(density, idx, partial, d_widths, key, frac, floor)
        out.append(np.asarray(pct))
    return np.concatenate(out, axis=1)


_density_samples = jax.jit(svgp.density_samples, static_argnums=(3, 4))


@jax.jit
def _star_percentiles(density, flat_index, partial_pc, d_widths):
    """16/50/84th percentiles of the model extinction of a chunk of stars. The density samples
    are an argument, not a closed-over constant: XLA would otherwise fold the column integral
    at compile time on the host (seconds to tens of seconds at the paper's size)."""
    ext = apply_star_operator(density, flat_index, partial_pc, d_widths)
    return jnp.percentile(ext, jnp.asarray(PERCENTILES, density.dtype), axis=0)


@jax.jit
def _star_percentiles_with_error(density, flat_index, partial_pc, d_widths, key, frac, floor):
    """As `_star_percentiles`, each sample plus N(0, (frac A)^2 + floor^2) (the model error)."""
    ext = apply_star_operator(density, flat_index, partial_pc, d_widths)
    scale = jnp.sqrt((frac * ext) ** 2 + floor**2)
    ext = ext + scale * jax.random.normal(key, ext.shape, ext.dtype)
    return jnp.percentile(ext, jnp.asarray(PERCENTILES, density.dtype), axis=0)


def percentile_summary(samples) -> dict[str, float]:
    p16, p50, p84 = np.percentile(np.asarray(samples), PERCENTILES)
    return dict(p16=float(p16), p50=float(p50), p84=float(p84))
