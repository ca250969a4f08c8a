"""One device mesh and the batch plumbing around it, for the training engine and the GP.

`make_mesh` builds a 1D mesh over all devices (of every process, `dustjax.distributed`) with
one named axis ("data" for training, the GP's "stars"); a batch is split along its leading
axis over that axis, parameters are replicated. `check_batch_size` refuses a batch that does
not divide over the devices, `pad_batch` pads a short last evaluation batch (with a ``weight``
mask), `prefetch_to_mesh` puts batches on the devices a few steps ahead, and
`split_over_devices` gives the layout of state split over the devices (the optimiser moments
with ``shard_optimizer_state``, ZeRO stage 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(
    num_devices: int | None = None, axis: str = DATA_AXIS, *, devices: Sequence | None = None
) -> Mesh:
    """A 1D mesh with the one axis `axis` over `devices` (default: all devices, of every process
    when several run; in one process these are the local devices), or over the first
    `num_devices` of them (default: all). The devices are ordered by process, so each process
    holds one contiguous block of a split batch (`dustjax.distributed.local_rows`)."""
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    devices = list(devices)
    if num_devices is not None and jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError(
            f"num_devices={num_devices} with {jax.process_count()} processes: a mesh over several "
            f"processes spans all their {len(devices)} devices (leave num_devices unset)"
        )
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are visible")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (axis,))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    n = mesh.size
    if batch_size < 1 or batch_size % n:
        raise ValueError(
            f"{what}={batch_size} does not divide over the {n} devices of the mesh; "
            f"use a multiple of {n} (e.g. --config.{what}={max(n, (batch_size // n) * n)})"
        )


def _split_spec(shape: tuple[int, ...], n: int, axis: str = DATA_AXIS) -> P:
    """Shard the largest axis that divides over `n` devices; replicate if none does."""
    axes = [i for i in np.argsort(shape)[::-1] if shape[i] % n == 0 and shape[i] >= n]
    if n == 1 or not axes:
        return P()
    spec = [None] * len(shape)
    spec[int(axes[0])] = axis
    return P(*spec)


def split_over_devices(tree, mesh: Mesh):
    """Shardings splitting each array of `tree` along its largest axis that divides over the
    mesh (`_split_spec`): the optimiser moments' layout, and the gradients' that match it."""
    axis = mesh.axis_names[0]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, _split_spec(tuple(x.shape), mesh.size, axis)), tree
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays split along their leading (batch) axis over the mesh's axis."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def replicated(mesh: Mesh) -> NamedSharding:
    """Arrays copied whole to every device of the mesh."""
    return NamedSharding(mesh, P())


def pad_batch(batch: Mapping[str, Any], batch_size: int) -> dict[str, np.ndarray]:
    """Pad a short batch to `batch_size` with zeros and add ``weight`` (1 real, 0 padding).

    A full batch's device arrays are kept as they are (a batch simulated on the devices of
    several processes cannot be gathered to one host, nor needs padding)."""
    n = len(next(iter(batch.values())))
    if n > batch_size:
        raise ValueError(f"batch of {n} examples is larger than batch_size {batch_size}")
    out = {}
    for key, value in batch.items():
        if n == batch_size and isinstance(value, jax.Array):
            out[key] = value
            continue
        value = np.asarray(value)
        if n < batch_size:
            value = np.concatenate(
                [value, np.zeros((batch_size - n, *value.shape[1:]), value.dtype)]
            )
        out[key] = value
    out["weight"] = (np.arange(batch_size) < n).astype(np.float32)
    return out


def prefetch_to_mesh(batches: Iterable, sharding: NamedSharding, size: int = 2) -> Iterator:
    """Put batches on the devices `size` steps ahead (device_put is asynchronous); with several
    processes each transfers only its rows (`dustjax.distributed.put_batch`)."""
    from dustjax.distributed import put_batch

    queue = []
    for batch in batches:
        queue.append(put_batch(batch, sharding))
        if len(queue) > size:
            yield queue.pop(0)
    yield from queue
