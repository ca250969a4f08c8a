r"""One device call for the real-sky V-net (issue 17): smoke, throughput, train, calibrate.

    python -m tools.vnet_sky_device --regions=SR,LR --train_seconds=150,150 --out=$OUT/vt

For each region: (1) a smoke step (one observed batch, two training steps; fails fast),
(2) the throughput of the training step fed by the observation loop against the same step fed
by noiseless (exact) extinction cubes, and the data functions alone, (3) training with
`experiments/configs/vnet_sky_{sr,lr}.py` for about ``train_seconds`` (the step count comes from
the measured rate), (4) the calibration factor of the variance head on validation simulations
(`dustjax.vnet.normalisation.fit_sigma_scale`, cells with truth > 1e-4 mag/pc), written to
WORKDIR/calibration.json. Writes OUT/REGION_summary.json. The workdirs stay under --workdir_root
for the evaluation (tools/realsky_vnet.py) in the same call.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

log = logging.getLogger("vnet_sky_device")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.vnet_sky_device")
    p.add_argument("--regions", default="SR,LR")
    p.add_argument("--train_seconds", default="150,150", help="per region, comma-separated")
    p.add_argument("--epochs", type=int, default=3, help="epochs the training time is cut into")
    p.add_argument("--measure_steps", type=int, default=20)
    p.add_argument("--workdir_root", default="/tmp/vt_workdirs")
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[],
                   help="config override REGION:key=value (value parsed as JSON)")  # fmt: skip
    p.add_argument("--skip_train", action="store_true", help="smoke + throughput only")
    p.add_argument("--evaluate", default="", help="real cubes' folder: score each trained model "
                   "on both routes with tools/realsky_vnet.py")  # fmt: skip
    p.add_argument("--nnls", action="store_true", help="with --evaluate: NNLS rows too")
    p.add_argument("--deadline_s", type=float, default=0.0,
                   help="whole-run wall budget: training is cut to end in time")  # fmt: skip
    p.add_argument("--eval_reserve_s", type=float, default=100.0)
    p.add_argument("--rate_factor", type=float, default=1.0,
                   help="steps = rate_factor x measured rate x train_seconds (e.g. 0.5 when "
                   "another training shares the GPU)")  # fmt: skip
    p.add_argument("--plan", default="", help="JSON file of the training's step plan: written "
                   "by the first call (from the measured rate), read by a later call that resumes "
                   "the same workdir (no new measurement, the same schedule); '{region}' in the "
                   "path is replaced by each region's name")  # fmt: skip
    p.add_argument("--call_seconds", type=float, default=0.0,
                   help="training in this call ends within this many seconds of its start "
                   "(config.stop_before_unix); 0: train to the plan's end")  # fmt: skip
    p.add_argument(
        "--population_bn",
        type=int,
        default=16,
        help="after training, recompute the best checkpoint's batch-norm statistics "
        "over this many fresh observed training batches and use them for the "
        "calibration and every prediction (0: keep the running averages)",
    )
    p.add_argument("--finish", action="store_true", help="calibrate (and --evaluate) even when "
                   "this call's budget stopped the training before the plan's end")  # fmt: skip
    p.add_argument("--calibration_redraws", type=int, default=0,
                   help="fit the sigma scale with this many Monte Carlo redraws per cube "
                   "(the apply route's band); 0: against the model variance alone")  # fmt: skip
    return p.parse_args(argv)


def _config(region: str, overrides):
    import importlib

    mod = importlib.import_module(f"experiments.configs.vnet_sky_{region.lower()}")
    c = mod.get_config()
    for spec in overrides:
        reg, _, assignment = spec.partition(":")
        if reg.upper() != region.upper():
            continue
        key, _, value = assignment.partition("=")
        node = c
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        parsed = json.loads(value)
        node[leaf] = tuple(parsed) if isinstance(parsed, list) else parsed
    return c


def _time_steps(train_step, state, batches, rng, n):
    import jax

    for _ in range(2):  # warm-up (compilation)
        state, m = train_step(state, next(batches), rng)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(n):
        state, m = train_step(state, next(batches), rng)
    jax.block_until_ready(m)
    return state, n / (time.perf_counter() - t0), float(m["loss"])


def _time_data(batches, n):
    import jax

    jax.block_until_ready(next(batches))
    t0 = time.perf_counter()
    for _ in range(n):
        b = next(batches)
    jax.block_until_ready(b)
    return n / (time.perf_counter() - t0)


def measure(config, n: int) -> dict:
    """Smoke test and steps/s with and without the observation loop (same model and step)."""
    import jax
    import numpy as np

    from dustjax import sharding
    from dustjax.training import optim, steps, tasks
    from dustjax.vnet.observe import simulate_observed_source

    cfg = config.copy_and_resolve_references()
    cfg.data.steps_per_epoch = 10 * n + 10
    off = cfg.copy_and_resolve_references()
    off.observation.enabled = False
    if "subcell_factor" in off.observation:  # the noiseless route has no sub-cell structure
        off.observation.subcell_factor = 1
        if "subcell_log_sd_range" in off.observation:
            off.observation.subcell_log_sd_range = (0.0, 0.0)
    kw = dict(batch_size=cfg.batch_size, seed=123, epoch=0, train=True)
    t0 = time.perf_counter()
    observed = iter(simulate_observed_source(cfg, "train", **kw))
    first = next(observed)
    x = np.asarray(first["extinction"])
    y = np.asarray(first["density"])
    smoke = dict(
        data_first_s=time.perf_counter() - t0,
        extinction_hat_range=[float(x.min()), float(x.max())],
        density_hat_range=[float(y.min()), float(y.max())],
        finite=bool(np.isfinite(x).all() and np.isfinite(y).all()),
    )
    log.info("smoke data: %s", smoke)
    if not smoke["finite"]:
        raise FloatingPointError(f"non-finite observed batch: {smoke}")
    clean = iter(simulate_observed_source(off, "train", **kw))
    task = tasks.get_task(cfg.task)
    mesh = sharding.make_mesh(cfg.get("num_devices") or None)
    model = steps.build_model(cfg)
    tx = optim.make_optimizer(cfg, 100)
    state = steps.create_train_state(model, tx, first["extinction"][:1], jax.random.key(0), mesh)
    train_step, _ = steps.jit_steps(task, state, mesh)
    rng = jax.random.key(1)
    t0 = time.perf_counter()
    state, m = train_step(state, first, rng)
    state, m = train_step(state, next(observed), rng)
    smoke["two_steps_s"] = time.perf_counter() - t0
    smoke["loss"] = float(m["loss"])
    if not np.isfinite(smoke["loss"]):
        raise FloatingPointError(f"non-finite loss in the smoke steps: {smoke}")
    log.info("smoke steps: %s", smoke)
    state, obs_rate, _ = _time_steps(train_step, state, observed, rng, n)
    state, clean_rate, _ = _time_steps(train_step, state, clean, rng, n)
    data_obs = _time_data(observed, max(4, n // 4))
    data_clean = _time_data(clean, max(4, n // 4))
    out = dict(
        smoke=smoke,
        steps_per_s_observed=obs_rate,
        steps_per_s_noiseless=clean_rate,
        throughput_ratio=obs_rate / clean_rate,
        data_batches_per_s_observed=data_obs,
        data_batches_per_s_noiseless=data_clean,
        batch_size=int(cfg.batch_size),
    )
    log.info("throughput: %s", out)
    return out


def _redraw_batches(cfg, num_batches: int, num_redraws: int, batch_size: int):
    """Validation-like cubes with `num_redraws` Monte Carlo redraws of each catalogue:
    yields (normalised extinctions (B, 1 + R, nx, ny, nz, 1), normalised density (B, ...))."""
    import jax

    from dustjax.vnet import data as vdata
    from dustjax.vnet import normalisation as nz
    from dustjax.vnet import observe as ob

    region = vdata.region_of(cfg)
    name, sim_params = vdata._simulator_params(cfg)
    params = ob.ObservationParams.from_config(cfg.observation)
    factor = params.subcell_factor
    # F > 1: the stars integrate the fine cube, the target is its block mean
    simulate = ob.simulate_subcell_fn(
        region, name, sim_params, factor, log_sd_range=params.subcell_log_sd_range
    )
    dense_region = ob.fine_region(region, factor) if factor > 1 else None
    norm = nz.normalisation_of(cfg)

    @jax.jit
    def make(key):
        dense, density = simulate(jax.random.split(key, batch_size))
        keys = jax.random.split(jax.random.fold_in(key, 1), batch_size)
        cubes, _ = jax.lax.map(
            lambda a: ob.observe_one(a[0], a[1], region, params, num_redraws,
                                     density_region=dense_region),
            (keys, dense),
        )  # fmt: skip
        return norm.extinction(cubes)[..., None], norm.density(density)

    for i in range(num_batches):
        yield make(jax.random.fold_in(jax.random.key(int(cfg.seed) + 7_777), i))


def calibrate_with_redraws(workdir, num_batches=2, num_redraws=8, batch_size=8) -> dict:
    """The sigma scale fitted against the apply route's band: Monte Carlo spread of `num_redraws`
    redraws plus the scaled model variance (`dustjax.vnet.normalisation.combine_redraws`)."""
    import jax
    import numpy as np

    from dustjax import training
    from dustjax.vnet import normalisation as nz

    model, variables, cfg = training.load_trained(workdir)
    norm = nz.normalisation_of(cfg)
    apply = jax.jit(lambda x: model.apply(variables, x, train=False))
    mus, sds_mc, sds_model, truths = [], [], [], []
    for x, t in _redraw_batches(cfg, num_batches, num_redraws, batch_size):
        b, r1 = x.shape[:2]
        out = np.asarray(apply(x.reshape(b * r1, *x.shape[2:])), np.float64)
        out = out.reshape(b, r1, *out.shape[1:])
        mu, sigma = out[:, 1:, ..., 0], np.exp(np.clip(out[:, 1:, ..., 1], *nz.LOG_SIGMA_RANGE))
        mus.append(mu.mean(axis=1))
        sds_mc.append(mu.std(axis=1, ddof=1))
        sds_model.append(np.sqrt(np.mean(sigma**2, axis=1)))
        truths.append(np.asarray(t, np.float64))
    mu, sd_mc, sd_model, truth = (np.concatenate(a) for a in (mus, sds_mc, sds_model, truths))
    mask = np.asarray(norm.density_inverse(truth, xp=np)) > 1e-4
    total = np.sqrt(sd_mc**2 + sd_model**2)
    scale = nz.fit_sigma_scale(truth, mu, sd_model, mask, mc_sigma=sd_mc)
    return dict(
        num_redraws=num_redraws,
        num_cubes=int(mu.shape[0]),
        coverage_mc_only=nz.coverage(truth, mu, sd_mc, mask),
        coverage_mc_plus_model=nz.coverage(truth, mu, total, mask),
        sigma_scale_with_mc=scale,
        coverage_mc_plus_scaled_model=nz.coverage(
            truth, mu, np.sqrt(sd_mc**2 + (scale * sd_model) ** 2), mask
        ),
    )


def _validation_outputs(workdir, num_batches: int, bn_stats: str = "auto"):
    """(config, [(network output, truth hat)]) of the trained model on the first `num_batches`
    validation batches (the fixed validation stream of the run's seed), float64."""
    import itertools

    import jax
    import numpy as np

    from dustjax import training
    from dustjax.vnet.observe import simulate_observed_source

    model, variables, cfg = training.load_trained(workdir, bn_stats=bn_stats)
    apply = jax.jit(lambda x: model.apply(variables, x, train=False))
    batches = simulate_observed_source(
        cfg, "validation", batch_size=int(cfg.batch_size), seed=int(cfg.seed), epoch=0, train=False
    )
    return cfg, [
        (
            np.asarray(apply(b["extinction"]), np.float64),
            np.asarray(b["density"], np.float64)[..., 0],
        )
        for b in itertools.islice(batches, num_batches)
    ]


def _val_hat_mse(workdir, bn_stats: str, num_batches: int) -> float:
    """Mean squared error of the predicted median hat on the first validation batches."""
    import numpy as np

    _, outputs = _validation_outputs(workdir, num_batches, bn_stats)
    return float(np.mean([np.mean((out[..., 0] - truth) ** 2) for out, truth in outputs]))


def precise_bn(workdir, num_batches: int, num_val_batches: int = 4) -> dict:
    """The best checkpoint's batch-norm statistics recomputed over `num_batches` fresh observed
    training batches (another seed than the training stream's, no echo) and stored beside it
    (`dustjax.training.write_population_stats`): the calibration, the real-sky scores and
    `apply` then use them. Reports the validation hat-MSE with the running averages and with
    them (the same validation batches)."""
    import itertools

    from dustjax import training
    from dustjax.vnet.observe import simulate_observed_source

    t0 = time.perf_counter()
    cfg = training.load_config(workdir)
    before = _val_hat_mse(workdir, "running", num_val_batches)
    source = simulate_observed_source(
        cfg, "train", batch_size=int(cfg.batch_size), seed=int(cfg.seed) + 1, epoch=0, train=False
    )
    inputs = (b["extinction"] for b in itertools.islice(source, num_batches))
    res = training.write_population_stats(workdir, inputs)
    res["val_hat_mse_running"] = before
    res["val_hat_mse_population"] = _val_hat_mse(workdir, "population", num_val_batches)
    res["used"] = keep_better_bn_stats(workdir, before, res["val_hat_mse_population"])
    res["seconds"] = time.perf_counter() - t0
    log.info("population batch-norm statistics %s: %s", workdir, res)
    return res


REJECTED_POPULATION_STATS = "population_batch_stats.rejected.msgpack"


def keep_better_bn_stats(workdir, running: float, population: float) -> str:
    """Keep the population statistics (`load_trained` then uses them) only when they lower the
    validation hat-MSE below the running averages'; else move them aside to
    `REJECTED_POPULATION_STATS` (kept for inspection) so that every later use reads the running
    averages. Returns the statistics in use, "population" or "running".

    Why a check and not a rule: on run 11 (LR, docs/validation.md) the population statistics of
    16 fresh batches raised the validation hat-MSE from 0.079 to 0.115 and took the real LR
    literature map from skill 0.58 to -0.42; the network, trained with per-batch statistics,
    can prefer the running averages, and only the validation batches can tell."""
    from dustjax.training.inference import POPULATION_STATS_FILE

    path = Path(workdir) / POPULATION_STATS_FILE
    if population < running:
        return "population"
    if path.exists():
        path.replace(Path(workdir) / REJECTED_POPULATION_STATS)
    log.warning(
        "population batch-norm statistics rejected: validation hat-MSE %.4g >= %.4g with the "
        "running averages; the running averages stay in use", population, running,
    )  # fmt: skip
    return "running"


def calibrate(workdir, config, num_batches: int = 4, num_redraws: int = 0) -> dict:
    """Fit the variance head's sigma scale on validation simulations (truth > 1e-4 mag/pc)."""
    import numpy as np

    from dustjax.vnet import normalisation as nz

    cfg, outputs = _validation_outputs(workdir, num_batches)
    norm = nz.normalisation_of(cfg)
    mus, sigmas, truths = [], [], []
    for out, truth in outputs:
        mus.append(out[..., 0])
        if out.shape[-1] > 1:
            sigmas.append(np.exp(np.clip(out[..., 1], *nz.LOG_SIGMA_RANGE)))
        truths.append(truth)
    mu, truth = np.concatenate(mus), np.concatenate(truths)
    rho_t = np.asarray(norm.density_inverse(truth, xp=np))
    mask = rho_t > 1e-4
    res = dict(num_cubes=int(mu.shape[0]), fraction_cells_above_1e_4=float(mask.mean()))
    if sigmas:
        sigma = np.concatenate(sigmas)
        res["coverage_raw"] = nz.coverage(truth, mu, sigma, mask)
        scale = nz.fit_sigma_scale(truth, mu, sigma, mask)
        res["sigma_scale"] = scale
        res["coverage_calibrated"] = nz.coverage(truth, mu, scale * sigma, mask)
        rho_mean = np.maximum(np.asarray(norm.density_mean(mu, scale * sigma, xp=np)), 0.0)
        res["sim_skill_mean_point"] = float(1.0 - np.mean((rho_mean - rho_t) ** 2) / np.var(rho_t))
        res["sim_dust_recovered_mean_point"] = float(rho_mean.sum() / rho_t.sum())
        rho_p = np.maximum(np.asarray(norm.density_inverse(mu, xp=np)), 0.0)  # the median
        if num_redraws:  # fit against the apply route's band (Monte Carlo + model variance)
            res.update(calibrate_with_redraws(workdir, num_redraws=num_redraws))
            res["sigma_scale_without_mc"] = scale
            scale = res["sigma_scale"] = res["sigma_scale_with_mc"]
        nz.write_calibration(workdir, scale, **{k: v for k, v in res.items() if k != "sigma_scale"})
    else:
        rho_p = np.maximum(np.asarray(norm.density_inverse(mu, xp=np)), 0.0)
    err = rho_p - rho_t
    res["sim_skill"] = float(1.0 - np.mean(err**2) / np.var(rho_t))
    res["sim_dust_recovered"] = float(rho_p.sum() / rho_t.sum())
    lp, lt = np.log10(rho_p + 1e-5), np.log10(rho_t + 1e-5)
    res["sim_log_r"] = float(np.corrcoef(lp.ravel(), lt.ravel())[0, 1])
    for lo, hi in ((1e-5, 1e-4), (1e-4, 1e-3), (1e-3, np.inf)):
        sel = (rho_t >= lo) & (rho_t < hi)
        if sel.any():
            res[f"sim_dust_recovered_{lo:g}_{hi:g}"] = float(rho_p[sel].sum() / rho_t[sel].sum())
    res["sim_hat_mse"] = float(np.mean((mu - truth) ** 2))
    res["sim_hat_mse_zero"] = float(np.mean(truth**2))
    log.info("calibration %s: %s", workdir, res)
    return res


CATALOGUES = {  # the validation catalogues
    "SR": ["--num_stars=30000", "--sigma_a=0.03", "--sigma_b=0.05", "--distance_error=0"],
    "LR": ["--num_stars=1000000", "--sigma_a=0.05", "--sigma_b=0.05", "--distance_error=0.05"],
}


def _median_row(args, name) -> dict:
    """The same row with the median as the point map (calibration.json "point")."""
    from dustjax.vnet import normalisation as nz
    from tools import realsky_vnet

    model = next(a.split("=", 1)[1] for a in args if a.startswith("--model="))
    path = Path(model) / nz.CALIBRATION_FILE
    if not path.exists():
        return dict(error="no calibration.json")
    original = path.read_text()
    try:
        path.write_text(json.dumps(dict(json.loads(original), point="median")))
        argv = [a for a in args if not a.startswith("--out=")] + [f"--out=/tmp/vt_eval/{name}_m"]
        realsky_vnet.main(argv + ["--no_figure"])
        return json.loads(Path(f"/tmp/vt_eval/{name}_m/realsky.json").read_text())
    except Exception as err:
        log.exception("median row %s failed", name)
        return dict(error=repr(err))
    finally:
        path.write_text(original)


def evaluate(region: str, workdir, cubes: str, out: Path, nnls: bool, median_too=True) -> dict:
    """Real-sky scores of `workdir` (and NNLS) on both routes; {name: realsky.json}."""
    from tools import realsky_vnet

    cube = str(Path(cubes) / f"bayestar19_{region}_anticentre.npy")
    models = [str(workdir)] + (["nnls"] if nnls else [])
    results = {}
    for model in models:
        for route in ("literature", "catalogue"):
            name = f"{region}_{route}_{'nnls' if model == 'nnls' else 'vnet'}"
            args = [f"--cube={cube}", f"--region={region}", f"--route={route}",
                    f"--model={model}", f"--out=/tmp/vt_eval/{name}"]  # fmt: skip
            if route == "catalogue":
                args += CATALOGUES[region]
            t0 = time.perf_counter()
            try:
                realsky_vnet.main(args)
                results[name] = json.loads(Path(f"/tmp/vt_eval/{name}/realsky.json").read_text())
            except Exception as err:  # one failed row must not lose the others
                log.exception("evaluation %s failed", name)
                results[name] = dict(error=repr(err))
            results[name]["eval_wall_s"] = time.perf_counter() - t0
            if model != "nnls" and route == "literature" and median_too:
                results[name + "_median"] = _median_row(args, name)
            png = Path(f"/tmp/vt_eval/{name}/realsky.png")
            if png.exists() and model != "nnls" and route == "catalogue":
                (out / f"{name}.png").write_bytes(png.read_bytes())
    return results


def main(argv=None):
    args = parse_args(argv)
    call_began = time.time()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from dustjax.runtime import configure_xla, quiet_library_logs

    configure_xla()
    import jax

    from dustjax import io as dio
    from dustjax import training
    from dustjax.training.workdir import METRICS_FILE

    quiet_library_logs()
    jax.config.update("jax_compilation_cache_dir", "/tmp/vt_jax_cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    regions = [r.strip().upper() for r in args.regions.split(",") if r.strip()]
    seconds = [float(s) for s in args.train_seconds.split(",")]
    t_start = time.perf_counter()
    for i, (region, budget) in enumerate(zip(regions, seconds, strict=True)):
        t_region = time.perf_counter()
        config = _config(region, args.set)
        summary = dict(region=region, config=config.name, devices=str(jax.devices()))
        workdir = Path(args.workdir_root) / f"vnet_sky_{region.lower()}"
        plan_path = Path(args.plan.replace("{region}", region)) if args.plan else None
        if plan_path and plan_path.exists():  # a later call on the same workdir (or a plan
            # from an earlier measurement): that schedule, no measuring
            plan = json.loads(plan_path.read_text())
            summary["resumed_plan" if (workdir / "checkpoints").is_dir() else "given_plan"] = plan
            log.info("%s: training %s with the plan %s", region, workdir, plan)
        else:
            try:
                summary["throughput"] = measure(config, args.measure_steps)
            except Exception as err:
                log.exception("%s: smoke/throughput failed", region)
                summary["error"] = repr(err)
                dio.write_json(out / f"{region}_summary.json", summary)
                continue
            dio.write_json(out / f"{region}_summary.json", summary)
            if args.skip_train or budget <= 0:
                continue
            if args.deadline_s:
                left = args.deadline_s - (time.perf_counter() - t_start)
                later = len(regions) - i - 1
                reserve = args.eval_reserve_s * (1 + later) + 60.0 * later + 40.0
                budget = min(budget, max(20.0, left - reserve))
                log.info("%s: training budget %.0f s (%.0f s left)", region, budget, left)
            rate = summary["throughput"]["steps_per_s_observed"]
            total = max(args.epochs, int(args.rate_factor * rate * budget))
            plan = dict(
                steps_per_epoch=max(1, total // args.epochs),
                num_epochs=args.epochs,
                train_seconds=budget,
                steps_per_s=rate,
                rate_factor=args.rate_factor,
            )
            if plan_path:
                dio.write_json(plan_path, plan)
        summary["train_budget_s"] = plan["train_seconds"]
        with config.unlocked():
            config.data.steps_per_epoch = int(plan["steps_per_epoch"])
            config.num_epochs = int(plan["num_epochs"])
            if args.call_seconds:  # stop before the epoch that would end past the call's end
                config.stop_before_unix = call_began + args.call_seconds
        t0 = time.perf_counter()
        summary["train"] = training.train_and_evaluate(config, workdir)
        summary["train"]["wall_s"] = time.perf_counter() - t0
        summary["train"]["steps"] = config.data.steps_per_epoch * config.num_epochs
        summary["train"]["workdir"] = str(workdir)
        metrics = (workdir / METRICS_FILE).read_text()
        summary["train"]["metrics"] = [json.loads(x) for x in metrics.splitlines() if x.strip()]
        if "time budget" in summary["train"]["stop_reason"] and not args.finish:
            summary["wall_s"] = time.perf_counter() - t_region
            dio.write_json(out / f"{region}_summary.json", summary)
            log.info("%s: paused by this call's budget; a later call with --plan resumes", region)
            continue
        if args.population_bn:
            try:
                summary["population_bn"] = precise_bn(workdir, args.population_bn)
            except Exception as err:  # the running averages still work: keep going
                log.exception("%s: population batch-norm statistics failed", region)
                summary["population_bn"] = dict(error=repr(err))
        try:
            summary["calibration"] = calibrate(
                workdir, config, num_redraws=args.calibration_redraws
            )
        except Exception as err:  # the model is trained: score it uncalibrated rather than not
            log.exception("%s: calibration failed", region)
            summary["calibration"] = dict(error=repr(err))
        dio.write_json(out / f"{region}_summary.json", summary)
        if args.evaluate:
            summary["realsky"] = evaluate(region, workdir, args.evaluate, out, args.nnls)
        summary["wall_s"] = time.perf_counter() - t_region
        dio.write_json(out / f"{region}_summary.json", summary)
        log.info("%s done in %.0f s", region, summary["wall_s"])


if __name__ == "__main__":
    main()
