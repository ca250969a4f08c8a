"""The one training engine of dustjax: the V-net now, the POLARIS U-Net later.

``train_and_evaluate(config, workdir)`` is what `experiments/train.py`, the notebooks and the tests
call. The config (an ml_collections ConfigDict, see `experiments/configs/`) names three things the
engine looks up in small registries, so a new model or task needs no edit of the loop:

- a **model**: ``config.model.name`` (``dustjax.models.register_model``), built with
  ``config.model.kwargs`` and ``dtype=compute dtype``;
- a **task** (`register_task`): which batch keys are the input and the target, the per-example
  loss (default "density_from_extinction": extinction -> density, MSE on the normalised values,
  paper eq. 3; "density_from_extinction_h1" adds the squared error of the cell-to-cell
  differences, which weights the finest scales more) and an optional on-device augmentation
  ``augment(batch, rng) -> batch`` run inside the jitted step;
- a **data source** (`register_data_source`): ``config.data.source`` = "tfrecord" (shards written
  by `data_gen.make_dataset`) or "simulate" (fresh cubes simulated on the device every step), or
  any registered ``source(config, split, *, batch_size, seed, epoch, train) -> iterable of
  batches`` (one epoch for training, one pass for evaluation);
- and a learning-rate **schedule** (`register_schedule`): "constant", "warmup_constant", "cosine",
  "warmup_cosine", "reduce_on_plateau" (optax.contrib.reduce_on_plateau on the per-epoch mean
  training loss).

Choices, and why:

- Data parallel over all local devices with a 1D ``jax.sharding.Mesh`` ("data"): the batch is
  sharded along its leading axis, parameters are replicated, and XLA inserts the gradient
  all-reduce (the mean over the global batch). Batch norm sees the global batch (synchronised
  statistics), so N devices compute exactly what one device would; the V-net's
  ``bn_groups=N`` takes them per device instead (`dustjax.models.norm`), which removes the
  all-reduces inside the layers. With ``config.shard_optimizer_state`` the Adam moments are split
  over the devices (ZeRO stage 1): each device updates its share, the gradients are
  reduce-scattered and the new parameters all-gathered.
- ``train_step(state, batch, rng) -> (state, metrics)`` is pure; per-step randomness is
  ``fold_in(rng, state.step)``. It is jitted with ``donate_argnums=0`` so the old state's buffers
  are reused in place.
- Mixed precision: parameters float32, activations and convolutions in ``config.compute_dtype``
  ("auto": bfloat16 on GPU/TPU, float32 on CPU); losses always float32.
- Checkpoints (orbax): one per epoch; the manager keeps the latest (to resume) and the one of
  minimum validation loss (the paper's "optimal model"). Everything that decides the rest of a run
  (state, epoch, best loss, patience counter) is in the checkpoint, and each epoch's data is a pure
  function of (seed, epoch), so a run restarted on its workdir ends where an uninterrupted run
  would, bit for bit on the same device.
- A non-finite loss stops the run naming the step; the last good checkpoint is untouched.
- Outputs in the workdir: config.json, metrics.jsonl (one JSON line per epoch), loss_curve.png
  (paper fig. 6), checkpoints/, train_summary.json.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dustjax import io as dio
from dustjax import models

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "train_summary.json"
LOSS_CURVE_FILE = "loss_curve.png"
SPLITS = {"train": 0, "validation": 1, "test": 2}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step."""


# ==== registries ================================================================================
def mse_per_example(predictions, targets):
    """Eq. 3 per example: the mean over cells of (rho_hat_p - rho_hat_t)^2, in float32."""
    diff = predictions.astype(jnp.float32) - targets.astype(jnp.float32)
    return jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))


def gradient_mse_per_example(predictions, targets):
    """The mean over cells and spatial axes of (e[i+1] - e[i])^2 / 2, e = predictions - targets.

    Arrays are ``(B, *spatial, C)``. In Fourier space this weights the error's power at wave
    vector k by (2/3) sum_i sin^2(k_i cell / 2) (for three axes), whose mean over the grid's
    modes is 1: white noise gets its variance, as from the MSE, an error smooth on the cell scale
    gets ~0, and the grid's corner modes (all k_i at the Nyquist wavenumber) get 2. Those corner
    modes set the V-net's minimum c_r on SR (docs/validation.md), while an MSE gives them a
    weight in proportion to their number, 68 of 32,768 modes.
    """
    diff = predictions.astype(jnp.float32) - targets.astype(jnp.float32)
    spatial = range(1, diff.ndim - 1)
    if not spatial:
        raise ValueError(f"predictions of shape {diff.shape} have no spatial axes")
    per_axis = [
        jnp.mean(jnp.square(jnp.diff(diff, axis=a)), axis=tuple(range(1, diff.ndim))) / 2
        for a in spatial
    ]
    return sum(per_axis) / len(per_axis)


def h1_per_example(predictions, targets, gradient_weight: float = 1.0):
    """Eq. 3 plus `gradient_weight` x `gradient_mse_per_example`: a Sobolev (H^1) loss that
    raises the weight of the finest scales (with weight 1, the corner modes 3 x the others' 1)."""
    return mse_per_example(predictions, targets) + gradient_weight * gradient_mse_per_example(
        predictions, targets
    )


@dataclasses.dataclass(frozen=True)
class Task:
    """What a model learns: input/target batch keys, the loss, optional on-device augmentation.

    ``per_example_loss(predictions, targets) -> (B,)``; the training loss is its batch mean.
    ``augment(batch, rng) -> batch`` runs inside the jitted train step (on the device).
    """

    input_key: str = "extinction"
    target_key: str = "density"
    per_example_loss: Callable[[jax.Array, jax.Array], jax.Array] = mse_per_example
    augment: Callable[[dict, jax.Array], dict] | None = None


_TASKS: dict[str, Task] = {
    "density_from_extinction": Task(),
    # not the paper's loss: eq. 3 plus the squared error of the cell-to-cell differences
    "density_from_extinction_h1": Task(per_example_loss=h1_per_example),
}
_DATA_SOURCES: dict[str, Callable[..., Iterable[dict]]] = {}
_SCHEDULES: dict[str, Callable[..., tuple[Any, optax.GradientTransformation | None]]] = {}


def register_task(name: str, task: Task, *, overwrite: bool = False) -> None:
    """Register a `Task` under `name` (``config.task``)."""
    if name in _TASKS and not overwrite and _TASKS[name] != task:
        raise ValueError(f"task {name!r} is already registered (pass overwrite=True to replace)")
    _TASKS[name] = task


def get_task(name: str) -> Task:
    if name in _TASKS:
        return _TASKS[name]
    if ":" in name:
        return models.resolve(name, "task")
    raise ValueError(f"unknown task {name!r}; registered tasks: {sorted(_TASKS)}")


def register_data_source(name: str, source: Callable[..., Iterable[dict]]) -> None:
    """Register ``source(config, split, *, batch_size, seed, epoch, train) -> batches``.

    For ``train=True`` it returns the batches of one epoch (the engine stops after
    ``config.data.steps_per_epoch`` when that is set); otherwise one pass over the split. Batches
    are dicts of arrays with a leading batch axis; the engine pads a short last eval batch.
    """
    _DATA_SOURCES[name] = source


def get_data_source(name: str) -> Callable[..., Iterable[dict]]:
    if name in _DATA_SOURCES:
        return _DATA_SOURCES[name]
    if ":" in name:
        return models.resolve(name, "data source")
    raise ValueError(f"unknown data source {name!r}; registered: {sorted(_DATA_SOURCES)}")


def register_schedule(name: str, make: Callable[..., tuple[Any, Any]]) -> None:
    """Register ``make(config, steps_per_epoch) -> (learning_rate, tail_transform or None)``.

    ``learning_rate`` is a float or an optax schedule given to the optimiser; ``tail_transform``
    is chained after it (e.g. reduce_on_plateau, which scales the updates and reads the loss).
    """
    _SCHEDULES[name] = make


# ---- data sources --------------------------------------------------------------------------------
def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


def region_of(config) -> Any:
    """The `Region` of ``config.data.region`` (optionally re-gridded to ``config.data.shape``)."""
    from dustjax.geometry import Region

    region = Region.named(config.data.region)
    shape = config.data.get("shape")
    if shape and tuple(shape) != region.shape:
        region = region.with_shape(tuple(shape))
    return region


def simulator_name(config) -> str:
    """The simulator of the run's data: ``config.data.simulator``, else the region's default."""
    from dustjax import sims

    return config.data.get("simulator") or sims.default_simulator(region_of(config))


def _simulator_params(config):
    from dustjax import sims

    name = simulator_name(config)
    overrides = dict(config.data.get("simulator_params") or {})
    if not overrides:
        return name, None
    defaults = sims.SIMULATORS[name][1]
    for key, value in overrides.items():
        if isinstance(value, list):
            overrides[key] = tuple(value)
    return name, dataclasses.replace(defaults, **overrides)


class _Sized:
    """An iterable with a known length (for the progress bar)."""

    def __init__(self, iterable, length):
        self._iterable, self._length = iterable, length

    def __iter__(self):
        return iter(self._iterable)

    def __len__(self):
        return self._length


def split_sizes(num_examples: int) -> dict[str, int]:
    """The paper's split (sect. 2.2): 10 % test, the rest 80/20 into train and validation."""
    test = int(round(0.1 * num_examples))
    train = int(round(0.8 * (num_examples - test)))
    return {"train": train, "validation": num_examples - test - train, "test": test}


def check_dataset_matches(config, info: dict) -> None:
    """Refuse a dataset simulated for another region or with another simulator."""
    want_region = str(config.data.get("region", "")).upper()
    have_region = str(info.get("region", {}).get("name", "")).split("@")[0].upper()
    if want_region and have_region and want_region != have_region:
        raise ValueError(
            f"{config.data.data_dir} holds region {have_region} cubes but the config trains on "
            f"{want_region}; pass the {want_region} dataset (e.g. --data_dir=data/{want_region})"
        )
    want_sim = config.data.get("simulator") or ""
    have_sim = info.get("simulator", "")
    if want_sim and have_sim and want_sim != have_sim:
        raise ValueError(
            f"{config.data.data_dir} holds {have_sim!r} cubes but the config asks for "
            f"{want_sim!r}; make that dataset in another directory, e.g. `python -m "
            f"data_gen.make_dataset --region={want_region} --simulator={want_sim} "
            f"--out=data/{want_region}_{want_sim}`, and pass it with --data_dir"
        )


def _tfrecord_source(config, split, *, batch_size, seed, epoch, train):
    from dustjax import input_pipeline

    info = input_pipeline.require_dataset(config.data.data_dir, config.data.get("region"))
    check_dataset_matches(config, info)
    num = int(info["splits"].get(split, 0))
    batches = input_pipeline.tfrecord_batches(
        config.data.data_dir,
        split,
        batch_size,
        shuffle=train,
        seed=_derived_seed(seed, SPLITS.get(split, 9), epoch),
        repeat=False,
        drop_remainder=train,
    )
    length = num // batch_size if train else math.ceil(num / batch_size)
    return _Sized(batches, length)


@functools.lru_cache(maxsize=16)
def _simulated_batch_fn(region, simulator: str, params, batch_size: int, mesh: Mesh):
    """``make(seed, step) -> batch``, jitted once per (region, simulator, params, batch size).

    The same stream as `dustjax.input_pipeline.simulated_batches` (batch ``step`` of a seed is
    drawn from ``fold_in(PRNGKey(seed), step)``), but compiled once for the whole run instead of
    once per epoch and split. The batch comes out split over the mesh's "data" axis: each device
    simulates its own share (the keys do not depend on the split, so neither do the cubes),
    instead of the first device simulating the whole global batch and sending it around.
    """
    from dustjax import input_pipeline
    from dustjax.sims import simulate_batch_fn

    simulate = simulate_batch_fn(region, simulator, params)

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P("data")))
    def make(seed, step):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), step), batch_size)
        density, extinction = simulate(keys)
        return input_pipeline.normalise(density, extinction)

    return make


def _simulate_source(config, split, *, batch_size, seed, epoch, train):
    """Fresh cubes simulated on the device: one endless stream per split.

    Training epoch e takes steps [e S, (e + 1) S) of the train stream, so a resumed run continues
    it; validation and test always take the first batches of their own fixed streams (the same
    validation set every epoch). S = ``config.data.steps_per_epoch``, or as many batches as the
    paper's split of ``config.data.num_examples`` gives (7,200 train cubes of 10,000); validation
    uses ``config.data.eval_steps`` or the 1,800 validation cubes, test the 1,000 test cubes.
    """
    name, params = _simulator_params(config)
    sizes = split_sizes(int(config.data.get("num_examples", 10_000)))
    if train:
        steps = int(config.data.get("steps_per_epoch") or 0) or sizes[split] // batch_size
    elif split == "validation":
        steps = int(config.data.get("eval_steps") or 0) or math.ceil(sizes[split] / batch_size)
    else:
        steps = math.ceil(sizes[split] / batch_size)
    if steps < 1:
        raise ValueError(
            f"source='simulate' gives no {split} batch; raise config.data.num_examples"
        )
    mesh = make_mesh(config.get("num_devices") or None)
    check_batch_size(batch_size, mesh)
    make = _simulated_batch_fn(region_of(config), name, params, batch_size, mesh)
    split_seed = _derived_seed(seed, SPLITS.get(split, 9))
    first = epoch * steps if train else 0
    batches = (make(split_seed, step) for step in range(first, first + steps))
    return _Sized(batches, steps)


def _simulate_observed_source(config, split, **kw):
    """Simulated cubes observed as star catalogues (`dustjax.vnet.observe`)."""
    from dustjax.vnet.observe import simulate_observed_source

    return simulate_observed_source(config, split, **kw)


register_data_source("tfrecord", _tfrecord_source)
register_data_source("simulate", _simulate_source)
register_data_source("simulate_observed", _simulate_observed_source)


# ---- optimiser and schedules ---------------------------------------------------------------------
def _constant(config, steps_per_epoch):
    return config.optimizer.learning_rate, None


def _cosine(config, steps_per_epoch):
    total = max(1, config.num_epochs * steps_per_epoch)
    return optax.cosine_decay_schedule(config.optimizer.learning_rate, total), None


def _warmup_cosine(config, steps_per_epoch):
    total = max(2, config.num_epochs * steps_per_epoch)
    warmup = int(config.schedule.get("warmup_epochs", 1) * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.optimizer.learning_rate, min(warmup, total - 1), total
    ), None


def _warmup_constant(config, steps_per_epoch):
    """Linear warm-up from 0 over `warmup_epochs`, then the constant learning rate (the paper's
    constant-rate Adam). Unlike the cosine schedules it does not depend on `num_epochs`, so a run
    resumed with a larger `num_epochs` continues exactly."""
    warmup = max(1, int(config.schedule.get("warmup_epochs", 1) * steps_per_epoch))
    lr = config.optimizer.learning_rate
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    ), None


def _reduce_on_plateau(config, steps_per_epoch):
    s = config.schedule
    tail = optax.contrib.reduce_on_plateau(
        factor=s.get("factor", 0.5),
        patience=s.get("patience", 5),
        rtol=s.get("rtol", 1e-4),
        atol=s.get("atol", 0.0),
        cooldown=s.get("cooldown", 0),
        # patience counts evaluations of the mean loss over this many steps: one epoch.
        accumulation_size=s.get("accumulation_size", 0) or steps_per_epoch,
        min_scale=s.get("min_scale", 0.0),
    )
    return config.optimizer.learning_rate, tail


register_schedule("constant", _constant)
register_schedule("cosine", _cosine)
register_schedule("warmup_cosine", _warmup_cosine)
register_schedule("warmup_constant", _warmup_constant)
register_schedule("reduce_on_plateau", _reduce_on_plateau)


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
    """Adam (paper sect. 3.1) or AdamW, with the configured schedule; accepts ``value=loss``."""
    name = config.schedule.get("name", "constant") if "schedule" in config else "constant"
    if name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; registered: {sorted(_SCHEDULES)}")
    learning_rate, tail = _SCHEDULES[name](config, steps_per_epoch)
    opt = config.optimizer
    kind = opt.get("name", "adam")
    if kind == "adam":
        base = optax.adam(learning_rate, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999))
    elif kind == "adamw":
        base = optax.adamw(
            learning_rate,
            b1=opt.get("b1", 0.9),
            b2=opt.get("b2", 0.999),
            weight_decay=opt.get("weight_decay", 1e-4),
        )
    else:
        raise ValueError(f"unknown optimizer {kind!r}; use 'adam' or 'adamw'")
    parts = []
    if opt.get("grad_clip_norm", 0.0):
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    parts.append(base)
    if tail is not None:
        parts.append(tail)
    return optax.chain(*parts)


# ==== state, steps, sharding =====================================================================
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
    """The flax module named by ``config.model.name`` in the configured compute dtype."""
    ctor = models.get_model(config.model.name)
    kwargs = dict(config.model.get("kwargs") or {})
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    if config.model.get("los_channels", False):
        # The line-of-sight input channels (`dustjax.models.vnet.los_channels`) of the region.
        region = region_of(config)
        kwargs["los_frame_pc"] = tuple(region.lower_pc) + tuple(region.cell_size_pc)
    return ctor(**kwargs, dtype=resolve_compute_dtype(config.get("compute_dtype", "auto")))


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1D "data" mesh over the first `num_devices` local devices (default: all)."""
    devices = jax.local_devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are visible")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    n = mesh.size
    if batch_size < 1 or batch_size % n:
        raise ValueError(
            f"{what}={batch_size} does not divide over the {n} devices of the mesh; "
            f"use a multiple of {n} (e.g. --config.{what}={max(n, (batch_size // n) * n)})"
        )


def _split_spec(shape: tuple[int, ...], n: int) -> P:
    """Shard the largest axis that divides over `n` devices; replicate if none does."""
    axes = [i for i in np.argsort(shape)[::-1] if shape[i] % n == 0 and shape[i] >= n]
    if n == 1 or not axes:
        return P()
    spec = [None] * len(shape)
    spec[int(axes[0])] = "data"
    return P(*spec)


def _split_over_devices(tree, mesh: Mesh):
    """Shardings splitting each array of `tree` along its largest axis that divides over the
    mesh (`_split_spec`): the optimiser moments' layout, and the gradients' that match it."""
    return jax.tree.map(lambda x: NamedSharding(mesh, _split_spec(tuple(x.shape), mesh.size)), tree)


def state_shardings(abstract_state: TrainState, mesh: Mesh, shard_optimizer_state: bool = False):
    """Shardings of a train state: all replicated, or with the optimiser state's arrays split
    over the "data" axis (each along its largest divisible axis) if `shard_optimizer_state`."""
    replicated = NamedSharding(mesh, P())
    shardings = jax.tree.map(lambda _: replicated, abstract_state)
    if shard_optimizer_state and mesh.size > 1:
        shardings = shardings.replace(opt_state=_split_over_devices(abstract_state.opt_state, mesh))
    return shardings


def create_train_state(
    model, tx, example_input, rng, mesh: Mesh, *, shard_optimizer_state: bool = False
) -> TrainState:
    """Initialise the state already placed on the mesh (eval_shape, then jit): replicated, or
    with the optimiser state split over the devices (see `state_shardings`)."""

    def init(rng):
        variables = model.init(rng, example_input, train=False)
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            tx=tx,
        )

    abstract = jax.eval_shape(init, rng)
    shardings = state_shardings(abstract, mesh, shard_optimizer_state)
    return jax.jit(init, out_shardings=shardings)(rng)


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


def make_eval_step(task: Task):
    """``eval_step(state, batch) -> {loss_sum, count}`` with the running batch-norm statistics;
    ``batch["weight"]`` (1 real, 0 padding) masks a padded last batch."""

    def eval_step(state: TrainState, batch):
        predictions = state.apply_fn(
            {"params": state.params, "batch_stats": state.batch_stats},
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
    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))
    shardings = jax.tree.map(lambda x: x.sharding, state)
    grad_shardings = None
    if not all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state.opt_state)):
        grad_shardings = _split_over_devices(state.params, mesh)
    train_step = jax.jit(
        make_train_step(task, grad_shardings),
        in_shardings=(shardings, data, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        make_eval_step(task), in_shardings=(shardings, data), out_shardings=replicated
    )
    return train_step, eval_step


def pad_batch(batch: Mapping[str, Any], batch_size: int) -> dict[str, np.ndarray]:
    """Pad a short batch to `batch_size` with zeros and add ``weight`` (1 real, 0 padding)."""
    n = len(next(iter(batch.values())))
    if n > batch_size:
        raise ValueError(f"batch of {n} examples is larger than batch_size {batch_size}")
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if n < batch_size:
            value = np.concatenate(
                [value, np.zeros((batch_size - n, *value.shape[1:]), value.dtype)]
            )
        out[key] = value
    out["weight"] = (np.arange(batch_size) < n).astype(np.float32)
    return out


def _prefetch_to_mesh(batches: Iterable, sharding: NamedSharding, size: int = 2) -> Iterator:
    """Put batches on the devices `size` steps ahead (device_put is asynchronous)."""
    queue = []
    for batch in batches:
        queue.append(jax.device_put(batch, sharding))
        if len(queue) > size:
            yield queue.pop(0)
    yield from queue


def evaluate_loss(eval_step, state, batches: Iterable, batch_size: int, mesh: Mesh) -> float:
    """Mean per-example loss over a finite stream of batches (short last batch padded)."""
    data = NamedSharding(mesh, P("data"))
    padded = (pad_batch({k: np.asarray(v) for k, v in b.items()}, batch_size) for b in batches)
    sums = [eval_step(state, b) for b in _prefetch_to_mesh(padded, data)]
    if not sums:
        raise ValueError("the evaluation split yielded no batches")
    total = jax.device_get(sums)
    count = sum(float(s["count"]) for s in total)
    return sum(float(s["loss_sum"]) for s in total) / count


# ==== checkpoints ===============================================================================
def checkpoint_manager(workdir: str | Path, *, read_only: bool = False):
    """Keeps the latest checkpoint and the one of minimum ``val_loss`` (maybe the same)."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as cm

    def val_loss(metrics):
        return float(metrics["val_loss"])

    options = ocp.CheckpointManagerOptions(
        best_fn=val_loss,
        best_mode="min",
        keep_checkpoints_without_metrics=False,
        preservation_policy=cm.AnyPreservationPolicy(
            [cm.LatestN(n=1), cm.BestN(get_metric_fn=val_loss, reverse=True, n=1)]
        ),
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=not read_only,
    )
    directory = Path(workdir).absolute() / CHECKPOINT_DIR
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "loop"))


def _abstract(state):
    return jax.tree.map(
        lambda x: (
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
            if isinstance(x, jax.Array)
            else x
        ),
        state,
    )


def restore_checkpoint(manager, step: int, target_state: TrainState):
    """Restore (state, loop dict) of `step` into the structure/shardings of `target_state`."""
    import orbax.checkpoint as ocp

    abstract = _abstract(target_state)
    # Shapes first, from the checkpoint's metadata: a restore that fails half-way leaves orbax's
    # asyncio callbacks running, which spill "Event loop is closed" tracebacks at exit.
    mismatch = _shape_mismatches(Path(manager.directory) / str(step) / "state", abstract)
    if mismatch:
        (name, stored, wanted), more = mismatch[0], len(mismatch) - 1
        raise ValueError(
            f"checkpoint {step} in {manager.directory} does not fit this model: {name} is stored "
            f"with shape {stored}, the model wants {wanted}"
            + (f" ({more} more arrays differ)" if more else "")
            + "\n"
            + _LAYOUT_HINT
        )
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore()
            ),
        )
    except ValueError as err:
        if "not compatible with the stored shape" not in str(err):
            raise
        raise ValueError(
            f"checkpoint {step} in {manager.directory} does not fit this model: {err}\n"
            + _LAYOUT_HINT
        ) from err
    return restored["state"], dict(restored["loop"])


_LAYOUT_HINT = (
    "If it is a V-net checkpoint written before 2026-11-22, its kernels are in flax's "
    "default layouts: set config.model.kwargs.up_transpose_kernel=False and/or "
    "config.model.kwargs.conv_kernel_layout='DHWIO' (in the workdir's config.json for "
    "experiments/evaluate.py) to read them."
)


def _shape_mismatches(state_dir: Path, abstract) -> list[tuple[str, tuple, tuple]]:
    """``(name, stored shape, wanted shape)`` of the parameters and batch statistics whose
    shapes differ between a saved state and `abstract`; [] when equal or unreadable."""
    import orbax.checkpoint as ocp

    def name(entry):  # DictKey.key, GetAttrKey.name, SequenceKey.idx
        for attr in ("key", "name", "idx"):
            if getattr(entry, attr, None) is not None:
                return str(getattr(entry, attr))
        return str(entry)

    def names(path):
        return tuple(name(k) for k in path)

    try:
        tree = ocp.StandardCheckpointer().metadata(state_dir).item_metadata
        stored = {
            names(p): tuple(m.shape)
            for p, m in jax.tree_util.tree_leaves_with_path(tree)
            if getattr(m, "shape", None) is not None
        }
    except Exception:  # noqa: BLE001 (metadata unreadable: the restore itself will say why)
        return []
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        key = names(path)
        if key[0] in ("params", "batch_stats") and key in stored:
            if stored[key] != tuple(leaf.shape):
                out.append(("/".join(key), stored[key], tuple(leaf.shape)))
    return out


def save_checkpoint(manager, step: int, state: TrainState, loop: dict, val_loss: float) -> None:
    import orbax.checkpoint as ocp

    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)),
        metrics={"val_loss": float(val_loss)},
    )


# ==== the loop ==================================================================================
def config_to_dict(config) -> dict:
    return (
        json.loads(config.to_json_best_effort())
        if hasattr(config, "to_json_best_effort")
        else dict(config)
    )


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(path: Path, rows: list[dict]) -> None:
    with dio.atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _first_batch(source, config, split, batch_size, seed):
    batches = source(config, split, batch_size=batch_size, seed=seed, epoch=0, train=False)
    for batch in batches:
        return {k: np.asarray(v) for k, v in batch.items()}
    raise ValueError(f"data source {config.data.source!r} yielded no {split} batches")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Train ``config``'s model in `workdir` (resuming if it holds a checkpoint).

    Returns a summary dict (best epoch and validation loss, epochs run, why it stopped, ...),
    also written to ``workdir/train_summary.json``.
    """
    workdir = dio.ensure_writable_dir(workdir)
    task = get_task(config.get("task", "density_from_extinction"))
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

    config_path = workdir / CONFIG_FILE
    resolved = config_to_dict(config)
    if config_path.exists() and dio.read_json(config_path) != resolved:
        log.warning("%s differs from the config of this run; it is replaced", config_path)
    dio.write_json(config_path, resolved)

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
    data_sharding = NamedSharding(mesh, P("data"))

    manager = checkpoint_manager(workdir)
    loop = dict(epoch=0, best_val_loss=math.inf, best_epoch=0, epochs_since_best=0, stop_reason="")
    latest = manager.latest_step()
    if latest is not None:
        state, loop = restore_checkpoint(manager, latest, state)
        log.info("resumed from the checkpoint of epoch %d in %s", latest, manager.directory)
    metrics_path = workdir / METRICS_FILE
    history = [r for r in _read_metrics(metrics_path) if r["epoch"] <= loop["epoch"]]
    _write_metrics(metrics_path, history)  # drop lines of an epoch whose checkpoint was lost

    patience = int(config.early_stopping.get("patience", 0) or 0)
    min_delta = float(config.early_stopping.get("min_delta", 0.0))
    log_every = max(1, int(config.get("log_every_steps", 10)))
    try:
        while loop["epoch"] < config.num_epochs and not loop["stop_reason"]:
            epoch = loop["epoch"] + 1
            row = _train_epoch(
                config, epoch, state, train_step, source, seed, steps_per_epoch,
                step_rng, data_sharding, log_every, manager,
            )  # fmt: skip
            state = row.pop("_state")
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
            verdict = _guard_verdict(config, loop, history, row["train_loss"], val_loss, epoch)
            if verdict == "collapse":
                state = _roll_back(manager, state, loop, val_loss, epoch)
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
            with metrics_path.open("a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
            log.info(
                "epoch %d: train loss %.5g, val loss %.5g (best %.5g @ %d), %.1f samples/s",
                epoch, row["train_loss"], val_loss, loop["best_val_loss"], loop["best_epoch"],
                row["samples_per_s"],
            )  # fmt: skip
            _plot_loss_curve(workdir, history, config)
    finally:
        manager.wait_until_finished()
    if not loop["stop_reason"]:
        loop["stop_reason"] = f"reached num_epochs={config.num_epochs}"
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
        backend=jax.default_backend(),
        compute_dtype=jnp.dtype(compute_dtype).name,
    )
    manager.close()
    dio.write_json(workdir / SUMMARY_FILE, summary)
    if history:
        _plot_loss_curve(workdir, history, config)
    log.info("done: %s; best val loss %.5g at epoch %d", summary["stop_reason"],
             summary["best_val_loss"], summary["best_epoch"])  # fmt: skip
    return summary


def collapse_verdict(
    guard, *, val_loss: float, best_val_loss: float, train_loss: float, best_train_loss: float
) -> str:
    """What the collapse guard (``config.collapse_guard``) makes of an epoch: "" (nothing),
    "collapse" (roll back) or "validation" (a spike of the validation loss alone).

    A spike is a validation loss above ``factor`` x the best so far. It is a collapse only if the
    epoch's training loss rose too, above ``train_factor`` x the lowest epoch training loss so far
    (``train_factor`` 0: every spike is a collapse). A spike with a normal training loss comes
    from the batch-norm running statistics that evaluation uses (an outlier batch among the
    last ~100 steps shifts them; the next epoch's usually undo it): the weights are fine, rolling
    them back only loses epochs, and the best checkpoint is chosen by validation loss anyway.
    """
    factor = float(guard.get("factor", 0.0) or 0.0)
    if not factor or not math.isfinite(best_val_loss) or val_loss <= factor * best_val_loss:
        return ""
    train_factor = float(guard.get("train_factor", 0.0) or 0.0)
    if train_factor and math.isfinite(best_train_loss):
        if train_loss <= train_factor * best_train_loss:
            return "validation"
    return "collapse"


def replay_collapse_guard(rows: list[dict], guard) -> list[dict]:
    """The guard's verdicts on a recorded ``metrics.jsonl`` (rows in epoch order), as the engine
    would give them: one dict (epoch, verdict, val_ratio, train_ratio, after_collapse) per epoch
    with a verdict. After the first "collapse" a guarded run would have restored older weights,
    so later rows (``after_collapse`` True) are no longer the curve that run would have seen."""
    best_val, best_train, collapsed, out = math.inf, math.inf, False, []
    for row in rows:
        val, tr = float(row["val_loss"]), float(row["train_loss"])
        verdict = collapse_verdict(
            guard, val_loss=val, best_val_loss=best_val, train_loss=tr, best_train_loss=best_train
        )
        if verdict:
            out.append(dict(epoch=int(row["epoch"]), verdict=verdict, val_ratio=val / best_val,
                            train_ratio=tr / best_train, after_collapse=collapsed))  # fmt: skip
            collapsed = collapsed or verdict == "collapse"
        best_val, best_train = min(best_val, val), min(best_train, tr)
    return out


def _guard_verdict(config, loop, history, train_loss: float, val_loss: float, epoch: int) -> str:
    """`collapse_verdict` for this epoch, logged, and capped at ``max_rollbacks`` collapses."""
    guard = config.get("collapse_guard") or {}
    best_train = min((float(r["train_loss"]) for r in history), default=math.inf)
    verdict = collapse_verdict(
        guard, val_loss=val_loss, best_val_loss=loop["best_val_loss"], train_loss=train_loss,
        best_train_loss=best_train,
    )  # fmt: skip
    if verdict == "validation":
        log.warning(
            "epoch %d: validation loss %.5g is above %g x the best (%.5g) but the training loss "
            "%.5g is normal (lowest %.5g): a spike of the batch-norm running statistics, not a "
            "collapse; training on (the best checkpoint stays epoch %d)",
            epoch, val_loss, float(guard.get("factor")), loop["best_val_loss"], train_loss,
            best_train, loop["best_epoch"],
        )  # fmt: skip
    if verdict != "collapse":
        return verdict
    done, allowed = int(loop.get("rollbacks", 0)), int(guard.get("max_rollbacks", 5))
    if done >= allowed:
        log.warning(
            "validation loss %.5g is above %g x the best (%.5g), but the collapse guard has "
            "already rolled back %d times (max_rollbacks): training on",
            val_loss, float(guard.get("factor")), loop["best_val_loss"], done,
        )  # fmt: skip
        return ""
    return verdict


def _roll_back(manager, state: TrainState, loop: dict, val_loss: float, epoch: int) -> TrainState:
    """`state` with the best checkpoint's weights, statistics and optimiser moments, but its own
    integer leaves (the step and the optimiser's counts, which drive the rate schedule)."""
    manager.wait_until_finished()
    best_step = manager.best_step()
    best, _ = restore_checkpoint(manager, best_step, state)

    def pick(current, restored):
        return current if jnp.issubdtype(current.dtype, jnp.integer) else restored

    loop["rollbacks"] = int(loop.get("rollbacks", 0)) + 1
    log.warning(
        "epoch %d: validation loss %.5g is %.1f x the best (%.5g, epoch %d): the network "
        "collapsed; restored the weights and Adam moments of epoch %d and go on at step %d "
        "(rollback %d)",
        epoch, val_loss, val_loss / loop["best_val_loss"], loop["best_val_loss"],
        loop["best_epoch"], best_step, int(state.step), loop["rollbacks"],
    )  # fmt: skip
    return jax.tree.map(pick, state, best)


def _train_epoch(
    config, epoch, state, train_step, source, seed, steps_per_epoch, step_rng, data_sharding,
    log_every, manager,
):  # fmt: skip
    """Run one epoch; returns the metrics row (and the new state under "_state")."""
    from tqdm.auto import tqdm

    batches = source(
        config, "train", batch_size=config.batch_size, seed=seed, epoch=epoch - 1, train=True
    )
    batches = itertools.islice(batches, steps_per_epoch)
    bar = tqdm(
        total=steps_per_epoch,
        desc=f"epoch {epoch}/{config.num_epochs}",
        unit="step",
        disable=not config.get("progress_bar", True),
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
    for batch in _prefetch_to_mesh(batches, data_sharding):
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
    return dict(
        train_loss=float(np.mean(losses)),
        grad_norm=float(np.mean(grad_norms)),
        epoch_time_s=elapsed,
        samples_per_s=rate,
        steps=len(losses),
        _state=state,
    )


def _plot_loss_curve(workdir: Path, history: list[dict], config) -> None:
    from dustjax import plots

    try:
        plots.loss_curve(history, workdir / LOSS_CURVE_FILE, title=config.get("name", ""))
    except Exception as err:  # a plot must never kill a training run
        log.warning("could not draw the loss curve: %s", err)


def quiet_library_logs() -> None:
    """Drop orbax's per-save INFO chatter from absl logging (warnings and errors still show)."""

    class _Filter(logging.Filter):
        def filter(self, record):
            return record.levelno >= logging.WARNING or "orbax" not in record.pathname

    for handler in logging.getLogger("absl").handlers + logging.getLogger().handlers:
        handler.addFilter(_Filter())
    try:
        from absl import logging as absl_logging

        absl_logging.get_absl_handler().addFilter(_Filter())
    except ImportError:
        pass


# ==== using a trained model =====================================================================
def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The resolved config a run saved in its workdir."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a training workdir")
    return ml_collections.ConfigDict(dio.read_json(path))


def load_trained(workdir: str | Path, which: str = "best", mesh: Mesh | None = None):
    """(model, variables, config) of a trained run: the ``"best"`` or ``"latest"`` checkpoint.

    The model is rebuilt from the saved config.json; variables = {"params", "batch_stats"}.
    """
    config = load_config(workdir)
    mesh = mesh or make_mesh(1)
    manager = checkpoint_manager(workdir, read_only=True)
    try:  # closed on errors too
        step = manager.best_step() if which == "best" else manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {Path(workdir) / CHECKPOINT_DIR}")
        model = build_model(config)
        tx = make_optimizer(config, 1)
        shape = _input_shape_from_config(config)
        example = jnp.zeros(shape, jnp.float32)
        state = create_train_state(model, tx, example, jax.random.key(0), mesh)
        state, loop = restore_checkpoint(manager, step, state)
    finally:
        manager.close()
    log.info("loaded the %s checkpoint (epoch %d) of %s", which, step, workdir)
    return model, {"params": state.params, "batch_stats": state.batch_stats}, config


def _input_shape_from_config(config) -> tuple[int, ...]:
    shape = config.model.get("input_shape")
    if shape:
        return (1, *shape)
    return (1, *region_of(config).shape, 1)


def make_predict_fn(model, variables, mesh: Mesh | None = None):
    """``predict(inputs (B, ...)) -> predictions`` with running batch-norm statistics (jitted,
    batch sharded over the mesh; B must divide over its devices)."""
    mesh = mesh or make_mesh(1)
    data = NamedSharding(mesh, P("data"))
    variables = jax.device_put(variables, NamedSharding(mesh, P()))

    @functools.partial(jax.jit, in_shardings=(None, data), out_shardings=data)
    def predict(variables, inputs):
        return model.apply(variables, inputs, train=False)

    return lambda inputs: predict(variables, inputs)


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
    mesh = mesh or make_mesh(1)
    data = NamedSharding(mesh, P("data"))
    variables = jax.device_put(variables, NamedSharding(mesh, P()))
    rng = jax.random.key(0) if rng is None else rng

    @functools.partial(jax.jit, in_shardings=(None, data, None))
    def batch_stats(variables, x, key):
        _, updates = zero.apply(variables, x, train=True, mutable=["batch_stats"],
                                rngs={"dropout": key})  # fmt: skip
        return updates["batch_stats"]

    total, count = None, 0
    for i, x in enumerate(inputs):
        stats = batch_stats(variables, x, jax.random.fold_in(rng, i))
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        count += 1
    if not count:
        raise ValueError("population_batch_stats needs at least one batch")
    return jax.tree.map(lambda t: t / count, total)
