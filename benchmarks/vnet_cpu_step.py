r"""CPU cost of the first run (`make train REGION=SR` without an accelerator): CPU seconds per
training step of the `vnet_sr_cpu` model and per simulated SR cube, at 16^3 and 32^3 cells.

    nice python -m benchmarks.vnet_cpu_step [--shapes=16,32] [--steps=4]

CPU time (``time.process_time``, all threads), not wall time: on a machine shared with other
work the wall time says little, while the CPU time of a step is what a run on idle cores spends
across them (wall on 2 idle cores: between CPU/2, both cores busy, and CPU, one). Each row: the
engine's jitted ``train_step`` (float32, batch 8, Adam) on one batch of simulated Levy cubes,
timed after a warm-up step; and ``simulate_batch_fn`` (density + LOS integration) per cube.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("shapes", ["16", "32"], "Cells per axis of the SR box.")
flags.DEFINE_integer("steps", 4, "Timed training steps per shape.")
flags.DEFINE_integer("batch", 8, "Cubes per step (vnet_sr_cpu: 8).")


def cpu_seconds(fn, repeats: int) -> float:
    """Mean CPU seconds of `fn()` (blocking on its result) over `repeats` calls."""
    start = time.process_time()
    for i in range(repeats):
        jax.block_until_ready(fn(i))
    return (time.process_time() - start) / repeats


def measure(n: int) -> tuple[float, float]:
    """(CPU s per training step, CPU s per simulated cube) at n^3 cells."""
    from dustjax import training
    from dustjax.geometry import Region
    from dustjax.sharding import make_mesh
    from dustjax.sims import simulate_batch_fn
    from dustjax.training import steps
    from dustjax.vnet.transforms import normalise_density, normalise_extinction
    from experiments.configs import load_config_module

    region = Region.named("SR").with_shape((n, n, n))
    simulate = simulate_batch_fn(region, "levy")

    def keys(i):
        return jax.random.split(jax.random.key(i), FLAGS.batch)

    density, extinction = simulate(keys(0))  # compiles
    per_cube = cpu_seconds(lambda i: simulate(keys(i + 1)), 3) / FLAGS.batch
    config = load_config_module("vnet_sr_cpu")
    config.data.shape = (n, n, n)
    state = steps.create_train_state(
        steps.build_model(config), optax.adam(3e-4), jnp.zeros((1, n, n, n, 1)),
        jax.random.key(0), make_mesh(1),
    )  # fmt: skip
    train_step, _ = steps.jit_steps(training.get_task("density_from_extinction"), state,
                                    make_mesh(1))  # fmt: skip
    batch = {
        "extinction": np.asarray(normalise_extinction(extinction))[..., None],
        "density": np.asarray(normalise_density(density))[..., None],
    }
    holder = {"state": train_step(state, batch, jax.random.key(1))[0]}  # compiles

    def step(i):
        holder["state"], metrics = train_step(holder["state"], batch, jax.random.key(i))
        return metrics

    return cpu_seconds(step, FLAGS.steps), per_cube


def main(argv):
    del argv
    print(f"| cells | CPU s per training step (batch {FLAGS.batch}) | CPU s per simulated cube |")
    print("| --- | --- | --- |")
    for n in (int(s) for s in FLAGS.shapes):
        per_step, per_cube = measure(n)
        print(f"| {n}^3 | {per_step:.2f} | {per_cube:.3f} |", flush=True)


if __name__ == "__main__":
    app.run(main)
