r"""What the fig.-11 consistency check gives for a CORRECT map, on simulations (thresholds of
`dustjax.vnet.checks`).

    python -m tools.consistency_thresholds --region=SR --num_cubes=4 \
        --out=workdirs/consistency_SR.json

For sky-like cubes (`dustjax.sims.sky`) at the shared cubes' resolution, a mock catalogue as in
`dustjax.vnet.realsky` (the issue's settings per region), and three maps on the region's cells:
the regridded true density (as good as a 32^3 map can be), the same x 0.5 and x 2 (maps that
miss or double the dust). Reports apply.consistency's statistics (median E_rho - E in units of
the median sigma_E, fraction within 1 sigma) and whether `checks.consistency_warning` fires.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from tools.nnls_smoothness import SETTINGS


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--region", default="SR")
    p.add_argument("--num_cubes", type=int, default=4)
    p.add_argument("--num_stars", type=int, default=None)
    p.add_argument("--seed", type=int, default=200)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from dustjax import maps
    from dustjax.geometry import Region
    from dustjax.sims.sky import sky_density
    from dustjax.vnet import apply as ap
    from dustjax.vnet import checks, realsky

    name = args.region.upper()
    s = SETTINGS[name]
    region = Region.named(name)
    fine = region.with_shape(s["fine"])
    rows = []
    for c in range(args.num_cubes):
        density = np.asarray(sky_density(jax.random.key(args.seed + c), fine))
        dustmap = maps.DustMap.from_region(fine, density)
        truth = maps.regrid_nearest(dustmap, region)
        catalog, _ = realsky.mock_catalog(
            dustmap,
            region,
            num_stars=args.num_stars or s["num_stars"],
            sigma_a=s["sigma_a"],
            sigma_b=s["sigma_b"],
            distance_error=s["distance_error"],
            seed=args.seed + c,
        )
        sig = checks.median_sigma(catalog)
        for label, cube in (
            ("truth", truth),
            ("truth x 0.5", 0.5 * truth),
            ("truth x 2", 2 * truth),
        ):
            _, check = ap.consistency(cube, region, catalog)
            row = dict(
                cube=c,
                map=label,
                median_over_sigma=check["median_difference_mag"] / sig,
                within_1sigma=check["fraction_within_1sigma"],
                median_sigma=sig,
                median_over_sigma_eff=check["median_difference_mag"]
                / check.get("median_sigma_eff_mag", sig),
                within_1sigma_eff=check.get("fraction_within_1sigma_eff"),
                warns=checks.consistency_warning(check) is not None,
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump(dict(region=name, settings=s, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
