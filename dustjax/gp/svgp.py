"""Whitened sparse variational GP for phi = log10(rho), and its hand-written ELBO.

Model (Dharmawardena et al. 2022, sect. 2.2-2.3 and appendix A):

    phi ~ GP(c, k)                                 (eqs. 1-2; k = ARD RBF, `kernels.rbf`)
    rho = 10^phi  [mag/pc]                         (the "log10" link; "linear": rho = phi)
    A_mod,i = sum_j H_ij rho_j                     (eqs. 7-8, `los.StarOperator`)
    A_obs,i ~ N(A_mod,i, sigma_i^2)                (eq. A.1)

Sparse variational posterior, whitened (Hensman et al. 2015): M inducing points Z,
``u = phi(Z) = c + L v`` with ``L L^T = K_uu + jitter alpha^2 I`` and

    q(v) = N(m, S S^T),   S lower triangular with a positive diagonal,
    p(v) = N(0, I).

Given v, phi at the grid cells X has the GP conditional

    phi(X) | v ~ N(c + B^T v, diag(k_xx - colsum(B * B))),   B = L^-1 K_ux   (M x N),

which reproduces the paper's eqs. A.5-A.7 once v is integrated over q. The ELBO (eq. 4-5)

    ELBO = E_q[log p(A_obs | phi)] - KL[q(v) || p(v)]

has the KL in closed form,

    KL = 1/2 (tr(S S^T) + m^T m - M - log det(S S^T)),

and the expected log-likelihood by Monte Carlo with reparameterised samples that are *joint*
across the grid: ``v_s = m + S eps_s`` feeds every cell through B, plus independent conditional
noise ``sqrt(diag var) xi_s`` per cell. (The paper's reference code samples every cell
independently from its marginal; the joint samples carry the correlations that the line-of-sight
sums see, and the whitened form keeps the optimisation well conditioned.)

Parameters live in a plain dict (a pytree) with logarithms of the positive hyperparameters:

    log_scale_lengths (3,) [log pc], log_amplitude () [log dex], mean () [dex],
    inducing_points (M, 3) [pc], q_mean (M,), q_chol_raw (M, M)
    (S = tril(q_chol_raw, -1) + diag(exp(diag(q_chol_raw)))),

and optionally ``log_model_error_frac``, ``log_model_error_abs`` (`with_model_error`): a learned
model-error variance (f A_mod)^2 + s^2 added to each star's sigma^2 in the likelihood, for what
the grid of uniform cells and the GP cannot represent (issue 18).

Options of the prior (issue 18), recorded by which keys the parameters hold, so that a saved
state predicts with the model it was fitted with (as the model-error term):

* the kernel (`with_kernel`): the paper's RBF (no key), or a Matern kernel
  (``kernel_matern32`` / ``kernel_matern52``: a scalar marker, never trained), `kernels.gram`;
* the prior mean of phi (`with_mean_function`, `prior_mean`): the paper's constant c (no key),
  ``"linear"``: c + g . (x - x_0) / 1000 with the gradient g (dex per 1,000 kernel units,
  ``mean_gradient``) learned and the origin x_0 (``mean_origin``) fixed, or ``"shells"``:
  c + a piecewise-linear function of the third kernel coordinate (for ``log_spherical``
  coordinates, d_ref ln(d / d_ref): a mean per distance shell), with values
  ``mean_shell_values`` learned at fixed knots ``mean_shell_knots``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular

from dustjax.gp import kernels
from dustjax.los import apply_star_operator

LN10 = math.log(10.0)
_HIGHEST = lax.Precision.HIGHEST


class CholeskyError(FloatingPointError):
    """The inducing-point Gram matrix is not positive definite even with the largest jitter."""


@dataclasses.dataclass(frozen=True)
class SVGPModel:
    """Static settings of the variational model (hashable: they shape the compiled program).

    Attributes:
      link: "log10" (rho = 10^phi, the paper) or "linear" (rho = phi; tests of the closed form).
      num_samples: Monte Carlo samples of phi per ELBO evaluation (paper: 32).
      cell_chunk: evaluate B = L^-1 K_ux in chunks of this many cells (with rematerialisation)
        so that memory stays at M x cell_chunk; None evaluates all cells at once.
      max_log10_density: a safeguard of the likelihood only (log10 link): phi samples are
        passed through the smooth cap `soft_cap_phi` at this value (dex; 3 = 1000 mag/pc, far
        above any interstellar density) so that a wild early sample cannot overflow 10^phi to
        inf and poison the gradient. It changes phi by < 1e-5 dex below ``cap - 3``. None: off.
        Predictions are never capped.
    """

    link: str = "log10"
    num_samples: int = 32
    cell_chunk: int | None = None
    max_log10_density: float | None = 3.0

    def __post_init__(self):
        if self.link not in ("log10", "linear"):
            raise ValueError(f"link must be 'log10' or 'linear', got {self.link!r}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.cell_chunk is not None and self.cell_chunk < 1:
            raise ValueError(f"cell_chunk must be >= 1 or None, got {self.cell_chunk}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StarData:
    """Stars as the likelihood sees them (device arrays, one entry per star).

    ``weight`` is 1 for real stars and 0 for padding (added so the star axis divides evenly
    over the devices); ``sigma`` is the (possibly inflated) extinction uncertainty in mag.
    """

    flat_index: jax.Array
    partial_pc: jax.Array
    extinction: jax.Array
    sigma: jax.Array
    weight: jax.Array

    @property
    def num_stars(self) -> int:
        return int(self.flat_index.shape[0])


# ---- parameters ------------------------------------------------------------------------------
def init_params(
    inducing_points, *, scale_lengths_pc, amplitude_dex, mean_dex, q_std=1.0, dtype=jnp.float32
):
    """Initial parameters: q(v) = N(0, q_std^2 I) (q_std = 1: GPyTorch's choice, sect. 2.4).

    ``inducing_points`` ``(M, 3)`` pc (the paper: random star positions); ``scale_lengths_pc``
    three numbers or one; ``amplitude_dex`` the prior standard deviation of phi; ``mean_dex``
    the constant mean c = log10(typical density in mag/pc). A ``q_std`` below 1 starts the
    whitened posterior narrower than the prior, which keeps the first Monte Carlo estimates of a
    log-normal density from being dominated by a few huge samples.
    """
    z = jnp.asarray(inducing_points, dtype=dtype)
    m = z.shape[0]
    scales = np.broadcast_to(np.asarray(scale_lengths_pc, np.float64), (3,))
    if np.any(scales <= 0) or amplitude_dex <= 0:
        raise ValueError("scale lengths and amplitude must be positive")
    return dict(
        log_scale_lengths=jnp.asarray(np.log(scales), dtype),
        log_amplitude=jnp.asarray(math.log(amplitude_dex), dtype),
        mean=jnp.asarray(mean_dex, dtype),
        inducing_points=z,
        q_mean=jnp.zeros((m,), dtype),
        q_chol_raw=jnp.full((m,), math.log(q_std), dtype) * jnp.eye(m, dtype=dtype),
    )


MODEL_ERROR_KEYS = ("log_model_error_frac", "log_model_error_abs")


def with_model_error(params, frac: float = 0.05, floor_mag: float = 0.01):
    """``params`` plus the learned model-error term: sigma_eff^2 = sigma^2 + (f A)^2 + s^2."""
    if frac <= 0 or floor_mag <= 0:
        raise ValueError("model-error fraction and floor must be positive")
    dtype = params["mean"].dtype
    return {
        **params,
        MODEL_ERROR_KEYS[0]: jnp.asarray(math.log(frac), dtype),
        MODEL_ERROR_KEYS[1]: jnp.asarray(math.log(floor_mag), dtype),
    }


def model_error_scales(params):
    """(f, s) of the learned model-error term, or None when the parameters have none."""
    if MODEL_ERROR_KEYS[0] not in params:
        return None
    return jnp.exp(params[MODEL_ERROR_KEYS[0]]), jnp.exp(params[MODEL_ERROR_KEYS[1]])


KERNELS = tuple(kernels.KERNELS)  # the kernel functions' registry: one list of names
# the marker key of each kernel but the paper's RBF (which has none)
KERNEL_KEYS = {name: f"kernel_{name}" for name in KERNELS if name != "rbf"}
MEAN_FUNCTIONS = ("constant", "linear", "shells")
# keys that hold fixed settings of the prior, not trained (their gradient is stopped)
FIXED_KEYS = (*KERNEL_KEYS.values(), "mean_origin", "mean_shell_knots")


def with_kernel(params, name: str):
    """``params`` set to use the kernel ``name`` (one of `KERNELS`; "rbf" is the paper's)."""
    if name not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {name!r}")
    out = {k: v for k, v in params.items() if k not in KERNEL_KEYS.values()}
    if name != "rbf":
        out[KERNEL_KEYS[name]] = jnp.zeros((), params["mean"].dtype)
    return out


def kernel_name(params) -> str:
    """The kernel the parameters use ("rbf" unless a Matern marker key is present)."""
    found = [name for name, key in KERNEL_KEYS.items() if key in params]
    if len(found) > 1:
        raise ValueError(f"parameters name more than one kernel: {found}")
    return found[0] if found else "rbf"


def covariance(params, x1, x2):
    """The prior covariance k(x1, x2) ``(N, M)`` with the parameters' kernel."""
    hyp = hyperparameters(params)
    return kernels.gram(kernel_name(params), x1, x2, hyp["scale_lengths_pc"], hyp["amplitude_dex"])


def with_mean_function(params, kind: str, *, origin=None, knots=None):
    """``params`` with the prior mean ``kind`` (`MEAN_FUNCTIONS`), starting as the constant.

    ``"linear"`` needs ``origin`` (3,) (e.g. the centre of the inducing points), ``"shells"``
    the ``knots`` (K >= 2 increasing values of the third kernel coordinate).
    """
    if kind not in MEAN_FUNCTIONS:
        raise ValueError(f"mean function must be one of {MEAN_FUNCTIONS}, got {kind!r}")
    dtype = params["mean"].dtype
    drop = ("mean_gradient", "mean_origin", "mean_shell_values", "mean_shell_knots")
    out = {k: v for k, v in params.items() if k not in drop}
    if kind == "linear":
        origin = np.asarray(origin, np.float64)
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise ValueError(f"the linear mean needs a finite origin of 3 numbers, got {origin}")
        out["mean_gradient"] = jnp.zeros((3,), dtype)
        out["mean_origin"] = jnp.asarray(origin, dtype)
    elif kind == "shells":
        knots = np.asarray(knots, np.float64)
        if knots.ndim != 1 or len(knots) < 2 or not np.all(np.diff(knots) > 0):
            raise ValueError(f"the shell mean needs >= 2 increasing knots, got {knots}")
        out["mean_shell_values"] = jnp.zeros(knots.shape, dtype)
        out["mean_shell_knots"] = jnp.asarray(knots, dtype)
    return out


def mean_function_name(params) -> str:
    if "mean_gradient" in params:
        return "linear"
    if "mean_shell_values" in params:
        return "shells"
    return "constant"


def prior_mean(params, x):
    """The prior mean of phi at points ``x`` ``(N, 3)``: ``(N,)``, or the scalar c when constant
    (it broadcasts the same way)."""
    c = params["mean"]
    if "mean_gradient" in params:
        origin = lax.stop_gradient(params["mean_origin"])
        c = c + jnp.matmul(x - origin, params["mean_gradient"], precision=_HIGHEST) / 1000.0
    if "mean_shell_values" in params:
        knots = lax.stop_gradient(params["mean_shell_knots"])
        c = c + jnp.interp(x[:, 2], knots, params["mean_shell_values"])
    return c


def hyperparameters(params) -> dict[str, jax.Array]:
    """The five GP hyperparameters in physical units: scale lengths (pc), amplitude, mean (dex)."""
    return dict(
        scale_lengths_pc=jnp.exp(params["log_scale_lengths"]),
        amplitude_dex=jnp.exp(params["log_amplitude"]),
        mean_dex=params["mean"],
    )


def q_chol(params):
    """S: lower-triangular with a positive diagonal, from the raw parameter."""
    raw = params["q_chol_raw"]
    return jnp.tril(raw, -1) + jnp.diag(jnp.exp(jnp.diag(raw)))


def chol_to_raw(s):
    """Inverse of `q_chol` for a lower-triangular S with a positive diagonal."""
    s = jnp.asarray(s)
    return jnp.tril(s, -1) + jnp.diag(jnp.log(jnp.diag(s)))


# ---- KL[q(v) || p(v)] --------------------------------------------------------------------------
def kl_divergence(params):
    """KL[N(m, S S^T) || N(0, I)] = 1/2 (tr S S^T + m.m - M - 2 sum log diag S) (nats)."""
    m = params["q_mean"]
    raw = params["q_chol_raw"]
    s_sq = jnp.sum(jnp.tril(raw, -1) ** 2) + jnp.sum(jnp.exp(2.0 * jnp.diag(raw)))
    log_det = 2.0 * jnp.sum(jnp.diag(raw))
    return 0.5 * (s_sq + jnp.dot(m, m) - m.shape[0] - log_det)


# ---- the GP conditional ------------------------------------------------------------------------
def inducing_cholesky(params, jitter):
    """L with L L^T = K_uu + jitter * alpha^2 I (jitter relative to the prior variance)."""
    hyp = hyperparameters(params)
    z = params["inducing_points"]
    k_uu = covariance(params, z, z)
    k_uu = k_uu + jitter * hyp["amplitude_dex"] ** 2 * jnp.eye(z.shape[0], dtype=z.dtype)
    return jnp.linalg.cholesky(k_uu)


def project(params, chol_uu, cells_xyz):
    """B = L^-1 K_ux ``(M, N)`` and the conditional variance k_xx - colsum(B^2) ``(N,)``."""
    hyp = hyperparameters(params)
    k_ux = covariance(params, params["inducing_points"], cells_xyz)
    b = solve_triangular(chol_uu, k_ux, lower=True)
    cond_var = jnp.maximum(hyp["amplitude_dex"] ** 2 - jnp.sum(b * b, axis=0), 0.0)
    return b, cond_var


def _phi_chunk(params, chol_uu, v, cells_xyz, eps_cells):
    """phi samples ``(S, C)`` at C cells given whitened samples v ``(S, M)``."""
    b, cond_var = project(params, chol_uu, cells_xyz)
    mean = prior_mean(params, cells_xyz) + jnp.matmul(v, b, precision=_HIGHEST)
    return mean + jnp.sqrt(cond_var) * eps_cells


def sample_phi(params, cells_xyz, eps_inducing, eps_cells, *, jitter, cell_chunk=None):
    """Reparameterised joint samples of phi at the cells, ``(S, N)`` (dex).

    Args:
      cells_xyz: ``(N, 3)`` cell centres (pc).
      eps_inducing: ``(S, M)`` standard normals: v_s = m + S eps_s.
      eps_cells: ``(S, N)`` standard normals for the conditional (diagonal) variance.
      jitter: relative diagonal jitter of K_uu.
      cell_chunk: see `SVGPModel`.
    """
    chol_uu = inducing_cholesky(params, jitter)
    v = params["q_mean"] + jnp.matmul(eps_inducing, q_chol(params).T, precision=_HIGHEST)
    n = cells_xyz.shape[0]
    if cell_chunk is None or cell_chunk >= n:
        return _phi_chunk(params, chol_uu, v, cells_xyz, eps_cells)
    # Bounded memory: M x cell_chunk at a time, recomputed in the backward pass.
    num_chunks = -(-n // cell_chunk)
    pad = num_chunks * cell_chunk - n
    cells = jnp.pad(cells_xyz, ((0, pad), (0, 0)), mode="edge")
    eps = jnp.pad(eps_cells, ((0, 0), (0, pad)))
    cells = cells.reshape(num_chunks, cell_chunk, 3)
    eps = eps.reshape(eps.shape[0], num_chunks, cell_chunk).transpose(1, 0, 2)
    chunk_fn = jax.checkpoint(lambda c, e: _phi_chunk(params, chol_uu, v, c, e))
    phi = lax.map(lambda ce: chunk_fn(*ce), (cells, eps))  # (chunks, S, C)
    phi = phi.transpose(1, 0, 2).reshape(eps_cells.shape[0], -1)
    return phi[:, :n]


def predictive_moments(params, cells_xyz, *, jitter):
    """Marginal mean and variance of q(phi) at the cells (eqs. A.6-A.7, whitened form)."""
    chol_uu = inducing_cholesky(params, jitter)
    b, cond_var = project(params, chol_uu, cells_xyz)
    mean = prior_mean(params, cells_xyz) + jnp.matmul(params["q_mean"], b, precision=_HIGHEST)
    sb = jnp.matmul(q_chol(params).T, b, precision=_HIGHEST)
    return mean, cond_var + jnp.sum(sb * sb, axis=0)


def soft_cap_phi(phi, cap: float, sharpness: float = 4.0):
    """Smooth upper bound: ``cap - softplus(sharpness (cap - phi)) / sharpness`` (dex).

    Monotone with a non-zero gradient everywhere (a hard clip would leave capped samples with no
    gradient pulling them back); equals phi to < 1e-5 dex for phi < cap - 3 and tends to cap.
    """
    return cap - jax.nn.softplus(sharpness * (cap - phi)) / sharpness


def density_from_phi(phi, link: str):
    """rho (mag/pc) from phi: 10^phi for the paper's "log10" link, phi itself for "linear"."""
    if link == "log10":
        return jnp.exp(LN10 * phi)
    if link == "linear":
        return phi
    raise ValueError(f"unknown link {link!r}")


# ---- the likelihood ----------------------------------------------------------------------------
def gaussian_log_likelihood(model_extinction, stars: StarData, model_error=None):
    """log N(A_obs | A_mod, sigma^2) per star ``(..., num_stars)``, zero where weight is 0.

    ``model_error`` = (f, s) (`model_error_scales`): sigma^2 -> sigma^2 + (f A_mod)^2 + s^2.
    """
    if model_error is None:
        sigma = stars.sigma
    else:
        frac, floor = model_error
        sigma = jnp.sqrt(stars.sigma**2 + (frac * model_extinction) ** 2 + floor**2)
    resid = (stars.extinction - model_extinction) / sigma
    log_norm = -jnp.log(sigma) - 0.5 * math.log(2.0 * math.pi)
    return stars.weight * (log_norm - 0.5 * resid * resid)


def expected_log_likelihood_samples(density, stars: StarData, d_widths_pc, model_error=None):
    """Sum over stars of log p(A_obs | rho_s) for each sample: density ``(S, nl, nb, nd)``."""
    model_ext = apply_star_operator(density, stars.flat_index, stars.partial_pc, d_widths_pc)
    return jnp.sum(gaussian_log_likelihood(model_ext, stars, model_error), axis=-1)


def draw_eps(key, num_samples, num_inducing, num_cells, dtype):
    """Standard normals for one ELBO estimate: (S, M) and (S, N)."""
    k_u, k_f = jax.random.split(key)
    return (
        jax.random.normal(k_u, (num_samples, num_inducing), dtype),
        jax.random.normal(k_f, (num_samples, num_cells), dtype),
    )


def density_samples(params, key, cells_xyz, full_shape, model: SVGPModel, jitter):
    """S samples of rho on the grid, ``(S, nl, nb, nd_total)`` (mag/pc)."""
    m = params["inducing_points"].shape[0]
    eps_u, eps_f = draw_eps(key, model.num_samples, m, cells_xyz.shape[0], cells_xyz.dtype)
    phi = sample_phi(params, cells_xyz, eps_u, eps_f, jitter=jitter, cell_chunk=model.cell_chunk)
    if model.link == "log10" and model.max_log10_density is not None:
        phi = soft_cap_phi(phi, model.max_log10_density)
    return density_from_phi(phi, model.link).reshape(model.num_samples, *full_shape)


def elbo(params, key, cells_xyz, stars: StarData, d_widths_pc, full_shape, model, jitter):
    """ELBO (nats) with all stars on one device: E_q[log p(A_obs | phi)] - KL[q(v) || p(v)].

    The sharded, minibatched estimator used for fitting is `dustjax.gp.fit.make_elbo_fn`; both
    are built from the same pieces and the tests check that they agree.
    """
    density = density_samples(params, key, cells_xyz, full_shape, model, jitter)
    # E_q[log p(A_obs | phi)] by Monte Carlo over joint samples
    model_error = model_error_scales(params)
    expected_ll = jnp.mean(
        expected_log_likelihood_samples(density, stars, d_widths_pc, model_error)
    )
    # KL[q(v) || p(v)], closed form
    return expected_ll - kl_divergence(params)


# ---- closed forms for the linear link (tests and checks) ---------------------------------------
def expected_log_likelihood_linear(params, cells_xyz, operator_dense, extinction, sigma, *, jitter):
    """E_q[log N(A_obs | H phi, sigma^2)] in closed form for the linear link rho = phi.

    With q(phi) = N(mu, Sigma), Sigma = B^T S S^T B + diag(cond var):
    sum_i -1/2 log(2 pi sigma_i^2) - ((A_i - H_i mu)^2 + H_i Sigma H_i^T) / (2 sigma_i^2).
    ``operator_dense`` is the ``(num_stars, N)`` matrix H (`StarOperator.todense`).
    """
    chol_uu = inducing_cholesky(params, jitter)
    b, cond_var = project(params, chol_uu, cells_xyz)
    h = jnp.asarray(operator_dense, cells_xyz.dtype)
    mu = prior_mean(params, cells_xyz) + params["q_mean"] @ b
    resid = extinction - h @ mu
    hs = h @ (b.T @ q_chol(params))  # (stars, M)
    var = jnp.sum(hs * hs, axis=1) + (h * h) @ cond_var
    return jnp.sum(
        -0.5 * jnp.log(2 * jnp.pi * sigma**2) - 0.5 * (resid**2 + var) / sigma**2,
    )


def exact_log_marginal_linear(params, cells_xyz, operator_dense, extinction, sigma, *, jitter):
    """log N(A_obs | H c, H K H^T + diag sigma^2): the exact evidence of the linear-link model.

    K is the prior covariance at the cells; the jitter of K_uu is added to it too so that, with
    the inducing points at the cells, the sparse model and this exact one are the same model.
    """
    hyp = hyperparameters(params)
    k = covariance(params, cells_xyz, cells_xyz)
    k = k + jitter * hyp["amplitude_dex"] ** 2 * jnp.eye(cells_xyz.shape[0], dtype=k.dtype)
    h = jnp.asarray(operator_dense, cells_xyz.dtype)
    cov = h @ k @ h.T + jnp.diag(sigma**2)
    mean = jnp.broadcast_to(prior_mean(params, cells_xyz), cells_xyz.shape[:1])
    resid = extinction - h @ mean
    return jax.scipy.stats.multivariate_normal.logpdf(resid, jnp.zeros_like(resid), cov)


def exact_posterior_whitened(params, cells_xyz, operator_dense, extinction, sigma, *, jitter):
    """(m, S) of the exact posterior of v for the linear link, inducing points at the cells.

    With u = phi(cells) = c + L v and A = H u + noise, v | A is Gaussian with precision
    P = I + L^T H^T Sigma^-1 H L and mean P^-1 L^T H^T Sigma^-1 (A - H c).
    """
    chol_uu = inducing_cholesky(params, jitter)
    h = jnp.asarray(operator_dense, cells_xyz.dtype)
    hl = h @ chol_uu
    w = 1.0 / sigma**2
    precision = jnp.eye(chol_uu.shape[0], dtype=h.dtype) + hl.T @ (hl * w[:, None])
    cov = jnp.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    mean = jnp.broadcast_to(prior_mean(params, cells_xyz), cells_xyz.shape[:1])
    m = cov @ (hl.T @ (w * (extinction - h @ mean)))
    return m, jnp.linalg.cholesky(cov)
