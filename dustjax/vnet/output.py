"""What the V-net apply pipeline writes (`dustjax.vnet.apply`): a FITS map, a JSON summary and
the figures of `dustjax.vnet.plots`; `make_map` runs the whole pipeline from its inputs (what
`experiments/apply.py` and `make apply` call)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from dustjax import io as dio
from dustjax import maps, provenance
from dustjax.plots import save_figure
from dustjax.vnet import apply as ap
from dustjax.vnet.apply import MapResult
from dustjax.vnet.plots import (
    plot_consistency,
    plot_edge_effect,
    plot_face_on,
    plot_slices,
    plot_truth_vs_prediction,
)

log = logging.getLogger(__name__)

FIGURES = ("slices", "face_on", "consistency", "truth_vs_prediction", "edge_effect")
# Every file a run writes into its output directory (what the next run sets aside)
OUTPUT_NAMES = (
    "density.fits", "summary.json", "demo_catalog.fits", *(f"{name}.png" for name in FIGURES),
)  # fmt: skip


def candidate_model_workdirs(region_name: str) -> list[Path]:
    """Where `make train REGION=...` leaves the region's V-net: the paper config's workdir on an
    accelerator, the CPU config's otherwise (``workdirs/<config name>``)."""
    name = str(region_name).lower()
    return [Path("workdirs") / f"vnet_{name}", Path("workdirs") / f"vnet_{name}_cpu"]


def default_model_workdir(region_name: str) -> Path:
    """The newest trained workdir of `candidate_model_workdirs` (apply without a model), or an
    `ApplyError` saying how to make one."""
    from dustjax.training.workdir import CONFIG_FILE

    found = [p for p in candidate_model_workdirs(region_name) if (p / CONFIG_FILE).exists()]
    if not found:
        raise ap.ApplyError(
            f"no model given and none trained for {region_name} here (looked for "
            + " and ".join(str(p) for p in candidate_model_workdirs(region_name))
            + f"): train one with `make train REGION={region_name}`, or pass --model=WORKDIR"
        )
    newest = max(found, key=lambda p: (p / CONFIG_FILE).stat().st_mtime)
    log.info("no model given: using %s, the newest V-net trained for %s", newest, region_name)
    return newest


def make_map(
    model: str | os.PathLike,
    region_name: str,
    outdir: str | os.PathLike,
    *,
    catalog: str | None = None,
    literature_cube: str | None = None,
    shape: tuple[int, int, int] | None = None,
    columns: dict[str, str] | None = None,
    coords: str = "galactic",
    format: str | None = None,
    distance_unit: str = "pc",
    k: int | None = None,
    num_redraws: int = 300,
    batch_size: int = 16,
    seed: int = 0,
    knn_backend: str = "auto",
    subregion=None,
    density_scale: float | None = None,
    demo_stars: int = 50_000,
    symmetry: str = "none",
    write_fits: bool = True,
    plots: bool = True,
    method: str = "vnet",
    nnls_smoothness: float | None = None,
    nnls_steps: int | None = None,
    refine: bool = False,
    refine_floor: float = 0.01,
    refine_corr_length: float = 0.0,
    refine_model_error="0",
    refine_grid_factor: int = 1,
    refine_reduction: str = "regrid",
) -> dict[str, str]:
    """A trained V-net (training workdir `model`; several comma-separated: an ensemble, the
    mean of their maps, `dustjax.vnet.apply.load_ensemble_predictor`) applied to a star
    catalogue (a file, or ``"demo"``: one sampled from a simulated cube) or to a literature
    cube (a FITS file), on the
    box of `region_name` with the model's cube size (or `shape`, which must match the model);
    the outputs (`write_outputs`) go to `outdir`. Returns ``{what: path}`` (``{}`` in every
    process but the first when several run: all compute, the Monte Carlo split between them,
    and process 0 writes).

    ``method="nnls"``: no network; non-negative least squares through the LOS operator
    (`dustjax.inversion.nnls_predictor`, ``nnls_smoothness`` and ``nnls_steps`` its settings) on
    the region's box (default 32^3, or `shape`); `model` is then ignored.

    ``refine``: the V-net's map becomes the prior of a MAP fit to the extinctions
    (`dustjax.vnet.refine`): to the stars themselves for a catalogue, to the literature cube's
    extinctions with the noise floor ``refine_floor`` (mag) otherwise. Needs a model with a
    variance head (the real-sky recipes); the density written is the refined one, the band (the
    Monte Carlo over the extinctions and the model's variance) stays the network's, and the
    summary records both maps' dust and the fig.-11 check of each. ``refine_corr_length`` > 0
    (cells; catalogues): the prior's errors are correlated over that length
    (`dustjax.vnet.refine.solve_correlated`, nugget `dustjax.vnet.refine.DEFAULT_NUGGET`);
    ``refine_model_error`` (catalogues): a relative model error added to the stars' sigmas, a
    number or "auto" (from the stars' chi^2; `dustjax.vnet.refine.refine_catalog`);
    ``refine_grid_factor`` F > 1 (catalogues): the fit on a grid F x finer per axis
    (`dustjax.vnet.refine.refine_catalog_fine`: the stars place their dust inside the map's
    cells; on the real LR catalogue with F = 3, docs/validation.md), put on the map's cells by
    ``refine_reduction`` (`dustjax.vnet.refine.to_region`: "regrid", as dustjax regrids any
    finer map, or "block", the block means, which keep the dust sum exactly)."""
    from dustjax import catalog as cat
    from dustjax.geometry import Region
    from dustjax.vnet import refine as rf

    if (catalog is None) == (literature_cube is None):
        raise ap.ApplyError("give exactly one of a catalogue and a literature cube")
    if method not in ("vnet", "nnls"):
        raise ap.ApplyError(f"method must be 'vnet' or 'nnls', got {method!r}")
    if refine and method != "vnet":
        raise ap.ApplyError("--refine refines a V-net's map: it needs --method=vnet")
    if refine_corr_length < 0:
        raise ap.ApplyError(f"--refine_corr_length must be >= 0 cells, got {refine_corr_length}")
    model_error = _model_error(refine_model_error)
    try:
        grid_factor = rf.grid_factor(refine_grid_factor)
    except ValueError as e:
        raise ap.ApplyError(f"--refine_grid_factor: {e}") from None
    try:
        rf.check_reduction(refine_reduction)
    except ValueError as e:
        raise ap.ApplyError(f"--refine_reduction: {e}") from None
    if grid_factor > 1 and literature_cube is not None:
        raise ap.ApplyError("--refine_grid_factor > 1 refines from a star catalogue's stars; a "
                            "literature cube's extinctions are on the map's own cells")  # fmt: skip
    if refine and not refine_floor > 0:
        raise ap.ApplyError(f"--refine_floor must be > 0 mag, got {refine_floor}")
    # Cheap checks first, slow work after: the output directory, the model's region (its
    # config.json), then the input read and validated, and only then the model loaded (15-30 s).
    outdir = dio.check_can_write_dir(outdir)
    box = Region.named(region_name)
    config = None
    if method == "nnls":
        shape = tuple(shape) if shape else box.shape
    else:
        if model is None or (str(model) == "vnet" and not Path(model).exists()):
            model = default_model_workdir(region_name)  # `make apply` without MODEL=
        members = ap.model_workdirs(model)  # several: an ensemble, the mean of their maps
        shape = tuple(shape) if shape else ap.model_region(members[0]).shape
    region = box if shape == box.shape else box.with_shape(shape)
    truth = stars = dustmap = demo_stars_catalog = None
    if literature_cube:
        dustmap = maps.DustMap.from_fits(literature_cube, density_scale=density_scale)
    elif catalog == "demo":
        from dustjax.sims.stars import demo_catalog

        d = demo_catalog(region, demo_stars, seed=seed)
        stars = demo_stars_catalog = d.catalog
        truth = d.density
    else:
        stars = cat.read_star_catalog(
            catalog, columns or {}, coords=coords, region=region, format=format,
            distance_unit=distance_unit,
        )  # fmt: skip
    if method == "nnls":
        from dustjax import inversion

        kw = {k: v for k, v in (("smoothness", nnls_smoothness), ("num_steps", nnls_steps))
              if v is not None}  # fmt: skip
        kind = "literature" if literature_cube else "catalogue"
        predictor = inversion.nnls_predictor(region, input_kind=kind, **kw)
        log.info("NNLS %s, %s", predictor.nnls_settings, region)
    else:
        predictor, region, config = ap.load_ensemble_predictor(members, region, symmetry)
        log.info("model %s, %s", model, region)
    if literature_cube:
        result = ap.run_literature(dustmap, region, predictor, subregion=subregion, seed=seed)
    else:
        log.info("%d stars (%d dropped)", len(stars), stars.num_dropped)
        result = ap.run_catalog(
            stars, region, predictor, k=k, num_redraws=num_redraws, batch_size=batch_size,
            seed=seed, knn_backend=knn_backend, subregion=subregion, truth=truth,
            model_config=config,
        )  # fmt: skip
    if refine:
        refine_map(result, members, region, stars, refine_floor, refine_corr_length,
                   model_error, grid_factor, refine_reduction)  # fmt: skip
    result.summary["method"] = method
    if method == "nnls":
        result.summary["nnls"] = predictor.nnls_settings
    else:
        names = [Path(m).name for m in members]  # names, not this machine's paths
        result.summary["model_workdir"] = names[0] if len(names) == 1 else names
    from dustjax import distributed

    if not distributed.is_primary():  # several processes: process 0 writes (the same map)
        return {}
    inputs = [*(members if method == "vnet" else []), catalog, literature_cube]
    prov = provenance.record(f"{method} apply", config, inputs=inputs)
    return write_outputs(
        outdir, result, write_fits=write_fits, plots=plots,
        header={"MODELDIR": _model_label(members) if method == "vnet" else "nnls"},
        provenance_record=prov,
        demo_catalog=demo_stars_catalog, keep=[p for p in (catalog, literature_cube) if p],
    )  # fmt: skip


def _model_label(members) -> str:
    """The FITS header's MODELDIR: the workdir's name, or an ensemble's size and first name."""
    name = Path(members[0]).name
    return name[-60:] if len(members) == 1 else f"ensemble of {len(members)}: {name}"[:60]


def _model_error(value):
    """--refine_model_error: "auto" or a number >= 0."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        tau = float(value)
    except ValueError:
        tau = -1.0
    if not tau >= 0:
        raise ap.ApplyError(f"--refine_model_error must be 'auto' or a number >= 0, got {value!r}")
    return tau


def refine_map(
    result, model, region, stars, floor: float, corr_length: float = 0.0, model_error=0.0,
    grid_factor: int = 1, reduction: str = "regrid",
) -> None:  # fmt: skip
    """Replace ``result.density`` by its refinement (`dustjax.vnet.refine`) in place, from
    `stars` or (None) from ``result.extinction`` at the noise floor `floor`; the summary's
    ``"refined"`` records what was done and the dust before and after. `model`: a workdir, or
    several (a list or comma-separated: an ensemble, whose prior is
    `dustjax.vnet.refine.ensemble_prior` of the members')."""
    from dustjax.vnet import normalisation
    from dustjax.vnet import refine as rf

    t0 = time.perf_counter()
    members = ap.model_workdirs(model)
    priors = []
    for workdir in members:
        hat = normalisation.load_model_predictor(workdir)
        if not hat.has_variance:
            raise ap.ApplyError(
                f"--refine needs a model with a variance head (the real-sky recipes, e.g. "
                f"vnet_sky_sr); {workdir} has none, so its map has no band to weigh against the "
                "data"
            )
        priors.append(rf.prior_of_model(hat, result.extinction))
    # an ensemble's prior: the members' mean, their spread added to the band
    prior = priors[0] if len(priors) == 1 else rf.ensemble_prior(*zip(*priors, strict=True))
    network = np.asarray(result.density)
    if stars is not None:
        fit: dict = {}
        density = rf.refine_catalog_fine(
            stars, *prior, region, factor=grid_factor, corr_length=corr_length,
            model_error=model_error, info=fit, reduction=reduction,
        )  # fmt: skip
        info = dict(source="stars", num_stars=len(stars), corr_length_cells=float(corr_length),
                    grid_factor=int(grid_factor))  # fmt: skip
        if grid_factor > 1:
            info["reduction"] = reduction
        if corr_length > 0:
            info["nugget"] = rf.DEFAULT_NUGGET
        info["model_error"] = fit["model_error"]
        if fit.get("chi2_per_star"):
            info["chi2_per_star"] = fit["chi2_per_star"]
        _, info["consistency_network"] = ap.consistency(network, region, stars)
        _, info["consistency_refined"] = ap.consistency(density, region, stars)
    else:
        density = rf.refine_cube(result.extinction, *prior, region, sigma_floor=float(floor))
        info = dict(source="extinction cube", noise_floor_mag=float(floor))
    info.update(
        dust_sum_network=float(network.sum()),
        dust_sum_refined=float(density.sum()),
        band="the network's (Monte Carlo + variance head), not recomputed for the refined map",
        seconds=time.perf_counter() - t0,
    )
    result.density = np.asarray(density, np.float32)
    result.summary["refined"] = info
    log.info("refined from the %s: dust %.4g -> %.4g", info["source"],
             info["dust_sum_network"], info["dust_sum_refined"])  # fmt: skip


def write_outputs(
    outdir: str | os.PathLike,
    result: MapResult,
    *,
    write_fits: bool = True,
    plots: bool = True,
    header: dict | None = None,
    provenance_record: dict | None = None,
    demo_catalog=None,
    keep=(),
) -> dict[str, str]:
    """FITS map, JSON summary and figures into `outdir`; returns ``{what: path}``.

    Both the FITS header and the summary carry `provenance_record` (`dustjax.provenance`;
    default: one naming the method of ``result.summary``, with no config or inputs).
    Called once the map is made: an earlier run's outputs in `outdir` (the names in
    `OUTPUT_NAMES`, nothing else, and never the paths in ``keep``, the run's inputs) first move
    to ``outdir/previous_run/`` (`dustjax.io.set_aside_previous_outputs`), so no file of another
    run sits beside the new map. ``demo_catalog`` (a `StarCatalog`): the demo catalogue the map
    was made from, written as ``demo_catalog.fits``.

    Files: ``density.fits`` (primary: density; UNCERT: MC dispersion; EXTINCT: the input
    extinction cube; EXTUNC: MC dispersion of the integrated extinction), ``summary.json``,
    ``slices.png`` (XY and XZ through the Sun's cell: extinction, density, dispersion, truth and
    residual when known), ``face_on.png`` (fig. A5), ``consistency.png`` (fig. 11),
    ``truth_vs_prediction.png`` (fig. 10) and ``edge_effect.png`` (fig. A8) when they apply.
    Every file is written atomically; the summary last.
    """
    outdir = dio.ensure_writable_dir(outdir)
    dio.set_aside_previous_outputs(outdir, OUTPUT_NAMES, keep=keep, log=log)
    files: dict[str, str] = {}
    prov = provenance_record or provenance.record(f"{result.summary.get('method', 'vnet')} apply")
    header = {**(header or {}), **provenance.fits_cards(prov)}
    if demo_catalog is not None:
        from dustjax.catalog import write_star_catalog

        files["demo_catalog"] = str(outdir / "demo_catalog.fits")
        write_star_catalog(files["demo_catalog"], demo_catalog)
    if write_fits:
        files["fits"] = str(
            maps.write_cartesian_map(
                outdir / "density.fits",
                result.region,
                result.density,
                uncertainty=result.density_std,
                extinction=result.extinction,
                extinction_uncertainty=result.extinction_std,
                header={"ORIGIN": "dustjax apply", **(header or {})},
            )
        )
    if plots:
        files.update(write_figures(outdir, result))
    names = {what: Path(path).name for what, path in files.items()}  # all in outdir
    summary = provenance.stamp(dict(result.summary, files=names), prov)
    dio.write_json(outdir / "summary.json", summary)
    files["summary"] = str(outdir / "summary.json")
    return files


def write_figures(outdir: Path, result: MapResult) -> dict[str, str]:
    """The figures that apply to `result`, as PNGs in `outdir`; returns ``{name: path}``."""
    files = {}
    figures = {
        "slices": plot_slices,
        "face_on": plot_face_on,
        "consistency": plot_consistency,
        "truth_vs_prediction": plot_truth_vs_prediction,
        "edge_effect": plot_edge_effect,
    }
    for name, draw in figures.items():
        fig = draw(result)
        if fig is None:
            continue
        files[name] = str(save_figure(fig, outdir / f"{name}.png"))
    return files
