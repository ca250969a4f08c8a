"""Where the catalogue refinement's time goes (issue 17): star operator build, one FISTA solve,
the ``model_error="auto"`` rounds, and several settings sharing one operator.

    nice python -m tools.refine_cost --num_stars=200000 --num_steps=1000 \
        --cube=/work/main/.device_carry/real/bayestar19_LR_anticentre.npy

The prior is the real cube's own density (regridded) with a band of half its value plus a
floor: a stand-in for a V-net's output of the same size (the cost does not depend on it).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cube", required=True)
    p.add_argument("--region", default="LR")
    p.add_argument("--num_stars", type=int, default=200_000)
    p.add_argument("--num_steps", type=int, default=1000)
    p.add_argument("--distance_error", type=float, default=0.05)
    p.add_argument("--settings", default="2:0.3", help="--refine_corr list, ELL:NU[:auto],...")
    p.add_argument("--parts", default="build,solve,settings",
                   help="any of build (star operator, then its blocked form), solve (each "
                   "setting alone, plain and blocked operator), settings (the list, "
                   "shared), percall (the list, one operator per setting)")  # fmt: skip
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    from dustjax import inversion, maps
    from dustjax.vnet import realsky, refine

    region = realsky.parse_region(args.region)
    cube, _ = realsky.fit_to_region(realsky.load_cube(args.cube), region)
    cat, _ = realsky.mock_catalog(cube, region, num_stars=args.num_stars, sigma_a=0.05,
                                  sigma_b=0.05, distance_error=args.distance_error)  # fmt: skip
    m = np.asarray(maps.regrid_nearest(cube, region), np.float32)
    s = (0.5 * m + 1e-5).astype(np.float32)
    parts = set(args.parts.split(","))
    out: dict = dict(num_stars=int(len(cat.extinction)), num_steps=args.num_steps,
                     backend=jax.default_backend())  # fmt: skip

    def timed(name, f):
        t = time.perf_counter()
        v = f()
        jax.block_until_ready(v) if isinstance(v, jax.Array) else None
        out[name] = round(time.perf_counter() - t, 2)
        print(f"{name}: {out[name]} s", flush=True)
        return v

    op = None
    if "build" in parts:
        from dustjax import blocked_operator

        op = timed("build_star_operator", lambda: inversion.star_operator(region, cat.xyz_pc))
        out["width"] = int(op.indices.shape[1])
        workers = min(os.cpu_count() or 1, 16)  # as refine.catalog_operator
        threaded = functools.partial(inversion.star_operator, region, cat.xyz_pc, workers=workers)
        timed(f"build_star_operator_{workers}_threads", lambda: threaded().lengths)
        timed("build_blocked", lambda: blocked_operator.blocked(op).t_rows)
    corr = refine.parse_corr_settings(args.settings)
    if "solve" in parts:
        op = inversion.star_operator(region, cat.xyz_pc) if op is None else op
        kinds = dict(scatter=op, blocked=refine.blocked_operator.blocked(op))
        for ell, nu, *tau in corr:
            for kind, operator in kinds.items():
                info: dict = {}
                kw = dict(corr_length=ell, nugget=nu, num_steps=args.num_steps, info=info,
                          model_error=tau[0] if tau else 0.0, operator=operator)  # fmt: skip
                name = f"{ell:g}_{nu:g}" + ("_auto" if tau else "") + f"_{kind}"
                run = functools.partial(refine.refine_catalog, cat, m, s, region, **kw)
                timed(f"solve_{name}", run)
                out[f"rounds_{name}"] = 1 + len(info.get("chi2_per_star", []))
    if "percall" in parts:  # the old way: each setting builds its own operator

        def percall():
            for ell, nu, *tau in corr:
                refine.refine_catalog(cat, m, s, region, corr_length=ell, nugget=nu,
                                      num_steps=args.num_steps,
                                      model_error=tau[0] if tau else 0.0)  # fmt: skip

        timed("settings_percall", percall)
    if "settings" in parts:
        timed("settings_shared", lambda: refine.refine_settings(
            cat, m, s, region, corr, num_steps=args.num_steps))  # fmt: skip
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
