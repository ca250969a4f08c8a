"""Using a trained model: load it from its workdir, predict, recompute batch-norm statistics."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from dustjax.sharding import batch_sharding, make_mesh, replicated
from dustjax.training.optim import make_optimizer
from dustjax.training.steps import abstract_train_state, build_model, inference_params
from dustjax.training.tasks import DEFAULT_TASK, get_task
from dustjax.training.workdir import (
    CHECKPOINT_DIR,
    checkpoint_manager,
    load_config,
    restore_checkpoint,
)

log = logging.getLogger(__name__)


POPULATION_STATS_FILE = "population_batch_stats.msgpack"
BN_STATS = ("auto", "running", "population")


def load_trained(
    workdir: str | Path, which: str = "best", mesh: Mesh | None = None, bn_stats: str = "auto"
):
    """(model, variables, config) of a trained run: the ``"best"`` or ``"latest"`` checkpoint.

    The model is rebuilt from the saved config.json; variables = {"params", "batch_stats"},
    on this process's first device (`mesh` default; several processes each load them).
    ``bn_stats``: "running" the running averages saved in training; "population" the statistics
    recomputed for this very checkpoint by `write_population_stats` (an error when there are
    none); "auto" (default) those when they exist for this checkpoint, else the running averages.
    """
    if bn_stats not in BN_STATS:
        raise ValueError(f"bn_stats must be one of {BN_STATS}, got {bn_stats!r}")
    config = load_config(workdir)
    mesh = mesh or _first_local_device()
    manager = checkpoint_manager(workdir, read_only=True)
    try:  # closed on errors too
        step = _checkpoint_step(manager, workdir, which)
        model = build_model(config)
        tx = make_optimizer(config, 1)
        shape = _input_shape_from_config(config)
        # the restore target from shapes alone (no initialisation program: issue 22)
        example = jax.ShapeDtypeStruct(shape, jnp.float32)
        state = abstract_train_state(model, tx, example, mesh)
        hint = get_task(config.get("task", DEFAULT_TASK)).restore_hint
        state, loop = restore_checkpoint(manager, step, state, hint=hint)
    finally:
        manager.close()
    log.info("loaded the %s checkpoint (epoch %d) of %s", which, step, workdir)
    batch_stats = state.batch_stats
    if bn_stats != "running":
        population = read_population_stats(workdir, step)
        if population is not None:
            from flax import serialization

            restored = serialization.from_state_dict(batch_stats, population)
            batch_stats = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype),
                                       restored, batch_stats)  # fmt: skip
            log.info("batch-norm statistics: the population's, recomputed for epoch %d", step)
        elif bn_stats == "population":
            raise FileNotFoundError(
                f"no population batch-norm statistics for epoch {step} in {workdir} "
                "(write them with dustjax.training.write_population_stats)"
            )
    # the parameters' moving average when the run kept one (config.optimizer.ema_decay)
    return model, {"params": inference_params(state), "batch_stats": batch_stats}, config


def checkpoint_step(workdir: str | Path, which: str = "best") -> int:
    """The epoch of the ``"best"`` or ``"latest"`` checkpoint of a run."""
    manager = checkpoint_manager(workdir, read_only=True)
    try:
        return _checkpoint_step(manager, workdir, which)
    finally:
        manager.close()


def _checkpoint_step(manager, workdir, which: str) -> int:
    step = manager.best_step() if which == "best" else manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {Path(workdir) / CHECKPOINT_DIR}")
    return int(step)


def write_population_stats(
    workdir: str | Path, inputs: Iterable, which: str = "best", mesh: Mesh | None = None, *,
    rng=None,
) -> dict:  # fmt: skip
    """Recompute the batch-norm statistics of a run's checkpoint over `inputs`
    (`population_batch_stats`) and store them beside it, atomically, for `load_trained`.

    Why: the running averages (momentum 0.99: ~100 steps) are a noisy sample when the training
    batches repeat (the observation loop's echo: ~6 distinct batches in 100 steps), and every
    validation loss and prediction uses them (docs/validation.md, issue 17 "Run 10"). The file
    names its checkpoint's epoch; `load_trained` ignores it for any other checkpoint. Returns
    {"epoch", "num_batches"}.
    """
    from flax import serialization

    from dustjax import io as dio

    step = checkpoint_step(workdir, which)
    model, variables, _ = load_trained(workdir, which, mesh, bn_stats="running")
    counted = []

    def counting():
        for x in inputs:
            counted.append(1)
            yield x

    stats = population_batch_stats(model, variables, counting(), mesh, rng=rng)
    blob = {"epoch": step, "num_batches": len(counted),
            "batch_stats": jax.device_get(stats)}  # fmt: skip
    with dio.atomic_path(Path(workdir) / POPULATION_STATS_FILE) as tmp:
        tmp.write_bytes(serialization.msgpack_serialize(blob))
    log.info("population batch-norm statistics of epoch %d over %d batches written to %s",
             step, len(counted), workdir)  # fmt: skip
    return {"epoch": step, "num_batches": len(counted)}


def read_population_stats(workdir: str | Path, step: int):
    """The stored population statistics when they were computed for checkpoint `step`, else
    None (none stored, or stored for another epoch: a later training replaced the best)."""
    from flax import serialization

    path = Path(workdir) / POPULATION_STATS_FILE
    if not path.is_file():
        return None
    blob = serialization.msgpack_restore(path.read_bytes())
    if int(blob.get("epoch", -1)) != int(step):
        log.info("%s holds the statistics of epoch %s, not of %d: not used", path,
                 blob.get("epoch"), step)  # fmt: skip
        return None
    return blob["batch_stats"]


def _first_local_device() -> Mesh:
    """A one-device mesh on this process's first device (`make_mesh(1)` is refused when several
    processes run: a mesh over several processes spans them all)."""
    return make_mesh(devices=jax.local_devices()[:1])


def _input_shape_from_config(config) -> tuple[int, ...]:
    """An example input's shape: ``(1, *config.model.input_shape)``, or the task's own."""
    shape = config.model.get("input_shape")
    if shape:
        return (1, *shape)
    task = get_task(config.get("task", DEFAULT_TASK))
    if task.input_shape is None:
        raise ValueError(
            f"config.model.input_shape is empty and task {config.get('task')!r} gives no shape"
        )
    return tuple(task.input_shape(config))


def make_predict_fn(model, variables, mesh: Mesh | None = None):
    """``predict(inputs (B, ...)) -> predictions`` with running batch-norm statistics (jitted,
    batch sharded over the mesh; B must divide over its devices)."""
    from dustjax import distributed

    mesh = mesh or _first_local_device()
    data = batch_sharding(mesh)
    # a mesh over several processes takes host values through `put_replicated` / `put_rows`
    # (each process places only its devices' part); in one process these are `device_put`
    variables = distributed.put_replicated(variables, replicated(mesh))

    @functools.partial(jax.jit, in_shardings=(None, data), out_shardings=data)
    def predict(variables, inputs):
        return model.apply(variables, inputs, train=False)

    def run(inputs):
        if distributed.is_multiprocess():  # host or process-local values: each its own rows
            inputs = distributed.put_rows(inputs, data)
        return predict(variables, inputs)

    return run


def population_batch_stats(model, variables, inputs: Iterable, mesh: Mesh | None = None, *,
                           rng=None) -> dict:  # fmt: skip
    """Batch-norm statistics recomputed as the plain mean over `inputs` ("precise BN").

    Training keeps running averages (momentum 0.99: effectively the last ~100 steps, taken while
    the weights still moved, and one outlier batch among them shifts them: the validation-only
    spikes of docs/validation.md). This runs the trained network in training mode on each batch
    with the momentum set to 0, so each layer reports that batch's mean and variance of its input
    (computed from the earlier layers' batch statistics, as in training), and averages them with
    equal weights. Returns the new ``batch_stats`` tree. ``rng`` feeds dropout, if the model has
    any. Batches must divide over the mesh's devices.
    """
    if not hasattr(model, "bn_momentum"):
        raise ValueError(f"{type(model).__name__} has no bn_momentum: cannot recompute its stats")
    zero = model.clone(bn_momentum=0.0)
    from dustjax import distributed

    mesh = mesh or _first_local_device()
    data = batch_sharding(mesh)
    variables = distributed.put_replicated(variables, replicated(mesh))  # as `make_predict_fn`
    rng = jax.random.key(0) if rng is None else rng

    @functools.partial(jax.jit, in_shardings=(None, data, None))
    def batch_stats(variables, x, key):
        _, updates = zero.apply(variables, x, train=True, mutable=["batch_stats"],
                                rngs={"dropout": key})  # fmt: skip
        return updates["batch_stats"]

    total, count = None, 0
    for i, x in enumerate(inputs):
        if distributed.is_multiprocess():  # a mesh over several processes: each its own rows
            x = distributed.put_rows(x, data)
        stats = batch_stats(variables, x, jax.random.fold_in(rng, i))
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        count += 1
    if not count:
        raise ValueError("population_batch_stats needs at least one batch")
    return jax.tree.map(lambda t: t / count, total)
