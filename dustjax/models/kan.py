"""Kolmogorov-Arnold layers with radial-basis-function edges (POLARIS part II, sect. 3.3).

A KAN layer replaces "weight then fixed activation" by a learnable univariate function on every
edge, y_o = sum_i phi_{o,i}(x_i) (Liu et al. 2024). Following FastKAN (Z. Li 2024, "Kolmogorov-
Arnold networks are radial basis function networks"), each edge function is a sum of Gaussian
radial basis functions on a fixed grid plus a SiLU "base" term:

    phi_{o,i}(x) = sum_g w_{o,i,g} exp(-((x - c_g) / h)^2) + v_{o,i} silu(x),

with centres c_g evenly spaced on `grid_range` and h the grid spacing. Expanding every input
feature into its G basis values first, the layer is one dense (or convolution) over the
expanded features plus one over silu(x) -- exactly the KAN sum, computed with the fast dense and
convolution kernels. `KANConv` is the convolutional form (X. Gao's KA-Conv): every kernel tap and
input channel has its own edge function, i.e. a convolution of the RBF-expanded channels.
Inputs should be of order one (the grid spans `grid_range`): place KAN layers after batch norm or
on standardised inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def rbf_expand(x, num_grids: int, grid_range: tuple[float, float]):
    """(..., C) -> (..., C * G): Gaussian RBF values exp(-((x - c_g)/h)^2) on G even centres."""
    low, high = grid_range
    centres = jnp.linspace(low, high, num_grids, dtype=x.dtype)
    h = (high - low) / max(num_grids - 1, 1)
    basis = jnp.exp(-(((x[..., None] - centres) / h) ** 2))
    return basis.reshape(*x.shape[:-1], x.shape[-1] * num_grids)


class KANDense(nn.Module):
    """Fully connected KAN layer: in_features -> `features`, each edge an RBF sum + SiLU term."""

    features: int
    num_grids: int = 8
    grid_range: tuple[float, float] = (-2.0, 2.0)
    use_base: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        basis = rbf_expand(x.astype(self.dtype), self.num_grids, self.grid_range)
        y = nn.Dense(self.features, use_bias=False, name="spline", **kw)(basis)
        if self.use_base:
            y = y + nn.Dense(self.features, name="base", **kw)(nn.silu(x.astype(self.dtype)))
        return y


class KANMLP(nn.Module):
    """A stack of KANDense layers, e.g. widths (10, 10, 10, 1) for the paper's 1-10-10-10-1."""

    widths: Sequence[int] = (10, 10, 10, 1)
    num_grids: int = 8
    grid_range: tuple[float, float] = (-2.0, 2.0)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.widths):
            x = KANDense(
                width,
                num_grids=self.num_grids,
                grid_range=self.grid_range,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"kan{i}",
            )(x)
        return x


class KANConv(nn.Module):
    """Convolutional KAN layer (NHWC): a learnable RBF edge function per tap and channel."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: str = "SAME"
    num_grids: int = 8
    grid_range: tuple[float, float] = (-2.0, 2.0)
    use_base: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(
            kernel_size=self.kernel_size,
            padding=self.padding,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        basis = rbf_expand(x.astype(self.dtype), self.num_grids, self.grid_range)
        y = nn.Conv(self.features, use_bias=False, name="spline", **kw)(basis)
        if self.use_base:
            y = y + nn.Conv(self.features, name="base", **kw)(nn.silu(x.astype(self.dtype)))
        return y
