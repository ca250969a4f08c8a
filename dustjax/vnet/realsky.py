"""The V-net (or the NNLS baseline) on a real density cube: the table of issue 17.

A real 3D dust cube (e.g. Bayestar19 in the paper's SR / LR boxes, `../shared/data/real/`) is
the truth; the method gets what an observer would give it, and is scored against the truth on
the region's cells.

- **Literature route** (`dustjax.vnet.apply.run_literature`): the cube regridded onto the
  region's cells
  (nearest cell, smoothed to the region's resolution where coarser: `maps.regrid_nearest`) is
  the truth; its exact LOS integral (`dustjax.los`) is the input.
- **Catalogue route** (`dustjax.vnet.apply.run_catalog`): stars drawn in the ORIGINAL cube's box
  (uniform in volume by default; ``distance_power`` p gives a distance density ~ d^p, p = 2 being
  uniform), their extinctions integrated exactly through the cube at its own resolution
  (`maps.integrate_cartesian`), noise sigma_E = hypot(a, b E) added, optional fractional
  distance errors applied to the reported positions, gridded by eq. 5 and predicted; Monte Carlo
  redraws of the extinctions give a per-cell band. The truth is the regridded cube, as above.

Scores (`scores`), over the region's cells:
- skill = 1 - MSE / Var(truth) (1: perfect; 0: no better than the truth's mean everywhere;
  predicting zero everywhere gives -mean^2 / var);
- dust recovered = sum(pred) / sum(truth);
- Pearson r of log10(rho + 1e-5) (faint dust counts);
- min c_r (eq. 4, `dustjax.metrics`) over the paper's k range: SR k in [0.046, 0.893] pc^-1; LR
  every shell with at least 8 modes (the paper's "c_r >= 0.6 everywhere"; the corner shell holds
  one mode, whose c_r is +-1 by construction in a single cube); other cell sizes: the SR range
  scaled by 6 pc / cell;
- catalogue route: coverage of the 16-84 % band (`monte_carlo_band`: percentiles of the Monte
  Carlo redraws, combined with the model's own variance when it has a variance head) over the
  cells with truth > 1e-4 mag/pc (target 0.60-0.76).

Cubes are read from FITS (needs astropy) or from ``NAME.npy`` with ``NAME.header.json`` (the FITS
header as JSON, data in FITS order (nz, ny, nx)): the device path needs neither astropy nor
tensorflow. Any cube with a linear Cartesian WCS (CTYPE X/Y/Z, CUNIT pc or kpc) works; a cube that
covers the region only after reflecting some axes through the Sun (e.g. the same box toward the
Galactic centre instead of the anticentre) is reflected, which keeps every line of sight's
geometry (``reflect="auto"``; recorded in the output).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import numpy as np

from dustjax import catalog as cat
from dustjax import maps
from dustjax.geometry import Region
from dustjax.los import integrate_to_points
from dustjax.vnet import apply as ap
from dustjax.vnet import gridding, metrics

log = logging.getLogger(__name__)

SR_K_RANGE = (0.046, 0.893)  # pc^-1, Chen, Qin & Li sect. 3.3, for 6 pc cells
COVERAGE_MIN_TRUTH = 1e-4  # mag/pc: the cells where the band coverage is measured
LOG_FLOOR = 1e-5  # mag/pc: log10(rho + 1e-5) for the Pearson r
MIN_SHELL_MODES = 8  # LR's "every shell" skips the corner shell of one mode


class RealSkyError(ValueError):
    """A cube or a setting this evaluation cannot use."""


# ==== reading cubes ===============================================================================
def load_cube(path: str | os.PathLike, density_scale: float | None = None) -> maps.DustMap:
    """A Cartesian density cube from FITS, or from ``.npy`` + ``.header.json`` (no astropy);
    blank cells -> 0 (`dustjax.maps.load_cartesian_cube`)."""
    try:
        return maps.load_cartesian_cube(path, density_scale=density_scale)
    except maps.MapError as err:
        raise RealSkyError(str(err)) from err


def cube_from_array(data, header: dict[str, Any], density_scale: float | None = None):
    """A `maps.DustMap` from a FITS-ordered array ``(nz, ny, nx)`` and its header as a dict
    (`dustjax.maps.DustMap.from_array`: linear X, Y, Z axes, pc or kpc, CDELT < 0 flipped)."""
    try:
        return maps.DustMap.from_array(data, header, density_scale=density_scale)
    except maps.MapError as err:
        raise RealSkyError(str(err)) from err


def covers(dustmap: maps.DustMap, region: Region) -> bool:
    """Whether the cube's box holds every cell centre of `region`."""
    for a in range(3):
        c = region.centres_pc(a)
        if c[0] < dustmap.edges[a][0] or c[-1] > dustmap.edges[a][-1]:
            return False
    return True


def reflect(dustmap: maps.DustMap, axes) -> maps.DustMap:
    """The cube mirrored through the Sun along `axes` (x -> -x): lines of sight map onto lines
    of sight, so E and every score are unchanged."""
    density = dustmap.density
    edges = list(dustmap.edges)
    for a in axes:
        density = np.flip(density, axis=a)
        edges[a] = -edges[a][::-1]
    return maps.DustMap("cartesian", np.ascontiguousarray(density), tuple(edges), meta=dustmap.meta)


def fit_to_region(dustmap: maps.DustMap, region: Region, mode: str = "auto"):
    """``(cube, reflected_axes)``: the cube as it is if it covers `region`; with ``mode="auto"``
    otherwise the first reflection (fewest axes) that does; `RealSkyError` if none."""
    if covers(dustmap, region):
        return dustmap, ()
    if mode == "auto":
        import itertools

        for n in (1, 2, 3):
            for axes in itertools.combinations(range(3), n):
                mirrored = reflect(dustmap, axes)
                if covers(mirrored, region):
                    log.info(
                        "cube reflected along %s to cover %s", ["XYZ"[a] for a in axes], region
                    )
                    return mirrored, axes
    bounds = ", ".join(
        f"{n} [{e[0]:g}, {e[-1]:g}]" for n, e in zip("XYZ", dustmap.edges, strict=True)
    )
    raise RealSkyError(f"the cube ({bounds} pc) does not cover {region}")


def parse_region(spec: str, shape=None) -> Region:
    """ "SR", "LR", or "x0,x1,y0,y1,z0,z1" (pc; 32^3 cells unless `shape`)."""
    if spec.upper() in ("SR", "LR"):
        region = Region.named(spec)
        return region if shape is None or tuple(shape) == region.shape else region.with_shape(shape)
    v = [float(x) for x in spec.split(",")]
    if len(v) != 6:
        raise RealSkyError(
            f"--region must be SR, LR or six numbers x0,x1,y0,y1,z0,z1; got {spec!r}"
        )
    return Region((v[0], v[2], v[4]), (v[1], v[3], v[5]), tuple(shape or (32, 32, 32)))


# ==== the mock catalogue ==========================================================================
def draw_positions(box: Region, num_stars: int, rng, distance_power: float = 2.0) -> np.ndarray:
    """``(num_stars, 3)`` positions in `box` with distance density ~ d^distance_power.

    Uniform in volume is p = 2; other p by rejection from uniform draws with acceptance
    (d / d_ref)^(p - 2), d_ref the largest (p > 2) or smallest non-zero (p < 2) distance of a
    pilot draw (distances below one cell are floored to one cell for p < 2).
    """
    lo, hi = np.asarray(box.lower_pc), np.asarray(box.upper_pc)
    if distance_power == 2.0:
        return rng.uniform(lo, hi, (num_stars, 3))
    floor = float(min(box.cell_size_pc))
    out = []
    need = num_stars
    pilot = np.linalg.norm(rng.uniform(lo, hi, (10000, 3)), axis=1)
    d_ref = pilot.max() if distance_power > 2 else floor
    while need > 0:
        xyz = rng.uniform(lo, hi, (max(4 * need, 1000), 3))
        d = np.maximum(np.linalg.norm(xyz, axis=1), floor)
        p = np.clip((d / d_ref) ** (distance_power - 2.0), 0.0, 1.0)
        keep = xyz[rng.uniform(size=len(xyz)) < p][:need]
        out.append(keep)
        need -= len(keep)
    return np.concatenate(out)


def mock_catalog(
    dustmap: maps.DustMap,
    region: Region,
    *,
    num_stars: int = 30_000,
    sigma_a: float = 0.03,
    sigma_b: float = 0.05,
    distance_error: float = 0.0,
    distance_power: float = 2.0,
    seed: int = 0,
) -> tuple[cat.StarCatalog, dict[str, Any]]:
    """Stars in the cube's box, E integrated through the cube, noise, reported positions.

    sigma_E = hypot(sigma_a, sigma_b E_true) (mag); E_obs = E_true + sigma_E N(0, 1); with a
    ``distance_error`` f > 0 the reported distance is d (1 + f N(0, 1)) (along the same line of
    sight) and the catalogue carries sigma_distance = f d. Stars reported outside `region` are
    dropped (the catalogue counts them).
    """
    if num_stars < 1:
        raise RealSkyError(f"num_stars must be positive, got {num_stars}")
    rng = np.random.default_rng(seed)
    box = dustmap.region
    xyz = draw_positions(box, num_stars, rng, distance_power)
    true_e = np.asarray(integrate_to_points(dustmap.density, dustmap.edges, xyz), np.float64)
    sigma = np.hypot(sigma_a, sigma_b * true_e)
    if np.any(sigma <= 0):
        raise RealSkyError("sigma_E = hypot(a, b E) must be positive: give sigma_a > 0")
    observed = true_e + sigma * rng.standard_normal(len(true_e))
    reported = xyz
    sigma_d = None
    if distance_error > 0:
        factor = np.abs(1.0 + distance_error * rng.standard_normal(len(xyz)))
        reported = xyz * factor[:, None]
        sigma_d = distance_error * np.linalg.norm(xyz, axis=1)
    catalog = cat.StarCatalog.from_arrays(
        xyz_pc=reported,
        extinction=observed,
        sigma_extinction=sigma,
        sigma_distance=sigma_d,
        region=region,
        source="realsky mock catalogue",
    )
    info = dict(
        num_drawn=int(num_stars),
        num_in_region=len(catalog),
        sigma_a=float(sigma_a),
        sigma_b=float(sigma_b),
        distance_error=float(distance_error),
        distance_power=float(distance_power),
        true_extinction_max=float(true_e.max()),
        true_extinction_median=float(np.median(true_e)),
    )
    return catalog, info


# ==== scores ======================================================================================
def k_range(region: Region) -> tuple[float, float] | None:
    """The k range (pc^-1) of min c_r: SR's paper range, LR every shell (None), else scaled."""
    base = str(region.name).split("@")[0].upper()
    if base == "LR":
        return None
    cell = float(np.mean(region.cell_size_pc))
    return (SR_K_RANGE[0] * 6.0 / cell, SR_K_RANGE[1] * 6.0 / cell)


def scores(
    prediction,
    truth,
    region: Region,
    *,
    band=None,
    mask=None,
) -> dict[str, Any]:
    """Skill, dust recovered, log-r, min c_r and (with ``band = (p16, p84)``) its coverage:
    the fraction of cells with truth > 1e-4 mag/pc where p16 <= truth <= p84.

    Known answers: the truth itself scores skill 1, dust 1, r 1, c_r 1; predicting zero scores
    skill -mean^2/var, dust 0 (tests). ``mask`` restricts every score but c_r to some cells.
    """
    p = np.asarray(prediction, np.float64)
    t = np.asarray(truth, np.float64)
    if p.shape != t.shape:
        raise RealSkyError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    sel = np.ones(t.shape, bool) if mask is None else np.asarray(mask, bool)
    pv, tv = p[sel], t[sel]
    var = float(np.var(tv))
    out: dict[str, Any] = dict(
        skill=float(1.0 - np.mean((pv - tv) ** 2) / var) if var > 0 else float("nan"),
        dust_recovered=float(pv.sum() / tv.sum()) if tv.sum() > 0 else float("nan"),
        log_r=_pearson(
            np.log10(np.maximum(pv, 0) + LOG_FLOOR), np.log10(np.maximum(tv, 0) + LOG_FLOOR)
        ),
        rmse=float(np.sqrt(np.mean((pv - tv) ** 2))),
        truth_mean=float(tv.mean()),
        truth_std=float(np.sqrt(var)),
        num_cells=int(sel.sum()),
    )
    krange = k_range(region)
    out["c_r_k_range"] = "all shells" if krange is None else [float(x) for x in krange]
    if np.ptp(p) == 0 or np.ptp(t) == 0:
        out["min_c_r"] = float("nan")  # a constant cube has no spectrum: c_r is undefined
    else:
        table = metrics.cross_correlation_coefficient(t, p, region.cell_size_pc)
        if krange is None:
            # Every shell but the corner's, which holds a single mode (c_r = +-1 by construction).
            enough = table["num_modes"] >= MIN_SHELL_MODES
            out["min_c_r"] = float(np.nanmin(table["c_r"][enough]))
        else:
            out["min_c_r"] = metrics.min_c_r_in_range(table, *krange)
    # The diffuse medium: how much of the dust in the faint cells comes back.
    for lo, hi in ((0.0, 1e-4), (1e-4, 1e-3), (1e-3, np.inf)):
        s = (tv >= lo) & (tv < hi)
        key = f"dust_recovered_truth_{lo:g}_{hi:g}"
        out[key] = float(pv[s].sum() / tv[s].sum()) if s.any() and tv[s].sum() > 0 else None
    if band is not None:
        lo, hi = (np.asarray(b, np.float64)[sel] for b in band)
        faint = tv > COVERAGE_MIN_TRUTH
        inside = (tv >= lo) & (tv <= hi)
        out["band_coverage"] = float(inside[faint].mean()) if faint.any() else float("nan")
        out["band_coverage_num_cells"] = int(faint.sum())
        width = 0.5 * (hi - lo)
        out["band_median_half_width"] = float(np.median(width[faint])) if faint.any() else None
    return out


def _pearson(a, b) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / denom) if denom > 0 else float("nan")


# ==== models ======================================================================================
def load_model(
    model: str, region: Region, *, nnls_steps=None, nnls_smoothness=None, route="catalogue"
):
    """``(predictor, hat_model or None, info)`` for a training workdir or ``"nnls"``.

    ``hat_model`` is the workdir's model when it has a variance head (the
    ``dustjax.vnet.normalisation.load_model_predictor``: ``.predict_hat(E) -> (mu_hat,
    sigma_hat)`` and ``.band(mu_hats, sigma_hats) -> dict(mean, p16, p84)``); otherwise None and
    the band comes from the Monte Carlo alone.
    """
    if model == "nnls":
        from dustjax import inversion

        kw = {}
        if nnls_steps is not None:
            kw["num_steps"] = int(nnls_steps)
        if nnls_smoothness is not None:
            kw["smoothness"] = float(nnls_smoothness)
        predictor = inversion.nnls_predictor(region, input_kind=route, **kw)
        return predictor, None, dict(model="nnls", **predictor.nnls_settings)
    from dustjax.training import load_config
    from dustjax.vnet import normalisation

    ap.check_model_region(ap.model_region(model), region, model)
    model_predictor = normalisation.load_model_predictor(model)
    config = load_config(model)
    predictor = model_predictor.density
    hat_model = model_predictor if model_predictor.has_variance else None
    info = dict(model=str(model), variance_head=hat_model is not None)
    try:
        info["config"] = json.loads(config.to_json_best_effort())
    except Exception:  # the config is provenance only
        info["config"] = None
    return predictor, hat_model, info


def monte_carlo_band(
    predictor,
    knn,
    catalog,
    *,
    num_redraws: int = 32,
    batch_size: int = 8,
    seed: int = 0,
    hat_model=None,
) -> dict[str, np.ndarray]:
    """The 16-84 % band per cell from ``num_redraws`` redraws E ~ N(E, sigma_E).

    Each redraw is gridded with the nominal neighbours and weights (as `apply.monte_carlo`),
    clipped at 0 and predicted. Without a variance head the band is the empirical 16th and 84th
    percentiles of the redraws' densities (the noise of E only). With one (``hat_model``), the
    redraws' (mu_hat, sigma_hat) are combined by ``hat_model.band`` (law of total variance in the
    normalised space: Monte Carlo spread plus the model's own variance).
    """
    import jax

    if num_redraws < 2:
        raise RealSkyError(f"num_redraws must be >= 2 for a band, got {num_redraws}")
    shape = tuple(knn.shape)
    batch_size = int(max(1, min(batch_size, num_redraws)))
    head = None if hat_model is None else hat_model.predict_hat
    grid_redraws = ap.redraw_gridder(knn, catalog, batch_size)

    @jax.jit
    def draw(key):
        cubes = grid_redraws(key)
        return head(cubes) if head is not None else predictor(cubes)

    outs = []
    base = jax.random.key(seed)
    for b in range(-(-num_redraws // batch_size)):
        outs.append(jax.tree_util.tree_map(np.asarray, draw(jax.random.fold_in(base, b))))
    if head is None:
        dens = np.concatenate(outs)[:num_redraws]
        p16, p50, p84 = np.percentile(dens, [16, 50, 84], axis=0)
        return dict(p16=p16, p50=p50, p84=p84, std=dens.std(axis=0), source="Monte Carlo")
    mu = np.concatenate([o[0] for o in outs])[:num_redraws]
    sg = np.concatenate([o[1] for o in outs])[:num_redraws]
    band = hat_model.band(mu[:, None], sg[:, None])
    band = {
        k: np.asarray(v)[0] if np.ndim(v) == len(shape) + 1 else np.asarray(v)
        for k, v in band.items()
    }
    return dict(band, source="Monte Carlo + model variance head")


# ==== the evaluation ==============================================================================
def evaluate(
    dustmap: maps.DustMap,
    region: Region,
    predictor,
    *,
    route: str = "literature",
    hat_model=None,
    num_stars: int = 30_000,
    sigma_a: float = 0.03,
    sigma_b: float = 0.05,
    distance_error: float = 0.0,
    distance_power: float = 2.0,
    k: int | None = None,
    num_redraws: int = 32,
    batch_size: int = 8,
    seed: int = 0,
    model_config=None,
    refine_floors=(),
    refine_corr=(),
    refine_grid=(1,),
    refine_cv=None,
) -> tuple[dict[str, Any], ap.MapResult]:
    """One row of the table: ``(report, map_result)``. ``model_config`` (the model's training
    config, dict or ConfigDict) turns on the bad-input warnings of `dustjax.vnet.checks`.

    ``refine_floors`` (mag; needs a variance head): also score the physics refinement
    (`dustjax.vnet.refine`) of the V-net's map, in ``report["refined"]``: on the literature route
    one map per noise floor of the exact cube, on the catalogue route one map from the stars,
    and one more per ``(corr_length, nugget)`` of ``refine_corr`` (correlated prior errors) and
    grid factor of ``refine_grid`` (1: the map's cells; F > 1: a grid F x finer,
    `dustjax.vnet.refine.refine_catalog_fine`).
    ``refine_cv`` (catalogue route, a dict: ``candidates`` and `dustjax.vnet.refine_cv.refine_cv`'s
    keywords): also the refinement chosen by held-out stars, ``report["refined"]["stars_cv"]``
    with its table (runs without ``refine_floors`` too)."""
    t0 = time.perf_counter()
    band = None
    catalog = None
    if route == "literature":
        result = ap.run_literature(dustmap, region, predictor)
        report: dict[str, Any] = dict(route="literature")
    elif route == "catalogue":
        truth = maps.regrid_nearest(dustmap, region)
        catalog, info = mock_catalog(
            dustmap,
            region,
            num_stars=num_stars,
            sigma_a=sigma_a,
            sigma_b=sigma_b,
            distance_error=distance_error,
            distance_power=distance_power,
            seed=seed,
        )
        result = ap.run_catalog(
            catalog,
            region,
            predictor,
            k=k,
            num_redraws=0,
            truth=truth,
            progress=False,
            model_config=model_config,
        )
        report = dict(route="catalogue", catalogue=info, k=result.summary["k"])
        report["consistency"] = result.summary.get("consistency")
        for key in ("consistency_warning", "input_warnings"):
            if key in result.summary:
                report[key] = result.summary[key]
        if num_redraws:
            t = time.perf_counter()
            knn = gridding.knn_weights(region, catalog, k)
            mc = monte_carlo_band(
                predictor,
                knn,
                catalog,
                num_redraws=num_redraws,
                batch_size=batch_size,
                seed=seed + 1,
                hat_model=hat_model,
            )
            band = (mc["p16"], mc["p84"])
            result.density_std = np.asarray(0.5 * (mc["p84"] - mc["p16"]), np.float32)
            report["band"] = f"{mc['source']} ({num_redraws} redraws), 16-84 %"
            report["band_seconds"] = time.perf_counter() - t
    else:
        raise RealSkyError(f"route must be 'literature' or 'catalogue', got {route!r}")
    report["region"] = region.to_dict()
    report["scores"] = scores(result.density, result.truth, region, band=band)
    if (refine_floors or (refine_cv and route == "catalogue")) and hat_model is not None:
        report["refined"] = refined_scores(
            result, region, hat_model, catalog if route == "catalogue" else None, refine_floors,
            refine_corr, refine_cv, refine_grid,
        )  # fmt: skip
    report["seconds"] = time.perf_counter() - t0
    return report, result


def refined_scores(
    result, region: Region, hat_model, catalog, floors, corr=(), cv=None, grids=(1,)
) -> dict[str, Any]:
    """Scores of the V-net map refined by the extinctions (`dustjax.vnet.refine`): from the
    stars of `catalog`, or (None: the literature route) from the cube with each noise floor;
    ``cv`` (a dict, `evaluate`'s ``refine_cv``): also the refinement chosen by held-out stars
    (`dustjax.vnet.refine_cv`; the independent-prior row only with ``floors``)."""
    from dustjax.vnet import refine, refine_cv

    prior = refine.prior_of_model(hat_model, result.extinction)
    out: dict[str, Any] = {}
    if catalog is not None:
        t = time.perf_counter()
        op = refine.catalog_operator(catalog, region)  # built once, shared by every setting
        op_seconds = time.perf_counter() - t
        if cv:
            t = time.perf_counter()
            kw = {k: v for k, v in cv.items() if k != "candidates"}
            rho, rep = refine_cv.refine_cv(catalog, *prior, region, cv["candidates"], operator=op,
                                           **kw)  # fmt: skip
            out["stars_cv"] = dict(scores=scores(rho, result.truth, region), cv=rep,
                                   seconds=time.perf_counter() - t)  # fmt: skip
        if floors:
            t = time.perf_counter()
            rho = refine.refine_catalog(catalog, *prior, region, operator=op)
            seconds = time.perf_counter() - t
            out["stars"] = dict(scores=scores(rho, result.truth, region), seconds=seconds,
                                operator_seconds=op_seconds)  # fmt: skip
        for factor in grids if corr else ():
            t = time.perf_counter()
            op_f = op if factor == 1 else refine.catalog_operator(
                catalog, refine.fine_region(region, factor))  # fmt: skip
            op_f_seconds = time.perf_counter() - t
            for setting in corr:
                t = time.perf_counter()
                ell, nu, *tau = setting
                fit: dict = {}
                rho = refine.refine_catalog_fine(
                    catalog, *prior, region, factor=factor, corr_length=ell, nugget=nu,
                    model_error=tau[0] if tau else 0.0, info=fit, operator=op_f,
                )  # fmt: skip
                out["stars_" + refine.setting_label(setting, factor)] = dict(
                    scores=scores(rho, result.truth, region), seconds=time.perf_counter() - t,
                    corr_length_cells=float(ell), nugget=float(nu), grid_factor=int(factor),
                    operator_seconds=op_f_seconds, **fit,
                )  # fmt: skip
        return out
    for floor in floors:
        t = time.perf_counter()
        rho = refine.refine_cube(result.extinction, *prior, region, sigma_floor=float(floor))
        out[f"floor_{float(floor):g}"] = dict(
            scores=scores(rho, result.truth, region), seconds=time.perf_counter() - t
        )
    return out


def save_arrays(outdir, result: ap.MapResult, hat_model=None, catalog=None) -> str:
    """``outdir/arrays.npz`` (float32 cubes): extinction (the model's input), truth, density (the
    map), density_std (the band's half-width, when there is one) and, with a variance head,
    mu_hat and sigma_hat of the nominal input and ``meta`` (JSON: region, normalisation,
    sigma_scale). With a `catalog` (the catalogue route's stars, `mock_catalog`) also
    star_xyz_pc, star_extinction, star_sigma_extinction (and star_sigma_distance when it has
    one), so the stars' refinement can be studied without the cube or the model. Written
    atomically; returns the path."""
    import dataclasses
    from pathlib import Path

    from dustjax import io as dio

    arrays = dict(extinction=result.extinction, density=result.density)
    for name in ("truth", "density_std"):
        if getattr(result, name) is not None:
            arrays[name] = getattr(result, name)
    meta: dict[str, Any] = dict(region=result.region.to_dict())
    if hat_model is not None:
        mu, sigma = hat_model.predict_hat(np.asarray(result.extinction)[None])
        arrays["mu_hat"], arrays["sigma_hat"] = np.asarray(mu)[0], np.asarray(sigma)[0]
        meta.update(normalisation=dataclasses.asdict(hat_model.normalisation),
                    sigma_scale=float(hat_model.sigma_scale))  # fmt: skip
    if catalog is not None:
        arrays.update(star_xyz_pc=catalog.xyz_pc, star_extinction=catalog.extinction,
                      star_sigma_extinction=catalog.sigma_extinction)  # fmt: skip
        if catalog.sigma_distance is not None:
            arrays["star_sigma_distance"] = catalog.sigma_distance
    arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
    arrays["meta"] = np.asarray(json.dumps(meta))
    path = Path(outdir) / "arrays.npz"
    with dio.atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, **arrays)
    return str(path)


def plot(result: ap.MapResult, report: dict[str, Any], title: str = ""):
    """Three panels: truth and prediction (XY slab through the Sun's Z) and the cell scatter."""
    from dustjax.plots import pyplot
    from dustjax.vnet.plots import sun_slab_index

    plt = pyplot()
    region = result.region
    iz = sun_slab_index(region, 2)
    ex, ey = region.edges_pc(0), region.edges_pc(1)
    truth, pred = result.truth, result.density
    vmax = float(np.percentile(truth, 99.5)) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.3))
    for ax, cube, name in ((axes[0], truth, "truth"), (axes[1], pred, "prediction")):
        im = ax.imshow(
            np.asarray(cube)[:, :, iz].T,
            origin="lower",
            extent=(ex[0], ex[-1], ey[0], ey[-1]),
            cmap="magma",
            vmin=0,
            vmax=vmax,
        )
        fig.colorbar(im, ax=ax, shrink=0.85, label="mag/pc")
        ax.set_title(f"{name}, Z slab {iz}", fontsize=9)
        ax.set_xlabel("X (pc)")
        ax.set_ylabel("Y (pc)")
    t = np.log10(np.maximum(truth.ravel(), 0) + LOG_FLOOR)
    p = np.log10(np.maximum(pred.ravel(), 0) + LOG_FLOOR)
    lo, hi = min(t.min(), p.min()), max(t.max(), p.max())
    axes[2].hexbin(t, p, gridsize=60, extent=(lo, hi, lo, hi), bins="log", mincnt=1)
    axes[2].plot([lo, hi], [lo, hi], "b--", lw=1)
    axes[2].set_xlabel("log10(true + 1e-5)")
    axes[2].set_ylabel("log10(pred + 1e-5)")
    s = report["scores"]
    axes[2].set_title(
        f"skill {s['skill']:.2f}, dust {100 * s['dust_recovered']:.0f} %, "
        f"log-r {s['log_r']:.2f}, min c_r {s['min_c_r']:.2f}",
        fontsize=9,
    )
    fig.suptitle(title or f"{report['route']} route, {region}", fontsize=9)
    fig.tight_layout()
    return fig


def write_report(
    outdir, report: dict[str, Any], result: ap.MapResult, *, figure=True, name="realsky"
):
    """``realsky.json`` (+ ``realsky.png``) in `outdir`; returns the paths."""
    from dustjax.io import atomic_path, ensure_writable_dir, write_json
    from dustjax.plots import pyplot

    outdir = ensure_writable_dir(outdir)
    files = {}
    if figure:
        fig = plot(result, report)
        path = outdir / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
        pyplot().close(fig)
        files["figure"] = str(path)
    write_json(outdir / f"{name}.json", dict(report, files=files))
    files["json"] = str(outdir / f"{name}.json")
    return files
