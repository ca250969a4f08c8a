r"""Choose the NNLS baseline's default regularisation on SIMULATIONS (not on the real cubes).

    python -m tools.nnls_smoothness --region=SR --num_cubes=4 --out=workdirs/nnls_smoothness_SR.json

Draws sky-like cubes (`dustjax.sims.sky`) at the shared cubes' resolution (SR: 64^3 of 3 pc,
LR: 96^3 of 20 pc), then, exactly as `dustjax.vnet.realsky` does with a real cube, builds the
literature route's input (regridded truth -> exact LOS integral) and the catalogue route's
(stars in the box, exact E through the fine cube, noise, eq.-5 gridding: SR 30,000 stars,
sigma_E = hypot(0.03, 0.05 E); LR 10^6 stars, hypot(0.05, 0.05 E), 5 % distance error), solves
NNLS for each smoothness weight and reports the scores per weight, averaged over the cubes.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

SETTINGS = {
    "SR": dict(fine=(64, 64, 64), num_stars=30_000, sigma_a=0.03, sigma_b=0.05, distance_error=0.0),
    "LR": dict(
        fine=(96, 96, 96), num_stars=1_000_000, sigma_a=0.05, sigma_b=0.05, distance_error=0.05
    ),
}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--region", default="SR")
    p.add_argument("--num_cubes", type=int, default=4)
    p.add_argument("--weights", default="0,1e-5,1e-4,1e-3,1e-2")
    p.add_argument("--steps", default="1000")
    p.add_argument("--num_stars", type=int, default=None)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from dustjax import inversion, maps
    from dustjax.geometry import Region
    from dustjax.los import los_operator
    from dustjax.sims.sky import sky_density
    from dustjax.vnet import gridding, realsky

    name = args.region.upper()
    s = SETTINGS[name]
    region = Region.named(name)
    fine = region.with_shape(s["fine"])
    weights = [float(w) for w in args.weights.split(",")]
    steps = [int(n) for n in args.steps.split(",")]
    op = los_operator(region)
    rows = {}
    t0 = time.perf_counter()
    for c in range(args.num_cubes):
        density = np.asarray(sky_density(jax.random.key(args.seed + c), fine))
        dustmap = maps.DustMap.from_region(fine, density)
        truth = maps.regrid_nearest(dustmap, region)
        inputs = {"literature": np.asarray(op(truth))}
        catalog, _ = realsky.mock_catalog(
            dustmap,
            region,
            num_stars=args.num_stars or s["num_stars"],
            sigma_a=s["sigma_a"],
            sigma_b=s["sigma_b"],
            distance_error=s["distance_error"],
            seed=args.seed + c,
        )
        inputs["catalogue"] = np.maximum(gridding.grid_extinction(region, catalog), 0.0)
        for route, e in inputs.items():
            for n in steps:
                for w in weights:
                    pred = inversion.nnls_predictor(region, smoothness=w, num_steps=n)
                    out = np.asarray(pred(jnp.asarray(e, jnp.float32)[None])[0])
                    sc = realsky.scores(out, truth, region)
                    key = f"{route} steps={n} smoothness={w:g}"
                    rows.setdefault(key, []).append(
                        {k: sc[k] for k in ("skill", "dust_recovered", "log_r", "min_c_r")}
                    )
                    print(c, key, {k: round(v, 3) for k, v in rows[key][-1].items()}, flush=True)
    summary = {
        key: {m: float(np.mean([r[m] for r in rs])) for m in rs[0]} | {"num_cubes": len(rs)}
        for key, rs in rows.items()
    }
    result = dict(
        region=name,
        settings=s,
        seed=args.seed,
        rows=rows,
        mean=summary,
        seconds=time.perf_counter() - t0,
    )
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for key, m in summary.items():
        print(key, {k: round(v, 3) for k, v in m.items()})


if __name__ == "__main__":
    main()
