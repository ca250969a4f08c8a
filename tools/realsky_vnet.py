r"""Score a V-net workdir (or the NNLS baseline) on a real dust cube: one row of issue 17's table.

    python -m tools.realsky_vnet --cube=../shared/data/real/bayestar19_SR_anticentre.fits \
        --region=SR --route=literature --model=workdirs/vnet_sr_los --out=workdirs/realsky/sr_lit
    python -m tools.realsky_vnet --cube=.device_carry/real/bayestar19_LR_anticentre.npy \
        --region=LR --route=catalogue --model=nnls --num_stars=1000000 --sigma_a=0.05 \
        --sigma_b=0.05 --distance_error=0.05 --out=$OUT/lr_cat_nnls

--cube takes FITS (astropy) or NAME.npy with NAME.header.json beside it (no astropy: the device).
Writes DIR/realsky.json (scores, settings, timings) and DIR/realsky.png (truth, prediction,
scatter). All logic lives in `dustjax.vnet.realsky`; see docs/validation.md, "Real sky".
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

SAVE_MAX_STARS = 200_000  # --save_arrays keeps a catalogue route's stars up to this many


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m tools.realsky_vnet", description=__doc__.split("\n")[0]
    )
    p.add_argument("--cube", required=True, help="real density cube: .fits or .npy + .header.json")
    p.add_argument("--region", default="SR", help="SR, LR, or x0,x1,y0,y1,z0,z1 (pc)")
    p.add_argument("--shape", default=None, help="cells per axis, e.g. 32,32,32 (default 32^3)")
    p.add_argument("--route", choices=["literature", "catalogue"], default="literature")
    p.add_argument("--model", required=True, help="training workdir, or 'nnls'")
    p.add_argument("--num_stars", type=int, default=30_000, help="catalogue route: stars drawn")
    p.add_argument("--sigma_a", type=float, default=0.03, help="sigma_E = hypot(a, b E) (mag)")
    p.add_argument("--sigma_b", type=float, default=0.05)
    p.add_argument("--distance_error", type=float, default=0.0, help="fractional, e.g. 0.05")
    p.add_argument("--distance_power", type=float, default=2.0, help="star distances ~ d^p")
    p.add_argument("--k", type=int, default=None, help="eq.-5 neighbours (default 3 SR, 30 LR)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_redraws", type=int, default=32, help="Monte Carlo redraws (0: none)")
    p.add_argument("--batch_size", type=int, default=8, help="redraws per device batch")
    p.add_argument("--nnls_steps", type=int, default=None, help="NNLS iterations")
    p.add_argument(
        "--nnls_smoothness",
        type=float,
        default=None,
        help="NNLS gradient weight (default: dustjax.inversion.DEFAULT_SMOOTHNESS of the route)",
    )
    p.add_argument(
        "--reflect",
        choices=["auto", "none"],
        default="auto",
        help="mirror the cube through the Sun if only its mirror covers the region",
    )
    p.add_argument("--density_scale", type=float, default=None, help="cube units -> mag/pc")
    p.add_argument(
        "--refine",
        default="",
        help="also score the V-net map refined by the extinctions (dustjax.vnet.refine): "
        "comma-separated noise floors (mag) of the literature cube, e.g. 0.003,0.01,0.03 (the "
        "catalogue route uses the stars' own sigmas and needs any non-empty value)",
    )
    p.add_argument(
        "--refine_corr",
        default="",
        help="catalogue route with --refine: also score the refinement with correlated prior "
        "errors, comma-separated ELL:NUGGET or ELL:NUGGET:MODEL_ERROR (cells; model error a "
        "number or 'auto'), e.g. 2:0.3:auto (the setting chosen on held-out simulations)",
    )
    p.add_argument(
        "--refine_grid",
        default="1",
        help="--refine_corr on these comma-separated grids: 1 the map's cells, F a grid F x "
        "finer put on the map's cells by refine.to_region (dustjax.vnet.refine.refine_catalog_fine;"
        " the stars place their dust inside the map's cells), e.g. 1,3",
    )
    p.add_argument(
        "--refine_cv",
        default="",
        help="catalogue route: also the refinement chosen by held-out stars among these "
        "candidates (dustjax.vnet.refine_cv; 'none', the V-net's map, always one of them), "
        "comma-separated ELL:NUGGET[:auto] (0:1 the independent prior), e.g. "
        "2:0.3:auto,1:0.3:auto,4:0.3:auto; the table goes to the JSON (refined.stars_cv.cv)",
    )
    p.add_argument("--refine_cv_holdout", type=float, default=0.15, help="stars held out")
    p.add_argument("--refine_cv_seed", type=int, default=0)
    p.add_argument("--refine_cv_block_cells", type=float, default=0.0, help="hold out whole "
                   "sky patches this many cells across (0: single stars)")  # fmt: skip
    p.add_argument("--refine_cv_max_stars", type=int, default=0, help="cross-validate on this "
                   "many stars drawn at random (0: all); the final refit uses all")  # fmt: skip
    p.add_argument(
        "--save_arrays",
        action="store_true",
        help="also write DIR/arrays.npz: the model's input extinction cube, the truth, the map, "
        "and a variance head's mu_hat / sigma_hat (to study post-processing without the model); "
        "the catalogue route's stars too, up to 200,000",
    )
    p.add_argument("--no_figure", action="store_true")
    p.add_argument("--out", required=True, help="output directory")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from dustjax.vnet import realsky, refine

    t0 = time.perf_counter()
    shape = tuple(int(n) for n in args.shape.split(",")) if args.shape else None
    region = realsky.parse_region(args.region, shape)
    cube = realsky.load_cube(args.cube, density_scale=args.density_scale)
    cube, reflected = realsky.fit_to_region(cube, region, args.reflect)
    predictor, hat_model, model_info = realsky.load_model(
        args.model,
        region,
        nnls_steps=args.nnls_steps,
        nnls_smoothness=args.nnls_smoothness,
        route=args.route,
    )
    report, result = realsky.evaluate(
        cube,
        region,
        predictor,
        route=args.route,
        hat_model=hat_model,
        num_stars=args.num_stars,
        sigma_a=args.sigma_a,
        sigma_b=args.sigma_b,
        distance_error=args.distance_error,
        distance_power=args.distance_power,
        k=args.k,
        num_redraws=args.num_redraws,
        batch_size=args.batch_size,
        seed=args.seed,
        model_config=model_info.get("config"),
        refine_floors=tuple(float(v) for v in args.refine.split(",") if v.strip()),
        refine_corr=refine.parse_corr_settings(args.refine_corr),
        refine_grid=refine.parse_grid_factors(args.refine_grid),
        refine_cv=dict(
            candidates=args.refine_cv,
            holdout=args.refine_cv_holdout,
            seed=args.refine_cv_seed,
            max_stars=args.refine_cv_max_stars,
            block_cells=args.refine_cv_block_cells,
        )
        if args.refine_cv
        else None,  # fmt: skip
    )
    report.update(
        cube=str(args.cube),
        reflected_axes=["XYZ"[a] for a in reflected],
        model=model_info,
        command="python -m tools.realsky_vnet " + " ".join(sys.argv[1:] if argv is None else argv),
        total_seconds=time.perf_counter() - t0,
    )
    files = realsky.write_report(args.out, report, result, figure=not args.no_figure)
    if args.save_arrays:
        catalog = None
        if args.route == "catalogue" and args.num_stars <= SAVE_MAX_STARS:
            # the evaluated catalogue again (same seed and settings: the same stars)
            catalog, _ = realsky.mock_catalog(
                cube, region, num_stars=args.num_stars, sigma_a=args.sigma_a,
                sigma_b=args.sigma_b, distance_error=args.distance_error,
                distance_power=args.distance_power, seed=args.seed,
            )  # fmt: skip
        files["arrays"] = realsky.save_arrays(args.out, result, hat_model, catalog)
    s = report["scores"]
    print(
        f"{args.route} {region.name} {args.model}: skill {s['skill']:.3f}, dust "
        f"{100 * s['dust_recovered']:.1f} %, log-r {s['log_r']:.3f}, min c_r {s['min_c_r']:.3f}"
        + (f", band coverage {s['band_coverage']:.3f}" if "band_coverage" in s else "")
        + f" ({report['total_seconds']:.0f} s) -> {files['json']}"
    )
    print(json.dumps(s))
    for name, r in (report.get("refined") or {}).items():
        q = r["scores"]
        chosen = f", chosen by held-out stars: {r['cv']['chosen']}" if "cv" in r else ""
        print(f"refined ({name}): skill {q['skill']:.3f}, dust {100 * q['dust_recovered']:.1f} %, "
              f"log-r {q['log_r']:.3f} ({r['seconds']:.0f} s){chosen}")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
