"""Catalogue (or the paper's simulation) in, fitted GP maps, FITS, JSON and figures out.

`fit_and_predict(config, workdir)` is what `experiments/fit_gp.py` and notebooks call. The config
is an `ml_collections.ConfigDict` laid out as in `experiments/configs/gp_test.py`:

    dtype                 "float32" (default; GPU) or "float64" (the caller enables
                          jax_enable_x64 first: the library never sets process-wide flags)
    seed
    data.source           "simulate" (sect. 3 of the paper), "catalog", or "cube": stars drawn
                          in a known density (`dustjax.gp.realsky`: a real Cartesian cube, FITS
                          or .npy + .header.json, or ``clumps:SEED`` / ``lognormal:SEED``) with
                          exact extinctions and noise max(0.1 A, 0.02) mag; the truth is scored
                          as in "simulate"
    data.path, data.columns, data.distance_unit, data.inflate_sigma   (source = "catalog")
    data.simulation.*     (source = "simulate": num_stars, noise_fraction, sigma_floor, ...)
    data.cube, data.distribution   (source = "cube": the truth, and "uniform" in l, b, d^3 or
                          "catalog": magnitude-limited; data.simulation.num_stars stars)
    grid.*                l_range_deg, b_range_deg, d_range_pc, shape, ghost_cells,
                          background_cells
    model.*               num_inducing, scale_lengths_pc, amplitude_dex, mean_dex (None: from
                          the stars), q_std; kernel ("rbf", "matern32", "matern52"),
                          mean_function ("constant", "linear", "shells"), mean_shells
                          (`fit.initial_params`; defaults: the paper's RBF and constant)
    fit.*                 `fit.FitSettings` fields, and calibration_fraction (default 0.1; 0: off):
                          the fraction of the stars held out of the fit, on which a post-hoc
                          model error (f A)^2 + s^2 is fitted and added to the extinction bands
                          (`calibration`)
    predict.*             shape, num_samples, chunk_cells, star_samples, posterior_samples
                          (joint posterior density draws written to density.fits, default 12,
                          at most num_samples; 0: none), star_grid_factor (default (1, 1, 1):
                          the stars' extinctions through the training grid with each cell cut
                          into that many, `predict.refined_grid`)
    output.*              fits, plots, slice_distances_pc, sightlines
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dustjax import distributed, provenance
from dustjax import io as dio
from dustjax.gp import calibration, predict, svgp
from dustjax.gp import fit as gpfit
from dustjax.gp.coords import KernelCoords
from dustjax.gp.grid import LBDGrid
from dustjax.io import ensure_writable_dir
from dustjax.sharding import make_mesh

logger = logging.getLogger(__name__)


def _dtype(config):
    """The run's dtype. The library never switches ``jax_enable_x64`` (a process-wide flag that
    would change every other computation of the caller): float64 needs the caller to enable it."""
    name = str(config.get("dtype", "float32"))
    if name == "float64":
        if jax.dtypes.canonicalize_dtype(np.float64) != np.float64:
            raise ValueError(
                "dtype='float64' needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) "
                "at the start of your program (experiments/fit_gp.py does it for "
                "--config.dtype=float64), or run inside `with jax.enable_x64(True):`"
            )
        return jnp.float64
    if name != "float32":
        raise ValueError(f"dtype must be 'float32' or 'float64', got {name!r}")
    return jnp.float32


def load_stars(config, grid: LBDGrid):
    """(catalogue inside the grid, counts, truth or None) for the configured data source."""
    data = config.data
    truth = None
    if data.source == "simulate":
        from dustjax.gp import simulate

        sim = dict(data.simulation)
        sim.setdefault("l_range_deg", grid.l_range_deg)
        sim.setdefault("b_range_deg", grid.b_range_deg)
        sim.setdefault("d_range_pc", grid.d_range_pc)
        field, catalog, true_ext = simulate.paper_simulation(seed=int(config.seed), **sim)
        truth = dict(field=field, extinction=true_ext)
    elif data.source == "catalog":
        from dustjax.catalog import read_star_catalog

        columns = {k: v for k, v in dict(data.get("columns", {}) or {}).items() if v}
        catalog = read_star_catalog(
            data.path, columns=columns, distance_unit=data.get("distance_unit", "pc")
        )
    elif data.source == "cube":
        from dustjax.gp import realsky

        field = realsky.make_truth(str(data.cube), (*grid.l_range_deg, *grid.b_range_deg,
                                                    *grid.d_range_pc))  # fmt: skip
        stars = realsky.draw_stars(
            field, np.random.default_rng(int(config.seed)), int(data.simulation.num_stars),
            grid.l_range_deg, grid.b_range_deg, grid.d_range_pc,
            distribution=str(data.get("distribution", "uniform")),
        )  # fmt: skip
        catalog = realsky.to_catalog(stars)
        truth = dict(field=field, extinction=stars["true"])
    else:
        raise ValueError(
            f"data.source must be 'simulate', 'catalog' or 'cube', got {data.source!r}"
        )
    inside, dropped = grid.select_inside(catalog)
    counts = dict(
        num_read=int(catalog.num_read or len(catalog)),
        num_dropped_nonfinite=int(catalog.num_dropped_nonfinite),
        num_dropped_outside_grid=int(dropped),
        num_stars=len(inside),
    )
    if truth is not None:
        _, _, keep = grid.locate(catalog.l_deg, catalog.b_deg, catalog.distance_pc)
        truth["extinction"] = truth["extinction"][keep]
    return inside, counts, truth


# Exactly the files a run writes (by name, never by pattern: a catalogue or notes the user keeps
# in the workdir, `stars.fits` say, are not ours to move).
OUTPUT_NAMES = (
    "summary.json",
    "final_state.npz",
    "last_good_state.npz",
    "density.fits",
    "extinction.fits",
    "total_extinction.fits",
    "fig2_elbo.png",
    "fig3_star_extinctions.png",
    "fig4_extinction_maps.png",
    "fig5_density_slices.png",
    "figB1_sightlines.png",
)
PREVIOUS_RUN_DIR = dio.PREVIOUS_RUN_DIR
DEFAULT_POSTERIOR_SAMPLES = 12
DEFAULT_CALIBRATION_FRACTION = 0.1
CALIBRATION_TARGET_COVERAGE = 0.68  # of the held-out stars' observed extinctions


def set_aside_previous_outputs(workdir: Path, *, keep=()) -> list[str]:
    """Move an earlier run's outputs (`OUTPUT_NAMES`) in `workdir` into ``workdir/previous_run/``
    (`dustjax.io.set_aside_previous_outputs`), keeping the paths in ``keep`` (the run's input
    catalogue); returns the names moved."""
    return dio.set_aside_previous_outputs(workdir, OUTPUT_NAMES, keep=keep, log=logger)


MASS_NOTES = dict(
    dust_mass_eq9_msun=(
        "the paper's estimate (Dharmawardena et al. 2022, eq. 9): extinction to d_max times "
        "D^2 with D = d_max, i.e. all of a column's dust put at d_max; an overestimate by "
        "(d_max / d)^2 for dust at distance d"
    ),
    dust_mass_in_box_msun=(
        "volume integral of the density over the region of interest [d_min, d_max] "
        "(kappa = 26,000 cm^2/g at 547 nm)"
    ),
    gas_mass="124 x the dust mass (Draine 2003)",
)


def fit_and_predict(config, workdir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole method; write outputs into ``workdir``; return the summary dict.

    Everything runs with full float32 matrix products (`fit.full_float32_matmuls`: no TF32).
    """
    with gpfit.full_float32_matmuls():
        return _fit_and_predict(config, workdir, progress=progress)


def _posterior_samples(config) -> int:
    """``predict.posterior_samples`` (default 12), checked before anything runs."""
    k = config.predict.get("posterior_samples", DEFAULT_POSTERIOR_SAMPLES)
    k = DEFAULT_POSTERIOR_SAMPLES if k is None else int(k)
    if not 0 <= k <= int(config.predict.num_samples):
        raise ValueError(
            f"predict.posterior_samples = {k} must be between 0 and predict.num_samples = "
            f"{config.predict.num_samples} (the posterior samples are the first of those draws)"
        )
    return k


def _fit_and_predict(config, workdir, *, progress):
    t_total = time.perf_counter()
    dtype = _dtype(config)
    num_posterior_samples = _posterior_samples(config)
    grid = LBDGrid.from_dict(dict(config.grid))
    logger.info("%s", grid)
    catalog, counts, truth = load_stars(config, grid)
    logger.info("stars: %s", counts)
    if counts["num_stars"] == 0:
        raise ValueError("no stars inside the grid: check the grid bounds and the catalogue")
    # Only now, with the input known to be usable (and before the fit), create the workdir: a
    # bad catalogue or grid leaves nothing behind.
    workdir = ensure_writable_dir(workdir)
    keep = [config.data.get("path", "")] if config.data.source == "catalog" else []
    primary = distributed.is_primary()  # several processes: all fit, process 0 alone goes on
    if primary:
        set_aside_previous_outputs(workdir, keep=keep)

    # ---- fit ------------------------------------------------------------------------------
    settings = gpfit.FitSettings(**dict(config.fit))
    calib_fraction = _calibration_fraction(settings.calibration_fraction)
    sigma = catalog.sigma_extinction
    if config.data.get("inflate_sigma", True) and catalog.sigma_distance is not None:
        sigma = gpfit.inflate_sigma_for_distance(catalog, grid)
    sigma = np.asarray(sigma)
    # Stars held out of the fit, for the post-hoc model error (`calibration`)
    held = calibration_split(len(catalog), calib_fraction, seed=int(config.seed))
    calib = None
    if held.any():
        calib = dict(
            catalog=catalog.select(held),
            sigma=sigma[held],
            true=None if truth is None else truth["extinction"][held],
        )
        catalog, sigma = catalog.select(~held), sigma[~held]
        if truth is not None:
            truth["extinction"] = truth["extinction"][~held]
    counts["num_fit"] = len(catalog)
    counts["num_calibration"] = int(held.sum())
    logger.info("%d stars in the fit, %d held out for calibration", len(catalog), held.sum())
    mesh = make_mesh(axis=gpfit.STAR_AXIS)
    stars = gpfit.star_data_on_mesh(catalog, grid, mesh, dtype=dtype, sigma=sigma)
    coords = KernelCoords.for_grid(grid, settings.kernel_coords)
    params0 = gpfit.initial_params(
        catalog, dict(config.model), seed=int(config.seed), dtype=dtype,
        kernel_coords=coords, ghost_grid=grid,
    )  # fmt: skip
    hyper0 = _hyper(params0)
    result = gpfit.fit(
        params0, stars, grid, settings, mesh=mesh, workdir=workdir, progress=progress
    )
    if distributed.is_multiprocess():
        # the fit was the collective part; process 0 predicts and writes from the fitted
        # (replicated) parameters, with the star data of the whole catalogue on the host
        if not primary:
            return dict(status=result.status, iterations=result.iterations,
                        elbo_history=result.elbo_history, process=jax.process_index())  # fmt: skip
        stars = gpfit.make_star_data(catalog, grid, dtype=dtype, sigma=sigma)
    gpfit.save_params(
        workdir / "final_state.npz",
        result.params,
        jitter=result.jitter,
        iterations=result.iterations,
    )
    summary: dict[str, Any] = dict(
        config=config.to_dict() if hasattr(config, "to_dict") else dict(config),
        grid=grid.to_dict(),
        stars=counts,
        devices=[str(d) for d in mesh.devices.flat],
        dtype=str(np.dtype(dtype)),
        status=result.status,
        message=result.message,
        iterations=result.iterations,
        failed_iteration=result.failed_iteration,
        jitter=result.jitter,
        initial_hyperparameters=hyper0,
        hyperparameters=_hyper(result.params),
        elbo_history=result.elbo_history,
        timings=dict(result.timings),
    )
    source = config.data.get("source", "")
    summary["provenance"] = provenance.record(
        "gp", config, inputs=[config.data.get("path")] if source == "catalog" else []
    )
    if result.status == "nan_elbo":
        summary["timings"]["total_s"] = time.perf_counter() - t_total
        from dustjax.gp.output import write_summary

        write_summary(workdir / "summary.json", summary)
        raise FloatingPointError(result.message)

    # ---- predict --------------------------------------------------------------------------
    t0 = time.perf_counter()
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), result.params)
    model_error = svgp.model_error_scales(params)
    sgrid, star_index, star_partial = _star_operator(
        grid, config, catalog, np.asarray(stars.flat_index), np.asarray(stars.partial_pc)
    )
    star_pct = predict.predict_star_extinctions(
        params,
        sgrid,
        star_index,
        star_partial,
        link=settings.link,
        jitter=result.jitter,
        num_samples=int(config.predict.star_samples),
        seed=int(config.seed) + 1,
        model_error=None if calib is not None else model_error,  # calibrated: added below
        kernel_coords=coords,
    )
    star_bands = (
        "model extinction"
        if model_error is None
        else "true extinction: model plus the learned model error N(0, (f A)^2 + s^2)"
    )
    calib_summary = None
    if calib is not None:
        calib_summary = _calibrate(
            params, grid, settings, result.jitter, config, calib, model_error, coords,
            fitted=(star_pct, np.asarray(catalog.extinction), sigma),
        )  # fmt: skip
        star_pct_model = (
            star_pct
            if model_error is None
            else calibration.widen_bands(star_pct, *(float(v) for v in model_error))
        )  # the bands without the calibration, for the summary
        star_pct = calibration.widen_bands(
            star_pct, calib_summary["frac"], calib_summary["floor_mag"], calib_summary["band_scale"]
        )
        star_bands = (
            "true extinction: the model's band times band_scale plus the post-hoc model error "
            "N(0, (f A)^2 + s^2), both fitted on held-out stars"
            + ("" if model_error is None else " (the learned term, rescaled)")
        )
    summary["star_bands"] = star_bands
    summary["calibration"] = calib_summary
    pgrid = predict.prediction_grid(grid, tuple(config.predict.shape))
    maps = predict.predict_maps(
        params,
        pgrid,
        link=settings.link,
        jitter=result.jitter,
        num_samples=int(config.predict.num_samples),
        seed=int(config.seed) + 2,
        max_chunk_cells=int(config.predict.chunk_cells),
        progress=progress,
        num_posterior_samples=num_posterior_samples,
        kernel_coords=coords,
    )
    # extinction to a point: the bands a star there would have, i.e. the model's plus the
    # model error (calibrated, or else learned), as in the star bands
    if model_error is not None:
        summary["model_error"] = dict(frac=float(model_error[0]), floor_mag=float(model_error[1]))
    f, s = extinction_model_error(summary)
    scale = extinction_band_scale(summary)
    if f > 0 or s > 0 or scale != 1.0:
        for key in ("extinction_pct", "total_extinction_pct"):
            maps[key] = calibration.widen_bands(maps[key], f, s, scale).astype(maps[key].dtype)
    summary["timings"]["predict_s"] = time.perf_counter() - t0
    summary["prediction_grid"] = pgrid.to_dict()
    for key in ("dust_mass_eq9_msun", "gas_mass_eq9_msun", "dust_mass_in_box_msun",
                "gas_mass_in_box_msun"):  # fmt: skip
        summary[key] = predict.percentile_summary(maps[key])
    summary["mass_notes"] = MASS_NOTES
    summary["posterior_samples"] = num_posterior_samples
    summary["star_fit"] = _star_fit(catalog, star_pct, stars)

    true_density = true_total = true_ext_cube = None
    if truth is not None:
        field = truth["field"]
        true_density = field.density(pgrid.cell_centres_xyz()).reshape(pgrid.full_shape)
        lon, lat, dist = pgrid.cell_centres_lbd()
        true_ext_cube = field.extinction(lon.ravel(), lat.ravel(), dist.ravel()).reshape(lon.shape)
        lc, bc = np.meshgrid(pgrid.l_centres_deg(), pgrid.b_centres_deg(), indexing="ij")
        true_total = field.extinction(lc, bc, np.full(lc.shape, pgrid.d_range_pc[1]))
        summary["simulation"] = dict(
            field=field.to_dict(),
            true_dust_mass_eq9_msun=float(predict.dust_mass_msun(true_total, pgrid)),
            true_dust_mass_in_box_msun=float(predict.dust_mass_in_box_msun(true_density, pgrid)),
            metrics=simulation_metrics(
                truth["extinction"],
                star_pct,
                maps,
                pgrid,
                field,
                true_density,
                true_total,
                summary["hyperparameters"]["scale_lengths_pc"],
            ),
        )
        if calib_summary is not None:
            summary["simulation"]["metrics"][
                "fraction_true_within_p16_p84_fit_stars_uncalibrated"
            ] = calibration.coverage(star_pct_model, truth["extinction"])

    # ---- write ----------------------------------------------------------------------------
    _write_outputs(
        config,
        workdir,
        summary,
        maps,
        pgrid,
        grid,
        catalog,
        star_pct,
        truth,
        true_density,
        true_total,
        true_ext_cube,
    )
    summary["timings"]["total_s"] = time.perf_counter() - t_total
    from dustjax.gp.output import write_summary

    write_summary(workdir / "summary.json", summary)
    return summary


def _calibration_fraction(value) -> float:
    frac = DEFAULT_CALIBRATION_FRACTION if value is None else float(value)
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"fit.calibration_fraction must be in [0, 1), got {frac}")
    return frac


def calibration_split(num_stars: int, fraction: float, *, seed: int) -> np.ndarray:
    """Boolean mask of the ``round(fraction * num_stars)`` stars held out of the fit (random,
    reproducible from ``seed``); all False for fraction 0."""
    held = np.zeros(num_stars, bool)
    n = int(round(fraction * num_stars))
    if n > 0:
        rng = np.random.default_rng([int(seed), 0xCA1B])
        held[rng.choice(num_stars, size=n, replace=False)] = True
    return held


def _star_operator(grid, config, catalog, flat_index, partial_pc):
    """The grid through which the stars' extinctions are predicted, and their operator on it.

    ``predict.star_grid_factor`` (fl, fb, fd) (default 1, 1, 1: the training grid and the fit's
    own operator) integrates them through the training grid with every cell cut into that many
    (`predict.refined_grid`): the fitted GP evaluated at more cells (issue 18e: 2, 2, 2 cut the
    real-sky held-out error by a tenth at CPU size).
    """
    factor = tuple(int(v) for v in config.predict.get("star_grid_factor", (1, 1, 1)))
    n = len(catalog)
    if factor == (1, 1, 1):
        return grid, flat_index[:n], partial_pc[:n]
    sgrid = predict.refined_grid(grid, factor)
    op = sgrid.star_operator(
        catalog.l_deg, catalog.b_deg, catalog.distance_pc, dtype=partial_pc.dtype
    )
    return sgrid, np.asarray(op.flat_index), np.asarray(op.partial_pc)


def _calibrate(
    params, grid, settings, jitter, config, calib, model_error, coords, *, fitted=None
) -> dict[str, Any]:
    """Calibrate the bands on the held-out stars and score them before and after
    (`calibration.calibrate_bands`, ``fit.calibration_method``): the model's bands plus a model
    error of the learned shape (``fit.model_error``) or else the maximum-likelihood one, all of
    it scaled by one factor, up or down, so that 68 % of the held-out stars' error is inside.
    ``band_scale`` multiplies the model's own half-widths and (f, s) is the whole model error
    added to them. ``fitted``: the fitted stars' model bands, observed extinctions and noise,
    which "deconvolved" pools with the held-out stars' for the error's distribution where the
    two agree (`calibration.calibrate_bands`; ``deconvolution`` in the summary records it)."""
    cat = calib["catalog"]
    cstars = gpfit.make_star_data(
        cat, grid, num_shards=1, dtype=params["mean"].dtype, sigma=calib["sigma"]
    )
    sgrid, star_index, star_partial = _star_operator(
        grid, config, cat, np.asarray(cstars.flat_index), np.asarray(cstars.partial_pc)
    )
    pct = predict.predict_star_extinctions(
        params,
        sgrid,
        star_index,
        star_partial,
        link=settings.link,
        jitter=jitter,
        num_samples=int(config.predict.star_samples),
        seed=int(config.seed) + 3,
        kernel_coords=coords,
    ).astype(np.float64)  # the model's bands, no model error
    observed, sigma = np.asarray(cat.extinction, np.float64), np.asarray(calib["sigma"], np.float64)
    learned = None if model_error is None else tuple(float(v) for v in model_error)
    pct_model = pct
    # the configured method; where the truth is known (a simulation or a cube) both, for the
    # record in ``methods``
    methods = (
        calibration.CALIBRATION_METHODS
        if calib["true"] is not None
        else (settings.calibration_method,)
    )
    decided: dict[str, Any] = {}
    results = {
        method: calibration.calibrate_bands(
            pct,
            observed,
            sigma,
            shape=learned,
            target_coverage=CALIBRATION_TARGET_COVERAGE,
            method=method,
            fitted=fitted,
            info=decided if method == "deconvolved" else None,
        )  # fmt: skip
        for method in methods
    }
    scale, f, s = results[settings.calibration_method]
    widened = calibration.widen_bands(pct, f, s, scale)
    if learned is not None:  # "before": the bands with the learned term as fitted
        pct = calibration.widen_bands(pct, *learned)
    out: dict[str, Any] = dict(
        frac=f,
        floor_mag=s,
        band_scale=scale,
        method=settings.calibration_method,
        num_stars=len(cat),
        rescales_learned_model_error=learned is not None,
        validation_coverage_observed_before=calibration.observed_coverage(pct, observed, sigma),
        validation_coverage_observed_after=calibration.observed_coverage(widened, observed, sigma),
        deconvolution={k: (float(v) if isinstance(v, float) else v) for k, v in decided.items()},
    )
    if calib["true"] is not None:
        out["validation_coverage_true_before"] = calibration.coverage(pct, calib["true"])
        out["validation_coverage_true_after"] = calibration.coverage(widened, calib["true"])
        out["methods"] = {}
        for method, (c, fm, sm) in results.items():
            out["methods"][method] = dict(
                band_scale=c, frac=fm, floor_mag=sm,
                coverage_true=calibration.coverage(
                    calibration.widen_bands(pct_model, fm, sm, c), calib["true"]
                ),
            )  # fmt: skip
    logger.info("post-hoc model error on %d held-out stars: %s", len(cat), out)
    return out


def extinction_model_error(summary) -> tuple[float, float]:
    """(f, s) of the model error a run's extinction bands carry beyond the posterior: the
    calibrated one (``summary["calibration"]``, which replaces a learned term) when there is
    one, else the learned term (``summary["model_error"]``), else (0, 0)."""
    part = summary.get("calibration") or summary.get("model_error")
    return (float(part["frac"]), float(part["floor_mag"])) if part else (0.0, 0.0)


def extinction_band_scale(summary) -> float:
    """The factor on the model's own extinction half-widths: the calibration's ``band_scale``
    (`calibration.calibrate_bands`; < 1 narrows an over-wide posterior), else 1."""
    part = summary.get("calibration") or {}
    return float(part.get("band_scale", 1.0))


def _fits_meta(summary) -> dict[str, Any]:
    meta: dict[str, Any] = dict(status=summary["status"])
    if "provenance" in summary:
        meta.update(provenance.fits_cards(summary["provenance"]))
    me = summary.get("model_error")
    if me is not None:  # the learned model error (fit.model_error)
        meta.update(MEFRAC=me["frac"], MEFLOOR=me["floor_mag"])
    c = summary.get("calibration")
    if c is not None:
        meta.update(
            CALFRAC=c["frac"],
            CALFLOOR=c["floor_mag"],
            CALSCALE=c.get("band_scale", 1.0),
            CALNSTAR=c["num_stars"],
            CALCOVB=c["validation_coverage_observed_before"],
            CALCOVA=c["validation_coverage_observed_after"],
        )
    return meta


def _hyper(params) -> dict[str, Any]:
    h = svgp.hyperparameters(params)
    return dict(
        scale_lengths_pc=[float(v) for v in np.asarray(h["scale_lengths_pc"])],
        amplitude_dex=float(h["amplitude_dex"]),
        mean_dex=float(h["mean_dex"]),
        num_inducing=int(params["inducing_points"].shape[0]),
    )


def _star_fit(catalog, star_pct, stars) -> dict[str, float]:
    sigma = np.asarray(stars.sigma)[: len(catalog)]
    resid = (catalog.extinction - star_pct[1]) / sigma
    return dict(
        chi2_per_star=float(np.mean(resid**2)),
        median_residual_mag=float(np.median(star_pct[1] - catalog.extinction)),
    )


def simulation_metrics(
    true_ext, star_pct, maps, pgrid: LBDGrid, field, true_density, true_total, scale_lengths_pc
) -> dict[str, Any]:
    """The paper's sect. 3 comparison numbers.

    * fraction of stars underestimated: the predicted 84th percentile below the true
      (noise-free) extinction (the prediction's own 1-sigma band misses the truth from below);
      also the fraction with a median below 90% of the truth (more than the 10% noise level)
      and the raw fraction with a median below the truth;
    * density residual (p50 - true) / true over the region-of-interest cells of the prediction
      grid: median of the absolute value ("typical", paper ~12%), its 95th percentile and max;
    * clump offsets: the distance between the predicted and the true density peak within
      2.5 clump widths of each clump's centre, in pc, in units of the mean fitted scale length
      and as the ARD norm |delta / gamma|; and the same for the centroids of the density excess
      over the background in that neighbourhood (less sensitive to a split or noisy peak);
    * the mean and most negative residual of the total extinction map to d_max (fig. 4).
    """
    p16, p50, p84 = star_pct
    roi = pgrid.roi_slice
    pred = maps["density_pct"][1][..., roi]
    true = true_density[..., roi]
    ok = true > 0  # a real cube has empty cells: relative residuals where there is dust
    rel = (pred[ok] - true[ok]) / true[ok]
    xyz = pgrid.cell_centres_xyz().reshape(*pgrid.full_shape, 3)[..., roi, :].reshape(-1, 3)
    gamma = np.asarray(scale_lengths_pc)
    clumps = []
    centres, widths = getattr(field, "centres_xyz", ()), getattr(field, "widths_pc", ())
    for c, w in zip(centres, widths, strict=True):
        near = np.linalg.norm(xyz - c, axis=1) <= 2.5 * w
        if not np.any(near):
            continue
        true_peak = xyz[near][np.argmax(true.reshape(-1)[near])]
        pred_peak = xyz[near][np.argmax(pred.reshape(-1)[near])]
        delta = pred_peak - true_peak

        def centroid(cube, near=near):  # centre of the excess over the background, near the clump
            excess = np.clip(cube.reshape(-1)[near] - field.background, 0.0, None)
            return (excess[:, None] * xyz[near]).sum(0) / max(excess.sum(), 1e-30)

        delta_c = centroid(pred) - centroid(true)
        clumps.append(
            dict(
                true_centre_xyz_pc=c.tolist(),
                width_pc=float(w),
                centroid_offset_pc=float(np.linalg.norm(delta_c)),
                centroid_offset_in_mean_scale_lengths=float(np.linalg.norm(delta_c) / gamma.mean()),
                offset_pc=float(np.linalg.norm(delta)),
                offset_in_mean_scale_lengths=float(np.linalg.norm(delta) / gamma.mean()),
                offset_ard_norm=float(np.linalg.norm(delta / gamma)),
                peak_density_ratio=float(
                    pred.reshape(-1)[near].max() / true.reshape(-1)[near].max()
                ),
            )
        )
    total_pred = maps["total_extinction_pct"][1]
    return dict(
        fraction_underestimated_p84_below_true=float(np.mean(p84 < true_ext)),
        fraction_underestimated_median_below_90pct=float(np.mean(p50 < 0.9 * true_ext)),
        fraction_median_below_true=float(np.mean(p50 < true_ext)),
        fraction_true_within_p16_p84=float(np.mean((p16 <= true_ext) & (true_ext <= p84))),
        density_residual_typical=float(np.median(np.abs(rel))),
        density_residual_p95=float(np.percentile(np.abs(rel), 95)),
        density_residual_max=float(np.max(np.abs(rel))),
        density_residual_median_signed=float(np.median(rel)),
        total_extinction_residual_mean_mag=float(np.mean(total_pred - true_total)),
        total_extinction_residual_min_mag=float(np.min(total_pred - true_total)),
        clumps=clumps,
        max_clump_centroid_offset_in_scale_lengths=max(
            (c["centroid_offset_in_mean_scale_lengths"] for c in clumps), default=math.nan
        ),
        max_clump_offset_in_scale_lengths=max(
            (c["offset_in_mean_scale_lengths"] for c in clumps), default=math.nan
        ),
    )


def _write_outputs(
    config,
    workdir,
    summary,
    maps,
    pgrid,
    grid,
    catalog,
    star_pct,
    truth,
    true_density,
    true_total,
    true_ext_cube,
):
    out_cfg = config.get("output", {})
    files = []
    if out_cfg.get("fits", True):
        try:
            from dustjax.gp.output import write_fits_cubes

            files += [
                str(p) for p in write_fits_cubes(workdir, maps, pgrid, meta=_fits_meta(summary))
            ]
        except ImportError:
            logger.warning("astropy is not installed: FITS cubes skipped")
    if out_cfg.get("plots", True):
        from dustjax.gp import plots

        files.append(str(plots.plot_elbo(summary["elbo_history"], workdir / "fig2_elbo.png")))
        reference = truth["extinction"] if truth is not None else catalog.extinction
        files.append(
            str(
                plots.plot_star_extinctions(
                    star_pct[1],
                    reference,
                    workdir / "fig3_star_extinctions.png",
                    reference_label="true" if truth is not None else "observed",
                )
            )
        )
        files.append(
            str(
                plots.plot_extinction_maps(
                    pgrid,
                    maps["total_extinction_pct"][1],
                    workdir / "fig4_extinction_maps.png",
                    true=true_total,
                )
            )
        )
        distances = list(
            out_cfg.get("slice_distances_pc", None) or np.linspace(*pgrid.d_range_pc, 6)[1:-1]
        )
        files.append(
            str(
                plots.plot_density_slices(
                    pgrid,
                    maps["density_pct"][1],
                    distances,
                    workdir / "fig5_density_slices.png",
                    true=true_density,
                )
            )
        )
        sightlines = list(
            out_cfg.get("sightlines", None)
            or [(float(np.mean(pgrid.l_range_deg)), float(np.mean(pgrid.b_range_deg)))]
        )
        if truth is not None:  # through each clump, as in fig. B.1
            from dustjax.geometry import cartesian_to_galactic_np

            lon, lat, _ = cartesian_to_galactic_np(truth["field"].centres_xyz)
            sightlines = [(float(a), float(c)) for a, c in zip(lon, lat, strict=True)]
        files.append(
            str(
                plots.plot_los_profiles(
                    pgrid,
                    maps["density_pct"],
                    maps["extinction_pct"],
                    sightlines,
                    workdir / "figB1_sightlines.png",
                    true_density=true_density,
                    true_extinction=true_ext_cube,
                )
            )
        )
    summary["files"] = files
