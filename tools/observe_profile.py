"""Where the observation loop's time goes for one cube, with the former and the new kernels
(issue 17, item 2): exact integration to the stars (sorted LOS kernel / sort-free pieces), the
eq.-5 gridding (3^3-block search / two-pass runs search, each with bisection and ``lax.top_k``),
and the whole `observe_one` before and after.

    python -m tools.observe_profile [--config=vnet_sky_lr] [--out=FILE.json]
    python -m tools.observe_profile --batch=8 --group=4 --skip_parts  # trim on / off

Prints seconds per call of each part (compiled, warm; best of ``--repeats``) and checks that the
kernels give the same numbers (max differences, and the cells the search flags as not exact).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import time


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.observe_profile")
    p.add_argument("--config", default="vnet_sky_lr", help="a packaged V-net sky config")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="", help="also write the numbers as JSON")
    p.add_argument(
        "--batch",
        type=int,
        default=0,
        help="also time observe_batch on this many "
        "cubes in groups of --group, with and without trim (alternately, twice)",
    )
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--skip_parts", action="store_true", help="only the --batch timing")
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dustjax import io as dio
    from dustjax.vnet import observe as ob
    from dustjax.vnet.data import region_of

    cfg = importlib.import_module(f"dustjax.configs.{args.config}").get_config()
    region = region_of(cfg)
    params = ob.ObservationParams.from_config(cfg.observation)
    before = dataclasses.replace(params, integrator="sort", search="block")
    res = dict(config=args.config, k=params.k_for(region), star_slots=params.max_stars,
               search=params.search_for(region), backend=jax.default_backend())  # fmt: skip
    print(res)
    stars = jax.jit(lambda key: ob.draw_stars(key, region, params))(jax.random.key(0))
    rng = np.random.default_rng(0)
    density = jnp.asarray(rng.lognormal(np.log(3e-4), 1.5, region.shape), jnp.float32)

    def timed(name, f, *a):
        out = jax.block_until_ready(f(*a))  # compile
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = jax.block_until_ready(f(*a))
            best = min(best, time.perf_counter() - t)
        res[f"{name}_s"] = best
        print(f"{name}: {best:.3f} s")
        return out

    if args.batch:
        _time_batches(args, region, params, density, res)
    if args.skip_parts:
        print(res)
        if args.out:
            dio.write_json(args.out, res)
        return
    e = {}
    for method in ("sort", "pieces"):
        fn = jax.jit(lambda d, x, m=method: ob.integrate_stars(d, region, x, params.star_chunk, m))
        e[method] = timed(f"integrate_{method}", fn, density, stars["xyz_true"])
    res["integrate_max_rel_diff"] = float(
        jnp.max(jnp.abs(e["pieces"] - e["sort"]) / jnp.maximum(jnp.abs(e["sort"]), 1e-6))
    )
    sigma = jnp.hypot(0.05, 0.05 * e["sort"])
    cubes = {}
    for search in ("block", "runs"):
        for select in ("bisect", "top_k"):
            pp = dataclasses.replace(params, search=search, select=select)
            fn = jax.jit(lambda x, v, s, ok, pp=pp: ob.grid_catalogue(x, v, s, ok, region, pp))
            cube, not_exact = timed(
                f"grid_{search}_{select}", fn, stars["xyz_obs"], e["sort"], sigma, stars["valid"]
            )
            cubes[search, select] = cube
            res[f"grid_{search}_{select}_not_exact"] = float(jnp.mean(not_exact))
    ref = cubes["block", "bisect"]
    res["grid_max_abs_diff_mag"] = max(float(jnp.max(jnp.abs(c - ref))) for c in cubes.values())
    whole = {}
    for name, pp in (("before", before), ("after", params)):
        fn = jax.jit(lambda key, d, pp=pp: ob.observe_one(key, d, region, pp)[0])
        whole[name] = timed(f"observe_one_{name}", fn, jax.random.key(1), density)
    res["observe_one_speedup"] = res["observe_one_before_s"] / res["observe_one_after_s"]
    res["observe_one_max_abs_diff_mag"] = float(jnp.max(jnp.abs(whole["after"] - whole["before"])))
    print({k: v for k, v in res.items() if "diff" in k or "not_exact" in k or "speedup" in k})
    if args.out:
        dio.write_json(args.out, res)


def _time_batches(args, region, params, density, res):
    """observe_batch with and without trim, compiled first, then timed alternately twice."""
    import jax
    import jax.numpy as jnp

    from dustjax.vnet import observe as ob

    keys = jax.random.split(jax.random.key(3), args.batch)
    cubes = jnp.broadcast_to(density, (args.batch, *density.shape))
    fns = {}
    for name, trim in (("trim", True), ("no_trim", False)):
        pp = dataclasses.replace(params, trim=trim)
        fns[name] = jax.jit(lambda k, d, pp=pp: ob.observe_batch(k, d, region, pp, args.group)[0])
        jax.block_until_ready(fns[name](keys, cubes))
    for rep, names in enumerate((("no_trim", "trim"), ("trim", "no_trim"))):
        for name in names:
            t = time.perf_counter()
            jax.block_until_ready(fns[name](keys, cubes))
            res[f"batch_{name}_s_{rep}"] = time.perf_counter() - t
            print(f"observe_batch {args.batch} cubes, group {args.group}, {name}: "
                  f"{res[f'batch_{name}_s_{rep}']:.1f} s")  # fmt: skip
    counts = jax.vmap(lambda k: ob.catalogue_size(k, params))(keys)
    res["batch_mean_catalogue"] = float(jnp.mean(counts))


if __name__ == "__main__":
    main()
