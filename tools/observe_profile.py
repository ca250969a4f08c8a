"""Where the observation loop's time goes for one cube: exact integration to the stars, and the
eq.-5 gridding with bisection and with ``lax.top_k`` (issue 17, item 2).

    python -m tools.observe_profile [--config=vnet_sky_lr]

Prints seconds per call of each part (compiled, warm) and checks that both selections give the
same cube.
"""

from __future__ import annotations

import argparse
import importlib
import time


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.observe_profile")
    p.add_argument("--config", default="vnet_sky_lr", help="a packaged V-net sky config")
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp

    from dustjax.vnet import observe as ob
    from dustjax.vnet.data import region_of

    cfg = importlib.import_module(f"dustjax.configs.{args.config}").get_config()
    region = region_of(cfg)
    params = ob.ObservationParams.from_config(cfg.observation)
    k, cap = params.k_for(region), params.cap_for(region)
    print(f"k {k}, cap {cap}, select {params.select_for(region)}, star slots {params.max_stars}")
    stars = jax.jit(lambda key: ob.draw_stars(key, region, params))(jax.random.key(0))
    density = jnp.full(region.shape, 3e-4, jnp.float32)
    integrate = jax.jit(lambda d, xyz: ob.integrate_stars(d, region, xyz, params.star_chunk))

    def timed(f, *a):
        jax.block_until_ready(f(*a))  # compile
        t = time.perf_counter()
        out = jax.block_until_ready(f(*a))
        return out, time.perf_counter() - t

    e, dt = timed(integrate, density, stars["xyz_true"])
    print(f"integrate: {dt:.3f} s")
    sigma = jnp.full(e.shape, 0.05)
    cubes = {}
    for select in ("bisect", "top_k"):

        def grid(xyz, e, s, v, sel=select):
            return ob.grid_eq5(
                xyz, e, s, v, region, k, cap=cap, select=sel, bisect_steps=params.bisect_steps
            )

        grid = jax.jit(grid, static_argnames="sel")
        (cubes[select], _), dt = timed(grid, stars["xyz_obs"], e, sigma, stars["valid"])
        print(f"grid ({select}): {dt:.3f} s")
    diff = float(jnp.max(jnp.abs(cubes["bisect"] - cubes["top_k"])))
    print(f"max |bisect - top_k| = {diff:.3g} mag")


if __name__ == "__main__":
    main()
