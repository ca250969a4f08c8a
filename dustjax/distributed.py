"""Several processes, one program: JAX's multi-controller runtime for the entry points.

On a TPU pod slice (one process a host) or on several GPU hosts (one process a host, or one a
GPU), every process runs the same entry point; `initialize` connects them
(`jax.distributed.initialize`) before any JAX work, and from then on `jax.devices()` lists the
devices of all processes. `dustjax.sharding.make_mesh` builds its mesh over all of them, so the
jitted training step and the GP's ELBO are one program over every device, with XLA's collectives
across hosts.

When to initialise (`initialize`):

* explicit: ``coordinator_address`` (host:port of process 0), ``num_processes`` and
  ``process_id`` (the entry points' flags ``--coordinator_address`` ``--num_processes``
  ``--process_id``, or the environment variables ``DUSTJAX_COORDINATOR_ADDRESS``,
  ``DUSTJAX_NUM_PROCESSES``, ``DUSTJAX_PROCESS_ID``);
* detected: a SLURM job step of more than one task (``SLURM_NTASKS`` > 1 inside ``srun``), or
  a Cloud TPU pod slice of more than one host (``TPU_WORKER_HOSTNAMES`` lists several):
  `jax.distributed.initialize()` then finds everything itself; ``DUSTJAX_DISTRIBUTED=1``
  calls it whatever the environment says (a TPU VM whose host list is only in its metadata,
  any other cluster JAX knows);
* otherwise one process (nothing to do). ``DUSTJAX_DISTRIBUTED=0`` turns detection off.

Data: a global batch is split along its leading axis over the mesh, process ``p`` holding the
rows of its own devices (`local_rows`: a contiguous block, the mesh being ordered by process).
`put_batch` places a batch on the mesh: an array already on the mesh (simulated on the devices)
stays as it is; a host array of the global batch gives each process its rows only
(`jax.make_array_from_process_local_data`); a source that reads only its rows passes them with
``local=True``. Files (logs, JSON, figures, FITS) are written by process 0 only (`is_primary`);
orbax checkpoints are written by all processes together (orbax coordinates them).

On CPU (tests, laptops) the cross-process collectives need gloo, which `initialize` selects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)

ENV_COORDINATOR = "DUSTJAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "DUSTJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "DUSTJAX_PROCESS_ID"
ENV_SWITCH = "DUSTJAX_DISTRIBUTED"

_INITIALIZED = False


class DistributedError(RuntimeError):
    """The processes could not be set up (incomplete settings, JAX already started, ...)."""


def detected_cluster() -> str | None:
    """``"slurm"`` or ``"tpu"`` when this process is one of several of a cluster job, else None."""
    switch = os.environ.get(ENV_SWITCH, "")
    if switch == "0":
        return None
    if switch == "1":
        return "forced"
    if int(os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS", "1")) or 1) > 1 and (
        "SLURM_STEP_ID" in os.environ or "SLURM_STEPID" in os.environ
    ):
        return "slurm"
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return "tpu"
    return None


def _from_env(value, name, kind):
    if value is not None:
        return value
    raw = os.environ.get(name)
    return None if raw in (None, "") else kind(raw)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids=None,
) -> bool:
    """Connect this process to the others (see the module docstring); True if several run.

    Call it first thing, before any JAX computation. Explicit settings (arguments, else the
    ``DUSTJAX_*`` environment variables) must be complete: all three, or none.
    """
    global _INITIALIZED
    if _INITIALIZED:
        return jax.process_count() > 1
    coordinator_address = _from_env(coordinator_address, ENV_COORDINATOR, str)
    num_processes = _from_env(num_processes, ENV_NUM_PROCESSES, int)
    process_id = _from_env(process_id, ENV_PROCESS_ID, int)
    explicit = [coordinator_address, num_processes, process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise DistributedError(
                "give all of --coordinator_address, --num_processes and --process_id (or "
                f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}), got "
                f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
                f"process_id={process_id!r}"
            )
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise DistributedError(
                f"process_id={process_id} must be in [0, num_processes={num_processes})"
            )
        if num_processes == 1:
            return False
        kwargs = dict(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        how = f"explicit ({coordinator_address}, process {process_id} of {num_processes})"
    else:
        cluster = detected_cluster()
        if cluster is None:
            return False
        kwargs, how = {}, f"detected ({cluster})"
    if local_device_ids is not None:
        kwargs["local_device_ids"] = local_device_ids
    if _backend_started():
        raise DistributedError(
            "JAX's backend has already started; call dustjax.distributed.initialize() before "
            "any JAX computation"
        )
    _use_gloo_on_cpu()
    jax.distributed.initialize(**kwargs)
    _INITIALIZED = True
    log.info(
        "distributed: %s; process %d of %d, %d local / %d global devices",
        how, jax.process_index(), jax.process_count(), jax.local_device_count(),
        jax.device_count(),
    )  # fmt: skip
    return jax.process_count() > 1


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: assume not started
        return False


def _use_gloo_on_cpu() -> None:
    """CPU devices talk across processes through gloo (JAX's default there is none)."""
    platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    if platforms and "cpu" not in platforms.split(","):
        return
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError) as err:  # pragma: no cover (older/newer JAX)
        log.warning("could not select gloo CPU collectives: %s", err)


def is_primary() -> bool:
    """True in the one process that writes files and logs results (process 0)."""
    return jax.process_index() == 0


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def local_rows(global_size: int, sharding) -> slice:
    """The rows of a leading axis of `global_size` split by `sharding` that this process holds.

    They are one contiguous block (the mesh orders devices by process); a `ValueError` if the
    layout gives this process scattered rows.
    """
    index_map = sharding.addressable_devices_indices_map((global_size,))
    starts, stops = [], []
    for index in index_map.values():
        s = index[0] if index else slice(None)
        start, stop, _ = s.indices(global_size)
        starts.append(start)
        stops.append(stop)
    lo, hi = min(starts), max(stops)
    covered = set()
    for a, b in zip(starts, stops, strict=True):
        covered.update(range(a, b))
    if len(covered) != hi - lo:
        raise ValueError(f"process {jax.process_index()} holds scattered rows of the batch")
    return slice(lo, hi)


def put_batch(batch: Mapping[str, Any], sharding, *, local: bool = False) -> dict:
    """Place a batch (arrays with a leading batch axis) on `sharding` (split along axis 0).

    Arrays already laid out that way are kept. In one process the rest is `jax.device_put`.
    With several, each process transfers only its rows: of the global batch it was given, or,
    with ``local=True``, the rows it read itself (its `local_rows`).
    """
    if not is_multiprocess():
        return jax.device_put(dict(batch), sharding)
    return {k: put_rows(v, sharding, local=local) for k, v in batch.items()}


def put_rows(value, sharding, *, local: bool = False):
    """One array of `put_batch` (see there)."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        if value.sharding.is_equivalent_to(sharding, value.ndim):
            return value
        return jax.jit(lambda x: x, out_shardings=sharding)(value)
    value = np.asarray(value)
    if local:
        n = value.shape[0] * jax.process_count()
        return jax.make_array_from_process_local_data(sharding, value, (n, *value.shape[1:]))
    rows = local_rows(value.shape[0], sharding)
    return jax.make_array_from_process_local_data(sharding, value[rows], value.shape)


def put_replicated(tree, sharding):
    """Place host values, the same in every process, whole on every device of `sharding`."""
    if not is_multiprocess():
        return jax.device_put(tree, sharding)

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, x.shape)

    return jax.tree.map(one, tree)


def to_host(x) -> np.ndarray:
    """A global array as a numpy array in every process (gathered if it is split)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
