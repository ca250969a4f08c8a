"""The POLARIS 2D attention U-Net and its KAN variants (Ribeiro 2025, part II, sect. 2.2, 3.3).

Input ``(batch, H, W, 1)``: log10 column density shifted by `LOG10_COLUMN_SHIFT`; output the same
shape: log10 of the target density shifted by `LOG10_DENSITY_SHIFT` (both in
`dustjax.polaris.projection`; no output activation: a regression in log10). Layout NHWC.

Architecture for ``levels`` = L and ``base_features`` = f (paper default L = 4, f = 64, one conv
per block):

- encoder level i (0 .. L-1): ``convs_per_block`` x [3x3 conv -> batch norm -> ReLU] with
  f 2^i kernels, then 2x2 max pooling (not after the deepest level);
- decoder level i (L-2 .. 0): 2x2 transposed conv with stride 2 and f 2^i kernels, an attention
  gate (Oktay et al. 2018) that weights the skip features x of level i by
  psi = sigmoid(BN(conv1x1(relu(BN(W_x x) + BN(W_g g))))) with g the upsampled decoder features,
  concatenation, then a conv block with f 2^i kernels;
- head: a 1x1 conv to one channel.

KAN options (`dustjax.models.kan`), the three uses of sect. 3.3:
- ``kan_branch`` (e.g. (10, 10, 10, 1)): "KAN as symbolic use" (fig. 18): a per-pixel KAN
  1 -> 10 -> 10 -> 10 -> 1 on the input, added to the U-Net output;
- ``kan_output``: "K-Net": the head is a KAN convolution instead of the 1x1 conv;
- ``kan_levels`` = k: "U-KAN": the conv blocks of the k deepest levels (encoder and decoder) use
  KAN convolutions (C. Li et al. 2024 replace only deep layers).

Spatial sizes must be divisible by 2^(L-1). `dtype` sets the compute dtype (bfloat16 on
accelerators); parameters stay float32 and the output is float32.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dustjax.models.kan import KANMLP, KANConv


def max_pool_2x2(x):
    """2x2 max pooling with stride 2 on NHWC as reshape + max (fast gradient on GPUs)."""
    b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class ConvBlock(nn.Module):
    """``num_convs`` x [3x3 conv (or KAN conv) -> batch norm -> ReLU]."""

    features: int
    num_convs: int = 1
    kan: bool = False
    kan_num_grids: int = 8
    padding: str = "REFLECT"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i in range(self.num_convs):
            if self.kan:
                x = KANConv(
                    self.features,
                    (3, 3),
                    padding=self.padding,
                    num_grids=self.kan_num_grids,
                    name=f"kanconv{i}",
                    **kw,
                )(x)
            else:
                x = nn.Conv(self.features, (3, 3), padding=self.padding, name=f"conv{i}", **kw)(x)
            x = nn.BatchNorm(
                use_running_average=not train, momentum=self.bn_momentum, name=f"bn{i}", **kw
            )(x)
            x = nn.relu(x)
        return x


class AttentionGate(nn.Module):
    """Additive attention gate: skip * sigmoid(psi(relu(W_x skip + W_g gating)))."""

    inter_features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, skip, gating, train: bool):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bn = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum, **kw
        )
        theta = bn(name="bn_x")(nn.Conv(self.inter_features, (1, 1), name="w_x", **kw)(skip))
        phi = bn(name="bn_g")(nn.Conv(self.inter_features, (1, 1), name="w_g", **kw)(gating))
        psi = bn(name="bn_psi")(nn.Conv(1, (1, 1), name="psi", **kw)(nn.relu(theta + phi)))
        return skip * nn.sigmoid(psi)


class AttentionUNet(nn.Module):
    """2D attention U-Net with optional KAN parts (see the module docstring).

    Attributes:
      levels: number of resolution levels L (paper default 4: three poolings).
      base_features: kernels of the first level f; level i has f 2^i.
      convs_per_block: convolutions per block (paper default 1; 2 as an option).
      attention: use attention gates on the skip connections (paper: yes).
      kan_branch: widths of a parallel per-pixel KAN (e.g. (10, 10, 10, 1)), or None.
      kan_output: make the output layer a KAN convolution ("K-Net").
      kan_levels: number of deepest levels whose conv blocks are KAN convolutions ("U-KAN").
      kan_num_grids: RBF centres per KAN edge function.
      padding: convolution padding, "REFLECT" (default) or "SAME" (zeros).
      dtype, param_dtype: compute and parameter dtypes.
      bn_momentum: running-average momentum of batch norm (PyTorch's 0.1 = flax's 0.9).
      input_channels: channels of the input; 1 (column density) by default, more for the
        multi-input U-Net of part III (channel 0 the column density, then 13CO emission,
        `dustjax.polaris.multi_input`); the KAN branch reads channel 0.
    """

    levels: int = 4
    base_features: int = 64
    convs_per_block: int = 1
    attention: bool = True
    kan_branch: Sequence[int] | None = None
    kan_output: bool = False
    kan_levels: int = 0
    kan_num_grids: int = 8
    padding: str = "REFLECT"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    input_channels: int = 1

    @nn.compact
    def __call__(self, column_hat, train: bool = False):
        """Map shifted log10 column density (B, H, W, 1) to shifted log10 density (B, H, W, 1)."""
        if column_hat.ndim != 4 or column_hat.shape[-1] != self.input_channels:
            raise ValueError(
                "AttentionUNet expects log10 column density of shape (batch, H, W, "
                f"{self.input_channels}), got {tuple(column_hat.shape)}"
            )
        if self.levels < 1 or not 0 <= self.kan_levels <= self.levels:
            raise ValueError(f"need levels >= 1 and 0 <= kan_levels <= levels, got {self}")
        factor = 2 ** (self.levels - 1)
        if column_hat.shape[1] % factor or column_hat.shape[2] % factor:
            raise ValueError(
                f"AttentionUNet with {self.levels} levels needs H and W divisible by {factor}, "
                f"got {tuple(column_hat.shape[1:3])}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        block = functools.partial(
            ConvBlock,
            num_convs=self.convs_per_block,
            kan_num_grids=self.kan_num_grids,
            padding=self.padding,
            bn_momentum=self.bn_momentum,
            **kw,
        )
        widths = [self.base_features * 2**i for i in range(self.levels)]
        is_kan = [i >= self.levels - self.kan_levels for i in range(self.levels)]

        x = column_hat.astype(self.dtype)
        skips = []
        for i, width in enumerate(widths):
            x = block(width, kan=is_kan[i], name=f"enc{i}")(x, train)
            if i < self.levels - 1:
                skips.append(x)
                x = max_pool_2x2(x)
        for i in reversed(range(self.levels - 1)):
            width = widths[i]
            x = nn.ConvTranspose(width, (2, 2), strides=(2, 2), name=f"dec{i}_up", **kw)(x)
            skip = skips[i]
            if self.attention:
                skip = AttentionGate(
                    max(width // 2, 1), bn_momentum=self.bn_momentum, name=f"dec{i}_gate", **kw
                )(skip, x, train)
            x = jnp.concatenate([x, skip], axis=-1)
            x = block(width, kan=is_kan[i], name=f"dec{i}")(x, train)
        if self.kan_output:
            out = KANConv(1, (1, 1), num_grids=self.kan_num_grids, name="head_kan", **kw)(x)
        else:
            out = nn.Conv(1, (1, 1), name="head", **kw)(x)
        out = out.astype(jnp.float32)
        if self.kan_branch:
            # "KAN as symbolic use" (fig. 18): a per-pixel function N -> n in parallel.
            out = out + KANMLP(
                tuple(self.kan_branch), num_grids=self.kan_num_grids, name="kan_branch"
            )(column_hat[..., :1].astype(jnp.float32))
        return out


UNetPaper = functools.partial(AttentionUNet, levels=4, base_features=64, convs_per_block=1)
KNet = functools.partial(AttentionUNet, kan_output=True)
UKAN = functools.partial(AttentionUNet, levels=5, kan_levels=3)  # paper: 5 levels, 3 KAN
UNetKANBranch = functools.partial(AttentionUNet, kan_branch=(10, 10, 10, 1))
