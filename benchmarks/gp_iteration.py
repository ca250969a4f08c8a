r"""Time per ELBO iteration (value, gradient, AdamW update) of the latent GP.

    python -m benchmarks.gp_iteration --out=/tmp/gp_bench                 # paper size
    python -m benchmarks.gp_iteration --size=small --out=/tmp/gp_bench    # quick CPU check
    python -m benchmarks.gp_iteration --size=1m --out=/tmp/gp_bench       # 10^6 stars x 4000

Sizes: "paper" = the simulated test of Dharmawardena et al. (2022, sect. 3): 120,000 stars,
20 x 20 x 35 training grid, 1000 inducing points, 32 Monte Carlo samples, full batch (the paper's
GPyTorch + Pyro stack, float64, takes 672 ms per iteration on one H200; target <= 6.7 ms).
"1m" = 10^6 stars, 30 x 30 x 50 grid, 4000 inducing points, minibatches of 250,000.
"small" = 20,000 stars, 10 x 10 x 18, 200 inducing points.

Iterations run exactly as in `dustjax.gp.fit.fit`: ``--steps_per_call`` steps per jitted
`lax.scan`, stars sharded over all local devices. Writes ``gp_iteration.json`` to --out and
prints a table. Needs neither tensorflow nor astropy.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dustjax.gp import fit, simulate
from dustjax.gp.grid import LBDGrid
from dustjax.sharding import make_mesh

FLAGS = flags.FLAGS
flags.DEFINE_enum("size", "paper", ["paper", "1m", "small"], "Problem size.")
flags.DEFINE_string("out", "/tmp/gp_bench", "Output directory for gp_iteration.json.")
flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "Floating point type.")
flags.DEFINE_integer("steps_per_call", 10, "Iterations per jitted call.")
flags.DEFINE_integer("calls", 5, "Timed calls (after one warm-up call).")
flags.DEFINE_enum(
    "matmul",
    "float32",
    ["float32", "default"],
    "float32: full-precision products (what the fit uses); default: JAX's default (TF32 on GPUs), "
    "to measure what full float32 costs.",
)
flags.DEFINE_integer("cell_chunk", 0, "Cells per chunk of B = L^-1 K_ux (0: no chunking).")

SIZES = {
    "paper": dict(num_stars=120_000, shape=(20, 20, 35), num_inducing=1000, batch_size=None),
    "1m": dict(num_stars=1_000_000, shape=(30, 30, 50), num_inducing=4000, batch_size=250_000),
    "small": dict(num_stars=20_000, shape=(10, 10, 18), num_inducing=200, batch_size=None),
}


def main(argv):
    del argv
    size = SIZES[FLAGS.size]
    if FLAGS.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if FLAGS.dtype == "float64" else jnp.float32
    _, catalog, _ = simulate.paper_simulation(seed=0, num_stars=size["num_stars"])
    grid = LBDGrid((50.0, 90.0), (-10.0, 10.0), (180.0, 500.0), size["shape"])
    mesh = make_mesh(axis=fit.STAR_AXIS)
    stars = fit.make_star_data(catalog, grid, num_shards=mesh.devices.size, dtype=dtype)
    params = fit.initial_params(
        catalog,
        dict(
            num_inducing=size["num_inducing"],
            scale_lengths_pc=20.0,
            amplitude_dex=0.5,
            mean_dex=np.log10(1.6e-3),
            q_std=0.1,
        ),
        dtype=dtype,
    )
    settings = fit.FitSettings(
        batch_size=size["batch_size"], jitter=1e-4, cell_chunk=FLAGS.cell_chunk or None
    )
    elbo_fn = fit.make_elbo_fn(
        mesh,
        grid,
        settings.model,
        batch_size=settings.batch_size,
        num_stars_padded=stars.num_stars,
        dtype=dtype,
    )
    optimizer = fit.make_optimizer(settings)
    chunk = fit.make_train_chunk(
        elbo_fn, optimizer, FLAGS.steps_per_call, full_float32=FLAGS.matmul == "float32"
    )
    stars = fit.shard_stars(stars, mesh)
    params = fit.replicate(params, mesh)
    opt_state = optimizer.init(params)
    copy = lambda t: jax.tree.map(jnp.copy, t)
    carry = (params, opt_state, copy(params), copy(opt_state), jnp.int32(0), jnp.int32(-1))
    key, jitter = jax.random.key(0), jnp.asarray(1e-4, dtype)

    t0 = time.perf_counter()
    carry, elbos = chunk(carry, key, stars, jitter)
    jax.block_until_ready(elbos)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(FLAGS.calls):
        t0 = time.perf_counter()
        carry, elbos = chunk(carry, key, stars, jitter)
        jax.block_until_ready(elbos)
        times.append((time.perf_counter() - t0) / FLAGS.steps_per_call)
    assert int(carry[5]) < 0, "non-finite ELBO during the benchmark"
    ms = 1e3 * np.asarray(times)
    result = dict(
        size=FLAGS.size,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()},
        num_cells=grid.num_cells,
        num_samples=settings.num_samples,
        dtype=FLAGS.dtype,
        cell_chunk=FLAGS.cell_chunk or None,
        matmul=FLAGS.matmul,
        steps_per_call=FLAGS.steps_per_call,
        devices=[str(d) for d in jax.devices()],
        backend=jax.default_backend(),
        jax_version=jax.__version__,
        python=platform.python_version(),
        date=time.strftime("%Y-%m-%d"),
        compile_and_first_call_s=compile_s,
        ms_per_iteration_median=float(np.median(ms)),
        ms_per_iteration_min=float(ms.min()),
        paper_reference_ms=672.0,
        speedup_vs_paper=672.0 / float(np.median(ms)),
        last_elbo=float(elbos[-1]),
    )
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gp_iteration.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{'size':<8}{'dtype':<9}{'backend':<9}{'devices':>8}{'stars':>10}{'cells':>8}"
        f"{'M':>6}{'compile s':>11}{'ms/iter':>10}{'x paper':>9}"
    )
    print(
        f"{FLAGS.size:<8}{FLAGS.dtype:<9}{result['backend']:<9}{len(jax.devices()):>8}"
        f"{size['num_stars']:>10}{grid.num_cells:>8}{size['num_inducing']:>6}"
        f"{compile_s:>11.1f}{result['ms_per_iteration_median']:>10.2f}"
        f"{result['speedup_vs_paper']:>9.1f}"
    )


if __name__ == "__main__":
    app.run(main)
