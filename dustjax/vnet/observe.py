"""The observation in the training loop: simulated cube -> stars -> noisy catalogue -> eq. 5 cube.

A V-net trained on exact extinction cubes is applied to catalogue cubes it has never seen
(issue 17). This module simulates, on the device and inside the jitted data path, what
`dustjax.vnet.apply.run_catalog` does to a real catalogue, for every simulated density cube:

1. **Stars** (`draw_stars`): a number drawn log-uniformly in ``num_stars_range`` per cube, placed
   either uniformly in the box (``distribution="box"``) or with uniform directions and a distance
   density p(d) ~ d^``distance_power`` out to the farthest corner of the box, keeping those inside
   (``"radial"``; power 2 is uniform in volume, lower powers crowd the stars towards the Sun).
2. **Extinctions**, integrated exactly through the simulated cube from the Sun to each star's true
   position: the project's LOS kernel for points (`dustjax.los.integrate_to_points`'s chunk
   kernel, `dustjax.maps.integrate_cartesian`'s before the layout refactor), the same exact path
   lengths the simulators' cell-centre operator uses.
3. **Noise**: sigma_E = hypot(a, b E) with a and b drawn uniformly per cube in ``sigma_a_range``
   and ``sigma_b_range``; E_obs = E + sigma_E N(0, 1). Optional distance errors: the catalogue
   position is the true one scaled by (1 + f N(0, 1)), f uniform per cube in
   ``distance_error_range``; stars whose catalogue position leaves the box are dropped (as
   `dustjax.catalog.read_star_catalog` drops them with ``region=``).
4. **Gridding by eq. 5** exactly as `dustjax.vnet.gridding.knn_weights` + `KNNWeights.apply`: every
   cell centre takes its k nearest stars (k = `dustjax.catalog.default_k`: 3 SR, 30 LR), weights
   w = (1 - 0.75 (d/d_max)^2) / (sigma_E^2 + 1e-4) normalised over the k, and the weighted mean of
   their E_obs; negative cells are clipped to 0 (`run_catalog` clips before eq. 1).

The k-nearest search (`grid_eq5`): a brute-force search over all stars costs cells x stars
distances (3 x 10^10 a cube at 10^6 stars). Instead the stars are sorted by cell (bucketed), and
each cell looks at the stars of its 27 neighbouring cells, at most ``bucket_cap`` per cell. The
result equals the exact k nearest whenever the k-th neighbour lies within 1.5 cells of the centre
(the searched block's inscribed radius) and no searched cell held more than ``bucket_cap`` stars;
`grid_eq5` returns the fraction of cells where that is not guaranteed, and the tests compare it
with the numpy/scipy gridding. The k nearest are picked with `lax.top_k` (small k) or by
bisection on the squared distance (any k: the threshold that admits exactly k candidates; ties
within 2^-24 of the search radius may admit k + 1).

Faster exact kernels, the defaults (`dustjax.vnet.observe_kernels`; ``integrator="sort"``,
``search="block"`` restore the ones above, which give the same cubes to float32 rounding):
``integrator="pieces"`` finds each piece of a star's segment in O(1) instead of sorting the
crossings; ``search="runs"`` (chosen by ``"auto"`` for dense catalogues such as LR's) first
searches the cube of side 2 cells around each centre, read as runs of half-cells, and redoes over
the 3^3 block only the cells where that cannot be exact; ``trim`` (with "pieces") makes
`observe_batch` sort its cubes by catalogue size into the groups and integrate only the star
chunks each group's largest catalogue fills.

Sub-cell structure (``subcell_factor`` F > 1): real stars integrate the sky's structure inside
the map's cells, which map-grid simulations lack (docs/validation.md, issue 17). With F > 1 the
density is simulated on the same box with F times the cells per axis (`simulate_subcell_fn`),
the stars integrate that fine cube exactly, the gridding stays on the region's cells, and the
target is the fine cube's block mean on them. F = 1 (the default) is the map-grid path, unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dustjax.geometry import Region
from dustjax.vnet import observe_kernels as kernels
from dustjax.vnet.gridding import default_k

try:  # the layout refactor moves the point kernel to dustjax.los; import it through one place
    from dustjax.los import _integrate_chunks as _points_kernel
except ImportError:  # before the refactor
    from dustjax.maps import _integrate_chunks as _points_kernel


@dataclasses.dataclass(frozen=True)
class ObservationParams:
    """How a catalogue is simulated (see the module docstring). Ranges are ``(low, high)``."""

    num_stars_range: tuple[float, float] = (30_000.0, 30_000.0)
    distribution: str = "box"  # "box" | "radial"
    distance_power: float = 2.0  # "radial": p(d) ~ d^power
    sigma_a_range: tuple[float, float] = (0.03, 0.03)  # mag
    sigma_b_range: tuple[float, float] = (0.05, 0.05)
    distance_error_range: tuple[float, float] = (0.0, 0.0)  # fractional
    k: int = 0  # 0: dustjax.catalog.default_k(region)
    bucket_cap: int = 0  # 0: from the mean stars per cell at the largest count
    select: str = "auto"  # "top_k" | "bisect" | "auto" (top_k for k <= 8)
    star_chunk: int = 65536  # stars per chunk of the LOS kernel
    bisect_steps: int = 24  # "bisect": halvings of the squared-distance bracket
    # "pieces": the sort-free exact kernel (dustjax.vnet.observe_kernels.integrate_pieces);
    # "sort": the project's LOS point kernel (dustjax.los). Same integrals to float32 rounding.
    integrator: str = "pieces"
    # k-nearest search: "block" (each cell's 3^3-cell block, `grid_eq5`), "runs" (a 2^3-cell
    # first pass with the block as fallback, `observe_kernels.grid_eq5_runs`), "auto" (runs where
    # the smallest catalogue puts >= 2 k stars within one cell of a centre: LR, not SR)
    search: str = "auto"
    max_fallback: int = 0  # "runs": cells redone over the block; 0: num_cells // 8
    # "pieces": `observe_batch` sorts the cubes by catalogue size into its groups and integrates
    # only the star chunks that hold each group's largest catalogue (the slots past it are not
    # stars); the same cubes
    trim: bool = True
    # > 1: the stars integrate a density simulated on a grid this many times finer per axis
    # (structure inside the map's cells, as the real sky's); the target is its block mean on the
    # region's cells, the gridding stays on them (`simulate_subcell_fn`, `_observed_batch_fn`)
    subcell_factor: int = 1
    # with subcell_factor > 1: the fine cube times a log-normal factor per fine cell, normalised
    # to mean 1 over each map cell, its natural-log sd drawn per cube uniformly in this range
    # (the sky simulator's own sub-cell scatter is 4-5x below the real SR cube's; (0, 0): none)
    subcell_log_sd_range: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        check_subcell_factor(self.subcell_factor)
        lo, hi = self.subcell_log_sd_range
        if not 0.0 <= lo <= hi:
            raise ValueError(f"observation.subcell_log_sd_range must be (lo, hi) with 0 <= lo <= "
                             f"hi, got {self.subcell_log_sd_range!r}")  # fmt: skip
        if hi > 0 and self.subcell_factor == 1:
            raise ValueError("observation.subcell_log_sd_range needs subcell_factor > 1 (the "
                             "log-normal factor varies inside the map's cells)")  # fmt: skip
        if self.distribution not in ("box", "radial"):
            raise ValueError(f"distribution must be 'box' or 'radial', got {self.distribution!r}")
        if self.select not in ("auto", "top_k", "bisect"):
            raise ValueError(f"select must be 'auto', 'top_k' or 'bisect', got {self.select!r}")
        if self.integrator not in ("pieces", "sort"):
            raise ValueError(f"integrator must be 'pieces' or 'sort', got {self.integrator!r}")
        if self.search not in ("auto", "block", "runs"):
            raise ValueError(f"search must be 'auto', 'block' or 'runs', got {self.search!r}")
        lo, hi = self.num_stars_range
        if not 1 <= lo <= hi:
            raise ValueError(f"num_stars_range must be 1 <= low <= high, got {(lo, hi)}")
        for name in ("sigma_a_range", "sigma_b_range", "distance_error_range"):
            a, b = getattr(self, name)
            if not 0 <= a <= b:
                raise ValueError(f"{name} must be 0 <= low <= high, got {(a, b)}")

    @property
    def max_stars(self) -> int:
        return int(math.ceil(self.num_stars_range[1]))

    def k_for(self, region: Region) -> int:
        return int(self.k) if self.k else default_k(region)

    def cap_for(self, region: Region) -> int:
        """Stars kept per searched cell: mean + 5 sqrt(mean) + 3 at the largest star count."""
        if self.bucket_cap:
            return int(self.bucket_cap)
        lam = self.max_stars / region.num_cells
        return int(math.ceil(lam + 5.0 * math.sqrt(lam) + 3.0))

    def search_for(self, region: Region) -> str:
        if self.search != "auto":
            return self.search
        ball = 4.0 / 3.0 * math.pi * self.num_stars_range[0] / region.num_cells
        return "runs" if ball >= 2.0 * self.k_for(region) else "block"

    def fallback_for(self, region: Region) -> int:
        """Cells pass 2 of the "runs" search can redo. The LR recipe's sparsest catalogues
        (5 x 10^5 stars, 8 % distance errors, which thin the stars near the far faces) need
        ~1,900 of 32,768; beyond the budget a cell keeps pass 1's result, flagged not exact."""
        return int(self.max_fallback or max(1, region.num_cells // 8))

    def select_for(self, region: Region) -> str:
        if self.select != "auto":
            return self.select
        return "top_k" if self.k_for(region) <= 8 else "bisect"

    @classmethod
    def from_config(cls, observation: Mapping[str, Any] | None) -> ObservationParams:
        """From ``config.observation`` (keys as the fields; ``enabled`` is ignored here)."""
        if observation is None:
            return cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {}
        for key, value in dict(observation).items():
            if key in fields:
                kw[key] = tuple(float(v) for v in value) if key.endswith("_range") else value
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_subcell_factor(value) -> int:
    """``observation.subcell_factor`` as an int >= 1, or one clear ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"observation.subcell_factor must be an integer >= 1 (1: the stars integrate the "
            f"map-grid density), got {value!r}"
        )
    return int(value)


# ---- sub-cell structure -------------------------------------------------------------------------
def fine_region(region: Region, factor: int) -> Region:
    """The same box with ``factor`` times the cells per axis; its name keeps the region's before
    "@" (`dustjax.sims.sky.preset_name` reads the cloud population from it)."""
    return region.with_shape(tuple(int(factor) * n for n in region.shape))


def block_mean(cube, factor: int) -> jax.Array:
    """The mean over each block of ``factor``^3 cells of the last three axes (traceable;
    `dustjax.vnet.refine.block_mean` for batches)."""
    factor = int(factor)
    *lead, nx, ny, nz = cube.shape
    shape = (*lead, nx // factor, factor, ny // factor, factor, nz // factor, factor)
    k = len(lead)
    return jnp.mean(cube.reshape(shape), axis=(k + 1, k + 3, k + 5))


def fine_simulator_params(simulator: str, params, factor: int):
    """The simulator's parameters for the grid ``factor`` times finer, with the same physics.

    Only the "sky" simulator (`dustjax.sims.sky`) is supported: its scales are in pc (disc,
    turbulent spectrum and outer scale, clumps deposited as exact cell averages, cavities,
    cone, radial smearing) except the effective resolution, a smoothing whose FWHM is drawn in
    *cells*: its range is multiplied by ``factor`` so that the smoothing stays the same in pc.
    What still follows the grid, by design: the disc's cusp is rounded by the (fine) cell's
    width, the turbulent field is normalised to unit variance on the grid it is drawn on (the
    fine field holds the sub-cell power too; for spectral indices 3-4 that adds little), and the
    Local-Bubble edge is max(10 pc, half a cell) wide (sharper on LR's fine grid; SR's is 10 pc
    on both). The Levy / log-normal simulators draw in cells and are refused.
    """
    from dustjax.sims import SIMULATORS

    if factor == 1:
        return params
    if simulator != "sky":
        raise ValueError(
            f"observation.subcell_factor > 1 needs the 'sky' simulator (scales in pc); "
            f"{simulator!r} draws in cells"
        )
    p = SIMULATORS["sky"][1] if params is None else params
    lo, hi = p.smoothing_fwhm_cells_range
    return dataclasses.replace(p, smoothing_fwhm_cells_range=(lo * factor, hi * factor))


def simulate_subcell_fn(region: Region, simulator: str | None, params, factor: int,
                        exact: bool = False, log_sd_range=(0.0, 0.0)):  # fmt: skip
    """A jitted ``f(keys (B,)) -> (fine, density[, extinction])``: ``fine`` ``(B, F nx, F ny,
    F nz)`` simulated on `fine_region` (`fine_simulator_params`), ``density`` its block mean on
    `region` (the target), and with ``exact`` the LOS integral of ``density`` on `region` (the
    literature route's input: a map on the region's grid). ``log_sd_range`` = (lo, hi) with
    hi > 0: ``fine`` is multiplied by `subcell_lognormal` of a log-sd drawn per cube in the
    range, before the block mean (so the target is still the block mean of what the stars
    integrate). F = 1 is the map-grid simulation (`dustjax.sims.simulate_batch_fn`, its own
    extinction) in the same form, ``fine`` the density itself, so that every caller unpacks
    ``fine, density, *exact`` whatever the factor."""
    lo, hi = (float(v) for v in log_sd_range)
    from dustjax.sims import default_simulator, get_simulator, los_operator, simulate_batch_fn

    factor = check_subcell_factor(factor)
    if factor == 1:
        if hi > 0:
            raise ValueError("a sub-cell log-normal factor needs subcell_factor > 1")
        map_grid = simulate_batch_fn(region, simulator, params)

        def batch_on_the_map_grid(keys):
            density, extinction = map_grid(keys)
            return (density, density, extinction) if exact else (density, density)

        return batch_on_the_map_grid
    name = simulator or default_simulator(region)
    fine = fine_region(region, factor)
    sim = get_simulator(name, fine_simulator_params(name, params, factor))
    operator = los_operator(region) if exact else None

    @jax.jit
    def batch(keys, operator):
        dense = jax.vmap(lambda k: sim(k, fine))(keys)
        if hi > 0:
            dense = jax.vmap(
                lambda k, d: (
                    d * subcell_lognormal(jax.random.fold_in(k, 17), d.shape, factor, (lo, hi))
                )  # fmt: skip
            )(keys, dense)
        density = block_mean(dense, factor)
        if operator is None:
            return dense, density
        return dense, density, operator(density)

    return functools.partial(batch, operator=operator)


def subcell_lognormal(key, shape, factor: int, log_sd_range) -> jax.Array:
    """A log-normal factor on a fine grid of `shape`: exp(s g), g white N(0, 1) per fine cell, s
    drawn uniformly in ``log_sd_range``, divided by its mean over each block of ``factor``^3
    cells (so a density constant on the map's cells keeps its block means exactly). The real
    sky's structure below the map's cells that the simulator does not make; white because it is
    below the fine cell's scale too."""
    k_s, k_g = jax.random.split(key)
    s = jax.random.uniform(k_s, (), minval=log_sd_range[0], maxval=log_sd_range[1])
    w = jnp.exp(s * jax.random.normal(k_g, shape))
    mean = block_mean(w, factor)
    for axis in range(3):
        mean = jnp.repeat(mean, factor, axis=axis)
    return w / mean


# ---- stars ------------------------------------------------------------------------------------
def draw_stars(key, region: Region, params: ObservationParams) -> dict[str, jax.Array]:
    """One cube's stars: ``xyz_true``, ``xyz_obs`` ``(N_max, 3)`` pc, ``valid`` ``(N_max,)``,
    and the cube's noise parameters ``sigma_a``, ``sigma_b`` and fractional distance error
    ``distance_error`` (scalars). N_max = the largest count;
    the first n (drawn log-uniformly in the range) are real, and those a "radial" draw or a
    distance error puts outside the box are not ``valid``."""
    _, k_pos, k_dir, k_a, k_b, k_f, k_err = jax.random.split(key, 7)
    n_max = params.max_stars
    n = draw_count(key, params)
    lower = jnp.asarray(region.lower_pc, jnp.float32)
    upper = jnp.asarray(region.upper_pc, jnp.float32)
    if params.distribution == "box":
        xyz = lower + (upper - lower) * jax.random.uniform(k_pos, (n_max, 3))
    else:
        corners = np.array(np.meshgrid(*zip(region.lower_pc, region.upper_pc, strict=True)))
        r_max = float(np.linalg.norm(corners.reshape(3, -1), axis=0).max())
        direction = jax.random.normal(k_dir, (n_max, 3))
        direction = direction / jnp.linalg.norm(direction, axis=-1, keepdims=True)
        u = jax.random.uniform(k_pos, (n_max, 1))
        xyz = direction * (r_max * u ** (1.0 / (params.distance_power + 1.0)))
    valid = jnp.arange(n_max) < n
    valid &= _inside(xyz, lower, upper)
    f = jax.random.uniform(k_f, (), minval=params.distance_error_range[0],
                           maxval=params.distance_error_range[1])  # fmt: skip
    scale = 1.0 + f * jax.random.normal(k_err, (n_max, 1))
    xyz_obs = xyz * jnp.maximum(scale, 0.0)
    valid &= _inside(xyz_obs, lower, upper)
    sigma_a = jax.random.uniform(k_a, (), minval=params.sigma_a_range[0],
                                 maxval=params.sigma_a_range[1])  # fmt: skip
    sigma_b = jax.random.uniform(k_b, (), minval=params.sigma_b_range[0],
                                 maxval=params.sigma_b_range[1])  # fmt: skip
    return dict(xyz_true=xyz, xyz_obs=xyz_obs, valid=valid, sigma_a=sigma_a, sigma_b=sigma_b,
                distance_error=f)  # fmt: skip


def draw_count(key, params: ObservationParams) -> jax.Array:
    """The number of stars `draw_stars` draws with ``key`` (log-uniform in the range)."""
    k_n = jax.random.split(key, 7)[0]
    lo_n, hi_n = params.num_stars_range
    log_n = jax.random.uniform(k_n, (), minval=math.log(lo_n), maxval=math.log(hi_n))
    return jnp.floor(jnp.exp(log_n) + 0.5)


def _inside(xyz, lower, upper):
    return jnp.all((xyz >= lower) & (xyz < upper), axis=-1)


def integrate_stars(
    density, region: Region, xyz_pc, chunk: int = 65536, method: str = "sort", limit=None
) -> jax.Array:
    """Exact extinction (mag) from the Sun to each point ``(N, 3)`` through ``density``
    ``(nx, ny, nz)``, traceable (jit/vmap): the project's LOS point kernel (``method="sort"``)
    or the sort-free `dustjax.vnet.observe_kernels.integrate_pieces` (``"pieces"``; with
    ``limit``, only the chunks holding the first ``limit`` points, zeros after them)."""
    if method == "pieces":
        return kernels.integrate_pieces(density, region, xyz_pc, chunk, limit=limit)
    if method != "sort":
        raise ValueError(f"method must be 'sort' or 'pieces', got {method!r}")
    n = xyz_pc.shape[0]
    chunk = int(max(1, min(chunk, n)))
    num_chunks = -(-n // chunk)
    pad = num_chunks * chunk - n
    points = jnp.pad(xyz_pc.astype(jnp.float32), ((0, pad), (0, 0)))
    lower = np.asarray(region.lower_pc, np.float64)
    cell = np.asarray(region.cell_size_pc, np.float64)
    edges = tuple(
        jnp.asarray(lower[a] + cell[a] * np.arange(region.shape[a] + 1), jnp.float32)
        for a in range(3)
    )
    out = _points_kernel(
        density.astype(jnp.float32),
        points.reshape(num_chunks, chunk, 3),
        edges,
        jnp.asarray(lower, jnp.float32),
        jnp.asarray(cell, jnp.float32),
    )
    return out.reshape(-1)[:n]


# ---- eq. 5 gridding on the device ----------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _neighbour_table(shape: tuple[int, int, int]) -> np.ndarray:
    """``(num_cells, 27)`` flat indices of each cell's 3^3 block (-1 outside the cube)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    offsets = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    nb = idx[:, None, :] + offsets[None, :, :]
    ok = np.all((nb >= 0) & (nb < np.asarray(shape)), axis=-1)
    flat = np.ravel_multi_index(tuple(np.clip(nb, 0, np.asarray(shape) - 1).T), shape).T
    return np.where(ok, flat, -1).astype(np.int32)


def grid_eq5(
    xyz_pc,
    extinction,
    sigma,
    valid,
    region: Region,
    k: int,
    *,
    cap: int,
    select: str = "top_k",
    bisect_steps: int = 24,
):
    """Eq. 5 gridding of one catalogue on `region` (JAX, traceable): ``(cube, not_exact)``.

    ``xyz_pc`` ``(N, 3)``, ``extinction``, ``sigma`` ``(N,)`` (mag), ``valid`` ``(N,)`` bool.
    ``cube`` ``(nx, ny, nz)`` is the weighted mean of each cell's k nearest valid stars (not
    clipped); ``not_exact`` ``(nx, ny, nz)`` bool marks cells where the bucket search cannot
    guarantee the exact k nearest (k-th neighbour beyond 1.5 cells, a searched cell holding more
    than `cap` stars, or fewer than k candidates).
    """
    shape = tuple(region.shape)
    num_cells = int(np.prod(shape))
    n = xyz_pc.shape[0]
    lower = jnp.asarray(region.lower_pc, jnp.float32)
    cell = jnp.asarray(region.cell_size_pc, jnp.float32)
    xyz = xyz_pc.astype(jnp.float32)
    idx3 = jnp.floor((xyz - lower) / cell).astype(jnp.int32)
    inside = valid & jnp.all((idx3 >= 0) & (idx3 < jnp.asarray(shape)), axis=-1)
    idx3 = jnp.clip(idx3, 0, jnp.asarray(shape) - 1)
    flat = (idx3[:, 0] * shape[1] + idx3[:, 1]) * shape[2] + idx3[:, 2]
    flat = jnp.where(inside, flat, num_cells)  # invalid stars sort to the end
    order = jnp.argsort(flat)
    # Candidates are read from cell-sorted copies: each searched cell is a contiguous run.
    xyz, extinction, sigma = xyz[order], extinction[order], sigma[order]
    counts = jnp.zeros(num_cells + 1, jnp.int32).at[flat].add(1)[:num_cells]
    starts = jnp.cumsum(counts) - counts

    nbr = jnp.asarray(_neighbour_table(shape))  # (C, 27)
    nb_ok = nbr >= 0
    nbc = jnp.where(nb_ok, nbr, 0)
    nb_count = jnp.where(nb_ok, counts[nbc], 0)
    overflow = jnp.any(nb_count > cap, axis=-1)
    slot = jnp.arange(cap, dtype=jnp.int32)
    pos = starts[nbc][..., None] + slot  # (C, 27, cap)
    ok = (slot < nb_count[..., None]).reshape(num_cells, -1)
    star = jnp.clip(pos, 0, n - 1).reshape(num_cells, -1)  # (C, 27 cap), sorted order
    centres = jnp.asarray(region.cell_centres_pc().reshape(-1, 3), jnp.float32)
    diff = xyz[star] - centres[:, None, :]
    d2 = jnp.where(ok, jnp.sum(diff * diff, axis=-1), jnp.inf)
    num_ok = jnp.sum(ok, axis=-1)

    cube, d_k = kernels.eq5_from_candidates(
        d2, ok, star, extinction, sigma, k, select, bisect_steps
    )
    reach = 1.5 * float(min(region.cell_size_pc))
    not_exact = overflow | (num_ok < k) | (d_k > reach)
    return cube.reshape(shape), not_exact.reshape(shape)


def grid_catalogue(xyz_pc, extinction, sigma, valid, region: Region, params: ObservationParams):
    """Eq. 5 gridding of one catalogue with ``params``' k, search and selection:
    ``(cube, not_exact)`` as `grid_eq5` (``search="block"``) or
    `dustjax.vnet.observe_kernels.grid_eq5_runs` (``"runs"``)."""
    args = (xyz_pc, extinction, sigma, valid, region, params.k_for(region))
    kw = dict(select=params.select_for(region), bisect_steps=params.bisect_steps)
    if params.search_for(region) == "runs":
        lam = params.max_stars / region.num_cells
        return kernels.grid_eq5_runs(
            *args, cap=kernels.runs_cap(lam, 2), cap_fallback=kernels.runs_cap(lam, 3),
            max_fallback=params.fallback_for(region), **kw,
        )  # fmt: skip
    return grid_eq5(*args, cap=params.cap_for(region), **kw)


# ---- the whole observation ----------------------------------------------------------------------
def catalogue_size(key, params: ObservationParams) -> jax.Array:
    """The number of star slots that `observe_one` fills with ``key`` (before the box cuts)."""
    return draw_count(jax.random.split(key, 3)[0], params)


def observe_one(
    key,
    density,
    region: Region,
    params: ObservationParams,
    num_redraws: int = 0,
    catalogue: bool = False,
    limit=None,
    density_region: Region | None = None,
):
    """One density cube -> ``(gridded extinction (nx, ny, nz) clipped >= 0, diagnostics)``.

    ``num_redraws`` > 0 returns ``(1 + num_redraws, nx, ny, nz)`` instead: the catalogue's cube,
    then the cubes of `dustjax.vnet.apply.monte_carlo`'s redraws E_obs + sigma_E N(0, 1) of the same
    stars (same neighbours and weights), for calibrating against the apply route's band.
    ``catalogue=True`` adds the draw's stars to the diagnostics, ``diag["catalogue"]`` =
    dict(xyz_obs (N_max, 3) pc, extinction (N_max,) E_obs mag, sigma_extinction (N_max,) mag,
    valid (N_max,), and the cube's distance_error f, sigma_a, sigma_b): gridding them with
    `grid_eq5` gives this cube (before the clip at 0).
    ``limit`` (>= `catalogue_size`): integrate only that many star slots (``"pieces"``).
    ``density_region`` (default `region`; same bounds, any cells, e.g. `fine_region`): the grid
    of ``density``, through which the stars are integrated; they are drawn in `region`'s bounds
    and gridded on its cells.
    """
    k_star, k_noise, k_redraw = jax.random.split(key, 3)
    stars = draw_stars(k_star, region, params)
    e_true = integrate_stars(
        density, region if density_region is None else density_region, stars["xyz_true"],
        params.star_chunk, params.integrator, limit,
    )  # fmt: skip
    sigma = jnp.hypot(stars["sigma_a"], stars["sigma_b"] * jnp.maximum(e_true, 0.0))
    e_obs = e_true + sigma * jax.random.normal(k_noise, e_true.shape)

    def grid(values):
        return grid_catalogue(stars["xyz_obs"], values, sigma, stars["valid"], region, params)

    if num_redraws:
        noise = jax.random.normal(k_redraw, (num_redraws, *e_obs.shape))
        values = jnp.concatenate([e_obs[None], e_obs + sigma * noise])
        cube, not_exact = jax.lax.map(grid, values)
        not_exact = not_exact[0]
    else:
        cube, not_exact = grid(e_obs)
    diag = dict(
        num_stars=jnp.sum(stars["valid"]),
        not_exact_fraction=jnp.mean(not_exact.astype(jnp.float32)),
        sigma_a=stars["sigma_a"],
        sigma_b=stars["sigma_b"],
    )
    if catalogue:
        diag["catalogue"] = dict(
            xyz_obs=stars["xyz_obs"],
            extinction=e_obs,
            sigma_extinction=sigma,
            valid=stars["valid"],
            distance_error=stars["distance_error"],
            sigma_a=stars["sigma_a"],
            sigma_b=stars["sigma_b"],
        )
    return jnp.maximum(cube, 0.0), diag


def observe_batch(
    keys,
    density,
    region: Region,
    params: ObservationParams,
    group: int = 0,
    catalogue: bool = False,
    density_region: Region | None = None,
):
    """``(B,)`` keys and ``(B, nx, ny, nz)`` densities -> gridded extinctions and diagnostics.

    ``group`` > 0 runs the cubes ``group`` at a time (`lax.map` with a batch size) to bound the
    memory of large catalogues; 0 vectorises the whole batch. ``catalogue=True``: the
    diagnostics hold each cube's stars (`observe_one`), batched along axis 0.
    ``density_region``: the densities' grid (`observe_one`; default `region`).
    """

    batch = density.shape[0]
    size = group if group and group < batch else batch
    if params.integrator == "pieces" and params.trim and batch % size == 0:
        return _observe_trimmed(keys, density, region, params, size, catalogue, density_region)

    def one(args):
        return observe_one(args[0], args[1], region, params, catalogue=catalogue,
                           density_region=density_region)  # fmt: skip

    if size < batch:
        return jax.lax.map(one, (keys, density), batch_size=size)
    return jax.vmap(one)((keys, density))


def _observe_trimmed(keys, density, region, params, size, catalogue=False, density_region=None):
    """`observe_batch` with the cubes sorted by catalogue size into groups of ``size``, each
    group integrating only the star chunks its largest catalogue fills; results in input order.
    The catalogues, and so the cubes, are those of `observe_one` with the same keys."""
    batch = density.shape[0]
    counts = jax.vmap(lambda k: catalogue_size(k, params))(keys)
    order = jnp.argsort(counts)
    groups = batch // size
    keys_g = keys[order].reshape(groups, size)
    density_g = density[order].reshape(groups, size, *density.shape[1:])
    limit_g = jnp.max(counts[order].reshape(groups, size), axis=1)

    def one_group(args):
        k, d, limit = args
        return jax.vmap(
            lambda kk, dd: observe_one(kk, dd, region, params, catalogue=catalogue, limit=limit,
                                       density_region=density_region)
        )(k, d)  # fmt: skip

    out = jax.lax.map(one_group, (keys_g, density_g, limit_g))
    back = jnp.argsort(order)
    return jax.tree.map(lambda x: x.reshape(batch, *x.shape[2:])[back], out)


# ---- the engine's data source "simulate_observed" -------------------------------------------
# The literature route feeds a map on the region's grid: no sub-cell structure survives in its
# input, so a finer simulation would only change the density prior, not what the network sees.
_NO_SUBCELL_WITHOUT_OBSERVATION = (
    "observation.subcell_factor > 1 needs observation.enabled: without the observation loop the "
    "input is the exact LOS integral of a map on the region's grid, which holds no sub-cell "
    "structure (set subcell_factor = 1)"
)


def subcell_factor(config) -> int:
    """``config.observation.subcell_factor`` (default 1) validated; > 1 needs the observation."""
    obs = config.get("observation")
    factor = check_subcell_factor(1 if obs is None else obs.get("subcell_factor", 1))
    if factor > 1 and not observation_enabled(config):
        raise ValueError(_NO_SUBCELL_WITHOUT_OBSERVATION)
    return factor


def observation_enabled(config) -> bool:
    obs = config.get("observation")
    return bool(obs is not None and obs.get("enabled", False))


@functools.lru_cache(maxsize=16)
def _observed_batch_fn(region, simulator, sim_params, obs_params, normalisation, observe: bool,
                       batch_size: int, group: int, mesh):  # fmt: skip
    """``make(seed, step) -> batch``: simulate, observe (optionally), normalise; jitted once.

    ``obs_params.subcell_factor`` = F > 1 (with ``observe``): the density is simulated on
    `fine_region` (`simulate_subcell_fn`), the stars integrate that fine cube, and the target is
    its block mean on `region`'s cells; F = 1 is the map-grid simulation."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    factor = obs_params.subcell_factor
    if factor > 1 and not observe:
        raise ValueError(_NO_SUBCELL_WITHOUT_OBSERVATION)
    simulate = simulate_subcell_fn(region, simulator, sim_params, factor, exact=not observe,
                                   log_sd_range=obs_params.subcell_log_sd_range)  # fmt: skip
    dense_region = fine_region(region, factor) if factor > 1 else None

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P("data")))
    def make(seed, step):
        key = jax.random.fold_in(jax.random.key(seed), step)
        keys = jax.random.split(key, batch_size)
        dense, density, *exact = simulate(keys)
        if observe:
            obs_keys = jax.random.split(jax.random.fold_in(key, 1), batch_size)
            extinction, _ = observe_batch(obs_keys, dense, region, obs_params, group,
                                          density_region=dense_region)  # fmt: skip
        else:
            (extinction,) = exact
        return {
            "extinction": normalisation.extinction(extinction)[..., None],
            "density": normalisation.density(density)[..., None],
        }

    return make


def simulate_observed_source(config, split, *, batch_size, seed, epoch, train):
    """Fresh cubes simulated on the device, observed as a catalogue (``config.observation``,
    when ``enabled``), gridded by eq. 5 and normalised by ``config.data.normalisation``.

    Steps and splits as the engine's "simulate" source (`dustjax.vnet.data.simulate_source`).
    ``config.observation.echo`` = E > 1 feeds each observed training batch to E consecutive steps
    (`_echoed`): the observation costs 1/E of its time per step.
    """
    from dustjax import sharding
    from dustjax.training.tasks import SizedBatches
    from dustjax.vnet import data
    from dustjax.vnet.normalisation import normalisation_of

    name, sim_params = data._simulator_params(config)
    steps = data.simulated_steps(config, split, batch_size=batch_size, train=train)
    mesh = sharding.make_mesh(config.get("num_devices") or None)
    sharding.check_batch_size(batch_size, mesh)
    obs = config.get("observation")
    subcell_factor(config)  # one clear error for a bad factor, or F > 1 without the observation
    make = _observed_batch_fn(
        data.region_of(config), name, sim_params, ObservationParams.from_config(obs),
        normalisation_of(config), observation_enabled(config), batch_size,
        int((obs or {}).get("group", 0) or 0), mesh,
    )  # fmt: skip
    split_seed = data._derived_seed(seed, data.SPLITS.get(split, 9))
    first = epoch * steps if train else 0
    echo = max(1, int((obs or {}).get("echo", 1) or 1)) if train else 1
    if echo == 1:
        batches = (make(split_seed, step) for step in range(first, first + steps))
    else:
        batches = _echoed(make, split_seed, first, steps, echo, _y_flip_allowed(config))
    return SizedBatches(batches, steps)


def _y_flip_allowed(config) -> bool:
    """Y -> -Y maps the box's lines of sight onto each other (Sun at Y = 0, box symmetric)."""
    from dustjax.vnet.data import region_of

    region = region_of(config)
    return bool(np.isclose(region.lower_pc[1], -region.upper_pc[1]))


@jax.jit
def _flip_y(batch):
    return jax.tree.map(lambda x: jnp.flip(x, axis=2), batch)


def _echoed(make, split_seed, first, steps, echo, flip):
    """Data echoing (Choi et al. 2019): each observed batch serves ``echo`` consecutive steps,
    every other time mirrored in Y when that is a symmetry of the box. Step s uses batch
    s // echo of the stream, so a resumed run continues the same sequence."""
    current, batch = None, None
    for step in range(first, first + steps):
        unique, repeat = divmod(step, echo)
        if unique != current:
            current, batch = unique, make(split_seed, unique)
        yield _flip_y(batch) if (flip and repeat % 2) else batch
