"""Batches for training and evaluation, from TFRecord shards or simulated on the device.

Both sources yield the same thing: dicts with ``extinction`` and ``density`` of shape
``(batch, nx, ny, nz, 1)``, float32, normalised by eqs. 1-2 (`dustjax.transforms`).

* `tfrecord_batches` reads a dataset written by `data_gen.make_dataset` with tf.data (shuffle,
  batch, per-process sharding for multi-host runs). tensorflow is imported only here.
* `simulated_batches` simulates every batch on the default device with the region's simulator and
  the exact LOS operator: no tensorflow, no files, unlimited training data. Batch ``s`` is drawn
  from ``fold_in(PRNGKey(seed), s)``, so a resumed run continues the same stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dustjax import transforms
from dustjax.geometry import Region
from dustjax.io import DATASET_INFO, DatasetError, read_dataset_info


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
    if not (data_dir / DATASET_INFO).exists():
        region = region_name or "SR"
        partial = " (an interrupted one is there: rerun it to finish)" if data_dir.exists() else ""
        raise MissingDatasetError(
            f"no complete dataset at {data_dir}{partial}; create it with "
            f"`make data REGION={region} DATA={data_dir}` or `python -m data_gen.make_dataset "
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
    import tensorflow as tf

    from dustjax.io import tfrecord_dataset

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


def simulated_batches(
    region: Region | str,
    batch_size: int,
    seed: int = 0,
    *,
    simulator: str | None = None,
    params=None,
    start_step: int = 0,
    num_steps: int | None = None,
) -> Iterator[dict[str, jax.Array]]:
    """Normalised batches simulated on the default device (no tensorflow, no files)."""
    from dustjax.sims import simulate_batch_fn

    region = region if isinstance(region, Region) else Region.named(region)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    simulate = simulate_batch_fn(region, simulator, params)

    @jax.jit
    def make(step):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), step), batch_size)
        density, extinction = simulate(keys)
        return normalise(density, extinction)

    step = start_step
    while num_steps is None or step < start_step + num_steps:
        yield make(step)
        step += 1
