"""Every line-of-sight (LOS) integral of the package, through one segment-crossing kernel.

Cartesian cubes. For a target point x (a cell centre, a star, a map query), the extinction is the
integral of the density along the segment from the Sun (the origin) to x (methods.md, "Shared
conventions"):

    E(x) = integral_0^|x| rho(t x/|x|) dt = sum_j rho_j L_j(x),

where rho is uniform inside each cell and L_j(x) is the exact length (pc) of the part of the
segment that lies in cell j. The segment crosses the planes x = x_edge at t = x_edge / x_axis (t in
[0, 1] along the segment), and likewise for y and z; between consecutive crossings it lies in one
cell, found from the midpoint. `_segments` is that kernel, written once over the array namespace
and used twice:

- `los_operator(region)`: targets = every cell centre. L is a sparse matrix with at most
  nx + ny + nz + 1 entries a row, built once per region on the host (numpy float64, then stored as
  padded ``(num_cells, max_crossings)`` int32 index and float32 length arrays). Applying it in JAX
  is a gather and a weighted sum (jit, vmap, differentiable); its transpose is the scatter-add.
- `integrate_to_points(density, region, xyz_pc)`: targets = stars or query points, in JAX
  (jit, chunked with `lax.map`): 10^6 stars take well under a second on a GPU. This is the
  consistency check of the apply pipeline (fig. 11 of Chen, Qin & Li) and `DustMap.query`'s
  integral on Cartesian maps. At a cell centre it equals the operator (tested).

Regions that do not contain the Sun: the part of each segment outside the region crosses space
with no cells, where the density is unknown. `los_operator` refuses such regions unless
``allow_sun_outside=True``, in which case the density outside the region is taken to be zero
(only the dust inside the region is integrated); `integrate_to_points` always counts it as zero.

Spherical (l, b, d) grids (Dharmawardena et al. 2022, eqs. 7-8): a star in column c at distance d*
inside distance cell j* has

    A = sum_{j < j*} rho_{c,j} (d_{j+1} - d_j) + rho_{c,j*} (d* - d_{j*}),

the full cells in front of it plus the partial last one. `StarOperator` stores per star the flat
index of its cell and the partial length; `apply_star_operator` takes the exclusive cumulative sum
along every column once (`exclusive_column_integral`) and gathers two numbers per star: the sparse
operator of eq. 7 in O(cells + stars) work, its gradient a scatter-add. The GP likelihood
(`dustjax.gp.svgp`), its predictions (`dustjax.gp.predict`) and `DustMap.query` on spherical maps
call it.
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
    lower = np.asarray(region.lower_pc)
    size = np.asarray(region.cell_size_pc)
    rows_idx, rows_len = [], []
    for start in range(0, len(targets), chunk):
        idx, length = _operator_rows(targets[start : start + chunk], edges, lower, size, region)
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


def _segments(xp, targets, edges, lower, size, shape):
    """The crossing kernel: the pieces of the segments from the origin to each target.

    ``xp`` is the array namespace (numpy for the operator's float64 build on the host, jax.numpy
    inside jit for points). Returns, for targets ``(n, 3)``: the flat index ``(n, S)`` of the cell
    holding each piece (clipped into the cube), whether that cell is inside the cube, the piece's
    fraction ``dt`` of the segment ``(n, S)`` and the segment length ``|x|`` ``(n, 1)``; the
    piece's length in pc is ``dt * |x|``. Zero-length pieces (coincident crossings, padding)
    have ``dt = 0``.
    """
    n = targets.shape[0]
    ts = [xp.zeros((n, 1), targets.dtype), xp.ones((n, 1), targets.dtype)]
    for axis in range(3):
        c = targets[:, axis : axis + 1]
        t = edges[axis][None, :] / xp.where(c == 0, 1.0, c)
        ok = (c != 0) & (t > 0.0) & (t < 1.0)
        ts.append(xp.where(ok, t, 1.0))
    t = xp.sort(xp.concatenate(ts, axis=1), axis=1)
    dt = t[:, 1:] - t[:, :-1]  # (n, S)
    mid = 0.5 * (t[:, 1:] + t[:, :-1])
    pos = mid[..., None] * targets[:, None, :]  # (n, S, 3)
    cell = xp.floor((pos - lower) / size).astype(xp.int32)
    inside = xp.all((cell >= 0) & (cell < shape), axis=-1)
    cell = xp.clip(cell, 0, shape - 1)
    flat = (cell[..., 0] * shape[1] + cell[..., 1]) * shape[2] + cell[..., 2]
    norm = xp.linalg.norm(targets, axis=-1, keepdims=True)
    return flat, inside, dt, norm


def _operator_rows(targets: np.ndarray, edges, lower, size, region: Region):
    """Cells crossed, and lengths, for segments from the origin to each target (numpy float64),
    nonzero entries first, trimmed to the widest row."""
    shape = np.asarray(region.shape)
    flat, inside, dt, norm = _segments(np, targets, edges, lower, size, shape)
    length = dt * norm
    length = np.where(inside & (length > 0), length, 0.0)
    flat = np.where(length > 0, flat, 0)
    # Move the non-zero entries to the front of each row and trim the common padding.
    order = np.argsort(length <= 0, axis=1, kind="stable")
    length = np.take_along_axis(length, order, axis=1)
    flat = np.take_along_axis(flat, order, axis=1)
    width = max(int((length > 0).sum(axis=1).max()), 1)
    return flat[:, :width].astype(np.int32), length[:, :width].astype(np.float32)


# ---- arbitrary points (stars, map queries) -------------------------------------------------------
def integrate_to_points(density, region_or_edges, xyz_pc, *, chunk: int = 65536) -> jax.Array:
    """Extinction (mag) from the Sun to each point of ``xyz_pc`` ``(N, 3)`` through ``density``.

    ``density`` ``(nx, ny, nz)`` (mag/pc) fills the uniform cells of ``region_or_edges``: a
    `Region`, or three increasing arrays of evenly spaced cell edges (pc). Exact for the
    piecewise-constant cube; parts of the segment outside the cube count as zero. Runs in JAX
    (float32, jit, ``chunk`` points at a time); returns ``(N,)``.
    """
    if isinstance(region_or_edges, Region):
        lower, cell = region_or_edges.lower_pc, region_or_edges.cell_size_pc
    else:
        edges = [np.asarray(e, np.float64) for e in region_or_edges]
        lower = [e[0] for e in edges]
        cell = [(e[-1] - e[0]) / (len(e) - 1) for e in edges]
    return _integrate_points(density, lower, cell, xyz_pc, chunk=chunk)


def _integrate_points(density, lower_pc, cell_pc, xyz_pc, *, chunk: int = 65536) -> jax.Array:
    density = jnp.asarray(density, jnp.float32)
    xyz = jnp.asarray(xyz_pc, jnp.float32).reshape(-1, 3)
    n = xyz.shape[0]
    chunk = int(max(1, min(chunk, n)))
    num_chunks = -(-n // chunk)
    padded = jnp.zeros((num_chunks * chunk, 3), jnp.float32).at[:n].set(xyz)
    shape = tuple(density.shape)
    lower = np.asarray(lower_pc, np.float64)
    cell = np.asarray(cell_pc, np.float64)
    edges = tuple(lower[a] + cell[a] * np.arange(shape[a] + 1) for a in range(3))
    out = _integrate_chunks(
        density,
        padded.reshape(num_chunks, chunk, 3),
        tuple(jnp.asarray(e, jnp.float32) for e in edges),
        jnp.asarray(lower, jnp.float32),
        jnp.asarray(cell, jnp.float32),
    )
    return out.reshape(-1)[:n]


@jax.jit
def _integrate_chunks(density, points, edges, lower, cell):
    shape = jnp.array(density.shape)
    flat_density = density.reshape(-1)

    def one_chunk(targets):
        flat, inside, dt, norm = _segments(jnp, targets, edges, lower, cell, shape)
        values = jnp.where(inside, flat_density[flat], 0.0)
        return jnp.sum(values * dt * norm, axis=1)

    return jax.lax.map(one_chunk, points)


# ---- spherical (l, b, d) grids: eqs. 7-8 of Dharmawardena et al. (2022) -------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StarOperator:
    """Linear map from density on the grid ``(..., nl, nb, nd_total)`` to star extinctions.

    ``flat_index[i]`` is the flat (column * nd_total + distance cell) index of star i's cell and
    ``partial_pc[i]`` the distance (pc) from that cell's near edge to the star (eq. 8).
    """

    flat_index: jax.Array
    partial_pc: jax.Array
    d_widths_pc: jax.Array
    full_shape: tuple[int, int, int] = dataclasses.field(metadata=dict(static=True))

    def __call__(self, density):
        return self.apply(density)

    @property
    def num_stars(self) -> int:
        return int(self.flat_index.shape[0])

    def apply(self, density):
        """Model extinctions (mag) for density (mag/pc) of shape ``(..., nl, nb, nd_total)``."""
        return apply_star_operator(density, self.flat_index, self.partial_pc, self.d_widths_pc)

    def todense(self) -> np.ndarray:
        """The operator as a dense ``(num_stars, num_cells)`` numpy matrix (tests only)."""
        nd = self.full_shape[2]
        n_cells = int(np.prod(self.full_shape))
        flat = np.asarray(self.flat_index)
        widths = np.asarray(self.d_widths_pc, np.float64)
        mat = np.zeros((len(flat), n_cells))
        for i, f in enumerate(flat):
            col, cell = divmod(int(f), nd)
            mat[i, col * nd : col * nd + cell] = widths[:cell]
            mat[i, f] = float(self.partial_pc[i])
        return mat


def exclusive_column_integral(density, d_widths_pc, *, xp=jnp):
    """Extinction (mag) to the near edge of every cell: exclusive cumsum of rho * delta_d."""
    slabs = density * d_widths_pc
    return xp.cumsum(slabs, axis=-1) - slabs


def apply_star_operator(density, flat_index, partial_pc, d_widths_pc, *, xp=jnp):
    """eqs. 7-8 for density ``(..., nl, nb, nd_total)``; returns ``(..., num_stars)`` (mag).

    ``xp=numpy`` runs it on the host in the inputs' dtype (`DustMap.query` in float64).
    """
    batch = density.shape[:-3]
    to_edge = exclusive_column_integral(density, d_widths_pc.astype(density.dtype), xp=xp)
    to_edge = to_edge.reshape(*batch, -1)
    flat_density = density.reshape(*batch, -1)
    return xp.take(to_edge, flat_index, axis=-1) + xp.take(
        flat_density, flat_index, axis=-1
    ) * partial_pc.astype(density.dtype)
