"""Fitting the latent GP: sharded, minibatched ELBO; AdamW; the paper's stopping rule.

One optimisation step (value, gradient and AdamW update) is one jitted function; ``steps_per_call``
steps run inside one `lax.scan` so that the host only looks at the ELBO every few steps (the
stopping rule needs a window of them anyway).

Scale (sect. 2.3-2.4 of Dharmawardena et al. work with ~10^5 stars; we aim at 10^7):

* the star axis is sharded over all devices with a 1-D `jax.sharding.Mesh` (axis
  ``"stars"``; with several processes, `dustjax.distributed`, the devices of all of them, each
  process building the star data of its own block of stars only, `star_data_on_mesh`); the
  likelihood runs under `jax.shard_map` and the per-device sums are added with
  `psum`. The GP part (K_uu, its Cholesky, phi at the grid cells) is small and replicated.
* with ``batch_size`` set, each device draws ``batch_size / num_devices`` of its stars uniformly
  (with replacement) per step and scales their log-likelihood by ``num_local / batch_local``, an
  unbiased estimate of the full sum; padding stars have weight 0 so the estimate stays unbiased.
* ``cell_chunk`` bounds the memory of B = L^-1 K_ux (see `svgp.SVGPModel`).

Failures: a non-finite ELBO or gradient freezes the state inside the scan and records the step.
The host then checks whether the inducing-point Cholesky is the culprit: if so it restarts from
the last good state with 10x the jitter (up to ``max_jitter``, then `svgp.CholeskyError`);
otherwise it stops with ``status = "nan_elbo"``, the failing iteration, and the last good
parameters (saved to ``workdir/last_good_state.npz`` when a workdir is given).

Stopping rules (``stop_rule``), both only after ``min_iterations``:

* ``"paper"`` (sect. 2.4): stop once the ELBO varied by less than ``tol`` (1%) of its magnitude
  over the last ``window`` (10) iterations. With an ELBO of -4e4 that is a range of 400 nats, and
  a fit still climbing by ~15 nats per iteration passes it (the real-sky fit of issue 18 stopped
  at iteration 430 while the ELBO still rose from -47.8k to -39.7k by 1,000);
* ``"plateau"`` (`plateau_converged`): stop when the mean ELBO of the last ``plateau_window``
  iterations is no longer above the mean of the ``plateau_window`` before by more than
  ``plateau_z`` standard errors of that difference, the standard error coming from the observed
  Monte Carlo scatter (first differences, which a steady trend does not inflate), or when the
  rise per window is below ``plateau_rel_floor`` of |ELBO| (a noise-free fit must stop too).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dustjax import distributed, sharding
from dustjax.gp import svgp
from dustjax.gp.grid import LBDGrid

logger = logging.getLogger(__name__)

STAR_AXIS = "stars"


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """Optimisation settings (the paper's values where it gives them).

    Attributes:
      learning_rate: AdamW step size.
      weight_decay: decoupled AdamW weight decay, applied to the variational parameters only
        (it shrinks q towards the whitened prior N(0, I)); hyperparameters and inducing
        locations are not decayed (a decay of log scale lengths or of inducing positions towards
        the Sun would have no meaning).
      num_samples: Monte Carlo samples of phi per step (paper: 32).
      batch_size: stars per step over all devices (None: all stars, the paper's choice).
      max_iterations, min_iterations: bounds on the number of steps.
      tol, window: stopping rule, relative ELBO range over the last `window` steps (1%, 10).
      steps_per_call: steps per compiled call (a multiple of nothing; any positive number).
      jitter, max_jitter: relative K_uu jitter, and the largest the retries may reach.
      cell_chunk: see `svgp.SVGPModel`.
      link: "log10" (paper) or "linear".
      seed: PRNG seed of the Monte Carlo samples and minibatches.
      warmup_iterations: linear learning-rate warm-up from 0 (Adam's first steps are sign steps
        of the full learning rate whatever the gradient; 0 disables).
      scale_q_offdiagonal: scale the AdamW updates of the off-diagonal of S by 1/sqrt(M) (see
        `make_optimizer`: without it, M = 1000 diverges within 10 iterations).
      max_log10_density: the likelihood's soft cap on phi samples (`svgp.SVGPModel`).
      stop_rule: "paper" (ELBO range over ``window`` below ``tol``) or "plateau" (the ELBO has
        stopped rising beyond its Monte Carlo noise; see `plateau_converged`).
      plateau_window, plateau_z, plateau_rel_floor: the "plateau" rule's window (iterations),
        significance (standard errors) and relative floor of the rise per window.
      model_error: learn a model-error variance (f A_mod)^2 + s^2 added to sigma^2 in the
        likelihood (`svgp.model_error_scales`); it holds what the grid and the GP cannot
        represent, and widens the predicted bands of the true extinction. Off: the paper's model.
      model_error_init: initial (f, s) (fraction, mag) when ``model_error`` is on.
      max_fit_seconds: stop (status "time_limit") once the fit has run this long after its first
        (compiling) call; None: no limit.
      kernel_coords: where the kernel is stationary: "xyz" (the paper) or "log_spherical"
        (`dustjax.gp.coords`: scale lengths proportional to distance). The inducing points of
        the parameters must live in the same coordinates (`initial_params(kernel_coords=...)`).
      anneal_iterations, anneal_factor: once the fit would stop (stopping rule, time limit,
        max_iterations), run ``anneal_iterations`` more steps at ``anneal_factor`` times the
        learning rate, then stop (0: off). Adam at a constant step ends in a Monte Carlo noise
        ball around the optimum whose size scales with the step; the time limit keeps room for
        the annealing steps (their time estimated from the steps so far, once 5 calls and
        ``min_iterations`` are done; at most half of ``max_fit_seconds``).
      anneal_average: return the mean of the iterates of the annealing's second half (taken
        after every compiled call, i.e. every ``steps_per_call`` steps) instead of the last
        one: tail (Polyak-Ruppert) averaging, which shrinks the Monte Carlo noise ball further at
        no cost an iteration; the first half, in which the fit moves from the full rate's noise
        ball towards the optimum, is left out. The last iterate is kept in
        `FitResult.params_last_iterate`.
      calibration_fraction: not used by `fit` itself: the fraction of the catalogue's stars
        that `pipeline.fit_and_predict` holds out of the fit to calibrate the extinction bands
        (a post-hoc model error, `dustjax.gp.calibration`); 0: off.
      calibration_method: how `pipeline.fit_and_predict` scales the bands on those stars
        (`dustjax.gp.calibration.calibrate_bands`): "deconvolved" (default: the band that holds
        68 % of the model's error deconvolved from the stars' known noise) or "observed" (68 %
        of the observed extinctions inside band plus noise). Either may narrow the bands.
    """

    learning_rate: float = 0.02
    weight_decay: float = 1e-4
    num_samples: int = 32
    batch_size: int | None = None
    max_iterations: int = 2000
    min_iterations: int = 100
    tol: float = 0.01
    window: int = 10
    steps_per_call: int = 10
    jitter: float = 1e-6
    max_jitter: float = 1e-2
    cell_chunk: int | None = None
    link: str = "log10"
    seed: int = 0
    warmup_iterations: int = 0
    scale_q_offdiagonal: bool = True
    max_log10_density: float | None = 3.0
    stop_rule: str = "paper"
    plateau_window: int = 100
    plateau_z: float = 2.0
    plateau_rel_floor: float = 1e-5
    model_error: bool = False
    model_error_init: tuple[float, float] = (0.05, 0.01)
    max_fit_seconds: float | None = None
    kernel_coords: str = "xyz"
    anneal_iterations: int = 0
    anneal_factor: float = 0.1
    anneal_average: bool = False
    calibration_fraction: float = 0.1
    calibration_method: str = "deconvolved"

    def __post_init__(self):
        if self.calibration_method not in ("deconvolved", "observed"):
            raise ValueError(
                "calibration_method must be 'deconvolved' or 'observed', got "
                f"{self.calibration_method!r}"
            )
        if self.stop_rule not in ("paper", "plateau"):
            raise ValueError(f"stop_rule must be 'paper' or 'plateau', got {self.stop_rule!r}")
        if self.kernel_coords not in ("xyz", "log_spherical"):
            raise ValueError(
                f"kernel_coords must be 'xyz' or 'log_spherical', got {self.kernel_coords!r}"
            )
        if self.plateau_window < 2:
            raise ValueError(f"plateau_window must be >= 2, got {self.plateau_window}")
        if self.anneal_iterations < 0 or not 0 < self.anneal_factor <= 1:
            raise ValueError(
                "anneal_iterations must be >= 0 and anneal_factor in (0, 1], got "
                f"{self.anneal_iterations}, {self.anneal_factor}"
            )

    @property
    def model(self) -> svgp.SVGPModel:
        return svgp.SVGPModel(
            link=self.link,
            num_samples=self.num_samples,
            cell_chunk=self.cell_chunk,
            max_log10_density=self.max_log10_density,
        )


@dataclasses.dataclass
class FitResult:
    params: dict[str, Any]
    elbo_history: list[float]
    status: str  # "converged", "max_iterations", "time_limit", "nan_elbo"
    iterations: int
    jitter: float
    timings: dict[str, float]
    failed_iteration: int | None = None
    message: str = ""
    anneal_start: int | None = None  # iteration at which the annealing steps began
    params_before_anneal: dict[str, Any] | None = None  # (numpy) the parameters then
    # (numpy) with ``anneal_average``: the last iterate (``params`` is then the average)
    params_last_iterate: dict[str, Any] | None = None


# ---- stars ------------------------------------------------------------------------------------
def inflate_sigma_for_distance(catalog, grid: LBDGrid) -> np.ndarray:
    """Extinction uncertainties inflated by the distance uncertainties (Rezaei Kh. et al. 2020).

    sigma_eff^2 = sigma_A^2 + (dA/dd sigma_d)^2, with the extinction gradient dA/dd (mag/pc)
    estimated per (l, b) column of the grid as the least-squares slope of A against d of the
    stars in that column (clipped at 0: extinction never decreases). Returns sigma_A unchanged
    when the catalogue has no distance uncertainties.
    """
    sigma = np.asarray(catalog.sigma_extinction, np.float64)
    if catalog.sigma_distance is None:
        return sigma
    column, _, _ = grid.locate(catalog.l_deg, catalog.b_deg, catalog.distance_pc)
    d = np.asarray(catalog.distance_pc, np.float64)
    a = np.asarray(catalog.extinction, np.float64)
    n_col = grid.num_columns
    count = np.bincount(column, minlength=n_col).astype(np.float64)
    mean_d = np.bincount(column, d, n_col) / np.maximum(count, 1)
    mean_a = np.bincount(column, a, n_col) / np.maximum(count, 1)
    dd = d - mean_d[column]
    cov = np.bincount(column, dd * (a - mean_a[column]), n_col)
    var = np.bincount(column, dd * dd, n_col)
    slope = np.where(var > 0, cov / np.where(var > 0, var, 1.0), 0.0)
    slope = np.clip(slope, 0.0, None)
    return np.sqrt(sigma**2 + (slope[column] * catalog.sigma_distance) ** 2)


def make_star_data(catalog, grid: LBDGrid, *, num_shards: int = 1, dtype=jnp.float32, sigma=None):
    """`svgp.StarData` for the stars of a catalogue (all inside the grid), padded to num_shards.

    ``sigma`` overrides the catalogue's extinction uncertainties (e.g. the inflated ones).
    """
    n = len(catalog)
    if n == 0:
        raise ValueError("no stars inside the grid")
    return _star_arrays(catalog, grid, n + (-n) % num_shards, dtype, sigma, jnp.asarray)


def _star_arrays(catalog, grid: LBDGrid, total: int, dtype, sigma, to_array):
    """`svgp.StarData` of a catalogue padded with weight-0 stars to `total` entries."""
    n = len(catalog)
    sigma = catalog.sigma_extinction if sigma is None else sigma
    pad = total - n
    np_dtype = np.dtype(dtype)
    if n:  # host arrays in the fit's dtype: one copy to the devices, none back
        flat_index, partial_pc = grid.star_operator_arrays(
            catalog.l_deg, catalog.b_deg, catalog.distance_pc, dtype=np_dtype
        )
    else:
        flat_index, partial_pc = np.zeros(0, np.int32), np.zeros(0, np_dtype)

    def padded(x, fill, kind):
        x = np.asarray(x, kind)
        return np.concatenate([x, np.full((pad,), fill, kind)]) if pad else x

    return svgp.StarData(
        flat_index=to_array(padded(flat_index, 0, np.int32)),
        partial_pc=to_array(padded(partial_pc, 0.0, np_dtype)),
        extinction=to_array(padded(catalog.extinction, 0.0, np_dtype)),
        sigma=to_array(padded(sigma, 1.0, np_dtype)),
        weight=to_array(padded(np.ones(n), 0.0, np_dtype)),
    )


def star_data_on_mesh(catalog, grid: LBDGrid, mesh: Mesh, *, dtype=jnp.float32, sigma=None):
    """`make_star_data` padded to the mesh and split over it, each process building only its
    own block of stars (the same arrays as ``shard_stars(make_star_data(...), mesh)``)."""
    n = len(catalog)
    if n == 0:
        raise ValueError("no stars inside the grid")
    if not distributed.is_multiprocess():
        return shard_stars(make_star_data(catalog, grid, num_shards=mesh.size, dtype=dtype,
                                          sigma=sigma), mesh)  # fmt: skip
    total = n + (-n) % mesh.size
    split = NamedSharding(mesh, P(STAR_AXIS))
    rows = distributed.local_rows(total, split)
    real = np.arange(rows.start, min(rows.stop, n))
    keep = np.zeros(n, bool)
    keep[real] = True
    sub_sigma = None if sigma is None else np.asarray(sigma)[keep]
    local = _star_arrays(
        catalog.select(keep), grid, rows.stop - rows.start, dtype, sub_sigma, np.asarray
    )
    return jax.tree.map(lambda x: distributed.put_rows(x, split, local=True), local)


def shard_stars(stars: svgp.StarData, mesh: Mesh) -> svgp.StarData:
    split = NamedSharding(mesh, P(STAR_AXIS))
    if distributed.is_multiprocess():
        return jax.tree.map(lambda x: distributed.put_rows(x, split), stars)
    return jax.device_put(stars, split)


def replicate(tree, mesh: Mesh):
    return distributed.put_replicated(tree, NamedSharding(mesh, P()))


def init_inducing_points(
    catalog,
    num_inducing: int,
    seed: int,
    method: str = "spread",
    max_candidates: int = 50_000,
    points=None,
    metric=None,
) -> np.ndarray:
    """M initial inducing locations (pc) at star positions.

    ``method="random"``: M random stars, the paper's initialisation (sect. 2.4). With 1000 of
    them in the sect. 3 volume (~21 pc apart on average) the nearest pairs are < 1 pc apart:
    nearly duplicate rows of K_uu, holes elsewhere.

    ``method="spread"`` (default): greedy farthest-point sampling over (a random subset of up to
    ``max_candidates``) stars: start at a random star, then repeatedly add the star farthest from
    all chosen so far. The points stay at star positions (so they follow the catalogue's extent)
    but cover it evenly, with no near-duplicates: K_uu is better conditioned and no region of
    the stars is left far from every inducing point.

    ``points``: the stars' positions in the kernel's coordinates (default: XYZ).
    ``metric``: three weights of the axes in the spread's distances (None: 1, 1, 1): weights
    proportional to 1 / the expected scale length of each axis spread the points evenly in
    units of the scale lengths (the real sky's log-spherical fits learn a radial scale ~4x the
    angular ones, issue 18: (1, 1, 0.25) then puts ~1.6x more points across each angular axis
    than an even spread for the same M).
    """
    if method not in ("random", "spread"):
        raise ValueError(f"inducing-point init method must be 'random' or 'spread', got {method!r}")
    rng = np.random.default_rng(seed)
    xyz = np.asarray(catalog.xyz_pc if points is None else points, np.float64)
    n = len(xyz)
    if method == "random" or num_inducing >= n:
        idx = rng.choice(n, size=num_inducing, replace=num_inducing > n)
        z = xyz[idx]
        if num_inducing > n:  # repeated stars would make K_uu singular: nudge the copies
            z = z + rng.normal(scale=1.0, size=z.shape)
        return z
    cand = xyz[rng.choice(n, size=min(n, max_candidates), replace=False)]
    weights = np.ones(3) if metric is None else np.asarray(metric, np.float64)
    if weights.shape != (3,) or not np.all(weights > 0):
        raise ValueError(f"the spread's metric must be 3 positive weights, got {metric!r}")
    scaled = cand * weights
    chosen = np.empty(num_inducing, np.int64)
    chosen[0] = 0  # the candidates are already in random order
    min_d2 = np.sum((scaled - scaled[0]) ** 2, axis=1)
    for i in range(1, num_inducing):
        chosen[i] = int(np.argmax(min_d2))
        np.minimum(min_d2, np.sum((scaled - scaled[chosen[i]]) ** 2, axis=1), out=min_d2)
    return cand[chosen]


# ---- the ELBO -----------------------------------------------------------------------------------
def make_elbo_fn(
    mesh: Mesh,
    grid: LBDGrid,
    model: svgp.SVGPModel,
    *,
    batch_size: int | None,
    num_stars_padded: int,
    dtype=jnp.float32,
    kernel_coords: str = "xyz",
):
    """``elbo(params, key, stars, jitter) -> scalar`` with stars sharded over ``mesh``.

    E_q[log p(A_obs | phi)] is summed over the devices (`psum`); with ``batch_size`` it is the
    unbiased minibatch estimate N_local / b_local * sum over the batch, per device.
    """
    from dustjax.gp.coords import KernelCoords

    cells_xyz = jnp.asarray(KernelCoords.for_grid(grid, kernel_coords).grid_cells(grid), dtype)
    d_widths = jnp.asarray(grid.d_widths_pc(), dtype)
    full_shape = grid.full_shape
    num_shards = mesh.devices.size
    local = num_stars_padded // num_shards
    batch_local = None
    if batch_size is not None and batch_size < num_stars_padded:
        batch_local = max(1, -(-int(batch_size) // num_shards))

    def local_expected_ll(density, stars, key, model_error):
        if batch_local is None:
            batch, scale = stars, 1.0
        else:
            shard_key = jax.random.fold_in(key, lax.axis_index(STAR_AXIS))
            idx = jax.random.randint(shard_key, (batch_local,), 0, local)
            batch = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), stars)
            scale = local / batch_local
        # E_q[log p(A_obs | phi)] on this device's stars, MC average over samples
        ll = svgp.expected_log_likelihood_samples(density, batch, d_widths, model_error)
        ll = jnp.mean(ll) * scale
        return lax.psum(ll, STAR_AXIS)

    sharded_ll = jax.shard_map(
        local_expected_ll, mesh=mesh, in_specs=(P(), P(STAR_AXIS), P(), P()), out_specs=P()
    )

    def elbo_fn(params, key, stars, jitter):
        key_phi, key_batch = jax.random.split(key)
        density = svgp.density_samples(params, key_phi, cells_xyz, full_shape, model, jitter)
        model_error = svgp.model_error_scales(params)
        # ELBO = E_q[log p(A_obs | phi)] - KL[q(v) || p(v)]
        return sharded_ll(density, stars, key_batch, model_error) - svgp.kl_divergence(params)

    return elbo_fn


# ---- optimisation --------------------------------------------------------------------------------
_DECAYED = ("q_mean", "q_chol_raw")


def scale_q_offdiagonal() -> optax.GradientTransformation:
    """Multiply the updates of the strictly lower triangle of ``q_chol_raw`` by 1/sqrt(M).

    Adam moves every coordinate by about the learning rate per step, whatever the size of its
    gradient. A row of S (the whitened posterior Cholesky factor) has up to M entries, and the
    posterior standard deviation of phi it contributes is that row's norm: with plain Adam it
    grows by ~lr sqrt(M) per step when the gradient signs agree, as they do at the start of a
    fit (lr = 0.03, M = 1000: ~1 dex per step, phi samples of +-10 dex and an ELBO of -1e10
    after 10 steps, in float32 and float64 alike). With the 1/sqrt(M) factor a row's norm moves
    by ~lr per step, like the diagonal and every other parameter.
    """

    def update_fn(updates, state, params=None):
        del params
        raw = updates["q_chol_raw"]
        m = raw.shape[0]
        factor = jnp.where(jnp.eye(m, dtype=bool), 1.0, 1.0 / math.sqrt(m)).astype(raw.dtype)
        return {**updates, "q_chol_raw": raw * factor}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(settings: FitSettings) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2017, as in the paper) with decay on q(v) only.

    The learning rate warms up linearly over ``warmup_iterations``; the off-diagonal of S is
    updated at 1/sqrt(M) of the rate (`scale_q_offdiagonal`).
    """
    mask = lambda params: {k: k in _DECAYED for k in params}
    lr = settings.learning_rate
    if settings.warmup_iterations > 0:
        lr = optax.linear_schedule(lr / settings.warmup_iterations, lr, settings.warmup_iterations)
    adamw = optax.adamw(lr, weight_decay=settings.weight_decay, mask=mask)
    parts = [adamw] + ([scale_q_offdiagonal()] if settings.scale_q_offdiagonal else [])
    if settings.anneal_iterations > 0:  # a step factor the host can change (`_set_step_factor`)
        parts.append(optax.inject_hyperparams(optax.scale)(step_size=1.0))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def _set_step_factor(opt_state, factor: float):
    """``opt_state`` of `make_optimizer` (annealing on) with the step factor set to ``factor``;
    the new value keeps the old one's dtype and sharding (no recompilation)."""
    inject = opt_state[-1]
    old = inject.hyperparams["step_size"]
    new = jax.device_put(jnp.asarray(factor, old.dtype), old.sharding)
    return (*opt_state[:-1], inject._replace(hyperparams={**inject.hyperparams, "step_size": new}))


@jax.jit
def _running_mean(mean, params, count):
    """``mean`` of ``count - 1`` iterates updated with one more (``params``)."""
    return jax.tree.map(lambda m, p: m + (p - m) / count.astype(m.dtype), mean, params)


def _all_finite(tree):
    leaves = jax.tree.leaves(tree)
    return functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(x)) for x in leaves])


def make_train_chunk(elbo_fn, optimizer, num_steps: int, *, full_float32: bool = True):
    """A jitted ``(carry, key, stars, jitter) -> (carry, elbos)`` running ``num_steps`` steps.

    ``carry = (params, opt_state, good_params, good_opt_state, step, failed_step)``: a
    non-finite ELBO or gradient leaves params unchanged and sets failed_step (-1 while fine);
    good_* hold the last state whose ELBO was finite. ``full_float32=False`` leaves JAX's
    default matmul precision (TF32 on recent GPUs; only for measuring what it costs).
    """
    loss_and_grad = jax.value_and_grad(lambda p, k, s, j: -elbo_fn(p, k, s, j))

    def one_step(carry, _, key, stars, jitter):
        params, opt_state, good_params, good_opt, step, failed = carry
        loss, grads = loss_and_grad(params, jax.random.fold_in(key, step), stars, jitter)
        ok = jnp.isfinite(loss) & _all_finite(grads) & (failed < 0)
        updates, new_opt = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(ok, x, y), a, b)
        carry = (
            pick(new_params, params),
            pick(new_opt, opt_state),
            pick(params, good_params),
            pick(opt_state, good_opt),
            step + 1,
            jnp.where(ok | (failed >= 0), failed, step),
        )
        return carry, -loss

    @functools.partial(jax.jit, donate_argnums=0)
    def train_chunk(carry, key, stars, jitter):
        body = functools.partial(one_step, key=key, stars=stars, jitter=jitter)
        return lax.scan(body, carry, None, length=num_steps)

    def run(carry, key, stars, jitter):
        if not full_float32:
            return train_chunk(carry, key, stars, jitter)
        with full_float32_matmuls():  # traced, lowered and cached under this setting
            return train_chunk(carry, key, stars, jitter)

    return run


def full_float32_matmuls():
    """Context: float32 matrix products in full float32, not TensorFloat-32.

    JAX's default on recent NVIDIA GPUs (H200 included) computes float32 dots with TF32
    (10-bit mantissa, relative error ~5e-4). K_uu has a condition number of 1e4-1e6 here, and
    its Cholesky, the triangular solve B = L^-1 K_ux and their gradients are built from dots:
    in TF32 they lose every significant digit. CPUs always compute full float32, which is why
    a CPU run can be fine where the same run on the GPU is not. The cost is small: the big
    products already ask for HIGHEST.
    """
    return jax.default_matmul_precision("float32")


def converged(history, *, tol: float, window: int, min_iterations: int) -> bool:
    """The paper's rule: ELBO range over the last ``window`` steps below ``tol`` of |ELBO|."""
    if len(history) < max(min_iterations, window):
        return False
    last = np.asarray(history[-window:], np.float64)
    scale = abs(float(np.median(last)))
    return bool(np.all(np.isfinite(last)) and (last.max() - last.min()) <= tol * scale)


def plateau_converged(
    history, *, window: int, z: float, min_iterations: int, rel_floor: float = 0.0
) -> bool:
    """Has the ELBO stopped rising beyond its Monte Carlo noise?

    d = mean(last ``window``) - mean(the ``window`` before). Each ELBO estimate is the trend plus
    independent Monte Carlo noise of variance v; first differences cancel a slowly varying trend,
    so v = var(diff) / 2 over the last 2 ``window`` values, and the standard error of d is
    sqrt(2 v / window). Stop when d < z * se (no significant rise) or d < rel_floor * |ELBO|
    (a rise too small to matter, for fits with little noise). A fit rising by 15 nats per
    iteration under noise of 100 nats (the real-sky fit) has d = 1,500 against se ~ 14: it goes on.
    """
    if len(history) < max(min_iterations, 2 * window):
        return False
    h = np.asarray(history[-2 * window :], np.float64)
    if not np.all(np.isfinite(h)):
        return False
    prev, last = h[:window], h[window:]
    rise = float(last.mean() - prev.mean())
    noise_var = float(np.var(np.diff(h), ddof=1)) / 2.0
    se = math.sqrt(2.0 * noise_var / window)
    return bool(rise < z * se or rise < rel_floor * abs(float(last.mean())))


def should_stop(history, settings: FitSettings) -> bool:
    """The configured stopping rule (``settings.stop_rule``) applied to the ELBO history."""
    if settings.stop_rule == "plateau":
        return plateau_converged(
            history,
            window=settings.plateau_window,
            z=settings.plateau_z,
            min_iterations=settings.min_iterations,
            rel_floor=settings.plateau_rel_floor,
        )
    return converged(
        history, tol=settings.tol, window=settings.window, min_iterations=settings.min_iterations
    )


def cholesky_ok(params, jitter) -> bool:
    with full_float32_matmuls():
        chol = jax.jit(svgp.inducing_cholesky)(params, jitter)
    return bool(jnp.all(jnp.isfinite(chol)))


def stable_jitter(params, jitter: float, max_jitter: float) -> float:
    """The smallest of jitter, 10 jitter, ... (<= max_jitter) whose K_uu Cholesky succeeds."""
    while not cholesky_ok(params, jitter):
        logger.warning("K_uu Cholesky failed with relative jitter %.1e", jitter)
        if jitter * 10 > max_jitter * (1 + 1e-9):
            raise svgp.CholeskyError(
                f"the inducing-point Gram matrix K_uu is not positive definite even with relative "
                f"jitter {jitter:.1e} (max_jitter {max_jitter:.1e}); inducing points may "
                "coincide or the scale lengths have grown far beyond their spacing. Use fewer "
                "inducing points, shorter initial scale lengths, float64, or a larger max_jitter"
            )
        jitter *= 10
        logger.warning("retrying with relative jitter %.1e", jitter)
    return jitter


def save_params(path, params, **extra) -> None:
    """Parameters (and scalars in ``extra``) as an .npz file, atomically."""
    from dustjax.io import atomic_path

    arrays = {k: np.asarray(v) for k, v in params.items()}
    arrays.update({f"meta_{k}": np.asarray(v) for k, v in extra.items()})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_params(path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files if not k.startswith("meta_")}


def fit(
    params,
    stars: svgp.StarData,
    grid: LBDGrid,
    settings: FitSettings,
    *,
    mesh: Mesh | None = None,
    workdir: str | Path | None = None,
    progress: bool = True,
) -> FitResult:
    """Maximise the ELBO from ``params``; stars are sharded over ``mesh`` (default: all devices).

    ``stars`` must be padded to a multiple of the mesh size (`make_star_data(num_shards=...)`).
    """
    mesh = sharding.make_mesh(axis=STAR_AXIS) if mesh is None else mesh
    dtype = params["mean"].dtype
    if stars.num_stars % mesh.devices.size:
        raise ValueError(
            f"{stars.num_stars} stars do not divide over {mesh.devices.size} devices; build them "
            "with make_star_data(num_shards=...)"
        )
    model = settings.model
    elbo_fn = make_elbo_fn(
        mesh,
        grid,
        model,
        batch_size=settings.batch_size,
        num_stars_padded=stars.num_stars,
        dtype=dtype,
        kernel_coords=settings.kernel_coords,
    )
    if settings.model_error and svgp.MODEL_ERROR_KEYS[0] not in params:
        params = svgp.with_model_error(params, *settings.model_error_init)
    optimizer = make_optimizer(settings)
    train_chunk = make_train_chunk(elbo_fn, optimizer, settings.steps_per_call)
    stars = shard_stars(stars, mesh)
    # a copy: the carry is donated, and the caller keeps its own arrays (it may fit them again)
    params = jax.tree.map(jnp.copy, replicate(params, mesh))
    jitter = stable_jitter(params, settings.jitter, settings.max_jitter)

    opt_state = optimizer.init(params)
    # good_* start as copies (the carry is donated, so no buffer may appear twice).
    copy = lambda t: jax.tree.map(jnp.copy, t)
    carry = (params, opt_state, copy(params), copy(opt_state), jnp.int32(0), jnp.int32(-1))
    key = jax.random.key(settings.seed)
    history: list[float] = []
    timings = dict(compile_and_first_call_s=0.0, fit_s=0.0)
    status, failed_iteration, message = "max_iterations", None, ""
    anneal_start = before_anneal = average = None
    num_averaged = 0
    t_start = time.perf_counter()
    bar = _progress(settings.max_iterations, progress)
    while len(history) < settings.max_iterations or anneal_start is not None:
        t0 = time.perf_counter()
        carry, elbos = train_chunk(carry, key, stars, jnp.asarray(jitter, dtype))
        elbos = np.asarray(elbos)  # the host sync point: once per chunk
        failed = int(carry[5])
        if not history:
            timings["compile_and_first_call_s"] = time.perf_counter() - t0
        if failed >= 0:
            history.extend(float(e) for e in elbos[: failed - len(history)])
            bad_params = carry[0]
            if not cholesky_ok(bad_params, jitter) and jitter * 10 <= settings.max_jitter:
                jitter *= 10
                logger.warning(
                    "non-finite ELBO at iteration %d: K_uu Cholesky failed, restarting from the "
                    "last good state with relative jitter %.1e",
                    failed,
                    jitter,
                )
                good_p, good_o = carry[2], carry[3]
                carry = (
                    good_p,
                    good_o,
                    copy(good_p),
                    copy(good_o),
                    jnp.int32(failed),
                    jnp.int32(-1),
                )
                continue
            status, failed_iteration = "nan_elbo", failed
            message = (
                f"the ELBO became non-finite at iteration {failed}; stopped. The last good state "
                f"(iteration {failed - 1}) is kept"
            )
            if not cholesky_ok(bad_params, jitter):
                message += f" (K_uu Cholesky failed even with relative jitter {jitter:.1e})"
            break
        history.extend(float(e) for e in elbos)
        bar.update(len(elbos))
        bar.set_postfix(elbo=f"{history[-1]:.6g}")
        if anneal_start is not None:
            if settings.anneal_average and 2 * (len(history) - anneal_start) > (
                settings.anneal_iterations
            ):
                num_averaged += 1
                average = (
                    jax.tree.map(jnp.copy, carry[0])
                    if average is None
                    else _running_mean(average, carry[0], jnp.int32(num_averaged))
                )
            if len(history) - anneal_start >= settings.anneal_iterations:
                break
            continue
        elapsed = time.perf_counter() - t_start - timings["compile_and_first_call_s"]
        reason = None
        if should_stop(history, settings):
            reason = "converged"
        elif settings.max_fit_seconds is not None:
            # the time the annealing steps need, from the speed so far: only once enough steps
            # are timed and the fit has had its min_iterations (a device call on a shared GPU
            # had a slow second call; the reserve then started 800 annealing steps at iteration
            # 20), and never more than half the budget
            n_timed = len(history) - settings.steps_per_call
            room = 0.0
            if n_timed >= 5 * settings.steps_per_call and len(history) >= settings.min_iterations:
                room = min(
                    settings.anneal_iterations * elapsed / n_timed, 0.5 * settings.max_fit_seconds
                )
            if elapsed + room > settings.max_fit_seconds:
                reason = "time_limit"
        if reason is None and len(history) + settings.anneal_iterations >= settings.max_iterations:
            reason = "max_iterations"
        if reason is not None:
            status = reason
            if settings.anneal_iterations == 0:
                break
            anneal_start = len(history)
            logger.info("annealing from iteration %d (%s)", anneal_start, reason)
            params_, opt_, good_p, good_o, step, failed_ = carry
            before_anneal = jax.tree.map(np.asarray, params_)
            carry = (
                params_,
                _set_step_factor(opt_, settings.anneal_factor),
                good_p,
                _set_step_factor(good_o, settings.anneal_factor),
                step,
                failed_,
            )
    bar.close()
    timings["fit_s"] = time.perf_counter() - t_start
    n_timed = len(history) - settings.steps_per_call
    if n_timed > 0:
        timings["per_iteration_ms"] = (
            1e3 * (timings["fit_s"] - timings["compile_and_first_call_s"]) / n_timed
        )
    final = carry[2] if status == "nan_elbo" else carry[0]
    final = jax.tree.map(np.asarray, final)
    last_iterate = None
    if average is not None and status != "nan_elbo":
        last_iterate, final = final, jax.tree.map(np.asarray, average)
    if status == "nan_elbo":
        logger.error(message)
        if workdir is not None and distributed.is_primary():
            path = Path(workdir) / "last_good_state.npz"
            save_params(path, final, iteration=failed_iteration - 1, jitter=jitter)
            message += f"; saved to {path}"
    return FitResult(
        params=final,
        elbo_history=history,
        status=status,
        iterations=len(history),
        jitter=jitter,
        timings=timings,
        failed_iteration=failed_iteration,
        message=message,
        anneal_start=anneal_start,
        params_before_anneal=before_anneal,
        params_last_iterate=last_iterate,
    )


def _progress(total, enabled):
    from tqdm.auto import tqdm

    disable = not enabled or not distributed.is_primary()
    return tqdm(total=total, desc="GP fit", unit="it", disable=disable, leave=False)


def initial_params(
    catalog,
    settings_model: dict,
    *,
    seed: int = 0,
    dtype=jnp.float32,
    model_error=None,
    kernel_coords=None,
    ghost_grid=None,
):
    """Initial parameters from a catalogue and the model section of a config.

    ``model_error`` = (f, s): add the learned model-error parameters (`FitSettings.model_error`).
    ``kernel_coords``: a `dustjax.gp.coords.KernelCoords` (None: XYZ) for the inducing points.
    ``ghost_grid``: an `LBDGrid` whose ghost-cell centres join the stars as candidate inducing
    locations (no star lies in the ghost cells, so otherwise no inducing point would be near
    the foreground dust, which then stays at the prior mean).

    Optional keys of the model section (issue 18; defaults: the paper's model): ``kernel``
    ("rbf", "matern32", "matern52": `svgp.with_kernel`), ``mean_function`` ("constant",
    "linear": a gradient in the kernel's coordinates from the inducing points' centre, "shells":
    a piecewise-linear mean in the third log-spherical coordinate, ln d, with ``mean_shells``
    (8) knots spanning the inducing points; `svgp.with_mean_function`).
    """
    from dustjax.gp.coords import KernelCoords

    coords = kernel_coords or KernelCoords("xyz")
    points = None if kernel_coords is None else coords.stars(catalog)
    if ghost_grid is not None and ghost_grid.ghost_cells:
        points = coords.stars(catalog) if points is None else points
        ghost = coords.grid_cells(ghost_grid).reshape(*ghost_grid.full_shape, 3)
        points = np.concatenate([points, ghost[:, :, : ghost_grid.ghost_cells].reshape(-1, 3)])
    z = init_inducing_points(
        catalog,
        int(settings_model["num_inducing"]),
        seed,
        method=str(settings_model.get("init", "spread")),
        points=points,
        metric=settings_model.get("spread_metric"),
    )
    mean = settings_model.get("mean_dex")
    if mean is None:  # log10 of the mean density implied by the stars: A / d
        ratio = np.asarray(catalog.extinction) / np.maximum(np.asarray(catalog.distance_pc), 1.0)
        mean = math.log10(
            max(float(np.median(ratio[ratio > 0])) if np.any(ratio > 0) else 1e-3, 1e-6)
        )
    params = svgp.init_params(
        z,
        scale_lengths_pc=settings_model["scale_lengths_pc"],
        amplitude_dex=float(settings_model["amplitude_dex"]),
        mean_dex=float(mean),
        q_std=float(settings_model.get("q_std", 1.0)),
        dtype=dtype,
    )
    kernel = str(settings_model.get("kernel") or "rbf")
    if kernel != "rbf":
        params = svgp.with_kernel(params, kernel)
    mean_function = str(settings_model.get("mean_function") or "constant")
    if mean_function == "linear":
        params = svgp.with_mean_function(params, "linear", origin=np.mean(z, axis=0))
    elif mean_function == "shells":
        if coords.kind != "log_spherical":
            raise ValueError(
                "the shell mean (model.mean_function = 'shells') is a function of distance only "
                "in log_spherical kernel coordinates; set fit.kernel_coords = 'log_spherical'"
            )
        num = int(settings_model.get("mean_shells") or 8)
        if num < 2:
            raise ValueError(f"model.mean_shells must be >= 2, got {num}")
        knots = np.linspace(z[:, 2].min(), z[:, 2].max(), num)
        params = svgp.with_mean_function(params, "shells", knots=knots)
    elif mean_function != "constant":
        params = svgp.with_mean_function(params, mean_function)  # raises: unknown
    if model_error is not None:
        params = svgp.with_model_error(params, *model_error)
    return params
