"""The one training engine of dustjax: `train_and_evaluate(config, workdir)`.

It knows no model. The config (an ml_collections ConfigDict, see `experiments/configs/`) names
what to train, and the names resolve lazily (`dustjax.training.tasks`, `dustjax.models`):

- a **model**: ``config.model.name`` ("vnet", "unet", ...; `dustjax.models.get_model`), built
  with ``config.model.kwargs`` and ``dtype=compute dtype``;
- a **task** (``config.task``, `dustjax.training.tasks`): input/target keys, the per-example loss
  and an optional on-device augmentation ``augment(batch, rng) -> batch`` run inside the jitted
  step ("density_from_extinction", the V-net's eq. 3; "polaris", the U-Net's);
- a **data source** (``config.data.source``): ``source(config, split, *, batch_size, seed,
  epoch, train) -> iterable of batches`` (one epoch for training, one pass for evaluation):
  "tfrecord", "simulate" (`dustjax.vnet.data`), "polaris_simulate", "polaris_tfrecord";
- and a learning-rate **schedule** (`dustjax.training.optim`).

Choices, and why:

- Data parallel over the devices (`dustjax.sharding`, `dustjax.training.steps`), of every
  process when several run (`dustjax.distributed`): each process feeds its rows of the batch,
  orbax writes the checkpoints from all of them, and process 0 alone writes the other files.
- Checkpoints (orbax, `dustjax.training.workdir`): one per epoch, the latest and the best kept;
  each epoch's data is a pure function of (seed, epoch), so a run restarted on its workdir ends
  where an uninterrupted run would, bit for bit on the same device.
- A non-finite loss stops the run naming the step; the last good checkpoint is untouched.
- ``config.max_train_seconds`` (optional, 0 = none): a wall-clock budget for one call, counted
  from the end of its first epoch (so compilation is not in it) and checked after each epoch;
  not kept in the checkpoint, so a later call on the workdir goes on.
- ``config.stop_before_unix`` (optional, 0 = none): an absolute deadline (``time.time()``) for
  one call: after each epoch the run stops if the next epoch, as long as the last one, would end
  after it. For a device call of fixed length whose start-up (compilation, measurements) varies;
  not kept in the checkpoint either.
- ``config.plot_every_epochs`` (optional, default 1; 0 = only at the end): how often the loss
  curve is redrawn (a fraction of a second each, which adds up over short epochs).
- Outputs in the workdir: config.json, metrics.jsonl (one JSON line per epoch), loss_curve.png
  (paper fig. 6), checkpoints/, train_summary.json.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dustjax import distributed, provenance
from dustjax import io as dio
from dustjax.sharding import batch_sharding, check_batch_size, make_mesh, prefetch_to_mesh
from dustjax.training.guard import guard_verdict, roll_back
from dustjax.training.optim import make_optimizer
from dustjax.training.steps import (
    build_model,
    create_train_state,
    evaluate_loss,
    jit_steps,
    resolve_compute_dtype,
)
from dustjax.training.tasks import DEFAULT_TASK, get_data_source, get_task
from dustjax.training.workdir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LOSS_CURVE_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    checkpoint_manager,
    config_to_dict,
    read_metrics,
    restore_checkpoint,
    save_checkpoint,
    write_metrics,
)

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step."""


def check_config(config) -> None:
    """Refuse, in one line naming the key and its value, config values no run can use (before
    anything is written): num_epochs >= 1, batch sizes >= 1, a finite learning rate > 0."""

    def bad(key, value, want):
        raise ValueError(f"config.{key} = {value!r}: must be {want} (e.g. --config.{key}=...)")

    def positive_int(key, value, optional=False):
        if optional and not value:
            return
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            bad(key, value, "an integer >= 1")

    positive_int("num_epochs", config.get("num_epochs"))
    budget = config.get("max_train_seconds", 0) or 0
    if isinstance(budget, bool) or not isinstance(budget, int | float) or budget < 0:
        bad("max_train_seconds", budget, "a number of seconds >= 0 (0: no limit)")
    deadline = config.get("stop_before_unix", 0) or 0
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline < 0:
        bad("stop_before_unix", deadline, "a time.time() value, or 0 (no deadline)")
    positive_int("batch_size", config.get("batch_size"))
    positive_int("eval_batch_size", config.get("eval_batch_size"), optional=True)
    for key in ("steps_per_epoch", "eval_steps"):
        if "data" in config:
            positive_int(f"data.{key}", config.data.get(key), optional=True)
    lr = config.optimizer.get("learning_rate") if "optimizer" in config else None
    if lr is None or isinstance(lr, bool) or not isinstance(lr, int | float | np.floating):
        bad("optimizer.learning_rate", lr, "a number > 0")
    if not (math.isfinite(lr) and lr > 0):
        bad("optimizer.learning_rate", lr, "a finite number > 0")


def _first_batch(source, config, split, batch_size, seed):
    batches = source(config, split, batch_size=batch_size, seed=seed, epoch=0, train=False)
    for batch in batches:
        return {k: distributed.to_host(v) for k, v in batch.items()}
    raise ValueError(f"data source {config.data.source!r} yielded no {split} batches")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Train ``config``'s model in `workdir` (resuming if it holds a checkpoint).

    Returns a summary dict (best epoch and validation loss, epochs run, why it stopped, ...),
    also written to ``workdir/train_summary.json``. A run that fails (or is interrupted) before
    its first checkpoint removes what it created (`remove_failed_start`): no empty or
    config-only workdir is left behind; one with a checkpoint stays, to be resumed.
    """
    check_config(config)
    workdir = Path(workdir)
    before = set(p.name for p in workdir.iterdir()) if workdir.is_dir() else None
    new_dirs = [d for d in (workdir, *workdir.parents) if not d.exists()]
    try:
        return _train_and_evaluate(config, workdir)
    except BaseException:
        remove_failed_start(workdir, before, new_dirs)
        raise


def remove_failed_start(workdir: Path, before: set[str] | None, new_dirs=()) -> list[str]:
    """Remove what a failed run created in `workdir` (the entries not in `before`, None if
    there was no workdir, and the directories `new_dirs` it created, when left empty), unless a
    checkpoint exists: then the workdir resumes, and stays. Returns the names removed."""
    import shutil

    if not workdir.is_dir():
        return []
    checkpoints = workdir / CHECKPOINT_DIR
    if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        return []
    created = sorted(p.name for p in workdir.iterdir() if p.name not in (before or set()))
    for name in created:
        path = workdir / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for directory in new_dirs:  # deepest first
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    if created:
        log.info("the run failed before its first checkpoint: removed %s from %s", created, workdir)
    return created


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    workdir = dio.ensure_writable_dir(workdir)
    task = get_task(config.get("task", DEFAULT_TASK))
    source = get_data_source(config.data.source)
    mesh = make_mesh(config.get("num_devices") or None)
    check_batch_size(config.batch_size, mesh)
    eval_batch_size = config.get("eval_batch_size") or config.batch_size
    check_batch_size(eval_batch_size, mesh, "eval_batch_size")
    seed = int(config.seed)
    compute_dtype = resolve_compute_dtype(config.get("compute_dtype", "auto"))
    log.info(
        "training %s on %d %s device(s), global batch %d, compute dtype %s, data %s, workdir %s",
        config.model.name,
        mesh.size,
        jax.default_backend(),
        config.batch_size,
        jnp.dtype(compute_dtype).name,
        config.data.source,
        workdir,
    )

    # Steps per epoch decide the schedule, so they come from the data, before the optimiser.
    probe = source(config, "train", batch_size=config.batch_size, seed=seed, epoch=0, train=True)
    steps_per_epoch = int(config.data.get("steps_per_epoch") or 0) or len(probe)
    del probe
    if steps_per_epoch < 1:
        raise ValueError(
            f"the train split gives no full batch of {config.batch_size}; lower the batch size"
        )

    example = _first_batch(source, config, "validation", eval_batch_size, seed)[task.input_key]
    model = build_model(config)
    tx = make_optimizer(config, steps_per_epoch)
    state = create_train_state(
        model,
        tx,
        jnp.asarray(example[:1]),
        jax.random.key(seed),
        mesh,
        shard_optimizer_state=bool(config.get("shard_optimizer_state", False)),
    )
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    log.info(
        "%s: %d parameters, %d steps per epoch", config.model.name, num_params, steps_per_epoch
    )
    train_step, eval_step = jit_steps(task, state, mesh)
    step_rng = jax.random.fold_in(jax.random.key(seed), 1)
    data_sharding = batch_sharding(mesh)

    manager = checkpoint_manager(workdir)
    loop = dict(epoch=0, best_val_loss=math.inf, best_epoch=0, epochs_since_best=0, stop_reason="")
    latest = manager.latest_step()
    if latest is not None:
        state, loop = restore_checkpoint(manager, latest, state, hint=task.restore_hint)
        log.info("resumed from the checkpoint of epoch %d in %s", latest, manager.directory)
    # Only now, with the checkpoint known to fit this model: a refused run (a checkpoint of
    # another model or size) leaves the workdir's config.json, and so the old run, as it was.
    config_path = workdir / CONFIG_FILE
    resolved = config_to_dict(config)
    primary = distributed.is_primary()  # with several processes, process 0 writes the files
    old = dio.read_json(config_path) if primary and config_path.exists() else None
    if old is not None and provenance.strip(old) != resolved:
        log.warning("%s differs from the config of this run; it is replaced", config_path)
    data_source = config.data.get("source", "") if "data" in config else ""
    prov = provenance.record(
        f"train {config.get('task', DEFAULT_TASK)}",
        resolved,
        inputs=[config.data.get("data_dir")] if "tfrecord" in str(data_source) else [],
    )
    if primary:
        dio.write_json(config_path, provenance.stamp(resolved, prov))
    metrics_path = workdir / METRICS_FILE
    history = [r for r in read_metrics(metrics_path) if r["epoch"] <= loop["epoch"]]
    if primary:  # drop lines of an epoch whose checkpoint was lost
        write_metrics(metrics_path, history)

    patience = int(config.early_stopping.get("patience", 0) or 0)
    min_delta = float(config.early_stopping.get("min_delta", 0.0))
    log_every = max(1, int(config.get("log_every_steps", 10)))
    # A wall-clock budget for this call, counted from the end of its first epoch (compilation
    # and its variance under load excluded); not kept in the checkpoint, so a later call on the
    # workdir goes on training.
    max_seconds = float(config.get("max_train_seconds", 0) or 0)
    stop_before = float(config.get("stop_before_unix", 0) or 0)
    started, out_of_time = None, ""
    plot_every = int(config.get("plot_every_epochs", 1) or 0)
    try:
        while loop["epoch"] < config.num_epochs and not loop["stop_reason"] and not out_of_time:
            epoch = loop["epoch"] + 1
            epoch_began = time.time()
            state, row = _train_epoch(
                config, epoch, state, train_step, source, seed, steps_per_epoch,
                step_rng, data_sharding, log_every, manager,
            )  # fmt: skip
            val_batches = source(
                config, "validation", batch_size=eval_batch_size, seed=seed, epoch=0, train=False
            )
            val_loss = evaluate_loss(eval_step, state, val_batches, eval_batch_size, mesh)
            if not math.isfinite(val_loss):
                raise NonFiniteLossError(
                    f"validation loss is {val_loss} after epoch {epoch} (step {int(state.step)}); "
                    f"stopped, last good checkpoint: epoch {manager.latest_step()} in "
                    f"{manager.directory}"
                )
            verdict = guard_verdict(config, loop, history, row["train_loss"], val_loss, epoch)
            if verdict == "collapse":
                state = roll_back(manager, state, loop, val_loss, epoch)
                row["rolled_back_to_epoch"] = loop["best_epoch"]
            elif verdict == "validation":
                row["validation_spike"] = True
            improved = val_loss < loop["best_val_loss"] - min_delta
            if val_loss < loop["best_val_loss"]:
                loop["best_val_loss"], loop["best_epoch"] = val_loss, epoch
            loop["epochs_since_best"] = 0 if improved else loop["epochs_since_best"] + 1
            loop["epoch"] = epoch
            if patience and loop["epochs_since_best"] >= patience:
                loop["stop_reason"] = f"early stop: no improvement for {patience} epochs"
            # (a rolled-back epoch's checkpoint carries the spiked loss as its metric, so the
            # best checkpoint stays the one its weights came from)
            save_checkpoint(manager, epoch, state, loop, val_loss)
            row.update(epoch=epoch, val_loss=val_loss, best_val_loss=loop["best_val_loss"])
            history.append(row)
            if primary:
                with metrics_path.open("a") as f:
                    f.write(dio.dumps_json(row) + "\n")
            log.info(
                "epoch %d: train loss %.5g, val loss %.5g (best %.5g @ %d), %.1f samples/s",
                epoch, row["train_loss"], val_loss, loop["best_val_loss"], loop["best_epoch"],
                row["samples_per_s"],
            )  # fmt: skip
            if primary and plot_every and epoch % plot_every == 0:
                _plot_loss_curve(workdir, history, config)
            if started is None:
                started = time.perf_counter()
            elif max_seconds and time.perf_counter() - started >= max_seconds:
                if epoch < config.num_epochs and not loop["stop_reason"]:
                    out_of_time = f"time budget: max_train_seconds={max_seconds:g} spent"
            now = time.time()
            if stop_before and now + (now - epoch_began) > stop_before and not out_of_time:
                if epoch < config.num_epochs and not loop["stop_reason"]:
                    out_of_time = (
                        f"time budget: another epoch would end after stop_before_unix="
                        f"{stop_before:.0f} ({stop_before - now:.0f} s left)"
                    )
    finally:
        manager.wait_until_finished()
    if not loop["stop_reason"]:
        loop["stop_reason"] = out_of_time or f"reached num_epochs={config.num_epochs}"
    summary = dict(
        model=config.model.name,
        num_params=num_params,
        epochs_run=loop["epoch"],
        best_epoch=loop["best_epoch"],
        best_val_loss=loop["best_val_loss"],
        stop_reason=loop["stop_reason"],
        best_checkpoint_step=manager.best_step(),
        latest_checkpoint_step=manager.latest_step(),
        num_devices=mesh.size,
        num_processes=jax.process_count(),
        backend=jax.default_backend(),
        compute_dtype=jnp.dtype(compute_dtype).name,
    )
    manager.close()
    if not primary:
        return summary
    dio.write_json(workdir / SUMMARY_FILE, provenance.stamp(summary, prov))
    if history:
        _plot_loss_curve(workdir, history, config)
    log.info("done: %s; best val loss %.5g at epoch %d", summary["stop_reason"],
             summary["best_val_loss"], summary["best_epoch"])  # fmt: skip
    return summary


def _train_epoch(
    config, epoch, state, train_step, source, seed, steps_per_epoch, step_rng, data_sharding,
    log_every, manager,
):  # fmt: skip
    """Run one epoch; returns (the new state, the metrics row)."""
    from tqdm.auto import tqdm

    batches = source(
        config, "train", batch_size=config.batch_size, seed=seed, epoch=epoch - 1, train=True
    )
    batches = itertools.islice(batches, steps_per_epoch)
    bar = tqdm(
        total=steps_per_epoch,
        desc=f"epoch {epoch}/{config.num_epochs}",
        unit="step",
        disable=not config.get("progress_bar", True) or not distributed.is_primary(),
        leave=False,
        dynamic_ncols=True,
    )
    first_step = int(jax.device_get(state.step))
    pending, losses, grad_norms = [], [], []
    start = time.perf_counter()
    timed_start, timed_steps = None, 0

    def flush():
        nonlocal timed_start, timed_steps
        values = jax.device_get(pending)
        for i, m in enumerate(values):
            loss = float(m["loss"])
            if not math.isfinite(loss):
                step = first_step + len(losses) + i + 1
                raise NonFiniteLossError(
                    f"training loss is {loss} at step {step} (epoch {epoch}); stopped, last good "
                    f"checkpoint: epoch {manager.latest_step()} in {manager.directory}"
                )
        losses.extend(float(m["loss"]) for m in values)
        grad_norms.extend(float(m["grad_norm"]) for m in values)
        now = time.perf_counter()
        # samples/s excludes the first flush of the epoch (compilation on the first epoch)
        if timed_start is None:
            timed_start = now
        else:
            timed_steps += len(values)
        if timed_steps:
            rate = timed_steps * config.batch_size / max(now - timed_start, 1e-9)
        else:  # the first flush of an epoch: its own rate, compilation included
            rate = len(losses) * config.batch_size / max(now - start, 1e-9)
        bar.update(len(values))
        bar.set_postfix(loss=f"{np.mean(losses[-len(values) :]):.4g}", samples_s=f"{rate:.1f}")
        pending.clear()
        return rate

    rate = 0.0
    for batch in prefetch_to_mesh(batches, data_sharding):
        state, metrics = train_step(state, batch, step_rng)
        pending.append(metrics)
        if len(pending) >= log_every:
            rate = flush()
    if pending:
        rate = flush()
    bar.close()
    elapsed = time.perf_counter() - start
    if not losses:
        raise ValueError(f"epoch {epoch} had no training batches")
    if timed_steps == 0:
        rate = len(losses) * config.batch_size / elapsed
    return state, dict(
        train_loss=float(np.mean(losses)),
        grad_norm=float(np.mean(grad_norms)),
        epoch_time_s=elapsed,
        samples_per_s=rate,
        steps=len(losses),
    )


def _plot_loss_curve(workdir: Path, history: list[dict], config) -> None:
    from dustjax import plots

    try:
        plots.loss_curve(history, workdir / LOSS_CURVE_FILE, title=config.get("name", ""))
    except Exception as err:  # a plot must never kill a training run
        log.warning("could not draw the loss curve: %s", err)
