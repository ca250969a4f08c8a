"""Batch norm with statistics per slice of the batch ("ghost" batch norm).

With ``groups = G`` the training statistics of a batch of B are taken over each of G consecutive
slices of B / G examples, as G data-parallel devices do when each normalises its own shard (a
PyTorch DDP model without SyncBatchNorm). Under ``jit`` with the batch sharded over G devices the
statistics are then local: no cross-device reduction in the forward or backward pass of the
layer, where one batch norm over the whole batch needs two small all-reduces per layer on the
critical path (docs/benchmarks.md). The computation is defined by G alone, not by the device
count, so one device with ``groups=4`` gives exactly what four devices give.

``groups=1`` is `flax.linen.BatchNorm` (same parameter and statistic names, shapes, float32
statistics, E[x^2] - E[x]^2 variance clipped at zero, running averages untouched at init). The
running averages take the mean over groups of each group's mean and variance.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


class GroupedBatchNorm(nn.Module):
    """Batch norm over the last axis with statistics per group of ``B / groups`` examples."""

    groups: int = 1
    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
        out_dtype = self.dtype or jnp.result_type(x, scale, bias)

        if self.use_running_average:
            mean, var, xg = ra_mean.value, ra_var.value, x
        else:
            g = int(self.groups)
            if g < 1 or x.shape[0] % g:
                raise ValueError(
                    f"batch norm in {g} groups needs a batch divisible by {g}, got {x.shape[0]}"
                )
            xg = x.reshape(g, x.shape[0] // g, *x.shape[1:])
            xf = xg.astype(stat_dtype)
            axes = tuple(range(1, xg.ndim - 1))
            mean = xf.mean(axes)  # (g, c)
            var = jnp.maximum(0.0, (xf * xf).mean(axes) - mean * mean)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean.mean(0)
                ra_var.value = m * ra_var.value + (1 - m) * var.mean(0)
            # (g, c) -> (g, 1, ..., 1, c) against xg's (g, B/g, *spatial, c)
            shape = (g,) + (1,) * (xg.ndim - 2) + (c,)
            mean, var = mean.reshape(shape), var.reshape(shape)

        mul = lax.rsqrt(var + self.epsilon) * scale
        y = (xg - mean) * mul + bias
        return jnp.asarray(y, out_dtype).reshape(x.shape)
