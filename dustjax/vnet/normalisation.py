"""Normalisations of extinction and density, the variance-head loss, and trained-model predictors.

The paper's eqs. 1-2 (E_hat = ln(1 + E), rho_hat = 10 ln(1 + rho), name ``"eq12"``, the default)
are linear below rho ~ 0.1 mag/pc: a cell of 1e-4 mag/pc and one of 1e-3 differ by 0.009 in
rho_hat, which an MSE loss does not notice next to the dense cells (issue 17, cause 1). The
``"asinh"`` normalisation (not in the paper) is

    E_hat = asinh(E / E0),    rho_hat = asinh(rho / rho0),    E0 = 0.05 mag, rho0 = 1e-4 mag/pc,

linear below the scale and logarithmic above it (asinh(x) ~ ln 2x): every decade of density above
1e-4 mag/pc weighs the same in the loss, down to the diffuse medium; E0 is of the order of the
catalogue noise (sigma_E 0.03-0.05 mag), so noise-dominated extinctions stay near-linear.
Both are exactly invertible; asinh also accepts negative values (noisy cells).

A **variance head** (``config.model.kwargs.num_outputs = 2``): the network's second output channel
is log sigma of a Gaussian in the normalised space, trained by the Gaussian negative
log-likelihood (`gaussian_nll_per_example`, with the beta-NLL weighting of Seitzer et al. 2022,
which keeps the mean's fit close to the MSE's). In mag/pc the Gaussian maps to a skewed
distribution. The point map is its median, rho0 sinh(mu); its mean, ``rho0 sinh(mu)
exp(sigma^2 / 2)`` for asinh (E[sinh X] = sinh(mu) exp(sigma^2/2) for X ~ N(mu, sigma^2)), is
available with ``"point": "mean"`` in ``calibration.json``, but the exp(sigma^2 / 2) factor
multiplies every overshoot where the network is unsure: on the real LR cube (one H200 run,
docs/results/realsky_vnet_run2_h200.json) the median gave skill 0.85 and 84 % of the dust where
the mean gave 0.72 and 123 %, and on LR validation simulations the mean's skill was -4.3. The
16-84 % band is the image of mu -/+ sigma (quantiles map through monotone functions). A scalar
``sigma_scale`` fitted on validation simulations (`fit_sigma_scale`, stored in the workdir's
``calibration.json``) calibrates sigma. Monte Carlo redraws of the catalogue combine by the law of
total variance in the normalised space (`combine_redraws`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

CALIBRATION_FILE = "calibration.json"
LOG_SIGMA_RANGE = (-7.0, 4.0)


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """Forward and inverse maps of extinction (mag) and density (mag/pc), jnp or numpy."""

    name: str = "eq12"
    e0: float = 0.05  # asinh: extinction scale (mag)
    rho0: float = 1e-4  # asinh: density scale (mag/pc)

    def __post_init__(self):
        if self.name not in ("eq12", "asinh"):
            raise ValueError(f"unknown normalisation {self.name!r}; use 'eq12' or 'asinh'")

    def extinction(self, e, xp=jnp):
        if self.name == "eq12":
            return xp.log1p(e)
        return xp.arcsinh(e / self.e0)

    def density(self, rho, xp=jnp):
        if self.name == "eq12":
            return 10.0 * xp.log1p(rho)
        return xp.arcsinh(rho / self.rho0)

    def density_inverse(self, hat, xp=jnp):
        if self.name == "eq12":
            return xp.expm1(hat / 10.0)
        return self.rho0 * xp.sinh(hat)

    def density_mean(self, mu, sigma, xp=jnp):
        """E[rho] for rho_hat ~ N(mu, sigma^2) (mag/pc)."""
        if self.name == "eq12":
            return xp.exp(mu / 10.0 + 0.5 * (sigma / 10.0) ** 2) - 1.0
        return self.rho0 * xp.sinh(mu) * xp.exp(0.5 * sigma**2)


def get_normalisation(name: str | None = None, params=None) -> Normalisation:
    return Normalisation(name or "eq12", **dict(params or {}))


def normalisation_of(config) -> Normalisation:
    """``config.data.normalisation`` (absent: the paper's eqs. 1-2)."""
    data = config.data
    return get_normalisation(data.get("normalisation") or "eq12",
                             data.get("normalisation_params") or None)  # fmt: skip


# ---- loss ----------------------------------------------------------------------------------------
def split_head(predictions):
    """``(mu, log_sigma)`` from predictions ``(..., 2)``; log sigma clipped to a sane range."""
    mu = predictions[..., 0:1].astype(jnp.float32)
    log_sigma = jnp.clip(predictions[..., 1:2].astype(jnp.float32), *LOG_SIGMA_RANGE)
    return mu, log_sigma


def gaussian_nll_per_example(predictions, targets, beta: float = 0.5):
    """beta-NLL of the targets ``(B, ..., 1)`` under N(mu, sigma^2) from ``(B, ..., 2)``:
    mean over cells of stop_grad(sigma^(2 beta)) [(t - mu)^2 / (2 sigma^2) + log sigma].
    beta = 0: the plain Gaussian NLL; beta = 1: the mean's gradient is the MSE's."""
    mu, log_sigma = split_head(predictions)
    t = targets.astype(jnp.float32)
    nll = 0.5 * jnp.square((t - mu) * jnp.exp(-log_sigma)) + log_sigma
    if beta:
        nll = nll * jax.lax.stop_gradient(jnp.exp(2.0 * beta * log_sigma))
    return jnp.mean(nll, axis=tuple(range(1, nll.ndim)))


def mean_mse_per_example(predictions, targets):
    """MSE of the first output channel (the mean) against the targets."""
    diff = predictions[..., 0:1].astype(jnp.float32) - targets.astype(jnp.float32)
    return jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))


def _tasks():
    from dustjax.training.tasks import Task, mse_per_example
    from dustjax.vnet.data import VNET_TASK_HOOKS

    kw = VNET_TASK_HOOKS  # the V-net's own hooks (frame, input shape, restore hint)
    return (
        Task(per_example_loss=gaussian_nll_per_example, **kw),
        Task(per_example_loss=mse_per_example, **kw),
    )


NLL_TASK, MSE_TASK = _tasks()


# ---- predictors ----------------------------------------------------------------------------------
def combine_redraws(mu, sigma=None, sigma_scale: float = 1.0):
    """Per cell mean and total standard deviation in the normalised space over R Monte Carlo
    redraws (axis 0): var = var_R(mu) + mean_R((sigma_scale sigma)^2). ``sigma`` None: the
    Monte Carlo dispersion alone."""
    mu = jnp.asarray(mu, jnp.float32)
    mean = jnp.mean(mu, axis=0)
    var = jnp.var(mu, axis=0, ddof=1) if mu.shape[0] > 1 else jnp.zeros_like(mean)
    if sigma is not None:
        var = var + jnp.mean(jnp.square(sigma_scale * jnp.asarray(sigma, jnp.float32)), axis=0)
    return mean, jnp.sqrt(var)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelPredictor:
    """A trained V-net with its normalisation (and variance head, if any).

    ``density(extinction (B, nx, ny, nz) mag) -> (B, nx, ny, nz) mag/pc``: the point map (the
    `dustjax.vnet.apply.Predictor` signature; for a variance head the median, or the mean with
    ``point="mean"``).
    ``predict_hat(extinction) -> (mu_hat, sigma_hat)``: normalised mean and calibrated standard
    deviation (sigma None without a variance head). ``band(mu_hat, sigma_hat)`` -> (mean, p16,
    p84) in mag/pc.
    """

    model: object
    variables: dict
    normalisation: Normalisation
    num_outputs: int = 1
    sigma_scale: float = 1.0
    point: str = "median"  # variance head: the point map is the median or the mean in mag/pc

    @property
    def has_variance(self) -> bool:
        return self.num_outputs >= 2

    def predict_hat(self, extinction):
        n = self.normalisation
        x = n.extinction(jnp.maximum(extinction, 0.0))[..., None]
        out = self.model.apply(self.variables, x, train=False).astype(jnp.float32)
        mu = out[..., 0]
        if not self.has_variance:
            return mu, None
        sigma = jnp.exp(jnp.clip(out[..., 1], *LOG_SIGMA_RANGE)) * self.sigma_scale
        return mu, sigma

    def density(self, extinction):
        mu, sigma = self.predict_hat(extinction)
        n = self.normalisation
        if sigma is None or self.point == "median":
            rho = n.density_inverse(mu)
        else:
            rho = n.density_mean(mu, sigma)
        return jnp.maximum(rho, 0.0)

    __call__ = density

    def quantiles(self, mu, sigma):
        """(mean, p16, p84) in mag/pc of rho_hat ~ N(mu, sigma^2), clipped at 0."""
        n = self.normalisation
        mean = jnp.maximum(n.density_mean(mu, sigma), 0.0)
        p16 = jnp.maximum(n.density_inverse(mu - sigma), 0.0)
        p84 = jnp.maximum(n.density_inverse(mu + sigma), 0.0)
        return mean, p16, p84

    def band(self, mu_hats, sigma_hats=None):
        """Combine R Monte Carlo redraws (axis 0 of ``(R, ...)`` arrays from `predict_hat`):
        dict(mean, p16, p84, mu_hat, sigma_hat) in mag/pc (the hats normalised), with
        var = var_R(mu) + mean_R(sigma^2) (sigma already calibrated)."""
        mu, sigma = combine_redraws(mu_hats, sigma_hats)
        mean, p16, p84 = self.quantiles(mu, sigma)
        return dict(mean=mean, p16=p16, p84=p84, mu_hat=mu, sigma_hat=sigma)


def predictor_from_config(config, model, variables, workdir=None) -> ModelPredictor:
    """The `ModelPredictor` of a loaded run (``dustjax.training.load_trained``'s outputs)."""
    kwargs = config.model.get("kwargs") or {}
    calibration = {}
    if workdir is not None and (Path(workdir) / CALIBRATION_FILE).exists():
        calibration = json.loads((Path(workdir) / CALIBRATION_FILE).read_text())
    return ModelPredictor(
        model=model,
        variables=variables,
        normalisation=normalisation_of(config),
        num_outputs=int(kwargs.get("num_outputs", 1) or 1),
        sigma_scale=float(calibration.get("sigma_scale", 1.0)),
        point=str(calibration.get("point", "median")),
    )


def load_model_predictor(workdir, which: str = "best") -> ModelPredictor:
    """Load a training workdir as a `ModelPredictor` (normalisation and calibration included).

    It does not check the region: callers that know the data's region call
    `dustjax.vnet.apply.check_model_region` first (this module sits below `apply`, which imports
    it, so it must not import `apply` back).
    """
    from dustjax.training import load_trained

    model, variables, config = load_trained(workdir, which=which)
    return predictor_from_config(config, model, variables, workdir)


# ---- calibration ---------------------------------------------------------------------------------
def coverage(truth_hat, mu, sigma, mask=None) -> float:
    """Fraction of (masked) cells with |truth - mu| <= sigma (the 16-84 % band)."""
    inside = np.abs(np.asarray(truth_hat) - np.asarray(mu)) <= np.asarray(sigma)
    if mask is not None:
        inside = inside[np.asarray(mask, bool)]
    return float(np.mean(inside))


def fit_sigma_scale(truth_hat, mu, sigma, mask=None, target: float = 0.6827,
                    mc_sigma=None) -> float:  # fmt: skip
    """The factor c such that |truth - mu| <= sqrt(mc_sigma^2 + (c sigma)^2) holds in a fraction
    `target` of the (masked) cells (bisection on c in [1e-3, 1e3], log scale)."""
    t, m, s = (np.asarray(a, np.float64) for a in (truth_hat, mu, sigma))
    mc = np.zeros_like(s) if mc_sigma is None else np.asarray(mc_sigma, np.float64)
    if mask is not None:
        keep = np.asarray(mask, bool)
        t, m, s, mc = t[keep], m[keep], s[keep], mc[keep]
    err = np.abs(t - m)

    def cov(c):
        return float(np.mean(err <= np.sqrt(mc**2 + (c * s) ** 2)))

    lo, hi = math.log(1e-3), math.log(1e3)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cov(math.exp(mid)) < target:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


def write_calibration(workdir, sigma_scale: float, **extra) -> Path:
    path = Path(workdir) / CALIBRATION_FILE
    path.write_text(json.dumps(dict(sigma_scale=float(sigma_scale), **extra), indent=1))
    return path
