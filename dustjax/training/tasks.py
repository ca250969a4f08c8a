"""Tasks and data sources of the engine, by name: the names a config.json holds.

A **task** (`Task`) says what a model learns: which batch keys are the input and the target, the
per-example loss, an optional on-device augmentation, and, when the model needs them, the
model keyword arguments and input shape that follow from the rest of the config. A **data
source** is ``source(config, split, *, batch_size, seed, epoch, train) -> iterable of batches``.

The built-in names resolve lazily from the tables below (``"module:attribute"``, imported on
first use), so a workdir's ``config.json`` alone is enough to resume, evaluate or load a run in a
fresh process, with no registration by import side effect. Only these tables are read: a name in
a config is never imported as a module path. `register_task` / `register_data_source` add names
in-process for code that brings its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp

from dustjax.models import resolve

DEFAULT_TASK = "density_from_extinction"

# name -> "module:attribute" of the object (imported the first time the name is asked for)
BUILTIN_TASKS = {
    "density_from_extinction": "dustjax.vnet.data:TASK",  # extinction -> density, eq. 3
    # not the paper's loss: eq. 3 plus the squared error of the cell-to-cell differences
    "density_from_extinction_h1": "dustjax.vnet.data:TASK_H1",
    # not the paper's: beta-NLL of a Gaussian (mean, log sigma) for a variance head (issue 17)
    "density_from_extinction_nll": "dustjax.vnet.normalisation:NLL_TASK",
    "polaris": "dustjax.polaris.data:TASK",  # log10 N -> log10 <n>_M, dihedral augmentation
    "polaris_no_augment": "dustjax.polaris.data:TASK_NO_AUGMENT",
    # log10 N + 13CO (PPV or moments) -> log10 <n>_M or max n (issue 21, part III)
    "polaris_emission": "dustjax.polaris.multi_input:TASK",
}
BUILTIN_DATA_SOURCES = {
    "tfrecord": "dustjax.vnet.data:tfrecord_source",  # shards written by data_gen.make_dataset
    "simulate": "dustjax.vnet.data:simulate_source",  # fresh cubes on the device every step
    "polaris_simulate": "dustjax.polaris.data:crop_source",
    "polaris_tfrecord": "dustjax.polaris.data:crop_source",
    "polaris_emission_simulate": "dustjax.polaris.multi_input:emission_source",
    # cubes observed as star catalogues (issue 17): stars, noise, eq. 5 gridding on the device
    "simulate_observed": "dustjax.vnet.observe:simulate_observed_source",
}

_TASKS: dict[str, Task] = {}
_DATA_SOURCES: dict[str, Callable[..., Iterable[dict]]] = {}


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
    # ``model_kwargs(config) -> dict``: keyword arguments of the model that follow from the rest
    # of the config (e.g. the V-net's line-of-sight frame from its region), added to
    # ``config.model.kwargs``
    model_kwargs: Callable[[Any], dict] | None = None
    # ``input_shape(config) -> (1, ...)``: an example input's shape when
    # ``config.model.input_shape`` is empty (e.g. the V-net's region cube)
    input_shape: Callable[[Any], tuple[int, ...]] | None = None
    # One sentence added to the error when a workdir's checkpoint does not fit the model (e.g. the
    # V-net's note on checkpoints written in flax's default kernel layouts); the engine itself
    # knows no model, so the method says it
    restore_hint: str = ""


def _lookup(name: str, registered: dict, builtin: dict[str, str], kind: str) -> Any:
    if name in registered:
        return registered[name]
    if name in builtin:
        return resolve(builtin[name], kind)
    known = sorted(set(registered) | set(builtin))
    raise ValueError(f"unknown {kind} {name!r}; known {kind}s: {known}")


def register_task(name: str, task: Task, *, overwrite: bool = False) -> None:
    """Register a `Task` under `name` (``config.task``)."""
    if (name in _TASKS or name in BUILTIN_TASKS) and not overwrite and _TASKS.get(name) != task:
        raise ValueError(f"task {name!r} is already registered (pass overwrite=True to replace)")
    _TASKS[name] = task


def get_task(name: str) -> Task:
    """The task registered or built in as `name` (a `ValueError` naming the known ones if none)."""
    return _lookup(name, _TASKS, BUILTIN_TASKS, "task")


def register_data_source(name: str, source: Callable[..., Iterable[dict]]) -> None:
    """Register ``source(config, split, *, batch_size, seed, epoch, train) -> batches``.

    For ``train=True`` it returns the batches of one epoch (the engine stops after
    ``config.data.steps_per_epoch`` when that is set); otherwise one pass over the split. Batches
    are dicts of arrays with a leading batch axis; the engine pads a short last eval batch.
    """
    _DATA_SOURCES[name] = source


def get_data_source(name: str) -> Callable[..., Iterable[dict]]:
    """The data source registered or built in as `name`."""
    return _lookup(name, _DATA_SOURCES, BUILTIN_DATA_SOURCES, "data source")


class SizedBatches:
    """An iterable with a known length (for the progress bar): `iterable` is either an
    iterable, or a callable returning a fresh iterator each time (re-iterable batches)."""

    def __init__(self, iterable, length):
        self._iterable, self._length = iterable, length

    def __iter__(self):
        return self._iterable() if callable(self._iterable) else iter(self._iterable)

    def __len__(self):
        return self._length
