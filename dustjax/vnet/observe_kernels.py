"""Faster kernels of the observation loop (issue 17, item 2), exact like the ones they replace.

`integrate_pieces`: the exact extinction from the Sun to each star through a piecewise-constant
cube, without the sort of the project's LOS point kernel (`dustjax.los._segments`). That kernel
collects the ~nx + ny + nz + 3 crossing parameters t of a segment with the cell planes, sorts
them, and sums rho(midpoint cell) x (t_{j+1} - t_j) x |x| over consecutive pairs. Here every
piece is found on its own, in O(1), so the work is a fixed number of independent, fusable
element-wise operations per piece (no sort; a GPU runs it as one reduction):

- The pieces start at t = 0 and at every crossing t_{a,m} = e_{a,m} / x_a, where e_{a,m} is the
  m-th cell plane of axis a on the star's side of the Sun (planes on the far side have t < 0 and
  cross nothing), kept when 0 < t < 1: only max(planes above 0, planes below 0) slots per axis
  (65 pieces for the LR box with the Sun on a face and in the middle of two axes, against the
  sort's 100).
- A piece ends at the next crossing on any axis or at the star (t = 1). The next crossing on the
  piece's own axis is the next slot. On another axis b it is found from the plane index
  floor((t x_b - lower_b) / cell_b) and checked exactly: three consecutive plane indices around
  it are evaluated with the same float32 division as the crossings themselves (bitwise the
  same planes: computed as lower + cell x i where that is exact, whole-pc planes as the named
  regions', else gathered from the plane table), and the smallest t > t_start among them is the
  next one. So the pieces tile [0, 1] exactly as the sorted list does (same float32 t values,
  same end points).
- Coincident crossings (two axes' planes crossed at bitwise the same t): the piece is kept only
  for the lowest such axis; the sort's duplicate gives a zero-length piece instead. Same sum.
- The cell of a piece is that of its midpoint, as in `_segments`, and parts outside the cube
  count as zero.

The result equals `dustjax.los.integrate_to_points` to float32 rounding of the sum's order
(tested, and against analytic integrals).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from dustjax.geometry import Region


def _edges32(region: Region) -> list[np.ndarray]:
    """The cell planes of each axis, lower + cell x i in float32 arithmetic (as the kernel
    evaluates them; exact for the named regions' whole-pc edges)."""
    lower = np.asarray(region.lower_pc, np.float32)
    cell = np.asarray(region.cell_size_pc, np.float32)
    return [lower[a] + cell[a] * np.arange(region.shape[a] + 1, dtype=np.float32) for a in range(3)]


def _planes_are_exact(edges: np.ndarray) -> bool:
    """Whether lower + cell x i gives these float32 planes with no rounding at all (whole
    numbers below 2^24), so that any evaluation order or fused multiply-add gives them."""
    e = np.asarray(edges, np.float64)
    return bool(np.all(e == np.round(e)) and np.abs(e).max() < 2.0**24
                and np.all(np.diff(e) == e[1] - e[0]))  # fmt: skip


def _side_tables(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Planes above 0 (increasing) and below 0 (decreasing) padded to one length with +-inf
    (a padded slot gives t = +inf for a star on that side: no crossing)."""
    pos = edges[edges > 0]
    neg = edges[edges < 0][::-1]
    width = max(len(pos), len(neg), 1)
    pos = np.concatenate([pos, np.full(width - len(pos), np.inf, np.float32)])
    neg = np.concatenate([neg, np.full(width - len(neg), -np.inf, np.float32)])
    return pos.astype(np.float32), neg.astype(np.float32)


def num_pieces(region: Region) -> int:
    """Pieces evaluated per star: 1 + the slots of the three axes."""
    return 1 + sum(len(_side_tables(e)[0]) for e in _edges32(region))


def _crossings(targets, pos, neg):
    """``(n, K)`` crossing parameters of one axis's slots (inf where none) for ``(n, 1)``
    coordinates: t = e / x, kept when 0 < t < 1 (the condition of `dustjax.los._segments`)."""
    c = targets
    e = jnp.where(c > 0, pos[None, :], neg[None, :])
    t = e / jnp.where(c == 0, 1.0, c)
    ok = (c != 0) & (t > 0.0) & (t < 1.0)
    return jnp.where(ok, t, jnp.inf)


def _next_on_axis(t_start, c, edges, lower, cell):
    """The first crossing of the planes ``edges`` (float32, increasing) after ``t_start``
    ``(n, P)`` along coordinates ``c`` ``(n, 1)``: ``(next (n, P), 1 where none; tie (n, P): a
    crossing at exactly t_start)``. Three plane indices around the estimated one, checked with
    the crossings' own division (the estimate is off by far less than one plane). The planes
    are computed as lower + cell x i where that is exact in float32 (whole-pc planes, as the
    named regions'), else gathered from ``edges``: either way bitwise the crossings' planes."""
    n_edges = edges.shape[0]
    exact = _planes_are_exact(edges)
    u = (t_start * c - lower) / cell
    base = jnp.floor(u).astype(jnp.int32) - (c < 0).astype(jnp.int32)
    nxt = jnp.ones_like(t_start)
    tie = jnp.zeros(t_start.shape, bool)
    safe_c = jnp.where(c == 0, 1.0, c)
    for off in range(3):
        i = base + off
        if exact:  # the plane, without a gather
            e = lower + cell * i.astype(jnp.float32)
        else:
            e = jnp.asarray(edges)[jnp.clip(i, 0, n_edges - 1)]
        t = e / safe_c
        ok = (i >= 0) & (i < n_edges) & (c != 0) & (t > 0.0) & (t < 1.0)
        nxt = jnp.where(ok & (t > t_start), jnp.minimum(nxt, t), nxt)
        tie = tie | (ok & (t == t_start))
    return nxt, tie


def _sum_pieces(flat_density, targets, t_s, t_e, keep, lower, cell, shape):
    """sum over pieces ``(n, P)`` of rho(midpoint cell) x (t_e - t_s): ``(n,)``."""
    mid = 0.5 * (t_e + t_s)
    pos = mid[..., None] * targets[:, None, :]  # (n, P, 3)
    idx = jnp.floor((pos - lower) / cell).astype(jnp.int32)
    inside = keep & jnp.all((idx >= 0) & (idx < shape), axis=-1)
    idx = jnp.clip(idx, 0, shape - 1)
    flat = (idx[..., 0] * shape[1] + idx[..., 1]) * shape[2] + idx[..., 2]
    values = jnp.where(inside, flat_density[flat], 0.0)
    return jnp.sum(values * (t_e - t_s), axis=1)


def _pieces_one_chunk(flat_density, targets, tables, edges, lower, cell, shape):
    """``(n,)`` integrals for targets ``(n, 3)``: the start piece, then each axis's crossings'
    pieces, summed group by group (no concatenation: each group is one fusable reduction)."""
    ts = [_crossings(targets[:, a : a + 1], *tables[a]) for a in range(3)]
    first = jnp.minimum(jnp.minimum(jnp.minimum(ts[0][:, :1], ts[1][:, :1]), ts[2][:, :1]), 1.0)
    total = _sum_pieces(
        flat_density, targets, jnp.zeros_like(first), first, jnp.ones(first.shape, bool),
        lower, cell, shape,
    )  # fmt: skip
    for a in range(3):
        t_s = ts[a]
        own_next = jnp.concatenate([t_s[:, 1:], jnp.full_like(t_s[:, :1], jnp.inf)], axis=1)
        t_e = jnp.minimum(own_next, 1.0)
        keep = jnp.isfinite(t_s)
        for b in range(3):
            if b == a:
                continue
            nxt, tie = _next_on_axis(t_s, targets[:, b : b + 1], edges[b], lower[b], cell[b])
            t_e = jnp.minimum(t_e, nxt)
            if b < a:
                keep = keep & ~tie
        t_s = jnp.where(keep, t_s, 0.0)
        t_e = jnp.where(keep, t_e, 0.0)
        total = total + _sum_pieces(flat_density, targets, t_s, t_e, keep, lower, cell, shape)
    return total * jnp.linalg.norm(targets, axis=-1)


def integrate_pieces(density, region: Region, xyz_pc, chunk: int = 8192, limit=None) -> jax.Array:
    """Exact extinction (mag) from the Sun to each point ``(N, 3)`` pc through ``density``
    ``(nx, ny, nz)`` (mag/pc) on `region`; traceable (jit/vmap), ``chunk`` points at a time.
    ``limit`` (a scalar, may be traced): only the chunks holding the first ``limit`` points are
    integrated, the points after those chunks get 0 (a loop of that many chunks)."""
    n = xyz_pc.shape[0]
    chunk = int(max(1, min(chunk, n)))
    num_chunks = -(-n // chunk)
    points = jnp.pad(xyz_pc.astype(jnp.float32), ((0, num_chunks * chunk - n), (0, 0)))
    edges_np = _edges32(region)
    tables = tuple(tuple(jnp.asarray(t) for t in _side_tables(e)) for e in edges_np)
    lower = jnp.asarray(region.lower_pc, jnp.float32)
    cell = jnp.asarray(region.cell_size_pc, jnp.float32)
    shape = jnp.asarray(region.shape, jnp.int32)
    flat_density = density.astype(jnp.float32).reshape(-1)

    def one(targets):
        return _pieces_one_chunk(flat_density, targets, tables, edges_np, lower, cell, shape)

    if limit is None:
        out = jax.lax.map(one, points.reshape(num_chunks, chunk, 3))
        return out.reshape(-1)[:n]
    todo = jnp.clip((jnp.asarray(limit).astype(jnp.int32) + chunk - 1) // chunk, 0, num_chunks)

    def body(i, out):
        start = i * chunk
        part = one(jax.lax.dynamic_slice_in_dim(points, start, chunk))
        return jax.lax.dynamic_update_slice_in_dim(out, part, start, 0)

    out = jax.lax.fori_loop(0, todo, body, jnp.zeros(num_chunks * chunk, jnp.float32))
    return out[:n]


# ---- eq. 5 gridding: candidates from runs of half-cells, with a fallback -----------------------
def eq5_from_candidates(d2, ok, star, extinction, sigma, k: int, select: str, bisect_steps: int):
    """Eq. 5 on candidate stars: ``d2`` ``(R, M)`` squared distances (inf where not ``ok``),
    ``star`` ``(R, M)`` indices into ``extinction``, ``sigma`` ``(N,)``. Picks each row's k nearest
    (`lax.top_k`, or bisection on the squared distance) and returns ``(weighted mean (R,),
    distance of the k-th (R,))``. The selection and weights of `dustjax.vnet.observe.grid_eq5`."""
    from dustjax.vnet.gridding import SIGMA_FLOOR_MAG2

    if select == "top_k":
        neg, j = jax.lax.top_k(-d2, k)
        d2_sel = -neg
        chosen = jnp.take_along_axis(star, j, axis=-1)
        use = jnp.isfinite(d2_sel)
        d_sel = jnp.sqrt(jnp.where(use, d2_sel, 0.0))
        e_sel, s_sel = extinction[chosen], sigma[chosen]
    elif select == "bisect":
        finite_max = jnp.max(jnp.where(ok, d2, 0.0), axis=-1)

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            enough = jnp.sum(d2 <= mid[:, None], axis=-1) >= k
            return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

        _, hi = jax.lax.fori_loop(0, bisect_steps, body, (jnp.zeros_like(finite_max), finite_max))
        use = d2 <= hi[:, None]
        d_sel = jnp.sqrt(jnp.where(use, d2, 0.0))
        e_sel, s_sel = extinction[star], sigma[star]
    else:
        raise ValueError(f"select must be 'top_k' or 'bisect', got {select!r}")
    d_k = jnp.max(d_sel, axis=-1)
    d_max = d_k[:, None]
    ratio = jnp.where(d_max > 0, d_sel / jnp.where(d_max > 0, d_max, 1.0), 0.0)
    w = (1.0 - 0.75 * ratio**2) / (s_sel**2 + SIGMA_FLOOR_MAG2)
    w = jnp.where(use, w, 0.0)
    cube = jnp.sum(w * e_sel, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1e-30)
    return cube, d_k


def runs_cap(mean_per_cell: float, half_width: int) -> int:
    """Candidate slots of a cell searched ``half_width`` half-cells each way (a block of
    ``(half_width)^3`` cells): mean + 5 sqrt(mean) + 3 stars at the largest count."""
    lam = mean_per_cell * half_width**3
    return int(math.ceil(lam + 5.0 * math.sqrt(lam) + 3.0))


def _run_candidates(xyz_s, starts, counts, cell_idx, sub_shape, half_width: int, cap: int):
    """Candidates of the cells ``cell_idx`` ``(R, 3)``: the stars of the half-cell block
    ``[2 i + 1 - w, 2 i + w]`` per axis (w = ``half_width``: the cube of side w cells centred on
    the cell centre), read as (2w)^2 runs along z (contiguous in the half-cell-sorted order) and
    packed into ``cap`` slots. Returns ``star (R, cap)`` (sorted order), ``ok``, ``overflow (R,)``.
    """
    w = half_width
    sx, sy, sz = sub_shape
    b0 = 2 * cell_idx + 1 - w  # (R, 3) first half-cell of the block
    d = jnp.arange(2 * w, dtype=jnp.int32)
    ix = b0[:, 0:1, None] + d[None, :, None]  # (R, 2w, 1)
    iy = b0[:, 1:2, None] + d[None, None, :]  # (R, 1, 2w)
    run_ok = (ix >= 0) & (ix < sx) & (iy >= 0) & (iy < sy)  # (R, 2w, 2w)
    zlo = jnp.clip(b0[:, 2], 0, sz - 1)[:, None, None]
    zhi = jnp.clip(b0[:, 2] + 2 * w - 1, 0, sz - 1)[:, None, None]
    col = (jnp.clip(ix, 0, sx - 1) * sy + jnp.clip(iy, 0, sy - 1)) * sz
    first = starts[col + zlo]
    last = col + zhi
    length = jnp.where(run_ok, starts[last] + counts[last] - first, 0)
    r = cell_idx.shape[0]
    first = first.reshape(r, -1)
    length = length.reshape(r, -1)  # (R, 4 w^2)
    cum_end = jnp.cumsum(length, axis=-1)
    cum_start = cum_end - length
    total = cum_end[:, -1]
    slot = jnp.arange(cap, dtype=jnp.int32)
    run = jnp.sum(cum_end[:, None, :] <= slot[None, :, None], axis=-1)  # (R, cap)
    run = jnp.minimum(run, length.shape[1] - 1)
    pos = jnp.take_along_axis(first - cum_start, run, axis=-1) + slot
    ok = slot[None, :] < total[:, None]
    star = jnp.clip(pos, 0, xyz_s.shape[0] - 1)
    return star, ok, total > cap


def grid_eq5_runs(
    xyz_pc,
    extinction,
    sigma,
    valid,
    region: Region,
    k: int,
    *,
    cap: int,
    cap_fallback: int,
    max_fallback: int,
    select: str = "bisect",
    bisect_steps: int = 24,
):
    """Eq. 5 gridding (`dustjax.vnet.observe.grid_eq5`'s result) with a smaller first search.

    The stars are sorted by half-cell. Pass 1: every cell takes its k nearest among the stars
    within one cell of its centre in each axis (``cap`` slots; exact where the k-th lies within
    1 cell of the centre). Pass 2: up to ``max_fallback`` cells that pass 1 cannot guarantee are
    redone over the 3^3-cell block (``cap_fallback`` slots; exact where the k-th lies within 1.5
    cells, as `grid_eq5`'s search). Returns ``(cube, not_exact)``; ``not_exact`` marks cells where
    neither pass guarantees the exact k nearest (pass 2's conditions, or a flagged cell beyond
    ``max_fallback``).
    """
    shape = tuple(int(s) for s in region.shape)
    num_cells = int(np.prod(shape))
    sub_shape = tuple(2 * s for s in shape)
    lower = jnp.asarray(region.lower_pc, jnp.float32)
    cell = jnp.asarray(region.cell_size_pc, jnp.float32)
    xyz = xyz_pc.astype(jnp.float32)
    idx3 = jnp.floor((xyz - lower) / cell).astype(jnp.int32)
    inside = valid & jnp.all((idx3 >= 0) & (idx3 < jnp.asarray(shape)), axis=-1)
    sub3 = jnp.floor((xyz - lower) / (0.5 * cell)).astype(jnp.int32)
    sub3 = jnp.clip(sub3, 0, jnp.asarray(sub_shape) - 1)
    num_sub = int(np.prod(sub_shape))
    key = (sub3[:, 0] * sub_shape[1] + sub3[:, 1]) * sub_shape[2] + sub3[:, 2]
    key = jnp.where(inside, key, num_sub)
    order = jnp.argsort(key)
    xyz_s, e_s, s_s = xyz[order], extinction[order], sigma[order]
    counts = jnp.zeros(num_sub + 1, jnp.int32).at[key].add(1)[:num_sub]
    starts = jnp.cumsum(counts) - counts
    cells3 = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    cells3 = jnp.asarray(cells3.reshape(-1, 3), jnp.int32)
    centres = jnp.asarray(region.cell_centres_pc().reshape(-1, 3), jnp.float32)
    min_cell = float(min(region.cell_size_pc))

    def pass_(rows3, rows_centres, half_width, slots):
        star, ok, overflow = _run_candidates(xyz_s, starts, counts, rows3, sub_shape,
                                             half_width, slots)  # fmt: skip
        diff = xyz_s[star] - rows_centres[:, None, :]
        d2 = jnp.where(ok, jnp.sum(diff * diff, axis=-1), jnp.inf)
        value, d_k = eq5_from_candidates(d2, ok, star, e_s, s_s, k, select, bisect_steps)
        num_ok = jnp.sum(ok, axis=-1)
        not_exact = overflow | (num_ok < k) | (d_k > 0.5 * half_width * min_cell)
        return value, not_exact

    cube, not_exact = pass_(cells3, centres, 2, cap)
    rows = jnp.nonzero(not_exact, size=max_fallback, fill_value=num_cells)[0]
    safe = jnp.minimum(rows, num_cells - 1)
    value2, not_exact2 = pass_(cells3[safe], centres[safe], 3, cap_fallback)
    cube = cube.at[rows].set(value2, mode="drop")
    not_exact = not_exact.at[rows].set(not_exact2, mode="drop")
    return cube.reshape(shape), not_exact.reshape(shape)
