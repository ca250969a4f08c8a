"""The V-net's data: the engine's task and data sources, the paper's splits, the region.

Both data sources yield the same thing: dicts with ``extinction`` and ``density`` of shape
``(batch, nx, ny, nz, 1)``, float32, normalised by eqs. 1-2 (`dustjax.vnet.transforms`).

* "tfrecord" (`tfrecord_source`, over `tfrecord_batches`) reads a dataset written by
  `data_gen.make_dataset` with tf.data (shuffle, batch, per-process sharding for multi-host
  runs). tensorflow is imported only there.
* "simulate" (`simulate_source`) simulates every batch on the devices with the region's simulator
  and the exact LOS operator: no tensorflow, no files, unlimited training data. Batch ``s`` of a
  split is drawn from ``fold_in(PRNGKey(seed), s)``, so a resumed run continues the same stream.

`TASK` ("density_from_extinction": extinction -> density, MSE on the normalised values, paper
eq. 3) and `TASK_H1` ("density_from_extinction_h1": eq. 3 plus the squared error of the
cell-to-cell differences, which weights the finest scales more) are the V-net's tasks; the
engine finds them, and the two sources, by name (`dustjax.training.tasks`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from dustjax.geometry import Region
from dustjax.io import (
    PARTIAL_INFO,
    DatasetError,
    dataset_complete,
    dataset_settings,
    read_dataset_info,
    read_json,
)
from dustjax.sharding import batch_sharding, check_batch_size, make_mesh
from dustjax.training.tasks import SizedBatches, Task, h1_per_example
from dustjax.vnet import transforms

SPLITS = {"train": 0, "validation": 1, "test": 2}
# the paper's split (sect. 2.2): 10 % test, the rest 80/20 into train and validation
TEST_FRACTION = 0.10
TRAIN_FRACTION_OF_REST = 0.80


class MissingDatasetError(DatasetError):
    """The dataset a run needs is not there (the message says which command makes it)."""


def normalise(density, extinction, xp=jnp):
    """Physical cubes ``(B, nx, ny, nz)`` -> the normalised batch dict with a channel axis."""
    return {
        "extinction": xp.log1p(extinction)[..., None],
        "density": transforms.DENSITY_SCALE * xp.log1p(density)[..., None],
    }


def require_dataset(data_dir: str | Path, region_name: str | None = None) -> dict:
    """The dataset's info, or a `MissingDatasetError` that names the command that makes it."""
    data_dir = Path(data_dir)
    if not dataset_complete(data_dir):
        region = region_name or "SR"
        if (data_dir / PARTIAL_INFO).exists():
            started = read_json(data_dir / PARTIAL_INFO)
            if "simulator" in started.get("metadata", {}):  # the settings it was started with
                raise MissingDatasetError(
                    f"{data_dir} holds an interrupted dataset; finish it with `python -m "
                    f"data_gen.make_dataset {dataset_settings(started)} --out={data_dir}`"
                )
        partial = " (an interrupted one is there: rerun it to finish)" if data_dir.exists() else ""
        raise MissingDatasetError(
            f"no complete dataset at {data_dir}{partial}; create it with "
            f"`make data REGION={region} DATA={data_dir}` or `dustjax-make-dataset "
            f"--region={region} --out={data_dir}`"
        )
    return read_dataset_info(data_dir)


def tfrecord_batches(
    data_dir: str | Path,
    split: str,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle_buffer: int = 2048,
) -> Iterator[dict[str, np.ndarray]]:
    """Normalised numpy batches of one split of a TFRecord dataset.

    ``process_index``/``process_count`` default to this JAX process among all (multi-host): each
    process then reads its own part, and `batch_size` is the per-process batch.
    """
    from dustjax.io import import_tensorflow, tfrecord_dataset

    tf = import_tensorflow()

    tf.config.set_visible_devices([], "GPU")  # tf.data only; the accelerators belong to JAX
    info = require_dataset(data_dir)
    if split not in info["splits"]:
        raise DatasetError(f"split {split!r} not in {data_dir}; have {sorted(info['splits'])}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    ds = tfrecord_dataset(data_dir, split, process_index=process_index, process_count=process_count)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(
        lambda ex: normalise(ex["density"], ex["extinction"], xp=tf.math),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.prefetch(tf.data.AUTOTUNE)
    try:
        yield from ds.as_numpy_iterator()
    except tf.errors.DataLossError as err:
        raise DatasetError(
            f"corrupt shard in {data_dir} (split {split}): {err.message.splitlines()[0]}; "
            "remake the dataset with --overwrite"
        ) from None


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


def region_of(config) -> Any:
    """The `Region` of ``config.data.region`` (optionally re-gridded to ``config.data.shape``)."""
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


def split_sizes(num_examples: int) -> dict[str, int]:
    """The paper's split (sect. 2.2): 10 % test, the rest 80/20 into train and validation
    (7,200 / 1,800 / 1,000 for 10,000 cubes)."""
    if num_examples < 1:
        raise ValueError(f"num_examples must be a positive number of cubes, got {num_examples}")
    test = int(round(TEST_FRACTION * num_examples))
    train = int(round(TRAIN_FRACTION_OF_REST * (num_examples - test)))
    return {"train": train, "validation": num_examples - test - train, "test": test}


def check_dataset_matches(config, info: dict) -> None:
    """Refuse a dataset simulated for another region, with another simulator, or with cubes of
    another shape than the config's (``config.data.shape``, else the region's)."""
    # `write_sharded_dataset` keeps region and simulator under "metadata"
    meta = info.get("metadata", {})
    want_region = str(config.data.get("region", "")).upper()
    have_region = str(meta.get("region", {}).get("name", "")).split("@")[0].upper()
    if want_region and have_region and want_region != have_region:
        raise ValueError(
            f"{config.data.data_dir} holds region {have_region} cubes but the config trains on "
            f"{want_region}; pass the {want_region} dataset (e.g. --data_dir=data/{want_region})"
        )
    want_sim = config.data.get("simulator") or ""
    have_sim = meta.get("simulator", "")
    if want_sim and have_sim and want_sim != have_sim:
        raise ValueError(
            f"{config.data.data_dir} holds {have_sim!r} cubes but the config asks for "
            f"{want_sim!r}; make that dataset in another directory, e.g. `python -m "
            f"data_gen.make_dataset --region={want_region} --simulator={want_sim} "
            f"--out=data/{want_region}_{want_sim}`, and pass it with --data_dir"
        )
    have_shape = info.get("features", {}).get("density")
    if want_region and have_shape is not None:
        want_shape = tuple(region_of(config).shape)
        if tuple(have_shape) != want_shape:
            raise ValueError(
                f"{config.data.data_dir} holds cubes of shape {tuple(have_shape)} but the config "
                f"asks for {want_shape} (config.data.shape); pass a dataset of that shape or "
                f"set config.data.shape = {tuple(have_shape)}"
            )


def tfrecord_source(config, split, *, batch_size, seed, epoch, train):
    """A split of the TFRecord dataset ``config.data.data_dir`` (`data_gen.make_dataset`):
    shuffled full batches for training (the order a pure function of (seed, epoch)), one
    ordered pass with a short last batch otherwise."""
    info = require_dataset(config.data.data_dir, config.data.get("region"))
    check_dataset_matches(config, info)
    num = int(info["splits"].get(split, 0))
    batches = tfrecord_batches(
        config.data.data_dir,
        split,
        batch_size,
        shuffle=train,
        seed=_derived_seed(seed, SPLITS.get(split, 9), epoch),
        repeat=False,
        drop_remainder=train,
    )
    length = num // batch_size if train else math.ceil(num / batch_size)
    return SizedBatches(batches, length)


@functools.lru_cache(maxsize=16)
def _simulated_batch_fn(region, simulator: str, params, batch_size: int, mesh: Mesh):
    """``make(seed, step) -> batch``, jitted once per (region, simulator, params, batch size).

    Batch ``step`` of a seed is drawn from ``fold_in(PRNGKey(seed), step)``; compiled once for
    the whole run, not once per epoch and split. The batch comes out split over the mesh: each
    device simulates its own share (the keys do not depend on the split, so neither do the cubes),
    instead of the first device simulating the whole global batch and sending it around.
    """
    from dustjax.sims import simulate_batch_fn

    simulate = simulate_batch_fn(region, simulator, params)

    @functools.partial(jax.jit, out_shardings=batch_sharding(mesh))
    def make(seed, step):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), step), batch_size)
        density, extinction = simulate(keys)
        return normalise(density, extinction)

    return make


def simulated_steps(config, split, *, batch_size: int, train: bool) -> int:
    """Batches an epoch of `split` takes from a simulated stream (the "simulate" sources).

    Training: ``config.data.steps_per_epoch``, or the train split of ``config.data.num_examples``
    (the paper's proportions) over the batch; validation: ``config.data.eval_steps`` or the whole
    split; test: the whole split.
    """
    sizes = split_sizes(int(config.data.get("num_examples", 10_000)))
    if train:
        steps = int(config.data.get("steps_per_epoch") or 0) or sizes[split] // batch_size
    elif split == "validation":
        steps = int(config.data.get("eval_steps") or 0) or math.ceil(sizes[split] / batch_size)
    else:
        steps = math.ceil(sizes[split] / batch_size)
    if steps < 1:
        raise ValueError(
            f"a simulated source gives no {split} batch; raise config.data.num_examples"
        )
    return steps


def simulate_source(config, split, *, batch_size, seed, epoch, train):
    """Fresh cubes simulated on the device: one endless stream per split.

    Training epoch e takes steps [e S, (e + 1) S) of the train stream, so a resumed run continues
    it; validation and test always take the first batches of their own fixed streams (the same
    validation set every epoch). S = ``config.data.steps_per_epoch``, or as many batches as the
    paper's split of ``config.data.num_examples`` gives (7,200 train cubes of 10,000); validation
    uses ``config.data.eval_steps`` or the 1,800 validation cubes, test the 1,000 test cubes.
    """
    name, params = _simulator_params(config)
    steps = simulated_steps(config, split, batch_size=batch_size, train=train)
    mesh = make_mesh(config.get("num_devices") or None)
    check_batch_size(batch_size, mesh)
    make = _simulated_batch_fn(region_of(config), name, params, batch_size, mesh)
    split_seed = _derived_seed(seed, SPLITS.get(split, 9))
    first = epoch * steps if train else 0
    batches = (make(split_seed, step) for step in range(first, first + steps))
    return SizedBatches(batches, steps)


def model_kwargs(config) -> dict[str, Any]:
    """The V-net's keyword arguments that follow from the config: with ``config.model.los_channels``
    the region's frame ``los_frame_pc`` (the line-of-sight input channels,
    `dustjax.models.vnet.los_channels`)."""
    if not config.model.get("los_channels", False):
        return {}
    region = region_of(config)
    kwargs = {"los_frame_pc": tuple(region.lower_pc) + tuple(region.cell_size_pc)}
    if config.model.get("derivative_channel", False):  # needs the asinh normalisation's scales
        # read from the config here: normalisation.py imports this module (its task hooks), so
        # importing it back would close an import loop; the defaults are Normalisation's (tested)
        if (config.data.get("normalisation") or "eq12") != "asinh":
            raise ValueError("config.model.derivative_channel needs data.normalisation='asinh'")
        params = dict(config.data.get("normalisation_params") or {})
        kwargs["derivative_channel"] = (
            float(params.get("e0", ASINH_DEFAULTS[0])),
            float(params.get("rho0", ASINH_DEFAULTS[1])),
        )
    return kwargs


ASINH_DEFAULTS = (0.05, 1e-4)  # = dustjax.vnet.normalisation.Normalisation's (e0, rho0)


def input_shape(config) -> tuple[int, ...]:
    """An example input: one cube of the region, ``(1, nx, ny, nz, 1)``."""
    return (1, *region_of(config).shape, 1)


# Said when a V-net workdir's checkpoint does not fit its config (`Task.restore_hint`).
RESTORE_HINT = (
    "If it is a V-net checkpoint written before 2026-11-22, its kernels are in flax's "
    "default layouts: set config.model.kwargs.up_transpose_kernel=False and/or "
    "config.model.kwargs.conv_kernel_layout='DHWIO' (in the workdir's config.json for "
    "experiments/evaluate.py) to read them."
)
VNET_TASK_HOOKS = dict(
    model_kwargs=model_kwargs, input_shape=input_shape, restore_hint=RESTORE_HINT
)
TASK = Task(**VNET_TASK_HOOKS)
TASK_H1 = Task(per_example_loss=h1_per_example, **VNET_TASK_HOOKS)
