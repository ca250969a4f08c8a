"""Device driver of issue 21 (no absl, astropy or tensorflow): the 13CO ray-tracing speed and the
column-only vs column + 13CO comparison, with a time budget. Run by tools/device/issue21.sh (one
process trains the six U-Nets in turn) and tools/device/issue21c.sh (the crops simulated once,
then one process per U-Net, side by side, each stopped at a wall-clock time):

    python3 -m tools.polaris_emission_device smoke OUT_DIR
    python3 -m tools.polaris_emission_device bench OUT_DIR [SMALL]
    python3 -m tools.polaris_emission_device compare OUT_DIR CONFIG_MODULE WORKDIR DEADLINE_S
    python3 -m tools.polaris_emission_device prepare OUT_DIR CONFIG_MODULE WORKDIR
    python3 -m tools.polaris_emission_device train OUT_DIR CONFIG WORKDIR TARGET KIND STOP_AT \
        [MODEL [SEED]]
    python3 -m tools.polaris_emission_device merge OUT_DIR CONFIG_MODULE WORKDIR RUN[,RUN...]

``prepare`` writes WORKDIR/crops.npz (`multi_input.save_emission_crops`); ``train`` trains one
(target, input kind) on those crops until it stops by itself (early stop, num_epochs) or the Unix
time STOP_AT, whichever is first, then evaluates its best checkpoint (WORKDIR/<run>/
emission_eval.json; MODEL: a KAN variant in place of the U-Net, run <target>_<kind>+<model>;
SEED: another training seed, run ...@<seed>);
``merge`` writes the comparison of every finished run to OUT_DIR.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path


def smoke(out: Path) -> None:
    import jax
    import jax.numpy as jnp

    from dustjax.polaris import emission as em
    from dustjax.polaris import multi_input  # noqa: F401
    from experiments.configs import unet_emission_gpu  # noqa: F401

    t_b = em.ppv_cube(jnp.full((4, 16), 1e3), 10.0, 0.0, 0.1, em.SpectralAxis.centred(4.0, 8))
    assert bool(jnp.isfinite(t_b).all()) and float(t_b.max()) > 0.1
    print("smoke: devices", jax.devices(), "T_B peak", float(t_b.max()), flush=True)


def bench(out: Path, small: bool) -> None:
    """Seconds per PPV cube (eq. 9 by scan) of one cloud and of a vmapped batch of clouds."""
    import jax

    from dustjax.polaris import emission as em
    from dustjax.sims import clouds, kinematics

    rows = []
    sizes = [(32, 1), (32, 4)] if small else [(256, 1), (128, 8), (512, 1)]
    spectral = em.SpectralAxis.centred(16.0, 32)
    for n, batch in sizes:
        grid = clouds.CloudGrid(
            n_cells=n, cell_size_pc=25.6 / n, num_filaments=4, points_per_filament=512,
            num_cores=8, core_window_cells=5,
        )  # fmt: skip
        keys = jax.random.split(jax.random.key(0), batch)
        states = [kinematics.simulate_cloud_state(k, grid) for k in keys]
        stacked = {k: jax.numpy.stack([s[k] for s in states]) for k in kinematics.CLOUD_KEYS}

        def run(stacked=stacked, grid=grid):
            return em.batched_cloud_ppv(stacked, 2, grid.cell_size_pc, spectral,
                                        subgrid_sigma_kms=0.3, oversample=2)  # fmt: skip

        t0 = time.perf_counter()
        jax.block_until_ready(run())
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(3):
            jax.block_until_ready(run())
        per = (time.perf_counter() - t0) / 3
        rows.append(dict(n_cells=n, clouds=batch, channels=32, oversample=2,
                         first_call_s=first, seconds_per_call=per,
                         cells_per_second=batch * n**3 / per))  # fmt: skip
        print("bench:", rows[-1], flush=True)
        summary = {"device": str(jax.devices()[0]), "jax": jax.__version__, "rows": rows}
        (out / "bench_ppv.json").write_text(json.dumps(summary, indent=1))  # after every row


def compare(out: Path, config_module: str, workdir: str, deadline_s: float) -> None:
    from dustjax.polaris import multi_input as mi

    start = time.perf_counter()
    # A persistent compilation cache: runs of the second target reuse the first target's
    # programs (same shapes), instead of compiling them again.
    _compilation_cache()
    config = importlib.import_module(config_module).get_config()
    t0 = time.perf_counter()
    splits = mi.emission_splits(config)
    sim_s = time.perf_counter() - t0
    n = {k: len(v["column_density"]) for k, v in splits.items()}
    print(f"compare: simulated {n} crops in {sim_s:.1f} s", flush=True)
    (out / "simulation.json").write_text(json.dumps({"crops": n, "seconds": sim_s}))
    results = mi.compare_inputs(config, workdir,
                                deadline_s=deadline_s - (time.perf_counter() - start))  # fmt: skip
    print(mi.comparison_table(results), flush=True)


def _config(config_module: str, workdir: str | None = None):
    config = importlib.import_module(config_module).get_config()
    if workdir is not None:
        with config.unlocked():
            config.data.crops_file = str(Path(workdir) / "crops.npz")
    return config


def _compilation_cache() -> None:
    import os

    import jax

    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        for name, value in (("jax_persistent_cache_min_compile_time_secs", 0.0),
                            ("jax_persistent_cache_min_entry_size_bytes", 0)):  # fmt: skip
            try:
                jax.config.update(name, value)
            except (AttributeError, KeyError, ValueError):
                pass


def prepare(out: Path, config_module: str, workdir: str) -> None:
    """Simulate the comparison's crops once (clouds, 13CO ray tracing, crop selection)."""
    from dustjax.polaris import multi_input as mi

    config = _config(config_module)
    t0 = time.perf_counter()
    info = mi.save_emission_crops(config, Path(workdir) / "crops.npz")
    info["seconds"] = time.perf_counter() - t0
    print(f"prepare: {info}", flush=True)
    (out / "simulation.json").write_text(json.dumps(info))


class _TimeUp(BaseException):
    """The deadline (a BaseException, like KeyboardInterrupt: the engine's ``except Exception``
    around its loss-curve plot must not swallow it)."""


def _on_alarm(signum, frame):
    raise _TimeUp


def train_one(out: Path, config_module: str, workdir: str, target: str, kind: str, stop_at: float,
              model: str | None = None, seed: int | None = None) -> None:  # fmt: skip
    """Train one (target, input kind) until it stops or the Unix time `stop_at`, then evaluate."""
    import signal

    from dustjax import training as train
    from dustjax.polaris import multi_input as mi

    _compilation_cache()
    config = _config(config_module, workdir)
    name = mi.run_name(target, kind, model, seed)
    run_dir = Path(workdir) / name
    t0 = time.perf_counter()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(stop_at - time.time(), 0.1))
    summary = None
    try:
        summary = train.train_and_evaluate(
            mi.run_config(config, target, kind, model, seed), run_dir
        )
    except _TimeUp:
        print(f"train {name}: stopped at the deadline", flush=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    wall = time.perf_counter() - t0
    if not (run_dir / "config.json").is_file():  # cut before its first checkpoint
        print(f"train {name}: no checkpoint by the deadline ({wall:.0f} s)", flush=True)
        return
    metrics = mi.write_evaluation(run_dir, summary, wall)
    print(f"train {name}: val MSE {metrics['val_mse']:.4f} after "
          f"{metrics['epochs_run']} epochs (best {metrics['best_epoch']}), {wall:.0f} s, "
          f"{metrics['stop_reason']}", flush=True)  # fmt: skip


def merge(out: Path, config_module: str, workdir: str, runs: list[str]) -> None:
    from dustjax.polaris import multi_input as mi

    config = _config(config_module)
    results = mi.collect_comparison(workdir, runs, {"config": config.get("name", "")})
    for name in ("comparison.json", "comparison.md"):
        (out / name).write_bytes((Path(workdir) / name).read_bytes())
    print(mi.comparison_table(results), flush=True)


if __name__ == "__main__":
    from dustjax.runtime import configure_xla

    configure_xla()  # the U-Net's GPU flags (NHWC convolutions), before JAX starts
    what, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    if what == "smoke":
        smoke(out)
    elif what == "bench":
        bench(out, len(sys.argv) > 3 and sys.argv[3] == "1")
    elif what == "compare":
        compare(out, sys.argv[3], sys.argv[4], float(sys.argv[5]))
    elif what == "prepare":
        prepare(out, sys.argv[3], sys.argv[4])
    elif what == "train":
        import logging
        import os

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        for noisy in ("absl", "orbax", "jax", "etils"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        model = sys.argv[8] if len(sys.argv) > 8 and sys.argv[8] else None
        seed = int(sys.argv[9]) if len(sys.argv) > 9 and sys.argv[9] else None
        train_one(
            out, sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], float(sys.argv[7]), model, seed
        )
        # everything is written (the engine waits for its checkpoints): leave without the
        # interpreter's shutdown, which can crash on compilation threads a deadline interrupted
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    elif what == "merge":
        merge(out, sys.argv[3], sys.argv[4], sys.argv[5].split(","))
    else:
        raise SystemExit(f"unknown step {what!r}")
