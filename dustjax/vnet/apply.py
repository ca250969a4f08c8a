"""From data to maps: a trained V-net applied to star catalogues and literature cubes.

Chen, Qin & Li sect. 4 and appendix A, as one library (the CLI `experiments/apply.py`, the
notebook `colab/vnet_apply.ipynb` and `benchmarks/apply.py` all call these functions):

1. **Catalogue -> extinction cube** (sect. 4.2): each cell is the eq.-5 weighted mean of its k
   nearest stars (`dustjax.vnet.gridding.knn_weights`). Negative gridded extinctions (noisy
   catalogues) are clipped to 0 before eq. 1, which needs E > -1 and a physical E >= 0.
2. **Literature cube -> extinction cube** (sect. 4.1): a Cartesian density cube (Vergely et al.
   2022 format or a WCS) regridded onto the region by nearest neighbour, smoothed first with a
   Gaussian of FWHM sqrt(cell^2 - step^2) where the region's cells are coarser than the cube's
   (the paper's 10 pc -> 60 pc for LR), then integrated by the exact LOS operator.
3. **Prediction**: E -> eq. 1 -> V-net -> inverse of eq. 2 -> density (mag/pc).
4. **Monte Carlo uncertainties** (fig. A6): ``num_redraws`` catalogues with E ~ N(E, sigma_E),
   gridded with the same neighbours and weights, predicted in batches on the device; per cell
   the mean and dispersion of the density, and the dispersion of the integrated extinction at
   every cell centre (the LOS operator applied to each redraw's density).
5. **Sub-regions** (appendix A, fig. A8): only the cells inside a sub-box hold data; every other
   cell gets an independent uniform random value in [min, max] of the data inside the sub-box
   (a new draw for every Monte Carlo redraw); the prediction is kept inside the sub-box.
6. **Consistency** (fig. 11): the predicted density integrated back to every star,
   E_rho = `dustjax.los.integrate_to_points` (exact path lengths through the cells, the LOS
   operator's kernel evaluated at the star instead of a cell centre; dust outside the region
   counts as zero), against the catalogue's E.
7. **Outputs** (`dustjax.vnet.output`): FITS cubes with a Cartesian WCS and the Sun's position
   (`dustjax.maps`), a JSON summary, and the figures of `dustjax.vnet.plots`: XY/XZ slices
   (figs. A1-A4, A6), a face-on map of |Z| < 400 pc (fig. A5).

Nothing here imports tensorflow; astropy and matplotlib are imported only to write files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dustjax import catalog as cat
from dustjax import maps
from dustjax.geometry import Region
from dustjax.los import integrate_to_points, los_operator
from dustjax.vnet import gridding
from dustjax.vnet.transforms import denormalise_density, normalise_extinction

log = logging.getLogger(__name__)

Predictor = Callable[[jax.Array], jax.Array]
"""``predict(extinction (B, nx, ny, nz) mag) -> density (B, nx, ny, nz) mag/pc``, jit-able."""


class ApplyError(ValueError):
    """Inputs the apply pipeline cannot use (model/region mismatch, cube not covering, ...)."""


# ==== the model ===================================================================================
def density_predictor(model, variables) -> Predictor:
    """Wrap a flax V-net: extinction (mag) -> eq. 1 -> model -> inverse eq. 2 -> mag/pc."""

    def predict(extinction):
        extinction_hat = normalise_extinction(jnp.maximum(extinction, 0.0))[..., None]
        density_hat = model.apply(variables, extinction_hat, train=False)
        return denormalise_density(density_hat[..., 0].astype(jnp.float32))

    return predict


def model_region(workdir: str | os.PathLike) -> Region:
    """The region (box and cube size) a training workdir was trained on."""
    from dustjax.training.workdir import CONFIG_FILE, WrongMethodError, require_method
    from dustjax.vnet.data import region_of

    workdir = Path(workdir)
    if not (workdir / CONFIG_FILE).exists():
        raise ApplyError(f"{workdir} is not a training workdir (no {CONFIG_FILE})")
    try:
        return region_of(require_method(workdir, "vnet", "apply"))
    except WrongMethodError as err:
        raise ApplyError(str(err)) from None


def load_predictor(
    workdir: str | os.PathLike, region: Region | None = None, which="best", symmetry="none"
):
    """``(predictor, region, config)`` of a trained run in `workdir` (via `dustjax.training`).

    With ``region`` given, the run must have been trained on the same box and cube size:
    otherwise `ApplyError` names both (a V-net trained for SR has no meaning on LR data).
    ``symmetry`` ("none", "flip_y", "flips", "dihedral"; `dustjax.vnet.symmetry`) averages the
    prediction over the reflections (and Y-Z swaps) of the region that map its lines of sight
    onto each other and that the training simulations share (both checked).
    """
    from dustjax.training import load_config, load_trained
    from dustjax.vnet import symmetry as sym
    from dustjax.vnet.data import simulator_name

    trained = model_region(workdir)
    if region is not None:
        check_model_region(trained, region, workdir)
    # the symmetry is checked against the box and the training data before the slow load
    simulator = simulator_name(load_config(workdir))
    transforms = sym.region_symmetries(trained, symmetry, simulator)
    model, variables, config = load_trained(workdir, which=which)
    # The run's own normalisation and head (eq. 1-2 + ReLU for the paper's runs: the same numbers
    # as `density_predictor`; asinh / variance head for the real-sky runs).
    from dustjax.vnet.normalisation import predictor_from_config

    point = predictor_from_config(config, model, variables, workdir).density
    return sym.symmetrised(point, transforms), trained, config


def model_workdirs(model) -> list[str]:
    """``--model``'s workdirs: one, or several comma-separated or in a list (an ensemble)."""
    parts = model if isinstance(model, (list, tuple)) else str(model).split(",")
    names = [str(m).strip() for m in parts if str(m).strip()]
    if not names:
        raise ApplyError(f"--model names no workdir: {model!r}")
    if len(set(names)) != len(names):
        raise ApplyError(f"--model names a workdir twice: {model!r}")
    return names


def load_ensemble_predictor(workdirs, region: Region | None = None, symmetry="none"):
    """``(predictor, region, config)`` of several independently trained runs: their maps'
    mean (an ensemble). Each is loaded as `load_predictor` loads it (its own normalisation and
    head), and all must have been trained on the same region and cube size. Why: one training
    is one draw; on the real LR cube three networks scoring 0.67-0.80 alone average to 0.89
    (docs/validation.md, "Ensembles of the trained networks"). ``config`` is the first run's
    (its bad-input checks)."""
    workdirs = [str(w) for w in workdirs]
    first = model_region(workdirs[0])
    for w in workdirs[1:]:
        check_model_region(model_region(w), first, w)
    loaded = [load_predictor(w, region, symmetry=symmetry) for w in workdirs]
    members = [p for p, _, _ in loaded]
    if len(members) == 1:
        return loaded[0]

    def mean(extinction):
        return sum(p(extinction) for p in members) / len(members)

    return mean, loaded[0][1], loaded[0][2]


def check_model_region(trained: Region, region: Region, workdir="the model") -> None:
    """`ApplyError` unless a model trained on `trained` may be applied to `region`."""
    same_box = np.allclose(trained.lower_pc, region.lower_pc) and np.allclose(
        trained.upper_pc, region.upper_pc
    )
    if tuple(trained.shape) != tuple(region.shape):
        raise ApplyError(
            f"{workdir} was trained on cubes of {trained.shape} cells ({trained}) but the data "
            f"are gridded on {region.shape} ({region}); retrain or grid the data on the model's "
            "region"
        )
    if not same_box:
        raise ApplyError(
            f"{workdir} was trained for {trained}, not for {region}: the LOS geometry differs, "
            "so the model does not apply; train one for this region"
        )


# ==== literature cubes (sect. 4.1) ================================================================


# ==== sub-regions (appendix A) ====================================================================
def subregion_mask(region: Region, bounds_pc) -> np.ndarray:
    """Cells whose centres lie in the box ``((x0, x1), (y0, y1), (z0, z1))`` (pc)."""
    b = np.asarray(bounds_pc, np.float64).reshape(3, 2)
    if np.any(b[:, 1] <= b[:, 0]):
        raise ApplyError(f"sub-region bounds must be (lower, upper) per axis, got {b.tolist()}")
    c = region.cell_centres_pc()
    mask = np.all((c >= b[:, 0]) & (c <= b[:, 1]), axis=-1)
    if not mask.any():
        raise ApplyError(f"the sub-region {b.tolist()} holds no cell centre of {region}")
    return mask


def fill_outside(extinction, inside_mask, key) -> jax.Array:
    """Appendix A: cells outside the mask <- uniform random in [min, max] of the cells inside.

    ``extinction`` ``(..., nx, ny, nz)``; each cube of the batch gets its own range and draws.
    """
    extinction = jnp.asarray(extinction)
    inside = jnp.asarray(inside_mask)
    axes = (-3, -2, -1)
    lo = jnp.min(jnp.where(inside, extinction, jnp.inf), axis=axes, keepdims=True)
    hi = jnp.max(jnp.where(inside, extinction, -jnp.inf), axis=axes, keepdims=True)
    noise = jax.random.uniform(key, extinction.shape, extinction.dtype)
    return jnp.where(inside, extinction, lo + (hi - lo) * noise)


def edge_profile(prediction, reference, inside_mask, cell_pc) -> dict[str, list[float]]:
    """RMS of prediction - reference inside the sub-region, by distance (in cells) to its edge.

    Shows the edge effect of fig. A8: the error grows towards the sub-region's boundary.
    """
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(np.asarray(inside_mask))  # 1 on the boundary layer
    diff = np.asarray(prediction) - np.asarray(reference)
    rows = dict(depth_cells=[], depth_pc=[], rms=[], count=[])
    for d in np.unique(np.floor(depth[depth > 0])):
        sel = np.floor(depth) == d
        rows["depth_cells"].append(float(d))
        rows["depth_pc"].append(float(d * np.mean(cell_pc)))
        rows["rms"].append(float(np.sqrt(np.mean(diff[sel] ** 2))))
        rows["count"].append(int(sel.sum()))
    return rows


# ==== catalogue -> map ============================================================================
@dataclasses.dataclass
class MapResult:
    """Everything a run produces (numpy arrays on the host; cubes ``(nx, ny, nz)``).

    ``density`` is the prediction from the nominal extinction cube; ``density_mean`` and
    ``density_std`` come from the Monte Carlo redraws (None without redraws);
    ``extinction_std`` is the Monte Carlo dispersion of the integrated extinction at every cell
    centre. ``truth`` is the reference density when one is known (literature cube, demo).
    """

    region: Region
    extinction: np.ndarray
    density: np.ndarray
    density_mean: np.ndarray | None = None
    density_std: np.ndarray | None = None
    extinction_std: np.ndarray | None = None
    truth: np.ndarray | None = None
    inside_mask: np.ndarray | None = None
    star_extinction: np.ndarray | None = None
    star_e_rho: np.ndarray | None = None
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)


def predict_one(predictor: Predictor, extinction) -> np.ndarray:
    """The density of one extinction cube ``(nx, ny, nz)`` (compiled once per predictor)."""
    from dustjax.vnet import montecarlo

    return montecarlo.predict_one(predictor, extinction)


def redraw_gridder(knn: gridding.KNNWeights, catalog: cat.StarCatalog, batch_size: int):
    """``grid(key) -> (batch_size, *knn.shape)``: the catalogue's extinctions redrawn
    E ~ N(E, sigma_E), gridded with the nominal eq.-5 neighbours and weights, clipped at 0.

    Only the stars that are a neighbour of some cell are drawn (`KNNWeights.compact`), padded
    as the fused route pads them (the same draws). Pure JAX: call it inside a jitted step
    (`monte_carlo`, `dustjax.vnet.realsky.monte_carlo_band`).
    """
    from dustjax.vnet.montecarlo import redraw_cubes, redraw_inputs

    ext, sig, idx, w = (jnp.asarray(x) for x in redraw_inputs(knn, catalog))
    shape = tuple(knn.shape)

    def grid(key):
        return redraw_cubes(key, ext, sig, idx, w, batch_size, shape)

    return grid


def monte_carlo(
    predictor: Predictor,
    knn: gridding.KNNWeights,
    catalog: cat.StarCatalog,
    region: Region,
    *,
    num_redraws: int = 300,
    batch_size: int = 16,
    seed: int = 0,
    inside_mask=None,
    reference=None,
    progress: bool = True,
    fused: bool = True,
) -> dict[str, np.ndarray]:
    """Redraw E ~ N(E, sigma_E) ``num_redraws`` times, grid, predict; per-cell moments.

    ``fused`` (default): the whole loop as one program sharded over the local devices
    (`dustjax.vnet.montecarlo`, the same numbers); else one jitted step per batch from Python.

    Only the stars that are a neighbour of some cell are drawn (`KNNWeights.compact`). Moments
    are accumulated on the device around ``reference`` (the nominal prediction) for accuracy:
    ``sum(x - ref)`` and ``sum((x - ref)^2)``. Every batch has the same shape (the last one is
    padded and its padding masked), so one program is compiled.
    """
    if num_redraws < 2:
        raise ApplyError(f"num_redraws must be >= 2 for a dispersion, got {num_redraws}")
    if fused:
        from dustjax.vnet import montecarlo

        fill = None if inside_mask is None else fill_outside
        return montecarlo.monte_carlo(
            predictor, knn, catalog, region, num_redraws=num_redraws, batch_size=batch_size,
            seed=seed, inside_mask=inside_mask, reference=reference, fill=fill,
        )  # fmt: skip
    op = los_operator(region)
    ref = jnp.zeros(region.shape, jnp.float32) if reference is None else jnp.asarray(reference)
    ref_ext = op(ref)
    mask = None if inside_mask is None else jnp.asarray(inside_mask)
    batch_size = int(max(1, min(batch_size, num_redraws)))
    shape = tuple(region.shape)
    grid_redraws = redraw_gridder(knn, catalog, batch_size)

    @jax.jit
    def step(carry, key, valid):
        draw_key, fill_key = jax.random.split(key)
        cubes = grid_redraws(draw_key)
        if mask is not None:
            cubes = fill_outside(cubes, mask, fill_key)
        density = predictor(cubes)
        extinction = op(density)
        v = valid[:, None, None, None]
        dd = (density - ref) * v
        de = (extinction - ref_ext) * v
        s1, s2, e1, e2 = carry
        return (s1 + dd.sum(0), s2 + (dd**2).sum(0), e1 + de.sum(0), e2 + (de**2).sum(0))

    zeros = jnp.zeros(shape, jnp.float32)
    carry = (zeros, zeros, zeros, zeros)
    base = jax.random.key(seed)
    num_batches = -(-num_redraws // batch_size)
    batches = range(num_batches)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"Monte Carlo ({num_redraws} redraws)", unit="batch")
    for b in batches:
        count = min(batch_size, num_redraws - b * batch_size)
        valid = jnp.arange(batch_size) < count
        carry = step(carry, jax.random.fold_in(base, b), valid.astype(jnp.float32))
    s1, s2, e1, e2 = (np.asarray(x, np.float64) for x in carry)
    n = num_redraws
    mean = np.asarray(ref) + s1 / n
    var = np.clip((s2 - s1**2 / n) / (n - 1), 0.0, None)
    ext_var = np.clip((e2 - e1**2 / n) / (n - 1), 0.0, None)
    return dict(
        density_mean=mean.astype(np.float32),
        density_std=np.sqrt(var).astype(np.float32),
        extinction_std=np.sqrt(ext_var).astype(np.float32),
    )


def consistency(density, region: Region, catalog: cat.StarCatalog) -> tuple[np.ndarray, dict]:
    """Fig. 11: E_rho (the density integrated to each star) and statistics of E_rho - E."""
    e_rho = np.asarray(integrate_to_points(density, region, catalog.xyz_pc), np.float64)
    diff = e_rho - catalog.extinction
    q16, q50, q84 = np.percentile(diff, [16, 50, 84])
    pull = diff / catalog.sigma_extinction
    stats = dict(
        num_stars=int(len(diff)),
        median_difference_mag=float(q50),
        spread_difference_mag=float(0.5 * (q84 - q16)),
        std_difference_mag=float(np.std(diff)),
        median_pull=float(np.median(pull)),
        fraction_within_1sigma=float(np.mean(np.abs(pull) < 1)),
        fraction_within_3sigma=float(np.mean(np.abs(pull) < 3)),
        median_sigma_extinction_mag=float(np.median(catalog.sigma_extinction)),
    )
    if catalog.sigma_distance is not None:
        # Distance errors folded into the extinction's: sigma_eff = hypot(sigma_E, rho sigma_d),
        # rho the map's density in the star's cell (dE/dd there).
        cells = region.cell_index(catalog.xyz_pc)
        ok = np.all(cells >= 0, axis=-1)
        rho = np.zeros(len(diff))
        rho[ok] = np.asarray(density, np.float64)[tuple(cells[ok].T)]
        sigma_eff = np.hypot(catalog.sigma_extinction, rho * catalog.sigma_distance)
        stats["median_sigma_eff_mag"] = float(np.median(sigma_eff))
        stats["fraction_within_1sigma_eff"] = float(np.mean(np.abs(diff) < sigma_eff))
    return e_rho, stats


def run_catalog(
    catalog: cat.StarCatalog,
    region: Region,
    predictor: Predictor,
    *,
    k: int | None = None,
    num_redraws: int = 300,
    batch_size: int = 16,
    seed: int = 0,
    knn_backend: str = "auto",
    subregion=None,
    truth=None,
    progress: bool = True,
    model_config=None,
) -> MapResult:
    """A star catalogue -> density map with Monte Carlo uncertainties and the fig.-11 check.

    ``subregion`` ``((x0, x1), (y0, y1), (z0, z1))`` (pc) keeps only the stars inside it and
    fills the cells outside with random values (appendix A). ``truth`` (a density cube, e.g.
    the demo's) adds residual statistics. ``num_redraws=0`` skips the Monte Carlo.
    A failed fig.-11 check logs a WARNING and sets ``summary["consistency_warning"]``; with the
    model's training ``model_config``, a catalogue unlike the training data (or a model trained
    without the observation loop) sets ``summary["input_warnings"]`` (`dustjax.vnet.checks`).
    """
    from dustjax.vnet import checks

    input_warnings = checks.training_mismatch_warnings(catalog, model_config)
    for line in input_warnings:
        log.warning("bad input: %s", line)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    inside = None
    if subregion is not None:
        inside = subregion_mask(region, subregion)
        b = np.asarray(subregion, np.float64).reshape(3, 2)
        keep = np.all((catalog.xyz_pc >= b[:, 0]) & (catalog.xyz_pc <= b[:, 1]), axis=-1)
        log.info("sub-region: %d of %d stars inside %s", keep.sum(), len(catalog), b.tolist())
        catalog = catalog.select(keep)
    if len(catalog) == 0:
        raise ApplyError("no star left in the region (or sub-region) to grid")
    knn = gridding.knn_weights(region, catalog, k, backend=knn_backend)
    extinction = np.maximum(knn.apply(catalog.extinction), 0.0).astype(np.float32)
    timings["knn_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    nominal_input = extinction
    if inside is not None:
        nominal_input = np.asarray(fill_outside(extinction, inside, jax.random.key(seed + 1)))
    density = predict_one(predictor, nominal_input)
    timings["predict_s"] = time.perf_counter() - t

    mc = {}
    if num_redraws:
        t = time.perf_counter()
        mc = monte_carlo(
            predictor,
            knn,
            catalog,
            region,
            num_redraws=num_redraws,
            batch_size=batch_size,
            seed=seed,
            inside_mask=inside,
            reference=density,
            progress=progress,
        )
        timings["monte_carlo_s"] = time.perf_counter() - t

    t = time.perf_counter()
    stars = catalog
    if inside is not None:  # the check is meaningful only where the map is kept
        cells = region.cell_index(catalog.xyz_pc)
        ok = np.all(cells >= 0, axis=-1)
        ok[ok] = inside[tuple(cells[ok].T)]
        stars = catalog.select(ok)
    e_rho, check = consistency(density, region, stars)
    timings["consistency_s"] = time.perf_counter() - t
    warning = checks.consistency_warning(check)
    if warning:
        log.warning("%s", warning)

    summary = dict(
        input="catalogue",
        region=region.to_dict(),
        catalogue=catalog.summary(),
        k=knn.k,
        num_redraws=int(num_redraws),
        consistency=check,
        density=_cube_stats(density, inside),
        timings_s=timings,
    )
    if warning:
        summary["consistency_warning"] = warning
    if input_warnings:
        summary["input_warnings"] = input_warnings
    if mc:
        summary["density_std"] = _cube_stats(mc["density_std"], inside)
    if subregion is not None:
        summary["subregion_pc"] = np.asarray(subregion, float).reshape(3, 2).tolist()
    if truth is not None:
        summary["residual_vs_truth"] = residual_stats(density, truth, inside)
        if inside is not None:
            summary["edge_profile"] = edge_profile(density, truth, inside, region.cell_size_pc)
    return MapResult(
        region=region,
        extinction=extinction,
        density=density,
        truth=None if truth is None else np.asarray(truth, np.float32),
        inside_mask=inside,
        star_extinction=stars.extinction,
        star_e_rho=e_rho,
        summary=summary,
        **mc,
    )


def run_literature(
    dustmap: maps.DustMap,
    region: Region,
    predictor: Predictor,
    *,
    smooth: bool | None = None,
    subregion=None,
    seed: int = 0,
) -> MapResult:
    """Sect. 4.1: literature density -> regrid -> LOS integral -> V-net -> residuals (fig. 10)."""
    t0 = time.perf_counter()
    truth = maps.regrid_nearest(dustmap, region, smooth)
    extinction = np.asarray(los_operator(region)(truth), np.float32)
    inside = None
    model_input = extinction
    if subregion is not None:
        inside = subregion_mask(region, subregion)
        model_input = np.asarray(fill_outside(extinction, inside, jax.random.key(seed)))
    density = predict_one(predictor, model_input)
    summary = dict(
        input="literature cube",
        region=region.to_dict(),
        smoothed=bool(smooth) if smooth is not None else None,
        residual_vs_truth=residual_stats(density, truth, inside),
        density=_cube_stats(density, inside),
        timings_s=dict(total_s=time.perf_counter() - t0),
    )
    if subregion is not None:
        summary["subregion_pc"] = np.asarray(subregion, float).reshape(3, 2).tolist()
        summary["edge_profile"] = edge_profile(density, truth, inside, region.cell_size_pc)
    return MapResult(
        region=region,
        extinction=extinction,
        density=density,
        truth=truth,
        inside_mask=inside,
        summary=summary,
    )


def residual_stats(prediction, truth, inside_mask=None) -> dict[str, float]:
    """Median and dispersion of rho_p - rho_t, and the fractions beyond 3 sigma (sect. 4.1)."""
    diff = np.asarray(prediction, np.float64) - np.asarray(truth, np.float64)
    if inside_mask is not None:
        diff = diff[np.asarray(inside_mask)]
    diff = diff.reshape(-1)
    sigma = float(np.std(diff))
    med = float(np.median(diff))
    return dict(
        median=med,
        dispersion=sigma,
        fraction_below_3sigma=float(np.mean(diff < med - 3 * sigma)),
        fraction_above_3sigma=float(np.mean(diff > med + 3 * sigma)),
        num_cells=int(diff.size),
    )


def _cube_stats(cube, inside_mask=None) -> dict[str, float]:
    values = np.asarray(cube, np.float64)
    if inside_mask is not None:
        values = values[np.asarray(inside_mask)]
    q = np.percentile(values, [1, 50, 99])
    return dict(
        min=float(values.min()),
        p01=float(q[0]),
        median=float(q[1]),
        p99=float(q[2]),
        max=float(values.max()),
    )
