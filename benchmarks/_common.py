"""Pieces the benchmarks share: wall-clock timing of JAX calls and the V-net training step
(its variants and how one is built). No absl flags here, so any benchmark may import it."""

from __future__ import annotations

import time

# Model/step variants of the paper V-net (names in the benchmark tables); "dtype" and
# "batch_factor" and "shard_optimizer_state" are options of the step, the rest VNet attributes.
VNET_VARIANTS = {
    "base": dict(),
    "f32": dict(dtype="float32"),
    "zero_pad": dict(padding="SAME"),
    "reflect_concat": dict(reflect_method="concat"),
    "up_plain": dict(up_transpose_kernel=False),
    "dhwio": dict(conv_kernel_layout="DHWIO"),
    "f32_input": dict(input_dtype="float32"),
    "remat": dict(remat=True),
    "bs64": dict(batch_factor=2),
    "zero1": dict(shard_optimizer_state=True),
    "bn_local": dict(bn_groups="devices"),
}


def timed(fn, *args, **kw):
    """``(fn(*args, **kw), seconds)``, waiting for the JAX result to be ready."""
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kw))
    return out, time.perf_counter() - t0


def build_vnet_step(name: str, batch_size: int, num_devices: int = 1, small: bool = False):
    """The engine's jitted, donated train step (Adam, MSE) of variant `name` on a random batch
    of ``batch_size`` cubes (times the variant's ``batch_factor``) sharded over `num_devices`.

    Paper model on 32^3 cubes, or with ``small`` features (4, 8, 16, 32) on 16^3. Compute dtype:
    the variant's, else bfloat16 on accelerators and float32 on CPUs. Returns a dict with
    ``step, state, batch, key, global_batch, dtype, features, size``.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from dustjax import sharding
    from dustjax.models import VNet
    from dustjax.training import steps
    from dustjax.training.tasks import Task

    opts = dict(VNET_VARIANTS[name])
    global_batch = batch_size * opts.pop("batch_factor", 1)
    shard_opt = opts.pop("shard_optimizer_state", False)
    dtype = opts.pop("dtype", None) or ("bfloat16" if jax.default_backend() != "cpu" else "float32")
    features = (4, 8, 16, 32) if small else (128, 256, 512, 1024)
    size = 16 if small else 32
    mesh = sharding.make_mesh(num_devices)
    if opts.get("bn_groups") == "devices":
        opts["bn_groups"] = mesh.size
    sharding.check_batch_size(global_batch, mesh)
    model = VNet(features=features, dtype=jnp.dtype(dtype).type, **opts)
    rng = np.random.default_rng(0)
    extinction = rng.uniform(0, 2, (global_batch, size, size, size, 1)).astype(np.float32)
    batch = {"extinction": extinction, "density": np.sqrt(extinction)}
    state = steps.create_train_state(
        model,
        optax.adam(1e-4),
        jnp.asarray(extinction[:1]),
        jax.random.key(0),
        mesh,
        shard_optimizer_state=shard_opt,
    )
    step, _ = steps.jit_steps(Task(), state, mesh)
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    return dict(
        step=step,
        state=state,
        batch=batch,
        key=jax.random.key(1),
        global_batch=global_batch,
        dtype=dtype,
        features=features,
        size=size,
    )
