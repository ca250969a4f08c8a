r"""Is the catalogue cube the V-net sees on the real sky biased against what training shows it?
(issue 17, the diagnosis of the overshoot; docs/validation.md, real-sky diary 2026-11-30)

    python -m tools.catalogue_input_bias --region=LR \
        --cube=../shared/data/real/bayestar19_LR_anticentre.fits --out=bias_LR.json

Real cube: the issue's catalogue (`dustjax.vnet.realsky.mock_catalog`, SR 30,000 stars
hypot(0.03, 0.05 E); LR 10^6 stars hypot(0.05, 0.05 E), 5 % distance errors), gridded by eq. 5
(`gridding.knn_weights`), against the exact extinction at the cell centres of the regridded cube
(the literature route's input); also without noise and without distance errors. Simulations: the
training loop's observation (`dustjax.vnet.observe.observe_one`, the same catalogue settings)
of a few cubes of the recipe's simulator against their exact extinction. Per extinction bin: the
median and mean of gridded - exact (mag), and the ratio of the sums.
"""

from __future__ import annotations

import argparse
import importlib

import numpy as np

CATALOGUES = {
    "SR": dict(num_stars=30_000, sigma_a=0.03, sigma_b=0.05, distance_error=0.0),
    "LR": dict(num_stars=1_000_000, sigma_a=0.05, sigma_b=0.05, distance_error=0.05),
}
BINS = (0.0, 0.1, 0.3, 1.0, 3.0, 100.0)


def compare(gridded, exact) -> dict:
    g, e = np.asarray(gridded, np.float64).ravel(), np.asarray(exact, np.float64).ravel()
    out = dict(sum_ratio=float(g.sum() / e.sum()), bins=[])
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        m = (e >= lo) & (e < hi)
        if m.any():
            d = g[m] - e[m]
            row = dict(e_range=[lo, hi], num_cells=int(m.sum()))
            out["bins"].append(
                dict(row, median_diff=float(np.median(d)), mean_diff=float(d.mean()))
            )
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m tools.catalogue_input_bias")
    p.add_argument("--region", default="LR", choices=["SR", "LR"])
    p.add_argument("--cube", required=True, help="real cube: .fits or .npy + .header.json")
    p.add_argument("--num_sims", type=int, default=4)
    p.add_argument("--out", required=True, help="output JSON")
    args = p.parse_args(argv)
    import jax

    from dustjax import io as dio
    from dustjax import maps
    from dustjax.geometry import Region
    from dustjax.los import los_operator
    from dustjax.sims import simulate_batch_fn
    from dustjax.vnet import data as vdata
    from dustjax.vnet import gridding, realsky
    from dustjax.vnet import observe as ob

    region = Region.named(args.region)
    cube, _ = realsky.fit_to_region(realsky.load_cube(args.cube), region)
    exact = np.asarray(los_operator(region)(maps.regrid_nearest(cube, region)))
    kw = CATALOGUES[args.region]
    variants = {
        "issue catalogue": kw,
        "noise, no distance errors": dict(kw, distance_error=0.0),
        "no noise, no distance errors": dict(kw, sigma_a=1e-4, sigma_b=0.0, distance_error=0.0),
    }
    result = dict(region=args.region, cube=args.cube, catalogue=kw, real={}, sims=[])
    for name, v in variants.items():
        catalog, _ = realsky.mock_catalog(cube, region, seed=0, **v)
        gridded = np.maximum(
            gridding.knn_weights(region, catalog, None).apply(catalog.extinction), 0
        )
        result["real"][name] = compare(gridded, exact)
    cfg = importlib.import_module(
        f"experiments.configs.vnet_sky_{args.region.lower()}"
    ).get_config()
    base = ob.ObservationParams.from_config(cfg.observation)
    fixed = dict(num_stars_range=(float(kw["num_stars"]),) * 2, sigma_a_range=(kw["sigma_a"],) * 2,
                 sigma_b_range=(kw["sigma_b"],) * 2,
                 distance_error_range=(kw["distance_error"],) * 2)  # fmt: skip
    params = ob.ObservationParams(**dict(base.to_dict(), **fixed))
    name, sim_params = vdata._simulator_params(cfg)
    density, ext = simulate_batch_fn(region, name, sim_params)(
        jax.random.split(jax.random.key(3), args.num_sims)
    )
    observe = jax.jit(lambda k, d: ob.observe_one(k, d, region, params)[0])
    for i in range(args.num_sims):
        gridded = observe(jax.random.key(10 + i), density[i])
        result["sims"].append(compare(gridded, ext[i]))
    dio.write_json(args.out, result)
    print(dio.dumps_json(result, indent=1))
    return result


if __name__ == "__main__":
    main()
