"""The train state, the model, and the jitted train and eval steps over a device mesh.

- Data parallel over a 1D mesh (`dustjax.sharding`): the batch is sharded along its leading
  axis, parameters are replicated, and XLA inserts the gradient all-reduce (the mean over the
  global batch). Batch norm sees the global batch (synchronised statistics), so N devices compute
  exactly what one device would. With ``config.shard_optimizer_state`` the Adam moments are split
  over the devices (ZeRO stage 1): each device updates its share, the gradients are
  reduce-scattered and the new parameters all-gathered.
- ``train_step(state, batch, rng) -> (state, metrics)`` is pure; per-step randomness is
  ``fold_in(rng, state.step)``. It is jitted with ``donate_argnums=0`` so the old state's buffers
  are reused in place.
- Mixed precision: parameters float32, activations and convolutions in ``config.compute_dtype``
  ("auto": bfloat16 on GPU/TPU, float32 on CPU); losses always float32.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from dustjax import models
from dustjax.sharding import (
    batch_sharding,
    pad_batch,
    prefetch_to_mesh,
    replicated,
    split_over_devices,
)
from dustjax.training import optim
from dustjax.training.tasks import DEFAULT_TASK, Task, get_task


class TrainState(train_state.TrainState):
    """flax TrainState plus the batch-norm statistics."""

    batch_stats: Any = None

    def apply_gradients(self, *, grads, value=None, **kwargs):
        """One optimiser update; `value` (the loss) feeds transforms such as reduce_on_plateau."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params, value=value)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **kwargs)


def resolve_compute_dtype(name: str) -> Any:
    """ "auto" -> bfloat16 on GPU/TPU and float32 on CPU; else the named dtype."""
    if name == "auto":
        return (
            jnp.bfloat16 if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else jnp.float32
        )
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"compute_dtype must be auto, float32, bfloat16 or float16, got {name!r}")
    return jnp.dtype(name).type


def build_model(config):
    """The flax module named by ``config.model.name`` in the configured compute dtype, with
    ``config.model.kwargs`` and the keyword arguments the task derives from the config."""
    ctor = models.get_model(config.model.name)
    kwargs = dict(config.model.get("kwargs") or {})
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    task = get_task(config.get("task", DEFAULT_TASK))
    if task.model_kwargs is not None:
        kwargs.update(task.model_kwargs(config))
    return ctor(**kwargs, dtype=resolve_compute_dtype(config.get("compute_dtype", "auto")))


def state_shardings(abstract_state: TrainState, mesh: Mesh, shard_optimizer_state: bool = False):
    """Shardings of a train state: all replicated, or with the optimiser state's arrays split
    over the "data" axis (each along its largest divisible axis) if `shard_optimizer_state`."""
    whole = replicated(mesh)
    shardings = jax.tree.map(lambda _: whole, abstract_state)
    if shard_optimizer_state and mesh.size > 1:
        shardings = shardings.replace(opt_state=split_over_devices(abstract_state.opt_state, mesh))
    return shardings


def create_train_state(
    model, tx, example_input, rng, mesh: Mesh, *, shard_optimizer_state: bool = False
) -> TrainState:
    """Initialise the state already placed on the mesh (eval_shape, then jit): replicated, or
    with the optimiser state split over the devices (see `state_shardings`)."""
    init = functools.partial(_state_init, model, tx, example_input=example_input)
    abstract = jax.eval_shape(init, rng)
    shardings = state_shardings(abstract, mesh, shard_optimizer_state)
    return jax.jit(init, out_shardings=shardings)(rng)


def abstract_train_state(
    model, tx, example_input, mesh: Mesh, *, shard_optimizer_state: bool = False
) -> TrainState:
    """`create_train_state`'s state as ``jax.ShapeDtypeStruct``s with their shardings, computed
    by tracing the initialisation only: the target of a checkpoint restore, with no program
    compiled or run (nor loaded from the compilation cache). `example_input` may itself be a
    ``jax.ShapeDtypeStruct``."""
    init = functools.partial(_state_init, model, tx)
    abstract = jax.eval_shape(lambda x: init(jax.random.key(0), example_input=x), example_input)
    shardings = state_shardings(abstract, mesh, shard_optimizer_state)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def _state_init(model, tx, rng, *, example_input) -> TrainState:
    variables = model.init(rng, example_input, train=False)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
    )


def make_loss_and_grads(task: Task):
    """``loss_and_grads(state, batch, rng) -> ((loss, new batch_stats), grads)`` for `task`:
    the training forward pass (batch statistics of this batch) and its gradient."""

    def loss_and_grads(state: TrainState, batch: Mapping[str, jax.Array], rng):
        aug_rng, dropout_rng = jax.random.split(rng)
        if task.augment is not None:
            batch = task.augment(batch, aug_rng)
        inputs, targets = batch[task.input_key], batch[task.target_key]

        def loss_fn(params):
            predictions, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                inputs,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_rng},
            )
            loss = jnp.mean(task.per_example_loss(predictions, targets))
            return loss, updates.get("batch_stats", state.batch_stats)

        return jax.value_and_grad(loss_fn, has_aux=True)(state.params)

    return loss_and_grads


def make_train_step(task: Task, grad_shardings=None):
    """The pure step ``train_step(state, batch, rng) -> (state, metrics)`` for `task`.

    `grad_shardings` (a tree like the parameters) constrains the gradients to split over the
    devices as the optimiser state is, so XLA reduce-scatters them instead of all-reducing.
    """
    loss_and_grads = make_loss_and_grads(task)

    def train_step(state: TrainState, batch: Mapping[str, jax.Array], rng):
        rng = jax.random.fold_in(rng, state.step)
        (loss, batch_stats), grads = loss_and_grads(state, batch, rng)
        if grad_shardings is not None:
            grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
        state = state.apply_gradients(grads=grads, value=loss, batch_stats=batch_stats)
        return state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return train_step


def inference_params(state: TrainState):
    """The parameters to evaluate and predict with: the moving average of `optim.params_ema`
    when the optimiser keeps one (``config.optimizer.ema_decay`` > 0), else the trained ones."""
    ema = optim.ema_params(state.opt_state)
    return state.params if ema is None else ema


def make_eval_step(task: Task):
    """``eval_step(state, batch) -> {loss_sum, count}`` with the running batch-norm statistics;
    ``batch["weight"]`` (1 real, 0 padding) masks a padded last batch."""

    def eval_step(state: TrainState, batch):
        predictions = state.apply_fn(
            {"params": inference_params(state), "batch_stats": state.batch_stats},
            batch[task.input_key],
            train=False,
        )
        per_example = task.per_example_loss(predictions, batch[task.target_key])
        weight = batch["weight"]
        return {"loss_sum": jnp.sum(per_example * weight), "count": jnp.sum(weight)}

    return eval_step


def jit_steps(task: Task, state: TrainState, mesh: Mesh):
    """The train and eval steps jitted over the mesh: the batch sharded, the state kept in the
    shardings it has (see `create_train_state`)."""
    whole, data = replicated(mesh), batch_sharding(mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    grad_shardings = None
    if not all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state.opt_state)):
        grad_shardings = split_over_devices(state.params, mesh)
    train_step = jax.jit(
        make_train_step(task, grad_shardings),
        in_shardings=(shardings, data, whole),
        out_shardings=(shardings, whole),
        donate_argnums=0,
    )
    eval_step = jax.jit(make_eval_step(task), in_shardings=(shardings, data), out_shardings=whole)
    return train_step, eval_step


def evaluate_loss(eval_step, state, batches: Iterable, batch_size: int, mesh: Mesh) -> float:
    """Mean per-example loss over a finite stream of batches (short last batch padded)."""
    padded = (pad_batch(b, batch_size) for b in batches)
    sums = [eval_step(state, b) for b in prefetch_to_mesh(padded, batch_sharding(mesh))]
    if not sums:
        raise ValueError("the evaluation split yielded no batches")
    total = jax.device_get(sums)
    count = sum(float(s["count"]) for s in total)
    return sum(float(s["loss_sum"]) for s in total) / count
