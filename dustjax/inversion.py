"""A physics baseline: non-negative (optionally regularised) least squares through the LOS operator.

No network: given extinctions E and the linear map A from a density cube rho (mag/pc, uniform in
each cell) to those extinctions, solve

    minimise  f(rho) = 1/2 |A rho - E|^2 + lam R(rho)   subject to  rho >= 0,

by accelerated projected gradient descent (FISTA, Beck & Teboulle 2009; ``accelerate=False`` gives
plain projected gradient), step 1/L with L the largest eigenvalue of the Hessian A^T A + lam
R'' (from power iteration). The gradient is A^T (A rho - E) + lam R'(rho): A^T is the transpose
(scatter-add) of the operator. Everything runs in JAX (jit, ``lax.fori_loop``; a batch of cubes
is solved at once).

Two data routes:
- **cube** (literature route, or a catalogue gridded by eq. 5): E is an extinction cube on the
  region's cells and A = `dustjax.los.los_operator(region)`, the exact integral from the Sun to
  each cell centre (`nnls_predictor` wraps this as a `dustjax.apply.Predictor`, so
  ``experiments/apply.py --method=nnls`` runs the same pipeline, outputs and Monte Carlo as the
  V-net);
- **stars** (a catalogue directly): A = `star_operator`, the exact integral from the Sun to each
  star's position (the same crossing construction, evaluated at the star; dust outside the region
  counts as zero), rows weighted by 1 / sigma_E so that f is the chi^2 / 2 (`invert_catalog`).

Regularisers R (weight ``smoothness`` is dimensionless: lam = smoothness x L_A with L_A the
largest eigenvalue of A^T A, so one value means the same on any region or cell size):
- ``"gradient"``: 1/2 sum over the three axes of the squared differences of neighbouring cells
  (first-order Tikhonov; favours smooth maps, pulls nothing towards zero);
- ``"ridge"``: 1/2 |rho|^2 (zeroth-order Tikhonov).
The default weight (`DEFAULT_SMOOTHNESS`, per kind of input: exact literature cubes or noisy
gridded catalogues) was chosen on sky-like simulations (docs/validation.md, "Real sky"), not on
the real cubes. Uncertainties: the apply pipeline's Monte Carlo over the catalogue extinctions,
which propagates the noise of E only; it ignores model error (the choice of regulariser and its
weight, the piecewise-constant cells, the truncation of the iterations).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dustjax.geometry import Region
from dustjax.los import _operator_rows, los_operator

# Default regularisation weights per kind of input, chosen on sky-like simulations
# (tools/nnls_smoothness.py; docs/validation.md, "Real sky"): exact extinction cubes (literature
# route) want only a touch of smoothing (it mostly stabilises the truncated iteration); gridded,
# noisy catalogue extinctions want 100 times more: 1e-3 has the best worst case over the simulated
# cubes (faint, noise-dominated cubes make smaller weights fail badly: skill -4 at 1e-4).
DEFAULT_SMOOTHNESS = {"literature": 1e-5, "catalogue": 1e-3}
DEFAULT_STEPS = 1000
REGULARISERS = ("gradient", "ridge")
# Largest eigenvalue of R'' for each regulariser: the 3D difference operator D^T D (Neumann
# boundaries) has eigenvalues up to 4 per axis.
_REG_NORM = {"gradient": 12.0, "ridge": 1.0}


# ==== operators ===================================================================================
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class StarOperator:
    """Linear map from a density cube ``(..., nx, ny, nz)`` to one value per star ``(..., N)``.

    ``indices[n, k]`` (flat cell index) and ``lengths[n, k]`` (path length in pc, times the row
    weight; zero on padding) are the cells crossed by the segment from the Sun to star n.
    """

    indices: jax.Array
    lengths: jax.Array
    shape: tuple[int, int, int] = dataclasses.field(metadata=dict(static=True))

    def __call__(self, density):
        return self.apply(density)

    def apply(self, density):
        density = jnp.asarray(density)
        flat = density.reshape(*density.shape[:-3], -1)
        crossed = jnp.take(flat, self.indices, axis=-1)  # (..., N, K)
        return jnp.einsum("...nk,nk->...n", crossed, self.lengths.astype(flat.dtype))

    def transpose(self, values):
        values = jnp.asarray(values)
        batch = values.shape[:-1]
        contrib = values[..., :, None] * self.lengths.astype(values.dtype)
        flat = jnp.zeros((*batch, int(np.prod(self.shape))), values.dtype)
        return flat.at[..., self.indices].add(contrib).reshape(*batch, *self.shape)

    T = transpose

    @property
    def num_rows(self) -> int:
        return int(self.indices.shape[0])

    def row_weighted(self, weights) -> StarOperator:
        """Each row (star) n times ``weights[n]`` (1 / sigma_n for a chi^2)."""
        w = jnp.asarray(weights, jnp.float32).reshape(-1)
        return dataclasses.replace(self, lengths=self.lengths * w[:, None])


def star_operator(
    region: Region, xyz_pc, row_weights=None, chunk: int = 16384, workers: int = 1
) -> StarOperator:
    """The exact integral from the Sun to each point of ``xyz_pc`` ``(N, 3)`` through `region`.

    ``row_weights`` ``(N,)`` multiply each row (1 / sigma_E for a chi^2). Built with numpy in
    chunks (memory: N x (nx + ny + nz + 1) x 8 bytes per chunk and worker); equals
    `dustjax.los.integrate_to_points` (tested). ``workers`` > 1 builds the chunks in that many
    threads (numpy releases the GIL; the same operator, bit for bit).
    """
    xyz = np.asarray(xyz_pc, np.float64).reshape(-1, 3)
    edges = [region.edges_pc(a) for a in range(3)]
    lower, size = np.asarray(region.lower_pc), np.asarray(region.cell_size_pc)

    def rows(s):
        return _operator_rows(xyz[s : s + chunk], edges, lower, size, region)

    starts = range(0, len(xyz), chunk)
    if workers > 1 and len(starts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(int(workers), len(starts))) as pool:
            parts = list(pool.map(rows, starts))
    else:
        parts = [rows(s) for s in starts]
    width = max(max(p[0].shape[1] for p in parts), 1)
    indices = np.zeros((len(xyz), width), np.int32)
    lengths = np.zeros((len(xyz), width), np.float32)
    row = 0
    for idx, length in parts:
        indices[row : row + len(idx), : idx.shape[1]] = idx
        lengths[row : row + len(idx), : idx.shape[1]] = length
        row += len(idx)
    if row_weights is not None:
        lengths = lengths * np.asarray(row_weights, np.float32).reshape(-1, 1)
    return StarOperator(jnp.asarray(indices), jnp.asarray(lengths), tuple(region.shape))


# ==== regularisers ================================================================================
def gradient_penalty(density) -> jax.Array:
    """1/2 sum of squared differences of neighbouring cells along each axis (per cube)."""
    total = 0.0
    for axis in (-3, -2, -1):
        d = jnp.diff(density, axis=axis)
        total = total + 0.5 * jnp.sum(d**2, axis=(-3, -2, -1))
    return total


def ridge_penalty(density) -> jax.Array:
    """1/2 |rho|^2 per cube."""
    return 0.5 * jnp.sum(density**2, axis=(-3, -2, -1))


def _penalty_grad(density, regulariser: str):
    """R'(rho) (linear in rho), for a batch ``(..., nx, ny, nz)``."""
    if regulariser == "ridge":
        return density
    if regulariser != "gradient":
        raise ValueError(f"regulariser must be one of {REGULARISERS}, got {regulariser!r}")
    out = jnp.zeros_like(density)
    for axis in (-3, -2, -1):
        d = jnp.diff(density, axis=axis)  # rho[i+1] - rho[i]
        pad_lo = [(0, 0)] * density.ndim
        pad_hi = [(0, 0)] * density.ndim
        pad_lo[axis] = (1, 0)
        pad_hi[axis] = (0, 1)
        # d/d rho[i] of 1/2 sum (rho[i+1]-rho[i])^2 = (rho[i]-rho[i-1]) - (rho[i+1]-rho[i])
        out = out + jnp.pad(d, pad_lo) - jnp.pad(d, pad_hi)
    return out


# ==== the solver ==================================================================================
def objective(op, density, data, lam: float = 0.0, regulariser: str = "gradient"):
    """f(rho) = 1/2 |A rho - E|^2 + lam R(rho), per cube of a batch."""
    r = op.apply(density) - data
    fit = 0.5 * jnp.sum(r.reshape(*r.shape[: density.ndim - 3], -1) ** 2, axis=-1)
    if isinstance(lam, int | float) and lam == 0:
        return fit
    penalty = gradient_penalty if regulariser == "gradient" else ridge_penalty
    return fit + lam * penalty(density)


def gradient(op, density, data, lam: float = 0.0, regulariser: str = "gradient"):
    """grad f = A^T (A rho - E) + lam R'(rho)."""
    g = op.transpose(op.apply(density) - data)
    if isinstance(lam, int | float) and lam == 0:
        return g
    return g + lam * _penalty_grad(density, regulariser)


def largest_eigenvalue(op, num_iters: int = 100, seed: int = 0, scale=None) -> float:
    """Largest eigenvalue of A^T A by power iteration (it approaches from below: callers add a
    2 % margin to the step's L); with ``scale`` (a cube), of (A S)^T (A S), S = diag(scale)."""
    v = jax.random.uniform(jax.random.key(seed), tuple(op.shape), jnp.float32) + 0.1
    _, norm = _power_iteration(op, v / jnp.linalg.norm(v), scale, num_iters=int(num_iters))
    return float(norm)


@functools.partial(jax.jit, static_argnames=("num_iters",))
def _power_iteration(op, v, scale=None, *, num_iters):
    def body(_, carry):
        v, _ = carry
        if scale is None:
            w = op.transpose(op.apply(v))
        else:
            w = scale * op.transpose(op.apply(scale * v))
        norm = jnp.linalg.norm(w)
        return w / jnp.maximum(norm, 1e-30), norm

    return jax.lax.fori_loop(0, num_iters, body, (v, jnp.float32(0.0)))


def _fista(grad, prox, x0, step, num_steps: int, accelerate: bool = True):
    """x <- prox(y - step grad(y)) with Nesterov's momentum on y (FISTA; plain proximal gradient
    without ``accelerate``), ``num_steps`` times from ``x0`` inside a ``lax.fori_loop``."""

    def body(_, carry):
        x, y, t = carry
        x_new = prox(y - step * grad(y))
        if accelerate:
            t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
            y_new = x_new + ((t - 1.0) / t_new) * (x_new - x)
        else:
            t_new, y_new = t, x_new
        return x_new, y_new, t_new

    x, _, _ = jax.lax.fori_loop(0, num_steps, body, (x0, x0, jnp.float32(1.0)))
    return x


@functools.partial(jax.jit, static_argnames=("num_steps", "accelerate", "regulariser"))
def _solve(op, data, x0, step, lam, *, num_steps, accelerate, regulariser):
    return _fista(
        lambda x: gradient(op, x, data, lam, regulariser),
        lambda z: jnp.maximum(z, 0.0),
        x0, step, num_steps, accelerate,
    )  # fmt: skip


def solve_nnls(
    op,
    data,
    *,
    smoothness: float = 0.0,
    regulariser: str = "gradient",
    num_steps: int = DEFAULT_STEPS,
    accelerate: bool = True,
    lipschitz: float | None = None,
    x0=None,
) -> jax.Array:
    """argmin over rho >= 0 of 1/2 |A rho - E|^2 + lam R(rho), lam = smoothness x L_A.

    ``op`` has ``apply`` (cube -> data), ``transpose`` and ``shape`` (a `LOSOperator` or a
    `StarOperator`); ``data`` is E with a leading batch or not. ``lipschitz`` is L_A (computed by
    power iteration when None). Returns the density ``(..., nx, ny, nz)`` (float32).
    """
    if regulariser not in REGULARISERS:
        raise ValueError(f"regulariser must be one of {REGULARISERS}, got {regulariser!r}")
    if smoothness < 0:
        raise ValueError(f"smoothness must be >= 0, got {smoothness}")
    data = jnp.asarray(data, jnp.float32)
    l_a = largest_eigenvalue(op) if lipschitz is None else float(lipschitz)
    lam = float(smoothness) * l_a
    # 2 % margin: power iteration approaches the top eigenvalue from below.
    big_l = 1.02 * (l_a + lam * _REG_NORM[regulariser])
    batch = data.shape[: data.ndim - (1 if isinstance(op, StarOperator) else 3)]
    if x0 is None:
        x0 = jnp.zeros((*batch, *op.shape), jnp.float32)
    return _solve(
        op,
        data,
        jnp.asarray(x0, jnp.float32),
        jnp.float32(1.0 / big_l),
        jnp.float32(lam),
        num_steps=int(num_steps),
        accelerate=bool(accelerate),
        regulariser=regulariser,
    )


# ==== with a Gaussian prior per cell (the V-net map as the prior: dustjax.vnet.refine) ==========
@functools.partial(jax.jit, static_argnames=("num_steps",))
def _solve_with_prior(op, data, x0, step, prior_mean, prior_precision, *, num_steps):
    """FISTA: a gradient step on 1/2 |A x - d|^2, then the prox of the prior and x >= 0, which is
    separable and closed form: argmin_x |x - z|^2 / (2 t) + p (x - m)^2 / 2 over x >= 0 is
    max(0, (z + t p m) / (1 + t p))."""
    tp = step * prior_precision
    return _fista(
        lambda x: op.transpose(op.apply(x) - data),
        lambda z: jnp.maximum((z + tp * prior_mean) / (1.0 + tp), 0.0),
        x0, step, num_steps,
    )  # fmt: skip


def solve_with_prior(
    op,
    data,
    prior_mean,
    prior_sd,
    *,
    num_steps: int = DEFAULT_STEPS,
    lipschitz: float | None = None,
) -> jax.Array:
    """argmin over rho >= 0 of 1/2 |A rho - E|^2 + 1/2 sum ((rho - m) / s)^2.

    The MAP density under a Gaussian prior N(m, s^2) per cell (independent cells) and a Gaussian
    likelihood whose weights are folded into ``op``'s rows and ``data`` (rows divided by their
    sigma). ``prior_sd`` may be ``inf`` (no prior on that cell: plain NNLS there) and must be
    > 0. Starts from max(m, 0). The prior enters through its prox, so a tight prior (tiny s) does
    not shrink the step (which is 1 / L_A, as `solve_nnls` without a regulariser).
    """
    data = jnp.asarray(data, jnp.float32)
    mean = jnp.broadcast_to(jnp.asarray(prior_mean, jnp.float32), tuple(op.shape))
    sd = np.asarray(prior_sd, np.float64)
    if np.any(~(sd > 0)):
        raise ValueError("prior_sd must be > 0 everywhere (inf: no prior on that cell)")
    precision = jnp.broadcast_to(jnp.asarray(1.0 / sd**2, jnp.float32), tuple(op.shape))
    l_a = largest_eigenvalue(op) if lipschitz is None else float(lipschitz)
    return _solve_with_prior(
        op,
        data,
        jnp.maximum(mean, 0.0),
        jnp.float32(1.0 / (1.02 * l_a)),
        mean,
        precision,
        num_steps=int(num_steps),
    )


# ==== the two routes ==============================================================================
def default_smoothness(input_kind: str) -> float:
    """`DEFAULT_SMOOTHNESS` of "literature" (exact cubes) or "catalogue" (gridded, noisy) input."""
    if input_kind not in DEFAULT_SMOOTHNESS:
        raise ValueError(
            f"input_kind must be one of {sorted(DEFAULT_SMOOTHNESS)}, got {input_kind!r}"
        )
    return DEFAULT_SMOOTHNESS[input_kind]


def nnls_predictor(
    region: Region,
    *,
    smoothness: float | None = None,
    input_kind: str = "catalogue",
    regulariser: str = "gradient",
    num_steps: int = DEFAULT_STEPS,
    accelerate: bool = True,
):
    """A `dustjax.apply.Predictor`: extinction cubes ``(B, nx, ny, nz)`` -> NNLS density.

    ``smoothness`` None takes the default of ``input_kind`` ("literature": exact extinction
    cubes; "catalogue": gridded catalogue extinctions). The operator and its L are built once;
    the returned function is jit-able (the apply pipeline's Monte Carlo calls it on batches).
    """
    if smoothness is None:
        smoothness = default_smoothness(input_kind)
    op = los_operator(region)
    l_a = largest_eigenvalue(op)
    lam = float(smoothness) * l_a
    step = 1.0 / (1.02 * (l_a + lam * _REG_NORM[regulariser]))

    def predict(extinction):
        extinction = jnp.maximum(jnp.asarray(extinction, jnp.float32), 0.0)
        return _solve(
            op,
            extinction,
            jnp.zeros_like(extinction),
            jnp.float32(step),
            jnp.float32(lam),
            num_steps=int(num_steps),
            accelerate=bool(accelerate),
            regulariser=regulariser,
        )

    predict.nnls_settings = dict(
        smoothness=float(smoothness),
        regulariser=regulariser,
        num_steps=int(num_steps),
        accelerate=bool(accelerate),
        lipschitz=l_a,
    )
    return predict


def invert_catalog(
    catalog,
    region: Region,
    *,
    smoothness: float = 0.0,
    regulariser: str = "gradient",
    num_steps: int = DEFAULT_STEPS,
    accelerate: bool = True,
    extinction=None,
) -> np.ndarray:
    """NNLS straight on the stars: minimise chi^2/2 = 1/2 sum ((A rho - E) / sigma_E)^2 + lam R.

    ``catalog`` is a `dustjax.catalog.StarCatalog` (positions, E, sigma_E); ``extinction``
    ``(..., N)`` replaces its E (Monte Carlo redraws, batched). Returns ``(..., nx, ny, nz)``.
    """
    w = 1.0 / np.asarray(catalog.sigma_extinction, np.float64)
    op = star_operator(region, catalog.xyz_pc, row_weights=w)
    e = catalog.extinction if extinction is None else extinction
    data = jnp.asarray(np.asarray(e, np.float64) * w, jnp.float32)
    out = solve_nnls(
        op,
        data,
        smoothness=smoothness,
        regulariser=regulariser,
        num_steps=num_steps,
        accelerate=accelerate,
    )
    return np.asarray(out)
