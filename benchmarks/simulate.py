r"""Simulation throughput: cubes per second for each simulator, on the default JAX device.

    python -m benchmarks.simulate                     # CPU here, GPU on a GPU machine
    python -m benchmarks.simulate --batch=256 --repeats=5 --json=out.json

Each row times ``simulate_batch_fn`` (density simulation + exact LOS integration, jitted and
vmapped over a batch of keys) after a warm-up call, as the median of `repeats` timed calls, each
on fresh keys. No tensorflow is needed.
"""

from __future__ import annotations

import json
import platform
import statistics
import time

import jax
from absl import app, flags

from dustjax.geometry import Region
from dustjax.sims import simulate_batch_fn

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", None, "Cubes per call (default: 8 on CPU, 256 on accelerators).")
flags.DEFINE_integer("repeats", 3, "Timed calls per row (median reported).")
flags.DEFINE_list("cases", ["SR:levy", "LR:lognormal", "LR:levy_lr"], "REGION:SIMULATOR rows.")
flags.DEFINE_string("json", None, "Also write the rows as JSON here.")


def time_case(region_name: str, simulator: str, batch: int, repeats: int) -> dict:
    region = Region.named(region_name)
    simulate = simulate_batch_fn(region, simulator)
    key = jax.random.key(0)
    jax.block_until_ready(simulate(jax.random.split(key, batch)))  # compile + warm up
    times = []
    for r in range(repeats):
        keys = jax.random.split(jax.random.fold_in(key, r + 1), batch)
        start = time.perf_counter()
        jax.block_until_ready(simulate(keys))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return dict(
        region=region_name,
        simulator=simulator,
        batch=batch,
        seconds_per_call=median,
        cubes_per_second=batch / median,
    )


def main(argv):
    del argv
    device = jax.devices()[0]
    batch = FLAGS.batch or (8 if device.platform == "cpu" else 256)
    rows = [time_case(*case.split(":"), batch=batch, repeats=FLAGS.repeats) for case in FLAGS.cases]
    meta = dict(
        device=f"{device.platform}:{device.device_kind}",
        num_devices=jax.device_count(),
        jax=jax.__version__,
        python=platform.python_version(),
        date=time.strftime("%Y-%m-%d"),
    )
    print(f"\nsimulation throughput on {meta['device']} (jax {meta['jax']}, batch {batch})")
    print(f"{'region':<7}{'simulator':<11}{'s/call':>10}{'cubes/s':>12}")
    for row in rows:
        print(
            f"{row['region']:<7}{row['simulator']:<11}{row['seconds_per_call']:>10.4f}"
            f"{row['cubes_per_second']:>12.1f}"
        )
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=2)


if __name__ == "__main__":
    app.run(main)
