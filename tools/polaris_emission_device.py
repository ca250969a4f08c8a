"""Device driver of issue 21 (no absl, astropy or tensorflow): the 13CO ray-tracing speed and the
column-only vs column + 13CO comparison, with a time budget. Run by tools/device/issue21.sh:

    python3 -m tools.polaris_emission_device smoke OUT_DIR
    python3 -m tools.polaris_emission_device bench OUT_DIR [SMALL]
    python3 -m tools.polaris_emission_device compare OUT_DIR CONFIG_MODULE WORKDIR DEADLINE_S
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
    import os

    import jax

    from dustjax.polaris import multi_input as mi

    start = time.perf_counter()
    # A persistent compilation cache: runs of the second target reuse the first target's
    # programs (same shapes), instead of compiling them again.
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        for name, value in (("jax_persistent_cache_min_compile_time_secs", 0.0),
                            ("jax_persistent_cache_min_entry_size_bytes", 0)):  # fmt: skip
            try:
                jax.config.update(name, value)
            except (AttributeError, KeyError, ValueError):
                pass
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
    else:
        raise SystemExit(f"unknown step {what!r}")
