r"""Training throughput with the catalogue observation in the loop, several observation kernels
in one process (issue 17, item 2): the noiseless step, then the observed step for each variant.

    python -m tools.observe_throughput --region=LR --set='LR:model.derivative_channel=true' \
        --variant=after: --variant=before:integrator=sort,search=block --variant=parts@after \
        --measure_steps=64 --deadline_s=220 --out=DIR

Rates are measured as `tools.vnet_sky_device.measure` measures them (its `_time_steps`: two
warm-up steps, then ``measure_steps`` steps of one jitted training step of the recipe, same model
and state), so with echo E the window holds ``measure_steps / E`` observed batches and the rate
pays for them. ``--variant NAME:key=value,...`` overrides ``config.observation`` keys (values
as JSON where they parse); the empty override is the recipe as it is. For each variant also: the
first observed batch's wall time (compilation included), the unique observed batches per second
(the data source alone, echo 1). A step ``--variant=parts@NAME`` (after NAME) times the exact
integration and the eq.-5 gridding of one group of cubes with NAME's overrides. Variants that the
deadline leaves no time for are skipped and say so. Writes DIR/throughput.json after every step
(atomic).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

log = logging.getLogger("observe_throughput")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.observe_throughput")
    p.add_argument("--region", default="LR")
    p.add_argument("--set", action="append", default=[],
                   help="config override REGION:key=value (as tools.vnet_sky_device)")  # fmt: skip
    p.add_argument("--variant", action="append", default=[],
                   help="NAME:key=value,... observation overrides (values without commas; "
                   "repeatable)")  # fmt: skip
    p.add_argument("--measure_steps", type=int, default=64)
    p.add_argument("--data_batches", type=int, default=4, help="unique observed batches timed")
    p.add_argument("--deadline_s", type=float, default=0.0, help="stop starting work after this")
    p.add_argument("--variant_reserve_s", type=float, default=45.0,
                   help="a variant starts only with this much time left")  # fmt: skip
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"name:key=value,key=value"`` -> ``(name, {key: value})``; values JSON where they parse."""
    name, _, rest = spec.partition(":")
    if not name:
        raise ValueError(f"variant {spec!r}: expected NAME:key=value,...")
    overrides = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"variant {spec!r}: {item!r} is not key=value")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def _parts(cfg, batch_size: int) -> dict:
    """Device seconds (best of 3, and the first call with its compilation) of the exact
    integration and of the eq.-5 gridding of ``batch_size`` sky cubes' catalogues, vmapped."""
    import jax
    import jax.numpy as jnp

    from dustjax import sims
    from dustjax.vnet import data as vdata
    from dustjax.vnet import observe as ob

    region = vdata.region_of(cfg)
    name, sim_params = vdata._simulator_params(cfg)
    params = ob.ObservationParams.from_config(cfg.observation)
    density, _ = sims.simulate_batch_fn(region, name, sim_params)(
        jax.random.split(jax.random.key(5), batch_size)
    )
    keys = jax.random.split(jax.random.key(6), batch_size)
    stars = jax.jit(jax.vmap(lambda k: ob.draw_stars(k, region, params)))(keys)

    def integrate(d, xyz):
        return ob.integrate_stars(d, region, xyz, params.star_chunk, params.integrator)

    def grid(xyz, e, valid):
        sigma = jnp.hypot(0.05, 0.05 * jnp.maximum(e, 0.0))
        return ob.grid_catalogue(xyz, e, sigma, valid, region, params)

    def timed(fn, *a):
        t0 = time.perf_counter()
        res = jax.block_until_ready(fn(*a))
        first = time.perf_counter() - t0
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*a))
            best = min(best, time.perf_counter() - t0)
        return res, first, best

    e, first_i, best_i = timed(jax.jit(jax.vmap(integrate)), density, stars["xyz_true"])
    (_, not_exact), first_g, best_g = timed(
        jax.jit(jax.vmap(grid)), stars["xyz_obs"], e, stars["valid"]
    )
    return dict(
        cubes=batch_size, integrate_s=best_i, integrate_first_s=first_i, grid_s=best_g,
        grid_first_s=first_g, not_exact_fraction=float(jnp.mean(not_exact)),
    )  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    began = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from dustjax.runtime import configure_xla, quiet_library_logs

    configure_xla()
    import jax
    import numpy as np

    from dustjax import io as dio
    from dustjax import sharding
    from dustjax.training import optim, steps, tasks
    from dustjax.vnet.observe import ObservationParams, simulate_observed_source
    from tools.vnet_sky_device import _config, _time_data, _time_steps

    quiet_library_logs()
    jax.config.update("jax_compilation_cache_dir", "/tmp/vt_jax_cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = [parse_variant(v) for v in (args.variant or ["after:"])]
    region = args.region.upper()
    config = _config(region, args.set)
    n = int(args.measure_steps)
    config.data.steps_per_epoch = 10 * n + 10
    echo = int(config.observation.get("echo", 1) or 1)
    result = dict(
        region=region, config=config.name, devices=str(jax.devices()), jax=jax.__version__,
        sets=args.set, measure_steps=n, echo=echo, batch_size=int(config.batch_size),
        observed_batches_in_window=n // echo, variants={},
    )  # fmt: skip

    def left():
        return args.deadline_s - (time.perf_counter() - began) if args.deadline_s else 1e9

    def save():
        result["wall_s"] = time.perf_counter() - began
        dio.write_json(out_dir / "throughput.json", result)

    kw = dict(batch_size=config.batch_size, seed=123, epoch=0, train=True)
    clean_cfg = config.copy_and_resolve_references()
    clean_cfg.observation.enabled = False
    t0 = time.perf_counter()
    clean = iter(simulate_observed_source(clean_cfg, "train", **kw))
    first = next(clean)
    task = tasks.get_task(config.task)
    mesh = sharding.make_mesh(config.get("num_devices") or None)
    model = steps.build_model(config)
    tx = optim.make_optimizer(config, 100)
    state = steps.create_train_state(model, tx, first["extinction"][:1], jax.random.key(0), mesh)
    train_step, _ = steps.jit_steps(task, state, mesh)
    rng = jax.random.key(1)
    state, clean_rate, loss = _time_steps(train_step, state, clean, rng, n)
    result["steps_per_s_noiseless"] = clean_rate
    result["noiseless_setup_s"] = time.perf_counter() - t0
    log.info("noiseless: %.2f steps/s (setup and compilation %.0f s)", clean_rate,
             result["noiseless_setup_s"])  # fmt: skip
    save()

    for name, overrides in variants:
        if name.startswith("parts@"):  # the parts of a variant measured before
            of = name.removeprefix("parts@")
            target = result["variants"].get(of, {})
            if "steps_per_s_observed" not in target or left() < args.variant_reserve_s:
                target["parts"] = dict(skipped="deadline, error or not measured")
                continue
            cfg = config.copy_and_resolve_references()
            for key, value in target["overrides"].items():
                cfg.observation[key] = tuple(value) if isinstance(value, list) else value
            group = int(cfg.observation.get("group", 0) or 0) or int(cfg.batch_size)
            try:
                target["parts"] = _parts(cfg, min(group, int(cfg.batch_size)))
                log.info("%s parts: %s", of, target["parts"])
            except Exception as err:
                log.exception("%s parts failed", of)
                target["parts"] = dict(error=repr(err))
            save()
            continue
        if left() < args.variant_reserve_s:
            result["variants"][name] = dict(overrides=overrides, skipped="deadline")
            log.info("%s: skipped (%.0f s left)", name, left())
            save()
            continue
        cfg = config.copy_and_resolve_references()
        for key, value in overrides.items():
            cfg.observation[key] = tuple(value) if isinstance(value, list) else value
        params = ObservationParams.from_config(cfg.observation)
        from dustjax.vnet.data import region_of

        reg = region_of(cfg)
        entry = dict(overrides=overrides, integrator=params.integrator,
                     search=params.search_for(reg), select=params.select_for(reg),
                     group=int(cfg.observation.get("group", 0) or 0))  # fmt: skip
        result["variants"][name] = entry
        try:
            t0 = time.perf_counter()
            observed = iter(simulate_observed_source(cfg, "train", **kw))
            batch = next(observed)
            x = np.asarray(batch["extinction"])
            entry["data_first_s"] = time.perf_counter() - t0
            entry["finite"] = bool(np.isfinite(x).all())
            entry["extinction_hat_range"] = [float(x.min()), float(x.max())]
            if not entry["finite"]:
                raise FloatingPointError(f"{name}: non-finite observed batch")
            state, rate, loss = _time_steps(train_step, state, observed, rng, n)
            entry["steps_per_s_observed"] = rate
            entry["throughput_ratio"] = rate / clean_rate
            entry["loss"] = loss
            once = cfg.copy_and_resolve_references()
            once.observation.echo = 1  # the same jitted batch function: no new compilation
            unique = iter(simulate_observed_source(once, "train", **kw))
            entry["observed_batches_per_s"] = _time_data(unique, args.data_batches)
            log.info("%s: %.2f steps/s observed (ratio %.3f), %.2f observed batches/s, first "
                     "batch %.0f s", name, rate, rate / clean_rate,
                     entry["observed_batches_per_s"], entry["data_first_s"])  # fmt: skip
        except Exception as err:
            log.exception("%s failed", name)
            entry["error"] = repr(err)
        save()

    if left() > 20:  # the noiseless rate again: drift of the machine over the run
        state, rate, _ = _time_steps(train_step, state, clean, rng, n)
        result["steps_per_s_noiseless_end"] = rate
    save()
    log.info("done in %.0f s", time.perf_counter() - began)


if __name__ == "__main__":
    main()
