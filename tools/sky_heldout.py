r"""Held-out simulated-sky scores (issue 17): a trained V-net and the NNLS baseline on sky-like
simulations the model never saw, through both routes.

    python -m tools.sky_heldout --model=workdirs/vnet_sky_lr --num_cubes=16 --nnls \
        --num_stars=1000000 --sigma_a=0.05 --sigma_b=0.05 --distance_error=0.05 --out=LR.json

The cubes come from the training config's simulator (``config.data.simulator`` and its
``simulator_params``) under the "test" split's seed (`dustjax.vnet.data.SPLITS`; training used
"train", the calibration "validation"), so none was seen in training or calibration. Two routes,
as `tools.realsky_vnet` runs them on the real cubes:

- literature: the exact extinction at every cell centre (the simulator's own LOS integral);
- catalogue: the same cubes seen through the training loop's observation
  (`dustjax.vnet.observe.observe_batch`: stars, exact extinctions, noise, distance errors, eq. 5),
  with the catalogue fixed by --num_stars / --sigma_a / --sigma_b / --distance_error (the issue's
  validation catalogues) or, when --num_stars is 0, drawn from the config's training ranges.

Per cube the scores of `dustjax.vnet.realsky.scores` (skill, dust recovered, log-r); the JSON gives
their median over cubes and the pooled skill 1 - sum MSE / sum Var (each cube's truth variance),
for the V-net's median and mean point maps and, with --nnls, `dustjax.inversion.nnls_predictor`
at the route's default weight. --refine scores the literature route's refinement by the exact cube,
--refine_corr the catalogue route's by the draw's stars with correlated prior errors
(`dustjax.vnet.refine.refine_catalog`; ``2:0.3:auto`` is the setting chosen on held-out
simulations, docs/validation.md).

--save_arrays=PATH.npz also writes the cubes (float32, compressed), to choose post-processing
such as `dustjax.vnet.refine` on CPU without the model: per cube ``truth`` (mag/pc), ``exact``
(the literature input, mag), ``observed`` (the catalogue route's gridded cube), the V-net's
``{lit,cat}_mu_hat`` and calibrated ``{lit,cat}_sigma_hat`` (normalised, as ``predict_hat``
gives them) and, while stars x cubes <= --save_max_stars, the catalogue of the same draw as
``observed`` (``star_xyz_obs`` pc, ``star_extinction``, ``star_sigma_extinction`` mag,
``star_valid``, per cube ``star_distance_error`` f, ``star_sigma_a``, ``star_sigma_b``), with
``meta`` (JSON: region, normalisation, observation, k). `read_arrays` loads it; `catalogue_of`
and `prior_of` give a cube's `StarCatalog` and the refinement prior (m, s) in mag/pc.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

import numpy as np

log = logging.getLogger("sky_heldout")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m tools.sky_heldout", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", required=True, help="training workdir (a V-net with a variance head)")
    p.add_argument("--num_cubes", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_stars", type=int, default=0, help="0: the config's training ranges")
    p.add_argument("--sigma_a", type=float, default=0.03)
    p.add_argument("--sigma_b", type=float, default=0.05)
    p.add_argument("--distance_error", type=float, default=0.0)
    p.add_argument("--nnls", action="store_true", help="score the NNLS baseline too")
    p.add_argument("--nnls_steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="added to the test split's seed")
    p.add_argument("--refine", default="", help="literature route: also score the V-net map "
                   "refined by the exact cube (dustjax.vnet.refine) at these comma-separated "
                   "noise floors (mag), e.g. 0.003,0.01,0.03")  # fmt: skip
    p.add_argument("--refine_corr", default="", help="catalogue route: also score the V-net "
                   "map refined by the draw's stars with correlated prior errors "
                   "(dustjax.vnet.refine) at these comma-separated ELL:NUGGET[:auto] settings, "
                   "e.g. 2:0.3:auto")  # fmt: skip
    p.add_argument("--refine_grid", default="1", help="--refine_corr on these comma-separated "
                   "grids: 1 the map's cells, F a grid F x finer put on the map's cells by "
                   "refine.to_region (refine.refine_catalog_fine), e.g. 1,3")  # fmt: skip
    p.add_argument("--save_arrays", default="", help="also write the cubes (and catalogues) to "
                   "this .npz (see the module docstring)")  # fmt: skip
    p.add_argument("--save_max_stars", type=float, default=5e6, help="--save_arrays keeps the "
                   "stars only while max stars x cubes is at most this")  # fmt: skip
    p.add_argument("--out", required=True, help="output JSON")
    return p.parse_args(argv)


def observation_params(config, num_stars, sigma_a, sigma_b, distance_error):
    """The config's observation, or (num_stars > 0) one fixed catalogue setting."""
    from dustjax.vnet.observe import ObservationParams

    params = ObservationParams.from_config(config.get("observation"))
    if num_stars <= 0:
        return params
    fixed = dict(
        num_stars_range=(float(num_stars),) * 2,
        sigma_a_range=(float(sigma_a),) * 2,
        sigma_b_range=(float(sigma_b),) * 2,
        distance_error_range=(float(distance_error),) * 2,
    )
    return ObservationParams(**dict(params.to_dict(), **fixed))


def summarise(rows: list[dict]) -> dict:
    """Median over cubes of skill, dust and log-r; pooled skill = 1 - sum(MSE) / sum(Var)."""
    out = {}
    for key in ("skill", "dust_recovered", "log_r"):
        vals = np.asarray([r[key] for r in rows], np.float64)
        out[f"median_{key}"] = float(np.nanmedian(vals))
    mse = np.asarray([r["rmse"] ** 2 for r in rows])
    var = np.asarray([r["truth_std"] ** 2 for r in rows])
    out["pooled_skill"] = float(1.0 - mse.sum() / var.sum()) if var.sum() > 0 else float("nan")
    out["num_cubes"] = len(rows)
    return out


STAR_KEYS = ("xyz_obs", "extinction", "sigma_extinction", "valid", "distance_error",
             "sigma_a", "sigma_b")  # fmt: skip


def write_arrays(path, arrays: dict, meta: dict) -> str:
    """``arrays`` (lists of per-batch arrays, concatenated along axis 0; floats as float32) and
    ``meta`` (JSON) to a compressed .npz, atomically; returns the path."""
    from pathlib import Path

    from dustjax import io as dio

    out = {}
    for k, v in arrays.items():
        a = np.concatenate([np.asarray(x) for x in v])
        out[k] = a.astype(np.float32) if a.dtype.kind == "f" else a
    out["meta"] = np.asarray(json.dumps(meta))
    path = Path(path)
    with dio.atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, **out)
    return str(path)


def read_arrays(path) -> tuple[dict, dict]:
    """``(arrays, meta)`` of a --save_arrays file (meta's region as a `Region`, normalisation as
    a `Normalisation`)."""
    from dustjax.geometry import Region
    from dustjax.vnet.normalisation import Normalisation

    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "meta"}
        meta = json.loads(str(f["meta"]))
    meta["region"] = Region.from_dict(meta["region"])
    meta["normalisation"] = Normalisation(**meta["normalisation"])
    return arrays, meta


def catalogue_of(arrays: dict, meta: dict, i: int):
    """Cube ``i``'s saved stars as a `dustjax.catalog.StarCatalog` (valid stars; sigma_distance
    = f |xyz_obs| when the cube has a distance error f > 0)."""
    if "star_xyz_obs" not in arrays:
        raise ValueError("this file holds no stars (stars x cubes was above --save_max_stars)")
    return _catalogue({k: arrays[f"star_{k}"][i] for k in STAR_KEYS}, meta["region"])


def _catalogue(stars: dict, region):
    """One cube's stars (the `STAR_KEYS` of `observe_one`'s catalogue) as a `StarCatalog`."""
    from dustjax import catalog as cat

    ok = np.asarray(stars["valid"], bool)
    xyz = np.asarray(stars["xyz_obs"], np.float64)[ok]
    f = float(stars["distance_error"])
    return cat.StarCatalog.from_arrays(
        xyz_pc=xyz,
        extinction=np.asarray(stars["extinction"], np.float64)[ok],
        sigma_extinction=np.asarray(stars["sigma_extinction"], np.float64)[ok],
        sigma_distance=f * np.linalg.norm(xyz, axis=1) if f > 0 else None,
        region=region,
        source="tools.sky_heldout",
    )


def prior_of(arrays: dict, meta: dict, route: str, i: int):
    """(m, s) in mag/pc (`dustjax.vnet.refine.prior_from_hat`) of cube ``i``, route "lit" or
    "cat"."""
    from dustjax.vnet import refine

    return refine.prior_from_hat(
        meta["normalisation"], arrays[f"{route}_mu_hat"][i], arrays[f"{route}_sigma_hat"][i]
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import jax

    from dustjax import inversion
    from dustjax import io as dio
    from dustjax.training import load_config
    from dustjax.vnet import data as vdata
    from dustjax.vnet import normalisation as nz
    from dustjax.vnet import realsky, refine
    from dustjax.vnet.observe import fine_region, observe_batch, simulate_subcell_fn

    t0 = time.perf_counter()
    config = load_config(args.model)
    region = vdata.region_of(config)
    model = nz.load_model_predictor(args.model)
    name, sim_params = vdata._simulator_params(config)
    params = observation_params(
        config, args.num_stars, args.sigma_a, args.sigma_b, args.distance_error
    )
    # the model's sub-cell factor: the stars integrate a cube that many times finer, the truth is
    # its block mean and the literature route's exact cube that of the truth (observe module)
    factor = params.subcell_factor
    simulate = simulate_subcell_fn(
        region, name, sim_params, factor, exact=True, log_sd_range=params.subcell_log_sd_range
    )
    dense_region = fine_region(region, factor) if factor > 1 else None
    group = int((config.get("observation") or {}).get("group", 0) or 0)
    save_stars = bool(args.save_arrays) and params.max_stars * args.num_cubes <= args.save_max_stars
    corr = refine.parse_corr_settings(args.refine_corr)
    grids = refine.parse_grid_factors(args.refine_grid)
    want_stars = save_stars or bool(corr)
    if args.save_arrays and not save_stars:
        log.warning("--save_arrays: %d stars x %d cubes > %g: the stars are not saved",
                    params.max_stars, args.num_cubes, args.save_max_stars)  # fmt: skip

    @jax.jit
    def observe(keys, density):
        cube, diag = observe_batch(keys, density, region, params, group, catalogue=want_stars,
                                   density_region=dense_region)  # fmt: skip
        return cube, diag.get("catalogue")

    hat = jax.jit(model.predict_hat)
    nnls = {}
    if args.nnls:
        kw = {} if args.nnls_steps is None else dict(num_steps=args.nnls_steps)
        for route in ("literature", "catalogue"):
            nnls[route] = jax.jit(inversion.nnls_predictor(region, input_kind=route, **kw))
    norm = model.normalisation
    floors = [float(v) for v in args.refine.split(",") if v.strip()]
    rows = {}
    base = jax.random.key(vdata._derived_seed(int(config.seed), vdata.SPLITS["test"], args.seed))
    saved: dict[str, list] = {}
    done = 0
    while done < args.num_cubes:
        b = min(args.batch_size, args.num_cubes - done)
        key = jax.random.fold_in(base, done)
        dense, density, exact = simulate(jax.random.split(key, b))
        observed, stars = observe(jax.random.split(jax.random.fold_in(key, 1), b), dense)
        truth = np.asarray(density, np.float64)
        if args.save_arrays:
            for name, v in (("truth", density), ("exact", exact), ("observed", observed)):
                saved.setdefault(name, []).append(np.asarray(v))
            for name in STAR_KEYS if save_stars else ():
                saved.setdefault(f"star_{name}", []).append(np.asarray(stars[name]))
        for route, ext in (("literature", exact), ("catalogue", observed)):
            mu, sigma = hat(ext)
            if args.save_arrays and sigma is not None:
                saved.setdefault(f"{route[:3]}_mu_hat", []).append(np.asarray(mu))
                saved.setdefault(f"{route[:3]}_sigma_hat", []).append(np.asarray(sigma))
            preds = {"vnet_median": np.maximum(np.asarray(norm.density_inverse(mu)), 0.0)}
            if sigma is not None:
                preds["vnet_mean"] = np.maximum(np.asarray(norm.density_mean(mu, sigma)), 0.0)
            if route in nnls:
                preds["nnls"] = np.asarray(nnls[route](ext))
            if route == "literature" and floors and sigma is not None:
                prior = refine.prior_from_hat(norm, np.asarray(mu), np.asarray(sigma))
                for floor in floors:
                    preds[f"vnet_refined_{floor:g}"] = np.stack([
                        refine.refine_cube(np.asarray(ext)[i], prior[0][i], prior[1][i], region,
                                           sigma_floor=floor)
                        for i in range(b)
                    ])  # fmt: skip
            if route == "catalogue" and corr and sigma is not None:
                prior = refine.prior_from_hat(norm, np.asarray(mu), np.asarray(sigma))
                cats = [_catalogue({k: np.asarray(v)[i] for k, v in stars.items()}, region)
                        for i in range(b)]  # fmt: skip
                for f in grids:  # one star operator per cube and grid, shared by the settings
                    maps_ = [refine.refine_settings(cats[i], prior[0][i], prior[1][i], region,
                                                    corr, factor=f)
                             for i in range(b)]  # fmt: skip
                    for j, setting in enumerate(corr):
                        preds["vnet_refined_" + refine.setting_label(setting, f)] = np.stack(
                            [maps_[i][j] for i in range(b)]
                        )
            for method, pred in preds.items():
                for i in range(b):
                    s = realsky.scores(pred[i], truth[i], region)
                    rows.setdefault(f"{route}_{method}", []).append(
                        {k: s[k] for k in ("skill", "dust_recovered", "log_r", "rmse", "truth_std")}
                    )
        done += b
        log.info("%d / %d cubes scored", done, args.num_cubes)
    result = dict(
        model=str(args.model),
        region=region.to_dict(),
        simulator=name,
        split="test",
        observation=params.to_dict(),
        summary={k: summarise(v) for k, v in rows.items()},
        per_cube=rows,
        seconds=time.perf_counter() - t0,
        command="python -m tools.sky_heldout " + " ".join(argv or []),
    )
    if args.save_arrays:
        meta = dict(
            region=region.to_dict(),
            normalisation=dataclasses.asdict(norm),
            sigma_scale=float(model.sigma_scale),
            observation=params.to_dict(),
            k=params.k_for(region),
            cap=params.cap_for(region),
            select=params.select_for(region),
            stars_saved=save_stars,
            simulator=name,
            model=str(args.model),
        )
        result["arrays"] = write_arrays(args.save_arrays, saved, meta)
    dio.write_json(args.out, result)
    log.info("held-out sims: %s", json.dumps(result["summary"], indent=1))
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
