r"""Benchmark: star catalogue -> 3D dust map, with Monte Carlo uncertainties (issue 6).

    # the target: 10^6 stars, 300 redraws, LR, paper V-net, one H200 (< 60 s end to end)
    python -m benchmarks.apply --out=bench_out/apply_gpu
    # a trained model instead of random weights (same cost, meaningful maps)
    python -m benchmarks.apply --model=workdirs/vnet_lr --out=bench_out/apply_gpu
    # a CPU-sized run
    python -m benchmarks.apply --num_stars=100000 --num_redraws=8 --features=16,32,64,128 \
        --out=bench_out/apply_cpu
    # the Monte Carlo alone, fused on one device vs two, and the per-batch loop (issue 22)
    python -m benchmarks.apply --mc_only --mc_devices=1,2 --out=bench_out/mc
    python -m benchmarks.apply --mc_only --mc_route=loop --out=bench_out/mc_loop
    # apply's loading path with the paper V-net and no training: a random model's workdir first
    python -m benchmarks.apply --save_random_model=bench_out/random_lr --region=LR
    python -m benchmarks.apply --model=bench_out/random_lr --mc_only --out=bench_out/mc_model

Runs unchanged on CPU and GPU and needs neither tensorflow nor astropy: the demo catalogue is
generated in memory (`dustjax.sims.stars`), FITS writing is off unless --write_fits. Stages timed
(each after `block_until_ready`): catalogue simulation (input, not counted), kNN gridding (eq. 5),
the nominal prediction (includes compilation), the Monte Carlo redraws (includes compilation),
the fig.-11 consistency check and the outputs. "end to end" = gridding + prediction + Monte
Carlo + consistency + outputs. Results: a table on stdout, results.json, and the map's PNGs in
--out. The Monte Carlo runs fused on the device (`dustjax.vnet.montecarlo`, over --mc_devices
local devices) unless --mc_route=loop; "monte_carlo_warm_s" is a second run with new seeds, the
program already compiled. The persistent compilation cache is on
(``$DUSTJAX_COMPILATION_CACHE``, default ~/.cache/dustjax/jax; "off" turns it off).
"""

from __future__ import annotations

import functools
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks._common import timed

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program: importing this module never
    collides with another entry point's flags)."""
    flags.DEFINE_string("region", "LR", "Region: SR or LR.")
    flags.DEFINE_integer("num_stars", 1_000_000, "Stars in the demo catalogue.")
    flags.DEFINE_integer("num_redraws", 300, "Monte Carlo redraws.")
    flags.DEFINE_integer("batch_size", 32, "Redraws per device batch.")
    flags.DEFINE_list("features", ["128", "256", "512", "1024"], "V-net widths (random weights).")
    flags.DEFINE_enum(
        "compute_dtype", "auto", ["auto", "float32", "bfloat16"], "Random model dtype."
    )
    flags.DEFINE_string("model", None, "Trained workdir (overrides --features).")
    flags.DEFINE_enum("knn_backend", "auto", ["auto", "kdtree", "brute"], "k-nearest search.")
    flags.DEFINE_integer("knn_workers", -1, "kdtree backend: CPU threads (-1: all cores).")
    flags.DEFINE_integer("knn_chunk", 1 << 27, "brute backend: cell-star pairs per chunk.")
    flags.DEFINE_integer("seed", 0, "Seed.")
    flags.DEFINE_string("out", "bench_out/apply", "Output directory.")
    flags.DEFINE_bool("write_fits", False, "Also write density.fits (needs astropy).")
    flags.DEFINE_bool("plots", True, "Write the PNG figures (matplotlib).")
    flags.DEFINE_enum("mc_route", "fused", ["fused", "loop"], "Monte Carlo: one program or a loop.")
    flags.DEFINE_list(
        "mc_devices",
        None,
        "Fused Monte Carlo: local devices (default all); with --mc_only a "
        "list times each (e.g. 1,2).",
    )
    flags.DEFINE_bool("mc_only", False, "Time only the prediction and the Monte Carlo.")
    flags.DEFINE_integer("mc_repeats", 3, "Warm Monte Carlo runs (the best is reported).")
    flags.DEFINE_string(
        "save_random_model", None,
        "Only write a training workdir of a random V-net of --features for --region there (the "
        "paper's config, one checkpoint), for --model: apply's own loading path (issue 22).",
    )  # fmt: skip


def save_random_model(workdir: str, region_name: str, features, seed: int = 0) -> Path:
    """A training workdir (config.json + one orbax checkpoint) of an untrained V-net of
    `features` on the paper's config of `region_name`: what `load_predictor` reads."""
    import importlib

    from dustjax import io as dio
    from dustjax.runtime import quiet_library_logs
    from dustjax.sharding import make_mesh
    from dustjax.training import steps
    from dustjax.training import workdir as wd
    from dustjax.training.inference import _input_shape_from_config
    from dustjax.training.optim import make_optimizer

    quiet_library_logs()  # orbax's INFO lines
    config = importlib.import_module(f"dustjax.configs.vnet_{region_name.lower()}").get_config()
    config.model.kwargs.features = tuple(int(f) for f in features)
    model, tx = steps.build_model(config), make_optimizer(config, 1)
    example = jnp.zeros(_input_shape_from_config(config), jnp.float32)
    mesh = make_mesh(devices=jax.local_devices()[:1])
    state = steps.create_train_state(model, tx, example, jax.random.key(seed), mesh)
    out = dio.ensure_writable_dir(workdir)
    dio.write_json(out / wd.CONFIG_FILE, wd.config_to_dict(config))
    manager = wd.checkpoint_manager(out)
    loop = dict(epoch=1, best_val_loss=1.0, best_epoch=1, epochs_since_best=0, stop_reason="")
    wd.save_checkpoint(manager, 1, state, loop, val_loss=1.0)
    manager.wait_until_finished()
    manager.close()
    return out


def _monte_carlo(ap, predictor, knn, catalog, region, seed, density, devices=None):
    kwargs = dict(num_redraws=FLAGS.num_redraws, batch_size=FLAGS.batch_size, seed=seed,
                  reference=density)  # fmt: skip
    if FLAGS.mc_route == "loop":
        return ap.monte_carlo(predictor, knn, catalog, region, progress=False, fused=False,
                              **kwargs)  # fmt: skip
    from dustjax.vnet import montecarlo

    return montecarlo.monte_carlo(predictor, knn, catalog, region, num_devices=devices, **kwargs)


def main(argv):
    del argv
    from dustjax.runtime import configure_compilation_cache, report_compile_times_at_exit

    cache_dir = configure_compilation_cache()
    compile_times = report_compile_times_at_exit()
    if FLAGS.save_random_model:
        t = time.perf_counter()
        path = save_random_model(FLAGS.save_random_model, FLAGS.region, FLAGS.features, FLAGS.seed)
        print(f"random V-net {FLAGS.features} in {path}: {time.perf_counter() - t:.1f} s")
        return
    from dustjax.geometry import Region
    from dustjax.sims import stars as demo
    from dustjax.vnet import apply as ap
    from dustjax.vnet import gridding
    from dustjax.vnet.output import write_outputs

    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    region = Region.named(FLAGS.region)
    times: dict[str, float] = {}

    if FLAGS.model:
        (predictor, region, _), times["model_load_s"] = timed(ap.load_predictor, FLAGS.model)
        model_desc = f"trained {FLAGS.model}"
    else:
        from dustjax.models import VNet

        dtype = FLAGS.compute_dtype
        if dtype == "auto":
            dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
        features = tuple(int(f) for f in FLAGS.features)
        model = VNet(features=features, dtype=jnp.dtype(dtype).type)
        # Flax's own initialisers, drawn with the "rbg" generator (XLA's RngBitGenerator): the
        # init program is half the size of threefry's and lowers in half the time, which every
        # process pays again (issue 22). A trained model (--model) is loaded with no program.
        # The key is made inside the program (an eager one is three more small programs).
        example = np.zeros((1, *region.shape, 1), np.float32)

        def random_init(seed, x):
            return model.init(jax.random.key(seed, impl="rbg"), x, train=False)

        variables, times["model_init_s"] = timed(
            jax.jit(random_init), np.uint32(FLAGS.seed), example
        )
        predictor = ap.density_predictor(model, variables)
        model_desc = f"random VNet{features} {dtype}"

    (d, times["simulate_catalogue_s"]) = timed(
        demo.demo_catalog, region, FLAGS.num_stars, FLAGS.seed
    )
    catalog = d.catalog

    t_all = time.perf_counter()
    knn, times["knn_s"] = timed(
        gridding.knn_weights,
        region,
        catalog,
        backend=FLAGS.knn_backend,
        workers=FLAGS.knn_workers,
        chunk_elements=FLAGS.knn_chunk,
    )
    extinction = np.maximum(knn.apply(catalog.extinction), 0.0).astype(np.float32)
    density, times["predict_nominal_s"] = timed(ap.predict_one, predictor, extinction)
    devices = [int(n) for n in FLAGS.mc_devices] if FLAGS.mc_devices else [None]
    if FLAGS.mc_only:  # per device count: the first run (compiles), then the warm ones
        warm = {}
        for n in devices:
            mc_ = functools.partial(_monte_carlo, ap, predictor, knn, catalog, region,
                                    devices=n)  # fmt: skip
            name = f"monte_carlo_{n or len(jax.local_devices())}dev"
            _, times[f"{name}_first_s"] = timed(mc_, FLAGS.seed, density)
            warm[name] = [timed(mc_, FLAGS.seed + 1 + i, density)[1]
                          for i in range(FLAGS.mc_repeats)]  # fmt: skip
            times[f"{name}_warm_s"] = min(warm[name])
            print(f"{name}: first {times[f'{name}_first_s']:.2f} s, warm {warm[name]}", flush=True)
        _report(out, times, model_desc, region, knn, compile_times, cache_dir, warm=warm)
        return
    mc, times["monte_carlo_s"] = timed(
        _monte_carlo, ap, predictor, knn, catalog, region, FLAGS.seed, density, devices[0]
    )
    (e_rho, check), times["consistency_s"] = timed(ap.consistency, density, region, catalog)
    result = ap.MapResult(
        region=region,
        extinction=extinction,
        density=density,
        truth=d.density,
        star_extinction=catalog.extinction,
        star_e_rho=e_rho,
        summary=dict(consistency=check, residual_vs_truth=ap.residual_stats(density, d.density)),
        **mc,
    )
    t = time.perf_counter()
    files = write_outputs(out / "map", result, write_fits=FLAGS.write_fits, plots=FLAGS.plots)
    times["outputs_s"] = time.perf_counter() - t
    times["end_to_end_s"] = time.perf_counter() - t_all

    # A second Monte Carlo run: the steady-state cost without compilation.
    _, times["monte_carlo_warm_s"] = timed(
        _monte_carlo, ap, predictor, knn, catalog, region, FLAGS.seed + 1, density, devices[0]
    )
    _report(out, times, model_desc, region, knn, compile_times, cache_dir, check=check,
            files=files)  # fmt: skip


def _report(out, times, model_desc, region, knn, compile_times, cache_dir, **extra):
    devices = jax.devices()
    info = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        device=f"{len(devices)} x {devices[0].device_kind}",
        backend=jax.default_backend(),
        jax=jax.__version__,
        python=platform.python_version(),
        region=str(region),
        num_stars=FLAGS.num_stars,
        num_redraws=FLAGS.num_redraws,
        batch_size=FLAGS.batch_size,
        k=knn.k,
        knn_backend=FLAGS.knn_backend,
        model=model_desc,
        mc_route=FLAGS.mc_route,
        mc_devices=FLAGS.mc_devices or [len(jax.local_devices())],
        timings_s=times,
        compilation_cache=cache_dir,
        compile_times=None if compile_times is None else compile_times.summary(),
        target_end_to_end_s=60.0,
        target_monte_carlo_warm_s=2.0,
        **extra,
    )
    (out / "results.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"\n{info['device']} | {model_desc} | {region}")
    print(f"{FLAGS.num_stars} stars, {FLAGS.num_redraws} redraws, k = {knn.k}")
    print(f"{'stage':<26}{'seconds':>10}")
    for name, value in times.items():
        print(f"{name:<26}{value:>10.2f}")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
