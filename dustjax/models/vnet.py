"""The V-net of Chen, Qin & Li (sect. 3.1, fig. 5): extinction cube -> dust density cube.

Input ``(batch, nx, ny, nz, 1)`` normalised extinction E_hat (eq. 1), output the same shape of
normalised density rho_hat (eq. 2), non-negative through the final ReLU. Layout NDHWC (channels
last), the layout cuDNN runs 3D convolutions fastest in on recent GPUs and the one XLA keeps on TPU.

Architecture, for ``features = (f1, ..., fL)`` (paper: ``(128, 256, 512, 1024)``, L = 4):

- encoder level i: two [3^3 conv (stride 1, reflect padding) -> batch norm -> ReLU] with f_i
  kernels, then 2^3 max pooling with stride 2 (no pooling after the deepest level);
- decoder, for i = L-1 .. 1: 3^3 transposed conv with stride 2 and f_i kernels -> batch norm ->
  ReLU, concatenated with the encoder features of level i (2 f_i channels), then two
  [conv -> BN -> ReLU] with f_i kernels, except at the shallowest level (i = 1), which keeps the
  2 f_1 channels of the concatenation (paper step vi: "(32, 32, 32, 256)");
- head: two [conv -> BN -> ReLU] with f_1 kernels, then a 3^3 conv with one kernel and a ReLU.

Optional, not in the paper (``los_frame_pc``): four more input channels that tell each cell where
the Sun is, the unit vector from the Sun to the cell centre and its distance over the cube's
largest (`los_channels`). Density is the derivative of extinction along the line of sight, whose
direction changes across the cube (in SR from -X at the far face to nearly +-Y beside the Sun); a
translation-equivariant CNN otherwise has to infer it from the extinction field itself.

Spatial sizes must be divisible by ``2**(L-1)`` (32^3, 64^3 and 128^3 all work with L = 4).
Convolutions carry a bias, as in the Keras layers of the paper. The transposed convolutions use
zero ("SAME") padding: reflect padding is not defined for them.

`compute_dtype` sets the dtype of the activations and the convolutions (bfloat16 on accelerators);
parameters stay float32 (`param_dtype`) and batch-norm statistics are reduced in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dustjax.models.norm import GroupedBatchNorm

PAPER_FEATURES = (128, 256, 512, 1024)


def los_channels(shape: Sequence[int], frame_pc: Sequence[float]) -> np.ndarray:
    """Line-of-sight channels of a cube of `shape` cells, ``(nx, ny, nz, 4)`` float32.

    ``frame_pc = (x0, y0, z0, dx, dy, dz)``: the cube's lower corner and cell size in the
    heliocentric frame (pc; the Sun at the origin). Channels: the unit vector from the Sun to each
    cell centre (3) and the centre's distance divided by the largest in the cube (1). A static
    numpy constant: it depends on the geometry only.
    """
    from dustjax.geometry import Region

    if len(shape) != 3 or len(frame_pc) != 6:
        raise ValueError(
            f"los_channels needs a 3D shape and (x0, y0, z0, dx, dy, dz), got {shape}, {frame_pc}"
        )
    lower, cell = np.asarray(frame_pc[:3], float), np.asarray(frame_pc[3:], float)
    if np.any(cell <= 0):
        raise ValueError(f"cell sizes must be positive, got {tuple(cell)} pc")
    xyz = Region(
        tuple(lower), tuple(lower + cell * np.asarray(shape)), tuple(shape)
    ).cell_centres_pc()
    r = np.linalg.norm(xyz, axis=-1, keepdims=True)
    unit = xyz / np.maximum(r, 1e-9 * float(cell.min()))  # a centre exactly at the Sun: (0, 0, 0)
    return np.concatenate([unit, r / r.max()], axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=16)
def los_derivative_weights(shape: tuple[int, ...], frame_pc: tuple[float, ...], step_cells: float):
    """Static weights of a line-of-sight finite difference, ``(index (N, 8), weight (N, 8),
    step (N,))`` for the N cells of a cube (C order).

    For each cell centre c at distance r from the Sun, the point b = c - min(h, r) c / r one step
    h = ``step_cells`` x the smallest cell size back towards the Sun; ``index`` / ``weight`` are
    the trilinear interpolation of a cell-centred field at b (indices clamped at the faces, as
    ``scipy.ndimage.map_coordinates(order=1, mode="nearest")``), and ``step`` = min(h, r). Cells
    within h of the Sun step back to the Sun itself, where the extinction is 0: their weights are
    all zero.
    """
    from dustjax.geometry import Region

    lower, cell = np.asarray(frame_pc[:3], float), np.asarray(frame_pc[3:], float)
    if len(shape) != 3 or len(frame_pc) != 6 or np.any(cell <= 0) or step_cells <= 0:
        raise ValueError(
            f"los_derivative_weights needs a 3D shape, (x0, y0, z0, dx, dy, dz) with positive "
            f"cells and a positive step, got {shape}, {frame_pc}, {step_cells}"
        )
    xyz = (
        Region(tuple(lower), tuple(lower + cell * np.asarray(shape)), tuple(shape))
        .cell_centres_pc()
        .reshape(-1, 3)
    )
    r = np.linalg.norm(xyz, axis=-1)
    h = float(step_cells) * float(cell.min())
    step = np.minimum(h, r)
    back = xyz - (step / np.maximum(r, 1e-12))[:, None] * xyz
    u = (back - lower) / cell - 0.5  # fractional cell-centre coordinates
    n = np.asarray(shape)
    i0 = np.floor(u).astype(np.int64)
    f = u - i0
    index = np.zeros((len(xyz), 8), np.int64)
    weight = np.ones((len(xyz), 8), np.float64)
    for corner in range(8):
        bits = [(corner >> a) & 1 for a in range(3)]
        idx = np.stack([np.clip(i0[:, a] + bits[a], 0, n[a] - 1) for a in range(3)], -1)
        index[:, corner] = np.ravel_multi_index(tuple(idx.T), shape)
        for a in range(3):
            weight[:, corner] *= f[:, a] if bits[a] else 1.0 - f[:, a]
    at_sun = r <= h
    weight[at_sun] = 0.0
    step = np.where(step > 0, step, h)  # a centre exactly at the Sun: E = 0 there anyway
    return index.astype(np.int32), weight.astype(np.float32), step.astype(np.float32)


def los_derivative(extinction, shape, frame_pc, step_cells: float = 1.0):
    """(E(c) - E(c - h c/|c|)) / h for cubes ``(B, nx, ny, nz)`` of extinction at the cell
    centres (mag): the density averaged over the last step h of each line of sight (mag/pc), a
    cheap inverse of the LOS integral (`los_derivative_weights`)."""
    index, weight, step = los_derivative_weights(
        tuple(int(s) for s in shape), tuple(float(v) for v in frame_pc), float(step_cells)
    )
    flat = extinction.reshape(extinction.shape[0], -1)
    back = jnp.sum(flat[:, jnp.asarray(index)] * jnp.asarray(weight, flat.dtype), axis=-1)
    return ((flat - back) / jnp.asarray(step, flat.dtype)).reshape(extinction.shape)


def max_pool_2x(x):
    """2^3 max pooling with stride 2 on NDHWC, as a reshape + max.

    Same values as ``nn.max_pool(x, (2, 2, 2), (2, 2, 2))``; its gradient is an elementwise
    comparison that XLA fuses, instead of the select-and-scatter that reduce_window's gradient
    lowers to (slow on GPUs).
    """
    b, nx, ny, nz, c = x.shape
    x = x.reshape(b, nx // 2, 2, ny // 2, 2, nz // 2, 2, c)
    return jnp.max(x, axis=(2, 4, 6))


def reflect_pad(x, width: int = 1, method: str = "pad_sum"):
    """Reflect padding (``jnp.pad(mode="reflect")``) of the three spatial axes of NDHWC `x`.

    ``method="pad_sum"`` writes each axis' reflection as a sum of zero pads,
    ``pad(x) + pad(x[1:1+w], left) + pad(x[-1-w:-1], right)``: pads, slices and adds are
    elementwise to XLA, so the three axes and the producing batch norm + ReLU fuse into one kernel
    and its gradient (slices and adds again) into another. ``"concat"`` is ``jnp.pad``, whose
    concatenations XLA materialises axis by axis: three passes over the activation each way, about
    13 ms of a 77 ms training step of the paper model on an H200 (docs/benchmarks.md).
    """
    if method == "concat":
        return jnp.pad(x, ((0, 0), *[(width, width)] * 3, (0, 0)), mode="reflect")
    if method != "pad_sum":
        raise ValueError(f"unknown reflect-padding method {method!r}: 'pad_sum' or 'concat'")
    zero = jnp.zeros((), x.dtype)
    for axis in (1, 2, 3):
        n = x.shape[axis]
        if n <= width:
            raise ValueError(f"reflect padding of {width} needs more than {width} cells, got {n}")

        def pad(a, lo, hi, axis=axis):
            config = [(0, 0, 0)] * a.ndim
            config[axis] = (lo, hi, 0)
            return lax.pad(a, zero, config)

        # Left ghost cells are x[w], ..., x[1]; right ones x[n-2], ..., x[n-1-w].
        left = lax.rev(lax.slice_in_dim(x, 1, 1 + width, axis=axis), (axis,))
        right = lax.rev(lax.slice_in_dim(x, n - 1 - width, n - 1, axis=axis), (axis,))
        x = pad(x, width, width) + pad(left, 0, n + width) + pad(right, n + width, 0)
    return x


def _pad_axis(a, axis: int, extra: int):
    """`a` with `extra` zeros appended along `axis`."""
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    return jnp.pad(a, widths)


class Conv3x3x3(nn.Module):
    """A 3^3 convolution with bias (stride 1), parameters as in ``nn.Conv`` (``kernel``
    ``(3, 3, 3, c_in, c_out)`` with LeCun-normal init, ``bias`` zeros), with two speed-ups that
    leave the result unchanged:

    - reflect padding in one fused pass (`reflect_pad`);
    - channel counts below `min_channels` (the 1-channel input and output of the V-net) are
      zero-padded for the convolution only: cuDNN's tensor-core kernels want multiples of 8, and
      its fallback kernels for 1 channel took 14 ms of a 60 ms step on an H200.

    ``kernel_layout="ODHWI"`` stores the kernel as ``(c_out, 3, 3, 3, c_in)`` instead, the order
    cuDNN's channels-last convolutions read, so XLA need not transpose the weights (and their
    gradients) every step; initialised as the DHWIO kernel transposed (the same function).
    """

    features: int
    padding: str = "REFLECT"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    min_channels: int = 8
    reflect_method: str = "pad_sum"
    kernel_layout: str = "DHWIO"

    @nn.compact
    def __call__(self, x):
        c_in, c_out = x.shape[-1], self.features
        if self.kernel_layout == "DHWIO":
            kernel = self.param(
                "kernel", self.kernel_init, (3, 3, 3, c_in, c_out), self.param_dtype
            )
            i_axis, o_axis = 3, 4
        elif self.kernel_layout == "ODHWI":

            def init(key, shape, dtype):
                dhwio = self.kernel_init(key, (3, 3, 3, c_in, c_out), dtype)
                return jnp.transpose(dhwio, (4, 0, 1, 2, 3))

            kernel = self.param("kernel", init, (c_out, 3, 3, 3, c_in), self.param_dtype)
            i_axis, o_axis = 4, 0
        else:
            raise ValueError(
                f"kernel_layout must be 'DHWIO' or 'ODHWI', got {self.kernel_layout!r}"
            )
        bias = self.param("bias", self.bias_init, (c_out,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.padding == "REFLECT":
            x, padding = reflect_pad(x, 1, self.reflect_method), "VALID"
        elif self.padding == "SAME":
            padding = "SAME"
        else:
            raise ValueError(f"padding must be 'REFLECT' or 'SAME', got {self.padding!r}")
        if c_in < self.min_channels:
            extra = self.min_channels - c_in
            x = _pad_axis(x, 4, extra)
            kernel = _pad_axis(kernel, i_axis, extra)
        if c_out < self.min_channels:
            kernel = _pad_axis(kernel, o_axis, self.min_channels - c_out)
        y = lax.conv_general_dilated(
            x,
            kernel,
            (1, 1, 1),
            padding,
            dimension_numbers=("NDHWC", self.kernel_layout, "NDHWC"),
        )
        return y[..., :c_out] + bias


@jax.custom_jvp
def relu_with_leaky_gradient(x, slope):
    """``max(x, 0)`` whose derivative is `slope` (not 0) where ``x < 0``.

    The V-net's output is a ReLU (sect. 3.1 vii); where it predicts zero the true gradient is
    zero, so once every output pre-activation is negative (one step of a too large learning rate
    can do it) nothing trains again: the "dead" network that predicted zero everywhere in a CPU
    run. With a small slope the backward pass still lifts predictions that are zero where the
    target is not (where the target is zero too the residual, and so the gradient, is zero). The
    forward values are the ReLU's, so inference is the paper's network.
    """
    return jnp.maximum(x, 0)


@relu_with_leaky_gradient.defjvp
def _relu_with_leaky_gradient_jvp(primals, tangents):
    x, slope = primals
    dx, _ = tangents
    return jnp.maximum(x, 0), dx * jnp.where(x > 0, 1.0, slope).astype(dx.dtype)


def _bn_relu(block, x, train: bool):
    """Batch norm (Keras epsilon 1e-3) -> ReLU, created inside `block`'s compact call (so the
    parameters stay under ``<block>/BatchNorm_0``). With ``block.bn_groups > 1`` the training
    statistics are per slice of the batch (`GroupedBatchNorm`: the same parameters)."""
    kw = dict(
        use_running_average=not train,
        momentum=block.bn_momentum,
        epsilon=1e-3,
        dtype=block.dtype,
        param_dtype=block.param_dtype,
    )
    if block.bn_groups == 1:
        x = nn.BatchNorm(**kw)(x)
    else:
        x = GroupedBatchNorm(groups=block.bn_groups, name="BatchNorm_0", **kw)(x)
    return nn.relu(x)


class ConvBNReLU(nn.Module):
    """3^3 conv (stride 1) -> batch norm -> ReLU."""

    features: int
    padding: str = "REFLECT"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bn_momentum: float = 0.99
    bn_groups: int = 1
    reflect_method: str = "pad_sum"
    kernel_layout: str = "DHWIO"

    @nn.compact
    def __call__(self, x, train: bool):
        x = Conv3x3x3(
            self.features,
            padding=self.padding,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            reflect_method=self.reflect_method,
            kernel_layout=self.kernel_layout,
            name="Conv_0",
        )(x)
        return _bn_relu(self, x, train)


_NDHWC = ("NDHWC", "DHWIO", "NDHWC")


def _down_conv(u, kernel):
    """The stride-2 3^3 "SAME" convolution whose input gradient `up_conv` is."""
    return lax.conv_general_dilated(u, kernel, (2, 2, 2), "SAME", dimension_numbers=_NDHWC)


@jax.custom_vjp
def up_conv(x, kernel):
    """3^3 transposed convolution with stride 2, ``kernel`` ``(3, 3, 3, c_out, c_in)`` stored as
    the forward (stride-2) convolution's from c_out to c_in channels: ``lax.conv_transpose(...,
    "SAME", transpose_kernel=True)``, i.e. the input gradient of `_down_conv`.

    The custom gradient only changes how it is computed: autodiff of ``conv_transpose`` gives the
    kernel gradient as a forward convolution with a window the size of the output (32^3, 16^3,
    8^3 in the V-net), which cuDNN runs in slow "indexed" kernels (15 ms of a 65 ms step on an
    H200); written as the kernel gradient of `_down_conv` it is a standard backward-filter
    convolution. The input gradient is `_down_conv` itself.
    """
    return lax.conv_transpose(
        x, kernel, (2, 2, 2), "SAME", dimension_numbers=_NDHWC, transpose_kernel=True
    )


def _up_conv_fwd(x, kernel):
    return up_conv(x, kernel), (x, kernel)


def _up_conv_bwd(residuals, g):
    x, kernel = residuals
    _, kernel_vjp = jax.vjp(lambda k: _down_conv(g, k), kernel)
    return _down_conv(g, kernel), kernel_vjp(x)[0]


up_conv.defvjp(_up_conv_fwd, _up_conv_bwd)


class UpConv3x3x3(nn.Module):
    """`up_conv` with bias; parameters as ``nn.ConvTranspose(..., transpose_kernel=True)``'s
    (``kernel`` ``(3, 3, 3, features, c_in)`` LeCun-normal, ``bias`` zeros)."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (3, 3, 3, self.features, x.shape[-1])
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return up_conv(x, kernel) + bias


class UpBNReLU(nn.Module):
    """3^3 transposed conv with stride 2 (doubles each spatial size) -> batch norm -> ReLU.

    ``transpose_kernel=True`` stores the kernel as the forward convolution whose input gradient
    this layer is (``(3, 3, 3, features, c_in)``, flipped): the same family of maps, one-to-one
    with the ``False`` parametrisation (flip the spatial axes, swap the channel axes), but XLA
    then runs it as cuDNN's backward-data convolution instead of a forward convolution over an
    input dilated with zeros (8 times the work, in slow "indexed" kernels on an H200), and its
    kernel gradient as a backward-filter convolution (`up_conv`).
    """

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bn_momentum: float = 0.99
    bn_groups: int = 1
    transpose_kernel: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        if self.transpose_kernel:
            x = UpConv3x3x3(
                self.features,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="ConvTranspose_0",
            )(x)
        else:
            x = nn.ConvTranspose(
                self.features,
                (3, 3, 3),
                strides=(2, 2, 2),
                padding="SAME",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )(x)
        return _bn_relu(self, x, train)


class VNet(nn.Module):
    """The paper's V-net for any feature widths (see the module docstring).

    Attributes:
      features: kernels per encoder level, shallowest first (paper: (128, 256, 512, 1024)).
      padding: "REFLECT" (paper) or "SAME" (zeros; a speed reference in the benchmark).
      dtype: compute dtype of activations and convolutions.
      param_dtype: dtype of the parameters (float32).
      remat: recompute each conv block in the backward pass instead of storing its activations.
      bn_momentum: running-average momentum of the batch-norm statistics (Keras default 0.99).
      bn_groups: training batch-norm statistics per slice of B / bn_groups examples (1, the
        paper: over the whole batch; N: what N data-parallel devices without synchronised
        statistics compute, and no cross-device reduction inside the layers; see `norm`).
      output_bias_init: initial bias of the last conv (its kernel starts at zero), so that the
        final ReLU starts open; see the comment at the head.
      reflect_method: how reflect padding is computed ("pad_sum", one fused pass, or "concat",
        ``jnp.pad``); the same numbers either way (see `reflect_pad`).
      up_transpose_kernel: the transposed convolutions' kernel layout (see `UpBNReLU`).
      output_leak: the final ReLU's gradient below zero (0: the plain ReLU's); the outputs are
        the ReLU's either way (see `relu_with_leaky_gradient`).
      conv_kernel_layout: how the 3^3 convolutions store their kernels (see `Conv3x3x3`):
        "ODHWI" (faster on GPUs) or "DHWIO" (flax's, checkpoints written before 2026-11-22).
      input_dtype: dtype of the input and of the first conv block (None: `dtype`); e.g.
        "float32" with bfloat16 `dtype` keeps the input extinction unrounded.
      los_frame_pc: None (the paper) or the cube's ``(x0, y0, z0, dx, dy, dz)`` in pc, which adds
        the four `los_channels` to the input (same geometry at training and inference).
      num_outputs: output channels: 1 (the paper: the density) or 2 (not in the paper: the
        density and the log standard deviation of a Gaussian around it, a variance head;
        `dustjax.vnet.normalisation`). The second channel is linear and starts at 0.
      output_head: "relu" (the paper: non-negative density) or "linear" (no final activation,
        for normalised targets that may be negative, e.g. asinh of a noisy density).
      derivative_channel: None (the paper) or ``(e0, rho0)`` of the asinh normalisation
        (`dustjax.vnet.normalisation`; needs `los_frame_pc`): adds two input channels, a
        physics estimate of the density the network corrects, asinh(`los_derivative` / rho0)
        of the extinction E = e0 sinh(E_hat) with steps of one and two cells.
    """

    features: Sequence[int] = PAPER_FEATURES
    padding: str = "REFLECT"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False
    bn_momentum: float = 0.99
    bn_groups: int = 1
    output_bias_init: float = 0.1
    reflect_method: str = "pad_sum"
    up_transpose_kernel: bool = True
    output_leak: float = 0.01
    conv_kernel_layout: str = "ODHWI"
    input_dtype: Any = None
    los_frame_pc: Sequence[float] | None = None
    num_outputs: int = 1
    output_head: str = "relu"
    derivative_channel: Sequence[float] | None = None

    @nn.compact
    def __call__(self, extinction_hat, train: bool = False):
        """Map normalised extinction ``(B, nx, ny, nz, 1)`` to normalised density, same shape."""
        levels = len(self.features)
        if extinction_hat.ndim != 5 or extinction_hat.shape[-1] != 1:
            raise ValueError(
                "VNet expects normalised extinction of shape (batch, nx, ny, nz, 1), got "
                f"{tuple(extinction_hat.shape)}"
            )
        factor = 2 ** (levels - 1)
        if any(n % factor for n in extinction_hat.shape[1:4]):
            raise ValueError(
                f"VNet with {levels} levels needs spatial sizes divisible by {factor}, got "
                f"{tuple(extinction_hat.shape[1:4])}"
            )
        conv_cls = nn.remat(ConvBNReLU, static_argnums=(2,)) if self.remat else ConvBNReLU
        up_cls = nn.remat(UpBNReLU, static_argnums=(2,)) if self.remat else UpBNReLU
        kw = dict(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            bn_momentum=self.bn_momentum,
            bn_groups=self.bn_groups,
        )
        conv = functools.partial(
            conv_cls,
            padding=self.padding,
            reflect_method=self.reflect_method,
            kernel_layout=self.conv_kernel_layout,
            **kw,
        )
        up = functools.partial(up_cls, transpose_kernel=self.up_transpose_kernel, **kw)

        # The input and the first conv block may run in a wider dtype than the rest: density is
        # a difference of neighbouring extinctions, which bfloat16 input rounding blurs
        # (docs/validation.md, "What the extinction allows").
        in_dtype = jnp.dtype(self.input_dtype or self.dtype)
        x = extinction_hat.astype(in_dtype)
        if self.los_frame_pc is not None:
            los = jnp.asarray(los_channels(x.shape[1:4], self.los_frame_pc), in_dtype)
            x = jnp.concatenate([x, jnp.broadcast_to(los, (*x.shape[:4], 4))], axis=-1)
        if self.derivative_channel is not None:
            if self.los_frame_pc is None:
                raise ValueError("derivative_channel needs los_frame_pc (the cube's geometry)")
            e0, rho0 = (float(v) for v in self.derivative_channel)
            e = e0 * jnp.sinh(extinction_hat[..., 0].astype(jnp.float32))
            grads = [
                jnp.arcsinh(los_derivative(e, e.shape[1:4], self.los_frame_pc, h) / rho0)
                for h in (1.0, 2.0)
            ]
            x = jnp.concatenate([x, jnp.stack(grads, axis=-1).astype(in_dtype)], axis=-1)
        skips = []
        for i, width in enumerate(self.features):
            block_dtype = in_dtype if i == 0 else self.dtype
            x = conv(width, dtype=block_dtype, name=f"enc{i}_conv0")(x, train).astype(self.dtype)
            x = conv(width, name=f"enc{i}_conv1")(x, train)
            if i < levels - 1:
                skips.append(x)
                x = max_pool_2x(x)
        for i in reversed(range(levels - 1)):
            width = self.features[i]
            x = up(width, name=f"dec{i}_up")(x, train)
            x = jnp.concatenate([x, skips[i]], axis=-1)
            if i > 0:
                x = conv(width, name=f"dec{i}_conv0")(x, train)
                x = conv(width, name=f"dec{i}_conv1")(x, train)
        x = conv(self.features[0], name="head_conv0")(x, train)
        x = conv(self.features[0], name="head_conv1")(x, train)
        if self.output_head not in ("relu", "linear"):
            raise ValueError(f"output_head must be 'relu' or 'linear', got {self.output_head!r}")
        bias0 = float(self.output_bias_init)

        def head_bias(key, shape, dtype):  # the mean starts at bias0, a log sigma at 0
            return jnp.zeros(shape, dtype).at[0].set(bias0)

        x = Conv3x3x3(
            int(self.num_outputs),
            padding=self.padding,
            reflect_method=self.reflect_method,
            kernel_layout=self.conv_kernel_layout,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            # Start from a small positive constant output: with the default random init the first
            # predictions overshoot the targets (rho_hat ~ 0.01-0.5) by an order of magnitude,
            # Adam drives every pre-activation negative within ~10 steps, and the final ReLU then
            # passes no gradient at all ("dead" network predicting zero everywhere; seen on CPU
            # and on the H200). A zero kernel and a bias near the typical rho_hat keep the ReLU
            # open while the network learns.
            kernel_init=nn.initializers.zeros,
            bias_init=head_bias,
            name="head_out",
        )(x)
        x = x.astype(jnp.float32)
        if self.output_head == "linear":
            return x
        # Densities are non-negative (sect. 3.1 vii); the output is returned in float32 so that
        # the loss and the denormalisation never run in bfloat16. The ReLU's gradient leaks below
        # zero (`relu_with_leaky_gradient`) so that the output cannot die during training.
        mean = relu_with_leaky_gradient(x[..., :1], jnp.float32(self.output_leak))
        return mean if self.num_outputs == 1 else jnp.concatenate([mean, x[..., 1:]], axis=-1)


VNetPaper = functools.partial(VNet, features=PAPER_FEATURES)
