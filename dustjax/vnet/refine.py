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

**Correlated prior errors** (``corr_length`` > 0, issue 17's catalogue route): the V-net's errors
are smooth, and an independent prior lets 30,000 noisy stars pull single cells wherever the band
is wide. With ``corr_length`` = ell (cells) the prior is N(m, S K S), S = diag(s), K = nu I +
(1 - nu) G, G the Gaussian correlation exp(-d^2 / (2 ell^2)) of cell distance d and nu the
``nugget``, so K has unit diagonal (each cell keeps its band) and the data move the map by smooth
corrections. In u = (rho - m) / s the problem is

    min 1/2 |W A (m + S u) - W E|^2 + 1/2 u^T K^-1 u,  u >= -m / s (rho >= 0, separable),

solved by projected FISTA with K^-1 applied by FFT on a grid padded by 4 ell per axis: the
circulant covariance on the padded grid, marginalised to the box, is exactly the stationary K
(the padding cells are free, unconstrained by data or positivity, and wrapped pairs are >= 4 ell
apart, correlation < e^-8). Step 1 / (L_AS + 1 / lambda_min(K)), lambda_min >= nu. nugget = 1
is the independent prior (same objective; tests). Choose ell and nu on held-out simulations, never
on the real cube (``tools.refine_heldout``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from dustjax import blocked_operator, inversion
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


def ensemble_prior(means, sds) -> tuple[np.ndarray, np.ndarray]:
    """The prior (m, s) of an ensemble of networks, each member's (m_i, s_i) from
    `prior_from_hat`: m the members' mean, s^2 the mean of their s_i^2 plus the variance of their
    m_i (an equal-weight mixture's first two moments; their disagreement widens the prior)."""
    m = np.asarray(means, np.float64)
    v = np.square(np.asarray(sds, np.float64))
    if m.ndim < 2 or m.shape != v.shape or m.shape[0] < 1:
        raise ValueError(f"means and sds must be stacks of equal shape (members first), got "
                         f"{m.shape} and {v.shape}")  # fmt: skip
    s = np.maximum(np.sqrt(v.mean(0) + m.var(0)), MIN_PRIOR_SD)
    return m.mean(0).astype(np.float32), s.astype(np.float32)


def prior_of_model(hat_model, extinction):
    """(m, s) of `prior_from_hat` for one extinction cube ``(nx, ny, nz)`` (mag) through a model
    with a variance head (`dustjax.vnet.normalisation.ModelPredictor`)."""
    mu, sigma = hat_model.predict_hat(np.asarray(extinction, np.float32)[None])
    if sigma is None:
        raise ValueError("the refinement needs a model with a variance head")
    return prior_from_hat(hat_model.normalisation, np.asarray(mu)[0], np.asarray(sigma)[0])


# ---- the correlated prior ---------------------------------------------------------------------
# The catalogue route's setting chosen on held-out simulations (docs/validation.md, issue 17:
# ell 1-2 cells with nugget 0.1-0.3 tie at pooled skill 0.91-0.92; the V-net's errors measured
# there have a nugget of 0.26): corr_length 2 cells, nugget 0.3.
DEFAULT_NUGGET = 0.3
DEFAULT_CORR_LENGTH = 2.0
PAD_LENGTHS = 4.0  # the FFT grid is padded by this many correlation lengths per axis


def parse_corr_settings(spec: str) -> tuple[tuple, ...]:
    """``"ELL:NU[:auto],..."`` (the tools' --refine_corr) -> ((ell, nu[, "auto"]), ...)."""
    return tuple(
        tuple(x if x == "auto" else float(x) for x in v.split(":"))
        for v in spec.split(",")
        if v.strip()
    )


def parse_grid_factors(spec) -> tuple[int, ...]:
    """``"1,3"`` (the tools' --refine_grid) -> (1, 3): the refinement grids, each a factor of the
    map's cells per axis (`refine_catalog_fine`); empty -> (1,)."""
    factors = tuple(grid_factor(v) for v in str(spec).split(",") if v.strip())
    return factors or (1,)


def setting_label(setting, factor: int = 1) -> str:
    """The name of a catalogue refinement in the tools' reports: ``corr_ELL_NU[_TAU][_xF]``."""
    ell, nu, *tau = setting
    return (f"corr_{ell:g}_{nu:g}" + (f"_{tau[0]}" if tau else "")
            + (f"_x{int(factor)}" if int(factor) > 1 else ""))  # fmt: skip


def padded_shape(shape, corr_length: float) -> tuple[int, ...]:
    """The FFT grid: each axis padded by ceil(4 ell) cells (and to an even size)."""
    pad = int(math.ceil(PAD_LENGTHS * float(corr_length)))
    return tuple(int(n + pad + ((n + pad) % 2)) for n in shape)


def correlation_spectrum(shape, corr_length: float, nugget: float) -> np.ndarray:
    """Eigenvalues (``rfftn`` layout) of the circulant correlation nu I + (1 - nu) G on a grid of
    `shape`, G(d) = exp(-d^2 / (2 ell^2)) with d the periodic cell distance; >= nu."""
    if not corr_length > 0 or not 0 < nugget <= 1:
        raise ValueError(f"need corr_length > 0 and 0 < nugget <= 1, got {corr_length}, {nugget}")
    d2 = 0.0
    for a, n in enumerate(shape):
        i = np.arange(n)
        d = np.minimum(i, n - i).astype(np.float64)
        d2 = d2 + (d**2).reshape([-1 if b == a else 1 for b in range(len(shape))])
    g = np.exp(-0.5 * d2 / float(corr_length) ** 2)
    lam = np.maximum(np.fft.rfftn(g).real, 0.0)
    return nugget + (1.0 - nugget) * lam


@functools.partial(jax.jit, static_argnames=("num_steps", "pshape"))
def _solve_correlated(op, data, mean, scale, inv_spec, step, *, num_steps, pshape):
    """Projected FISTA in u = (rho - m) / s on the padded grid (see the module docstring)."""
    box = tuple(slice(0, n) for n in mean.shape)
    lower = -mean / scale

    def grad(u):
        rho = mean + scale * u[box]
        g_data = scale * op.transpose(op.apply(rho) - data)
        g_prior = jnp.fft.irfftn(jnp.fft.rfftn(u) * inv_spec, s=pshape)
        return g_prior.at[box].add(g_data)

    def prox(z):
        return z.at[box].set(jnp.maximum(z[box], lower))

    u = inversion._fista(grad, prox, jnp.zeros(pshape, jnp.float32), step, num_steps)
    return jnp.maximum(mean + scale * u[box], 0.0)


def solve_correlated(
    op,
    data,
    prior_mean,
    prior_sd,
    *,
    corr_length: float,
    nugget: float = DEFAULT_NUGGET,
    num_steps: int = inversion.DEFAULT_STEPS,
) -> jax.Array:
    """argmin over rho >= 0 of 1/2 |A rho - E|^2 + 1/2 (rho - m)^T (S K S)^-1 (rho - m), K the
    correlation of `correlation_spectrum` (length ``corr_length`` cells, ``nugget``), S =
    diag(prior_sd); rows of ``op`` and ``data`` already divided by their sigma."""
    mean = jnp.asarray(np.broadcast_to(prior_mean, tuple(op.shape)), jnp.float32)
    sd = np.broadcast_to(np.asarray(prior_sd, np.float64), tuple(op.shape))
    if np.any(~(sd > 0)) or np.any(~np.isfinite(sd)):
        raise ValueError("prior_sd must be finite and > 0 everywhere for a correlated prior")
    scale = jnp.asarray(sd, jnp.float32)
    pshape = padded_shape(op.shape, corr_length)
    spec = correlation_spectrum(pshape, corr_length, nugget)
    l_as = inversion.largest_eigenvalue(op, scale=scale)
    big_l = 1.02 * l_as + 1.0 / float(spec.min())
    return _solve_correlated(
        op, jnp.asarray(data, jnp.float32), mean, scale, jnp.asarray(1.0 / spec, jnp.float32),
        jnp.float32(1.0 / big_l), num_steps=int(num_steps), pshape=pshape,
    )  # fmt: skip


def interpolation_matrix(n: int, g: int) -> np.ndarray:
    """``(n, g)`` linear interpolation from g nodes spanning the first to the last of n cells."""
    if g < 2 or n < 1:
        raise ValueError(f"need at least 2 nodes and 1 cell, got {g}, {n}")
    x = np.arange(n) * (g - 1) / max(n - 1, 1)
    j = np.clip(np.floor(x).astype(int), 0, g - 2)
    t = x - j
    b = np.zeros((n, g))
    b[np.arange(n), j] = 1.0 - t
    b[np.arange(n), j + 1] = t
    return b


def solve_smooth(
    op, data, prior_mean, prior_sd, *, grid: int, ridge: float = 1.0, chunk: int = 64
) -> np.ndarray:
    """max(0, m + S B c) with B the trilinear interpolation from ``grid``^3 nodes and c the
    ridge least squares c = argmin |A (m + S B c) - E|^2 + ridge |c|^2 (rows already divided by
    their sigma; ridge 1: c ~ N(0, I), a node's correction of one band half-width). Closed
    form: ``grid``^3 unknowns, so a catalogue cannot make it chase noise."""
    shape = tuple(op.shape)
    mean = np.broadcast_to(np.asarray(prior_mean, np.float64), shape)
    sd = np.broadcast_to(np.asarray(prior_sd, np.float64), shape)
    mats = [interpolation_matrix(n, int(grid)) for n in shape]
    num = int(grid) ** 3
    idx = np.stack(np.unravel_index(np.arange(num), (int(grid),) * 3), -1)
    apply = jax.jit(lambda x: op.apply(x))
    cols = []
    for start in range(0, num, chunk):
        j = idx[start : start + chunk]
        basis = np.einsum("xc,yc,zc->cxyz", mats[0][:, j[:, 0]], mats[1][:, j[:, 1]],
                          mats[2][:, j[:, 2]])  # fmt: skip
        cols.append(np.asarray(apply(jnp.asarray(basis * sd, jnp.float32)), np.float64))
    mat = np.concatenate(cols).T  # (rows, num)
    resid = np.asarray(data, np.float64).reshape(-1) - np.asarray(
        apply(jnp.asarray(mean, jnp.float32)), np.float64
    ).reshape(-1)
    c = np.linalg.solve(mat.T @ mat + float(ridge) * np.eye(num), mat.T @ resid)
    corr = np.einsum("xa,yb,zc,abc->xyz", *mats, c.reshape((int(grid),) * 3))
    return np.maximum(mean + sd * corr, 0.0).astype(np.float32)


def _solve(op, data, prior_mean, prior_sd, corr_length, nugget, num_steps, smooth_grid=0):
    if smooth_grid:
        return solve_smooth(op, data, prior_mean, prior_sd, grid=int(smooth_grid))
    if corr_length is None or corr_length <= 0:
        return inversion.solve_with_prior(op, data, prior_mean, prior_sd, num_steps=num_steps)
    return solve_correlated(op, data, prior_mean, prior_sd, corr_length=corr_length,
                            nugget=nugget, num_steps=num_steps)  # fmt: skip


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
    corr_length: float = 0.0,
    nugget: float = DEFAULT_NUGGET,
) -> np.ndarray:
    """The refined density ``(nx, ny, nz)`` from an extinction cube at the cell centres (mag),
    with noise sigma = hypot(sigma_floor, sigma_rel E) per cell; ``corr_length`` > 0 (cells):
    the correlated prior (`solve_correlated`), 0 the independent one."""
    e = np.maximum(np.asarray(extinction, np.float64), 0.0)
    if e.shape != tuple(region.shape):
        raise ValueError(f"extinction {e.shape} does not match the region {region.shape}")
    if sigma_floor <= 0 or sigma_rel < 0:
        raise ValueError(f"need sigma_floor > 0 and sigma_rel >= 0, got {sigma_floor}, {sigma_rel}")
    w = 1.0 / np.hypot(sigma_floor, sigma_rel * e).reshape(-1)
    op = _weighted_rows(los_operator(region), w)
    data = (e.reshape(-1) * w).reshape(e.shape)
    out = _solve(op, data, prior_mean, prior_sd, corr_length, nugget, num_steps)
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


def model_error_scale(residual, sigma, predicted, target: float = 1.0) -> float:
    """tau >= 0 such that mean(r^2 / (sigma^2 + tau^2 p^2)) = target (the discrepancy
    principle, with a model error proportional to the predicted extinction p); 0 when the
    residuals already fit their sigmas (mean chi^2 <= target)."""
    r2 = np.asarray(residual, np.float64) ** 2
    v = np.asarray(sigma, np.float64) ** 2
    p2 = np.asarray(predicted, np.float64) ** 2

    def chi2(t):
        return float(np.mean(r2 / (v + t * t * p2)))

    if chi2(0.0) <= target:
        return 0.0
    lo, hi = 0.0, 1.0
    while chi2(hi) > target and hi < 1e3:
        lo, hi = hi, 2.0 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if chi2(mid) > target else (lo, mid)
    return hi


def refine_catalog(
    catalog,
    prior_mean,
    prior_sd,
    region: Region,
    *,
    num_steps: int = inversion.DEFAULT_STEPS,
    corr_length: float = 0.0,
    nugget: float = DEFAULT_NUGGET,
    smooth_grid: int = 0,
    model_error=0.0,
    info: dict | None = None,
    operator=None,
    fit_rows=None,
) -> np.ndarray:
    """The refined density ``(nx, ny, nz)`` from the stars of `catalog` (a
    `dustjax.catalog.StarCatalog`), each weighted by 1 / `star_sigma`; ``corr_length`` > 0
    (cells): the prior's errors correlated over that length (`solve_correlated`);
    ``smooth_grid`` > 0: instead a smooth correction on that many nodes per axis
    (`solve_smooth`).

    ``model_error``: a relative error tau of the forward model added to each star's sigma,
    hypot(sigma_eff, tau A_n rho), rho the prior's map (a map of finite cells misses the sky's
    structure inside them, which a real catalogue's extinctions carry and a simulation on the
    map's own grid does not); ``"auto"``: tau from the stars themselves (`model_error_scale` of
    the fit's residuals, rho the fit's map, refit, three rounds at most), 0 when the fit's chi^2
    per star is already <= 1. ``info`` (a dict) receives ``model_error`` and the chi^2 per star
    of each round. ``operator``: `catalog_operator` of ``(catalog, region)`` (either kind,
    unweighted) if the caller has it already (`refine_settings` builds it once for several
    settings; the result is the same as without). ``fit_rows`` (boolean, one per star): only
    these stars enter the likelihood and the auto model error, the others are left out (weight
    0; cross-validation, `dustjax.vnet.refine_cv`); None: all."""
    sigma0 = star_sigma(catalog, prior_mean, region)
    e = np.asarray(catalog.extinction, np.float64)
    rows = slice(None)
    if fit_rows is not None:
        rows = np.asarray(fit_rows)
        if rows.dtype != bool or rows.shape != e.shape or not rows.any():
            raise ValueError(f"fit_rows must be a boolean mask of the {len(e)} stars with at "
                             f"least one True, got {rows.dtype} {rows.shape}")  # fmt: skip
    op0 = catalog_operator(catalog, region) if operator is None else operator
    if operator is not None and (op0.num_rows != len(e) or tuple(op0.shape) != region.shape):
        raise ValueError(
            f"operator ({op0.num_rows} rows, cells {tuple(op0.shape)}) does not match the "
            f"catalogue ({len(e)} stars) and region {region.shape}"
        )

    def fit(sigma):
        w = 1.0 / sigma if fit_rows is None else np.where(rows, 1.0 / sigma, 0.0)
        op = op0.row_weighted(w)  # either kind of star operator
        data = jnp.asarray(e * w, jnp.float32)
        out = _solve(op, data, prior_mean, prior_sd, corr_length, nugget, num_steps, smooth_grid)
        return np.asarray(out)

    auto = isinstance(model_error, str)
    if auto and model_error != "auto":
        raise ValueError(f"model_error must be a number >= 0 or 'auto', got {model_error!r}")
    tau = 0.0 if auto else float(model_error)
    if tau < 0:
        raise ValueError(f"model_error must be >= 0, got {tau}")
    pred = np.asarray(op0.apply(jnp.asarray(prior_mean, jnp.float32)), np.float64)
    x = fit(np.hypot(sigma0, tau * pred) if tau else sigma0)
    chi2 = []
    for _ in range(3 if auto else 0):
        pred = np.maximum(np.asarray(op0.apply(jnp.asarray(x)), np.float64), 0.0)
        chi2.append(float(np.mean(((e - pred) / np.hypot(sigma0, tau * pred))[rows] ** 2)))
        new = model_error_scale((e - pred)[rows], sigma0[rows], pred[rows])
        if new == 0.0 or abs(new - tau) <= 0.05 * new:
            tau = max(tau, new) if new else tau
            break
        tau = new
        x = fit(np.hypot(sigma0, tau * pred))
    if info is not None:
        info.update(model_error=float(tau), chi2_per_star=chi2)
    return x


# ---- refinement on a finer grid ------------------------------------------------------------------
# How a map on the finer grid is put on the region's cells. "regrid": the way dustjax puts every
# finer map on a region's cells (`dustjax.maps.regrid_nearest`: a Gaussian of FWHM
# sqrt(cell^2 - step^2) per axis, then the fine cell holding each region cell's centre), the
# convention of the literature route and so of the real-sky truth; "block": the mean of each
# block of factor^3 fine cells (sessions 5-7). They differ where the sky has structure on the fine
# scale: the exact 3-pc Bayestar19 SR cube's block means score 0.877 against that cube on the SR
# cells, its LR cube's 0.954 (docs/validation.md, "The fine map on the map's cells").
REDUCTIONS = ("regrid", "block")
DEFAULT_REDUCTION = "regrid"


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; use one of {REDUCTIONS}")
    return reduction


def refine_catalog_fine(
    catalog, prior_mean, prior_sd, region: Region, *, factor: int = 2, corr_length: float = 0.0,
    reduction: str = DEFAULT_REDUCTION, **kwargs,
) -> np.ndarray:  # fmt: skip
    """`refine_catalog` on a grid `factor` times finer than `region`'s, put back on `region`'s
    cells by `to_region` (``reduction``).

    Real stars integrate the sky's structure inside the map's cells (the truth's own chi^2 per
    star is 1.9 on the real SR cube, 1.0 on the map-grid simulations: docs/validation.md), which
    no map on the region's grid can fit; on the finer grid the stars can place their dust inside
    a cell. The prior (mean and sd) is each coarse cell's value on its sub-cells;
    ``corr_length`` is in the *coarse* cells (multiplied by `factor` on the fine grid); the
    other keywords are `refine_catalog`'s.
    """
    factor = grid_factor(factor)
    check_reduction(reduction)
    if factor == 1:
        return refine_catalog(catalog, prior_mean, prior_sd, region, corr_length=corr_length,
                              **kwargs)  # fmt: skip
    fine = fit_fine(catalog, prior_mean, prior_sd, region, factor=factor, corr_length=corr_length,
                    **kwargs)  # fmt: skip
    return to_region(fine, region, factor, reduction)


def fit_fine(
    catalog, prior_mean, prior_sd, region: Region, *, factor: int, corr_length: float = 0.0,
    **kwargs,
) -> np.ndarray:  # fmt: skip
    """`refine_catalog_fine`'s fit itself: the map on `fine_region` (``factor`` x finer), the
    prior each coarse cell's value on its sub-cells, ``corr_length`` in coarse cells; the other
    keywords are `refine_catalog`'s (``operator``: the fine grid's)."""
    factor = grid_factor(factor)
    up = (upsample(np.asarray(a, np.float32), factor) for a in (prior_mean, prior_sd))
    return refine_catalog(catalog, *up, fine_region(region, factor),
                          corr_length=corr_length * factor, **kwargs)  # fmt: skip


def to_region(fine, region: Region, factor: int, reduction: str = DEFAULT_REDUCTION) -> np.ndarray:
    """A map ``fine`` on `fine_region` (``region``, ``factor``) on `region`'s cells: the block
    means (``"block"``) or `dustjax.maps.regrid_nearest` (``"regrid"``, see `REDUCTIONS`)."""
    from dustjax import maps

    factor = grid_factor(factor)
    fine = np.asarray(fine, np.float32)
    if fine.shape != tuple(factor * n for n in region.shape):
        raise ValueError(f"the fine map {fine.shape} is not {factor} x the region {region.shape}")
    if check_reduction(reduction) == "block" or factor == 1:
        return block_mean(fine, factor)
    fr = fine_region(region, factor)
    edges = tuple(np.linspace(fr.lower_pc[a], fr.upper_pc[a], fr.shape[a] + 1) for a in range(3))
    return maps.regrid_nearest(maps.DustMap("cartesian", fine, edges), region)


def grid_factor(factor) -> int:
    """A refinement grid factor checked: a positive integer (an int-valued float is accepted)."""
    f = float(factor)
    if not (f >= 1 and f == int(f)):
        raise ValueError(f"the refinement grid factor must be a positive integer, got {factor!r}")
    return int(f)


def fine_region(region: Region, factor: int) -> Region:
    """`region`'s box with ``factor`` times its cells along every axis (`refine_catalog_fine`'s
    grid; its star operator is `catalog_operator` of this region)."""
    factor = grid_factor(factor)
    if factor == 1:
        return region
    return Region(region.lower_pc, region.upper_pc, tuple(factor * n for n in region.shape),
                  name=f"{region.name} x{factor}")  # fmt: skip


def upsample(cube, factor: int) -> np.ndarray:
    """Each cell of ``cube`` ``(nx, ny, nz)`` repeated over its ``factor``^3 sub-cells."""
    a = np.asarray(cube)
    for axis in range(3):
        a = np.repeat(a, factor, axis=axis)
    return a


def block_mean(cube, factor: int) -> np.ndarray:
    """The mean over each block of ``factor``^3 cells: `upsample`'s inverse on the coarse grid."""
    a = np.asarray(cube)
    nx, ny, nz = (n // factor for n in a.shape)
    return a.reshape(nx, factor, ny, factor, nz, factor).mean(axis=(1, 3, 5))


def catalog_operator(catalog, region: Region, blocked: bool = True):
    """The unweighted star operator of `catalog` in `region` (`refine_catalog`'s ``operator``):
    with ``blocked``, a `dustjax.blocked_operator.BlockedStarOperator` (the same map; its
    transpose needs no contended scatter, so a FISTA step is several times faster), else the
    plain `dustjax.inversion.StarOperator`; built in threads (one per CPU core, 16 at most)."""
    workers = min(os.cpu_count() or 1, 16)
    op = inversion.star_operator(region, catalog.xyz_pc, workers=workers)
    return blocked_operator.blocked(op) if blocked else op


def refine_settings(
    catalog, prior_mean, prior_sd, region: Region, settings, *, operator=None, infos=None,
    factor: int = 1, reduction: str = DEFAULT_REDUCTION, **kw,
) -> list[np.ndarray]:  # fmt: skip
    """`refine_catalog` for each ``(corr_length, nugget[, model_error])`` of ``settings`` (as
    `parse_corr_settings` returns them) on one catalogue, the star operator built once and
    shared (the same maps as one call per setting). ``factor`` > 1: each on the grid that many
    times finer (`refine_catalog_fine`, put on the region's cells by ``reduction``; ``operator``,
    if given, is that grid's). ``infos`` (a
    list) receives one info dict per setting; ``kw`` goes to every call (``num_steps``)."""
    factor = grid_factor(factor)
    if operator is None:
        operator = catalog_operator(catalog, fine_region(region, factor))
    out = []
    for ell, nu, *tau in settings:
        info: dict = {}
        out.append(refine_catalog_fine(catalog, prior_mean, prior_sd, region, factor=factor,
                                       corr_length=ell, nugget=nu,
                                       model_error=tau[0] if tau else 0.0, info=info,
                                       operator=operator, reduction=reduction, **kw))  # fmt: skip
        if infos is not None:
            infos.append(info)
    return out
