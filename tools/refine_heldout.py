r"""Score refinements of the V-net's catalogue-route map (`dustjax.vnet.refine`) from saved arrays,
on CPU, without the model: choose the prior's settings on held-out simulations, then apply the
chosen one to the real catalogue (issue 17).

    python -m tools.refine_heldout --arrays=SR_plain/heldout_arrays.npz \
        --variants=vnet,nnls,indep,corr:2:0.1,corr:4:0.1,smooth:8 --out=sims.json
    python -m tools.refine_heldout --real=SR_plain/catalogue_arrays.npz \
        --variants=vnet,nnls,indep,corr:4:0.1 --out=real.json

--arrays: a `tools.sky_heldout --save_arrays` file (held-out simulated cubes, the V-net's
catalogue-route hats, the stars of the same draw). --real: a `tools.realsky_vnet --route=catalogue
--save_arrays` file (the real cube's truth, hats and stars; without stars, --cube and the
catalogue settings redraw them with `dustjax.vnet.realsky.mock_catalog`, which is seeded).
Variants: ``vnet`` (the median map m), ``nnls`` (`dustjax.inversion.nnls_predictor` on the
gridded cube, the catalogue default weight), ``indep`` (the independent prior), ``corr:ELL:NU``
(correlated prior errors, length ELL cells, nugget NU), ``smooth:G`` (a smooth correction on G^3
nodes); ``:auto`` after a refinement adds the model error estimated from the stars' chi^2.
Scores per cube by `dustjax.vnet.realsky.scores`; the summary is
`tools.sky_heldout.summarise` (medians and the pooled skill). No band is scored for a refined map
(the refinement gives none).

--cv=ELL:NU[:auto],...: also the refinement chosen by the stars themselves
(`dustjax.vnet.refine_cv`: a seeded fraction held out, each candidate and "none" fitted on the
rest and scored by the held-out extinctions, no truth), refitted on all stars as the variant
``cv``; the per-cube table (``cv`` in the JSON) adds each candidate's CV fit scored against the
truth, for the report only.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

log = logging.getLogger("refine_heldout")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m tools.refine_heldout", description=__doc__.split("\n")[0]
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--arrays", help="tools.sky_heldout --save_arrays file")
    src.add_argument("--real", help="tools.realsky_vnet --save_arrays file (catalogue route)")
    p.add_argument("--variants", default="vnet,nnls,indep,corr:2:0.1,corr:4:0.1,smooth:8")
    p.add_argument("--num_cubes", type=int, default=0, help="0: all")
    p.add_argument("--num_steps", type=int, default=1000, help="FISTA steps")
    p.add_argument("--subcell", type=float, default=0.0, help="--arrays: redraw the stars' "
                   "extinctions through a cube with structure inside the cells (see subcell_cube): "
                   "the log-sd of the factor per half-cell; 0: the saved extinctions")  # fmt: skip
    p.add_argument("--subcell_truth", default="block", choices=["block", "regrid"], help="with "
                   "--subcell: score against the fine cube's block means (the saved cube) or the "
                   "fine cube regridded as the real-sky truth is (refine.to_region)")  # fmt: skip
    p.add_argument("--cube", default="", help="--real without stars: the real cube")
    p.add_argument("--region", default="SR")
    p.add_argument("--num_stars", type=int, default=30_000)
    p.add_argument("--sigma_a", type=float, default=0.03)
    p.add_argument("--sigma_b", type=float, default=0.05)
    p.add_argument("--distance_error", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="vnet_sky_sr", help="normalisation when the file has none")
    p.add_argument("--cv", default="", help="also choose among these refinements by held-out "
                   "stars (dustjax.vnet.refine_cv; the truth only scores them): comma-separated "
                   "ELL:NU[:auto] (0:1 the independent prior), 'none' always added; the chosen "
                   "one refitted on all stars is the variant 'cv'")  # fmt: skip
    p.add_argument("--cv_holdout", type=float, default=0.15, help="fraction of stars held out")
    p.add_argument("--cv_seed", type=int, default=0)
    p.add_argument("--cv_criterion", default="nlpd", help="nlpd or chi2 (refine_cv.CRITERIA)")
    p.add_argument("--cv_gate", type=float, default=2.0, help="standard errors to beat 'none' by")
    p.add_argument("--cv_block_cells", type=float, default=0.0, help="hold out whole sky "
                   "patches this many cells across (refine_cv.sky_patches); 0: stars")  # fmt: skip
    p.add_argument("--cv_score_truth", action="store_true", help="also score the truth on "
                   "the held-out stars (a diagnostic, listed apart, never chosen)")  # fmt: skip
    p.add_argument("--cv_max_stars", type=int, default=0, help="cross-validate on this many "
                   "stars drawn at random (0: all); the final refit uses all")  # fmt: skip
    p.add_argument("--prior_mean", default="vnet", choices=["vnet", "truth"], help="truth: a "
                   "diagnostic, the truth as the prior's mean with the V-net's band as its sd (how "
                   "much the stars themselves lose from a perfect prior); never a map")  # fmt: skip
    p.add_argument("--plot", default="", help="also a figure per cube: the truth and each "
                   "variant's map in the XY slab holding the most dust (PATH, '_cubeN.png' added "
                   "when several cubes)")  # fmt: skip
    p.add_argument("--out", required=True, help="output JSON")
    return p.parse_args(argv)


def plot_maps(maps: dict, truth, region, path, scores: dict):
    """The truth and each map (``{name: cube}``) in the XY slab where the truth holds the most
    dust, on one colour scale (mag/pc), each titled with its skill; written to `path`."""
    from dustjax.plots import pyplot, save_figure

    iz = int(np.argmax(np.asarray(truth).sum(axis=(0, 1))))
    ex, ey = region.edges_pc(0), region.edges_pc(1)
    vmax = float(np.percentile(truth, 99.8)) or 1.0
    panels = [("truth", truth, "")] + [(k, v, f", skill {scores[k]:.3f}") for k, v in maps.items()]
    fig, axes = pyplot().subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), squeeze=False)
    for ax, (name, cube, note) in zip(axes[0], panels, strict=True):
        im = ax.imshow(np.asarray(cube)[:, :, iz].T, origin="lower", cmap="magma", vmin=0,
                       vmax=vmax, extent=(ex[0], ex[-1], ey[0], ey[-1]))  # fmt: skip
        ax.set_title(f"{name}{note}", fontsize=8)
        ax.set_xlabel("X (pc)", fontsize=8)
    axes[0][0].set_ylabel(f"Y (pc); Z slab {iz}", fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="mag/pc")
    return save_figure(fig, path)


def variant_setting(v: dict):
    """The `dustjax.vnet.refine_cv` candidate name of a variant with the same map (None if
    none: nnls, smooth, fine)."""
    from dustjax.vnet import refine_cv

    tau = ("auto",) if v.get("model_error") == "auto" else ()
    if v["kind"] == "vnet":
        return refine_cv.NONE
    if v["kind"] == "indep":
        return refine_cv.setting_name((0.0, 1.0, *tau))
    if v["kind"] == "corr":
        return refine_cv.setting_name((v["corr_length"], v["nugget"], *tau))
    return None


def run_cv(args, catalog, m, s, region, truth, op, done: dict):
    """The map chosen by held-out stars (refitted on all stars, or taken from ``done``: the
    variants' maps by candidate name) and the CV report, each candidate's CV fit also scored
    against the truth (``truth_skill_cv_fit``; for the report only, after the choice)."""
    from dustjax.vnet import realsky, refine_cv

    maps: dict = {}
    rep = refine_cv.cross_validate(
        catalog, m, s, region, args.cv, holdout=args.cv_holdout, seed=args.cv_seed,
        criterion=args.cv_criterion, gate=args.cv_gate, operator=op, maps=maps,
        max_stars=args.cv_max_stars, block_cells=args.cv_block_cells, num_steps=args.num_steps,
        extra_maps=dict(truth=truth) if args.cv_score_truth else None,
    )  # fmt: skip
    for row in rep["table"]:
        row["truth_skill_cv_fit"] = realsky.scores(maps[row["name"]], truth, region)["skill"]
    final: dict = {}
    if rep["chosen"] in done:
        rho = done[rep["chosen"]]
    else:
        rho = refine_cv.refit(catalog, m, s, region, rep["chosen_setting"], operator=op,
                              info=final, num_steps=args.num_steps)  # fmt: skip
    rep["final"] = final
    rep["chosen_setting"] = rep["chosen"]
    return rho, rep


def parse_variant(spec: str) -> dict:
    parts = spec.strip().split(":")
    name = parts[0]
    if len(parts) > 1 and parts[-1] == "auto" and name in ("indep", "corr", "smooth", "fine"):
        return dict(parse_variant(":".join(parts[:-1])), model_error="auto")
    if name in ("vnet", "nnls", "indep") and len(parts) == 1:
        return dict(kind=name)
    if name == "corr" and len(parts) == 3:
        return dict(kind="corr", corr_length=float(parts[1]), nugget=float(parts[2]))
    if name == "smooth" and len(parts) == 2:
        return dict(kind="smooth", grid=int(parts[1]))
    if name == "fine" and len(parts) == 5 and parts[4] in ("block", "regrid"):
        return dict(parse_variant(":".join(parts[:4])), reduction=parts[4])
    if name == "fine" and len(parts) == 4:  # fine:FACTOR:ELL:NU, ELL in the region's cells
        return dict(kind="fine", factor=int(parts[1]), corr_length=float(parts[2]),
                    nugget=float(parts[3]))  # fmt: skip
    raise ValueError(
        f"variant {spec!r}: use vnet, nnls, indep, corr:ELL:NU, smooth:G or fine:F:ELL:NU[:block|"
        ":regrid] (the last four with ':auto' appended: a model error from the stars' chi^2, "
        "dustjax.vnet.refine; fine's reduction to the region's cells: refine.to_region)"
    )


def run_variant(v: dict, catalog, gridded, m, s, region, num_steps: int, nnls=None, info=None,
                operator=None, fine_cache=None):  # fmt: skip
    """One variant's map; ``operator``: the catalogue's star operator, shared by the variants
    (`dustjax.vnet.refine.catalog_operator`; built here when None); ``fine_cache`` (a dict, one
    per catalogue and prior): the finer grids' operators and fits, shared by the ``fine``
    variants that differ only in their reduction (the same maps as without)."""
    from dustjax.vnet import refine

    if v["kind"] == "vnet":
        return m
    if v["kind"] == "nnls":
        return np.asarray(nnls(np.asarray(gridded, np.float32)[None]))[0]
    kw = dict(num_steps=num_steps, model_error=v.get("model_error", 0.0))
    if v["kind"] == "corr":
        kw.update(corr_length=v["corr_length"], nugget=v["nugget"])
    elif v["kind"] == "smooth":
        kw.update(smooth_grid=v["grid"])
    elif v["kind"] == "fine":  # its own, finer grid: the fine operator and fits are cached
        f = v["factor"]
        key = (f, v["corr_length"], v["nugget"], kw["model_error"])
        cache = fine_cache if fine_cache is not None else {}
        if key not in cache:
            if ("operator", f) not in cache:
                fine_grid = refine.fine_region(region, f)
                cache[("operator", f)] = refine.catalog_operator(catalog, fine_grid)
            fit: dict = {}
            fine = refine.fit_fine(catalog, m, s, region, factor=f, corr_length=v["corr_length"],
                                   nugget=v["nugget"], operator=cache[("operator", f)], info=fit,
                                   **kw)  # fmt: skip
            cache[key] = (fine, fit)
        fine, fit = cache[key]
        if info is not None:
            info.update(fit)
        return refine.to_region(fine, region, f, v.get("reduction", refine.DEFAULT_REDUCTION))
    return refine.refine_catalog(catalog, m, s, region, info=info, operator=operator, **kw)


def error_correlation(truth, m, s, max_lag: int = 8) -> dict:
    """The V-net's standardised error u = (truth - m) / s on held-out cubes ``(B, nx, ny, nz)``:
    its correlation at lags 0..max_lag cells (mean over the three axes and the cubes; each cube's
    u centred and clipped to +-5), and the Gaussian length ell and nugget that fit lags 1-max_lag
    (correlation(d) = (1 - nu) exp(-d^2 / (2 ell^2)), least squares on a grid)."""
    u = np.clip((np.asarray(truth, np.float64) - m) / s, -5.0, 5.0)
    u = u - u.mean(axis=(1, 2, 3), keepdims=True)
    var = np.mean(u**2)
    corr = [1.0]
    for d in range(1, max_lag + 1):
        c = [np.mean(np.take(u, range(d, u.shape[a]), axis=a) * np.take(u, range(0, u.shape[a] - d),
             axis=a)) for a in (1, 2, 3)]  # fmt: skip
        corr.append(float(np.mean(c) / var))
    lags, obs = np.arange(1, max_lag + 1), np.asarray(corr[1:])
    best = min(
        ((float(np.sum(((1 - nu) * np.exp(-0.5 * lags**2 / ell**2) - obs) ** 2)), ell, nu)
         for ell in np.arange(0.5, 16.01, 0.25) for nu in np.arange(0.0, 0.951, 0.01)),
    )  # fmt: skip
    return dict(lags=list(range(max_lag + 1)), correlation=corr, fit_corr_length=float(best[1]),
                fit_nugget=round(float(best[2]), 2), fit_sse=best[0])  # fmt: skip


def subcell_cube(truth, log_sd: float, rng) -> tuple[np.ndarray, float]:
    """``(fine, refine)``: the cube at twice the resolution, each half-cell the truth times a
    log-normal factor of log-sd `log_sd`, normalised so that every cell's 8 half-cells average
    to the truth (the map's cells are exact block means; the sky has structure inside them)."""
    from dustjax.vnet.refine import block_mean, upsample

    t = np.asarray(truth, np.float64)
    w = np.exp(log_sd * rng.standard_normal(tuple(2 * n for n in t.shape)))
    w = w / upsample(block_mean(w, 2), 2)
    return upsample(t, 2) * w, 2.0


def redraw_through_subcells(catalog, truth, region, log_sd, sigma_a, sigma_b, seed):
    """``(catalog, fine)``: the catalogue's stars (same positions) with extinctions integrated
    through ``fine`` = `subcell_cube` and fresh noise sigma_E = hypot(a, b E)."""
    from dustjax import catalog as cat
    from dustjax.los import integrate_to_points

    rng = np.random.default_rng(seed)
    fine, _ = subcell_cube(truth, log_sd, rng)
    edges = [np.linspace(region.lower_pc[a], region.upper_pc[a], fine.shape[a] + 1)
             for a in range(3)]  # fmt: skip
    e = np.asarray(integrate_to_points(fine.astype(np.float32), edges, catalog.xyz_pc), float)
    sigma = np.hypot(sigma_a, sigma_b * e)
    return cat.StarCatalog.from_arrays(
        xyz_pc=catalog.xyz_pc, extinction=e + sigma * rng.standard_normal(len(e)),
        sigma_extinction=sigma, sigma_distance=catalog.sigma_distance, region=region,
        source=f"sub-cell redraw, log-sd {log_sd:g}",
    ), fine  # fmt: skip


def cases_from_heldout(path, num_cubes, subcell: float = 0.0, subcell_truth: str = "block"):
    """(catalog, gridded, m, s, truth) per simulated cube, and the region. ``subcell`` > 0:
    the stars' extinctions redrawn through `subcell_cube` (the prior stays the saved one), the
    truth the fine cube's block means (the saved cube, ``subcell_truth="block"``) or the fine
    cube put on the region's cells as the real-sky truth is (``"regrid"``,
    `dustjax.vnet.refine.to_region`)."""
    from dustjax.vnet import refine
    from tools import sky_heldout

    arrays, meta = sky_heldout.read_arrays(path)
    n = arrays["truth"].shape[0] if num_cubes <= 0 else min(num_cubes, arrays["truth"].shape[0])
    try:
        refine.check_reduction(subcell_truth)
    except ValueError as e:
        raise ValueError(f"subcell_truth: {e}") from None
    for i in range(n):
        m, s = sky_heldout.prior_of(arrays, meta, "cat", i)
        catalog = sky_heldout.catalogue_of(arrays, meta, i)
        truth = arrays["truth"][i]
        if subcell > 0:
            catalog, fine = redraw_through_subcells(
                catalog, arrays["truth"][i], meta["region"], subcell,
                float(arrays["star_sigma_a"][i]), float(arrays["star_sigma_b"][i]), seed=i,
            )  # fmt: skip
            if subcell_truth == "regrid":
                truth = refine.to_region(fine, meta["region"], 2, "regrid")
        yield meta["region"], (catalog, arrays["observed"][i], m, s, truth)


def case_from_real(args):
    """The real catalogue route's (catalog, gridded, m, s, truth) and region."""
    from dustjax import catalog as cat
    from dustjax.geometry import Region
    from dustjax.vnet import realsky, refine
    from dustjax.vnet.normalisation import Normalisation, normalisation_of

    with np.load(args.real) as f:
        arrays = {k: f[k] for k in f.files if k != "meta"}
        meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
    if "normalisation" in meta:
        norm = Normalisation(**meta["normalisation"])
    else:
        import importlib

        config = importlib.import_module(f"dustjax.configs.{args.config}").get_config()
        norm = normalisation_of(config)
        log.warning("%s holds no normalisation: %s's (%s)", args.real, args.config, norm)
    region = (
        Region.from_dict(meta["region"]) if "region" in meta else realsky.parse_region(args.region)
    )
    if "star_xyz_pc" in arrays:
        sd = arrays.get("star_sigma_distance")
        catalog = cat.StarCatalog.from_arrays(
            xyz_pc=arrays["star_xyz_pc"].astype(np.float64),
            extinction=arrays["star_extinction"].astype(np.float64),
            sigma_extinction=arrays["star_sigma_extinction"].astype(np.float64),
            sigma_distance=None if sd is None else sd.astype(np.float64),
            region=region,
            source=str(args.real),
        )
    else:
        if not args.cube:
            raise ValueError(f"{args.real} holds no stars: give --cube and the catalogue settings")
        cube, _ = realsky.fit_to_region(realsky.load_cube(args.cube), region)
        catalog, _ = realsky.mock_catalog(
            cube, region, num_stars=args.num_stars, sigma_a=args.sigma_a, sigma_b=args.sigma_b,
            distance_error=args.distance_error, seed=args.seed,
        )  # fmt: skip
        log.info("stars redrawn from %s (seed %d): %d in the region", args.cube, args.seed,
                 len(catalog))  # fmt: skip
    m, s = refine.prior_from_hat(norm, arrays["mu_hat"], arrays["sigma_hat"])
    return region, (catalog, arrays["extinction"], m, s, arrays["truth"])


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import jax

    from dustjax import inversion
    from dustjax import io as dio
    from dustjax.vnet import realsky, refine
    from tools.sky_heldout import summarise

    variants = {spec.strip(): parse_variant(spec) for spec in args.variants.split(",") if spec}
    if args.arrays:
        cases = cases_from_heldout(args.arrays, args.num_cubes, args.subcell, args.subcell_truth)
    else:
        cases = [case_from_real(args)]
    rows: dict[str, list] = {}
    seconds: dict[str, float] = {}
    cv_reports: list = []
    nnls = None
    for i, (region, (catalog, gridded, m, s, truth)) in enumerate(cases):
        if args.prior_mean == "truth":  # a diagnostic: how far the stars pull a perfect prior
            m = np.asarray(truth, np.float32)
        if nnls is None and "nnls" in variants:
            nnls = jax.jit(inversion.nnls_predictor(region, input_kind="catalogue"))
        op = None  # the star operator, built by the first refinement and shared by the rest
        if args.cv or any(v["kind"] not in ("vnet", "nnls") for v in variants.values()):
            t = time.perf_counter()
            op = refine.catalog_operator(catalog, region)
            log.info("cube %d: star operator %.1f s", i, time.perf_counter() - t)
        drawn: dict = {}  # the variants' maps, for --plot
        done: dict = {}  # the variants' maps by refine_cv candidate name
        fine_cache: dict = {}  # the fine variants' operators and fits (run_variant)
        for name, v in [*variants.items(), *([("cv", dict(kind="cv"))] if args.cv else [])]:
            t = time.perf_counter()
            info: dict = {}
            if v["kind"] == "cv":
                pred, rep = run_cv(args, catalog, m, s, region, truth, op, done)
                cv_reports.append(rep)
                info = dict(cv_chosen=rep["chosen"])
                log.info("cube %d CV: %s", i, json.dumps(rep["table"]))
            else:
                pred = run_variant(v, catalog, gridded, m, s, region, args.num_steps, nnls, info,
                                   op, fine_cache)  # fmt: skip
                if variant_setting(v) is not None:
                    done[variant_setting(v)] = pred
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t
            sc = realsky.scores(pred, truth, region)
            drawn[name] = (np.asarray(pred), sc["skill"])
            row = {k: sc[k] for k in ("skill", "dust_recovered", "log_r", "rmse", "truth_std")}
            row.update(min_c_r=sc["min_c_r"], **info)
            rows.setdefault(name, []).append(row)
            log.info("cube %d %-14s skill %.3f dust %.3f log-r %.3f (%.1f s)", i, name,
                     sc["skill"], sc["dust_recovered"], sc["log_r"],
                     time.perf_counter() - t)  # fmt: skip
        if args.plot:
            path = args.plot.removesuffix(".png") + (f"_cube{i}.png" if args.arrays else ".png")
            plot_maps({k: v[0] for k, v in drawn.items()}, truth, region, path,
                      {k: v[1] for k, v in drawn.items()})  # fmt: skip
            log.info("cube %d: figure %s", i, path)
    summary = {k: dict(summarise(v), seconds=seconds[k]) for k, v in rows.items()}
    errors = None
    if args.arrays:  # how the V-net's errors are correlated on these simulations
        from tools import sky_heldout

        arrays, meta = sky_heldout.read_arrays(args.arrays)
        n = len(rows[next(iter(rows))])
        prior = [sky_heldout.prior_of(arrays, meta, "cat", i) for i in range(n)]
        errors = error_correlation(arrays["truth"][:n], np.stack([p[0] for p in prior]),
                                   np.stack([p[1] for p in prior]))  # fmt: skip
        log.info("V-net error correlation: %s", errors)
    result = dict(
        source=str(args.arrays or args.real),
        kind="held-out simulations" if args.arrays else "real catalogue",
        variants=variants,
        num_steps=args.num_steps,
        subcell=args.subcell,
        prior_mean=args.prior_mean,
        summary=summary,
        error_correlation=errors,
        per_cube=rows,
        cv=cv_reports or None,
        command="python -m tools.refine_heldout " + " ".join(argv or []),
    )
    dio.write_json(args.out, result)
    for i, rep in enumerate(cv_reports):
        print(f"cube {i} CV ({rep['criterion']}, {rep['num_heldout']} held out): chose "
              f"{rep['chosen']} (best {rep['best']})")  # fmt: skip
        for r in rep["table"] + rep["extra"]:
            print(f"  {r['name']:12s} {rep['criterion']} {r[rep['criterion']]:.4f}  diff "
                  f"{r['diff_vs_none']:+.4f} +- {r['diff_se']:.4f}  chi2 {r['chi2']:.3f}  "
                  f"med|pull| {r['median_abs_pull']:.3f}  truth skill of the CV fit "
                  f"{r.get('truth_skill_cv_fit', float('nan')):.3f}")  # fmt: skip
    for k, v in summary.items():
        print(f"{k:16s} pooled skill {v['pooled_skill']:.3f}  median skill {v['median_skill']:.3f}"
              f"  dust {v['median_dust_recovered']:.3f}  log-r {v['median_log_r']:.3f}"
              f"  ({v['seconds']:.0f} s)")  # fmt: skip
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
