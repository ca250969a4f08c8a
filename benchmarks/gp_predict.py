r"""Where the latent GP's prediction step spends its time (issue 4: the whole simulated test,
prediction included, in under 60 s on one H200).

    python -m benchmarks.gp_predict --out=/tmp/gp_predict                 # paper size
    python -m benchmarks.gp_predict --size=1m --out=/tmp/gp_predict       # M = 4,000
    python -m benchmarks.gp_predict --size=small --out=/tmp/gp_predict    # quick CPU check

Sizes follow `benchmarks.gp_iteration`: "paper" = 120,000 stars on the 20 x 20 x 35 training grid,
1,000 inducing points, prediction grid 100 x 100 x 105 with 100 samples; "1m" = 10^6 stars,
30 x 30 x 50, 4,000 inducing points; "small" = 20,000 stars, 10 x 10 x 18, 200 inducing points,
prediction on 40 x 40 x 36. The parameters are the initial ones of a fit with the posterior mean
and spread set at random (the prediction's cost does not depend on their values).

Each phase of `dustjax.gp.pipeline`'s prediction is timed twice: the first call (compilation
included) and a second call, then the second call of the density/extinction maps is profiled and
its device time summed per kernel. Writes ``gp_predict.json`` to --out and prints a table.
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

from benchmarks._common import timed
from benchmarks._trace import kernel_summary
from dustjax.gp import fit, predict, simulate
from dustjax.gp.grid import LBDGrid

FLAGS = flags.FLAGS
flags.DEFINE_enum("size", "paper", ["paper", "1m", "small"], "Problem size.")
flags.DEFINE_string("out", "/tmp/gp_predict", "Output directory for gp_predict.json.")
flags.DEFINE_bool("profile", True, "Profile the second call of the maps (GPU kernels).")

SIZES = {
    "paper": dict(num_stars=120_000, shape=(20, 20, 35), num_inducing=1000,
                  predict_shape=(100, 100, 105), chunk_cells=2**18),
    "1m": dict(num_stars=1_000_000, shape=(30, 30, 50), num_inducing=4000,
               predict_shape=(100, 100, 105), chunk_cells=2**16),
    "small": dict(num_stars=20_000, shape=(10, 10, 18), num_inducing=200,
                  predict_shape=(40, 40, 36), chunk_cells=2**14),
}  # fmt: skip


def main(argv):
    del argv
    size = SIZES[FLAGS.size]
    out_dir = Path(FLAGS.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    _, catalog, _ = simulate.paper_simulation(seed=0, num_stars=size["num_stars"])
    grid = LBDGrid((50.0, 90.0), (-10.0, 10.0), (180.0, 500.0), size["shape"])
    stars = fit.make_star_data(catalog, grid, num_shards=1)
    params = fit.initial_params(
        catalog,
        dict(num_inducing=size["num_inducing"], scale_lengths_pc=20.0, amplitude_dex=0.5,
             mean_dex=np.log10(1.6e-3), q_std=0.3),
    )  # fmt: skip
    rng = np.random.default_rng(1)
    params["q_mean"] = jnp.asarray(rng.normal(0.0, 1.0, size["num_inducing"]), jnp.float32)
    pgrid, grid_s = timed(predict.prediction_grid, grid, size["predict_shape"])
    rows = []

    def stars_call():
        return predict.predict_star_extinctions(
            params, grid, np.asarray(stars.flat_index)[: len(catalog)],
            np.asarray(stars.partial_pc)[: len(catalog)], jitter=1e-4,
        )  # fmt: skip

    def maps_call():
        return predict.predict_maps(
            params, pgrid, jitter=1e-4, num_samples=100,
            max_chunk_cells=size["chunk_cells"], progress=False,
        )  # fmt: skip

    for name, fn in (("star extinctions", stars_call), ("maps", maps_call)):
        _, first = timed(fn)
        _, second = timed(fn)
        rows.append(dict(phase=name, first_call_s=first, second_call_s=second))
    profile = None
    if FLAGS.profile and jax.default_backend() == "gpu":
        trace_dir = out_dir / "trace_maps"
        with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
            maps_call()
        profile = kernel_summary(trace_dir)
    result = dict(
        size=FLAGS.size, **{k: list(v) if isinstance(v, tuple) else v for k, v in size.items()},
        prediction_cells=pgrid.num_cells, grid_s=grid_s, rows=rows, profile=profile,
        devices=[str(d) for d in jax.devices()], backend=jax.default_backend(),
        jax=jax.__version__, python=platform.python_version(),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )  # fmt: skip
    (out_dir / "gp_predict.json").write_text(json.dumps(result, indent=2))
    print(f"GP prediction, size {FLAGS.size}: {pgrid.num_cells:,} cells, {jax.devices()[0]}")
    print("| phase | first call (s) | second call (s) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['first_call_s']:.2f} | {r['second_call_s']:.2f} |")
    if profile and "error" not in profile:
        print(f"maps device time {profile['device_ms']:.1f} ms")
        for k, v in profile["categories"].items():
            print(f"  {k:<24}{v:10.2f} ms")
        for k, v in profile["top_kernels"][:12]:
            print(f"  {v:10.2f} ms  {k}")


if __name__ == "__main__":
    app.run(main)
