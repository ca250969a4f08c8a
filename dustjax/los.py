"""The exact line-of-sight (LOS) operator: density cube -> cumulative extinction cube.

For every cell centre c of a region, the extinction is the integral of the density along the
segment from the Sun (the origin) to c (methods.md, "Shared conventions"):

    E(c) = integral_0^|c| rho(t c/|c|) dt = sum_j rho_j L_j(c),

where rho is uniform inside each cell and L_j(c) is the exact length (pc) of the part of the
segment that lies in cell j. The segment crosses the planes x = x_edge at t = x_edge / c_x (t in
[0, 1] along the segment), and likewise for y and z; between consecutive crossings it lies in one
cell, found from the midpoint. So L is a sparse matrix with at most nx + ny + nz + 1 entries a row,
built once per region with numpy and stored as padded ``(num_cells, max_crossings)`` index and
length arrays. Applying it in JAX is a gather and a weighted sum (jit, vmap, differentiable); its
transpose is the matching scatter-add.

Regions that do not contain the Sun: the part of each segment outside the region crosses space
with no cells, where the density is unknown. `los_operator` refuses such regions unless
``allow_sun_outside=True``, in which case the density outside the region is taken to be zero
(only the dust inside the region is integrated).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dustjax.geometry import Region


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)  # identity hash: usable as a jit function
class LOSOperator:
    """Linear map from density ``(..., nx, ny, nz)`` [mag/pc] to extinction [mag].

    ``indices[n, k]`` is the flat index of the k-th cell crossed by the segment from the Sun to
    the centre of cell n and ``lengths_pc[n, k]`` the path length inside it (zero on padding).
    """

    indices: jax.Array
    lengths_pc: jax.Array
    shape: tuple[int, int, int] = dataclasses.field(metadata=dict(static=True))

    def __call__(self, density):
        return self.apply(density)

    def apply(self, density):
        """E = L rho for a density of shape ``(..., nx, ny, nz)``."""
        density = jnp.asarray(density)
        self._check(density.shape)
        batch = density.shape[:-3]
        flat = density.reshape(*batch, -1)
        crossed = jnp.take(flat, self.indices, axis=-1)  # (..., N, K)
        extinction = jnp.einsum("...nk,nk->...n", crossed, self.lengths_pc.astype(flat.dtype))
        return extinction.reshape(*batch, *self.shape)

    def transpose(self, extinction):
        """L^T y for y of shape ``(..., nx, ny, nz)``: the adjoint (scatter-add) of `apply`."""
        extinction = jnp.asarray(extinction)
        self._check(extinction.shape)
        batch = extinction.shape[:-3]
        flat = extinction.reshape(*batch, -1)
        contrib = flat[..., :, None] * self.lengths_pc.astype(flat.dtype)  # (..., N, K)
        out = jnp.zeros_like(flat).at[..., self.indices].add(contrib)
        return out.reshape(*batch, *self.shape)

    T = transpose

    def todense(self) -> np.ndarray:
        """The operator as a dense ``(N, N)`` numpy matrix (small regions only, for tests)."""
        n = int(np.prod(self.shape))
        mat = np.zeros((n, n))
        rows = np.repeat(np.arange(n), self.indices.shape[1])
        np.add.at(
            mat, (rows, np.asarray(self.indices).ravel()), np.asarray(self.lengths_pc).ravel()
        )
        return mat

    def _check(self, shape):
        if tuple(shape[-3:]) != tuple(self.shape):
            raise ValueError(
                f"LOS operator built for cubes of shape {self.shape}, got an array of shape "
                f"{tuple(shape)} (expected (..., {', '.join(map(str, self.shape))}))"
            )


class SunOutsideRegionError(ValueError):
    """The Sun lies outside the region, so lines of sight leave the region."""


def los_operator(region: Region, *, allow_sun_outside: bool = False) -> LOSOperator:
    """Build the exact LOS operator of `region` (cached per region)."""
    if not region.contains_sun and not allow_sun_outside:
        raise SunOutsideRegionError(
            f"the Sun (origin) is outside {region}; lines of sight would cross space with no "
            "cells. Pass allow_sun_outside=True to integrate only the dust inside the region "
            "(density outside taken as zero)."
        )
    indices, lengths = _build_cached(region.lower_pc, region.upper_pc, region.shape)
    return LOSOperator(jnp.asarray(indices), jnp.asarray(lengths), region.shape)


@functools.lru_cache(maxsize=8)
def _build_cached(lower, upper, shape):
    return build_los_arrays(Region(lower, upper, shape))


def build_los_arrays(region: Region, chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Exact path lengths (numpy, float64): padded ``(N, K)`` int32 indices and float32 lengths."""
    targets = region.cell_centres_pc().reshape(-1, 3)
    edges = [region.edges_pc(a) for a in range(3)]
    rows_idx, rows_len = [], []
    for start in range(0, len(targets), chunk):
        idx, length = _crossings(targets[start : start + chunk], edges, region)
        rows_idx.append(idx)
        rows_len.append(length)
    width = max(i.shape[1] for i in rows_idx)
    indices = np.zeros((len(targets), width), np.int32)
    lengths = np.zeros((len(targets), width), np.float32)
    row = 0
    for idx, length in zip(rows_idx, rows_len, strict=True):
        indices[row : row + len(idx), : idx.shape[1]] = idx
        lengths[row : row + len(idx), : idx.shape[1]] = length
        row += len(idx)
    return indices, lengths


def _crossings(targets: np.ndarray, edges, region: Region):
    """Cells crossed, and lengths, for segments from the origin to each target (numpy)."""
    n = len(targets)
    ts = [np.zeros((n, 1)), np.ones((n, 1))]
    for axis in range(3):
        c = targets[:, axis : axis + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = edges[axis][None, :] / c
        t = np.where(np.isfinite(t) & (t > 0.0) & (t < 1.0), t, 1.0)
        ts.append(t)
    t = np.sort(np.concatenate(ts, axis=1), axis=1)
    dt = np.diff(t, axis=1)  # (n, S)
    mid = 0.5 * (t[:, 1:] + t[:, :-1])
    pos = mid[..., None] * targets[:, None, :]  # (n, S, 3)
    norm = np.linalg.norm(targets, axis=1, keepdims=True)
    length = dt * norm
    lo = np.asarray(region.lower_pc)
    size = np.asarray(region.cell_size_pc)
    shape = np.asarray(region.shape)
    cell = np.floor((pos - lo) / size).astype(np.int64)
    inside = np.all((cell >= 0) & (cell < shape), axis=-1)
    length = np.where(inside & (length > 0), length, 0.0)
    cell = np.clip(cell, 0, shape - 1)
    flat = np.ravel_multi_index((cell[..., 0], cell[..., 1], cell[..., 2]), tuple(shape))
    flat = np.where(length > 0, flat, 0)
    # Move the non-zero entries to the front of each row and trim the common padding.
    order = np.argsort(length <= 0, axis=1, kind="stable")
    length = np.take_along_axis(length, order, axis=1)
    flat = np.take_along_axis(flat, order, axis=1)
    width = max(int((length > 0).sum(axis=1).max()), 1)
    return flat[:, :width].astype(np.int32), length[:, :width].astype(np.float32)
