"""A post-hoc model error for the GP's star bands, fitted on stars the fit did not see.

The GP's 16-84 % bands of a star's extinction hold only what the variational posterior knows;
what the grid and the GP cannot represent is not in them (issue 18: 18-47 % coverage where 68 %
is the aim). Both `realsky` (the real-sky test) and `pipeline` (``experiments/fit_gp``) put the
missing part into an extra variance (f A)^2 + s^2, fitted by maximum likelihood on validation
stars held out of the fit (`calibrate_posthoc`), and add it to the bands (`widen_bands`).
"""

from __future__ import annotations

import numpy as np


def calibrate_posthoc(pct, observed, sigma, *, target_coverage=None) -> tuple[float, float]:
    """(f, s) of a model error (f A)^2 + s^2 by maximum likelihood on validation stars.

    Each validation star's observed extinction is taken as N(P50, w^2 + (f P50)^2 + s^2 +
    sigma^2), with w the half-width of its 16-84 % band: what the band and the noise leave
    unexplained is put into the model error.

    ``target_coverage`` (e.g. 0.68; None: the maximum-likelihood (f, s) as they are, what
    `realsky` reports): then the extra variance keeps the likelihood's shape f : s but is scaled
    by the smallest factor k >= 0 with which the validation stars' observed extinctions fall
    inside P50 +- sqrt(w^2 + k ((f P50)^2 + s^2) + sigma^2) (`observed_coverage`) for at least
    that fraction. A Gaussian likelihood over heavy-tailed residuals (a few badly fitted stars)
    gives a variance that over-covers the bulk; the coverage target does not. k = 0 (f = s = 0)
    where the bands and the noise already cover it.
    """
    f, s = _maximum_likelihood(pct, observed, sigma)
    if target_coverage is None:
        return f, s

    def cov(k):
        return observed_coverage(widen_bands(pct, np.sqrt(k) * f, np.sqrt(k) * s), observed, sigma)

    if cov(0.0) >= target_coverage:
        return 0.0, 0.0
    k = _smallest_scale_reaching(cov, target_coverage)
    return float(np.sqrt(k) * f), float(np.sqrt(k) * s)


def calibrate_model_error(
    pct_model, observed, sigma, *, learned=None, target_coverage: float = 0.68
) -> tuple[float, float]:
    """(f, s) of the whole model error to add to the *model's* bands (no model error in them).

    Without a learned term: `calibrate_posthoc(target_coverage=...)`. With one (``learned`` =
    (f, s) of `svgp.model_error_scales`), its shape f : s is kept and it is scaled by the
    k >= 0 that brings the held-out stars' observed coverage to the target, so the calibration,
    fitted on stars the fit did not see, has the last word: k < 1 narrows a learned term that
    over-covers (76.7 % of the true extinctions on the real sky at paper size, where the
    learned term was added to the bands before), k > 1 widens it.
    """
    if learned is None:
        return calibrate_posthoc(pct_model, observed, sigma, target_coverage=target_coverage)
    f0, s0 = (float(v) for v in learned)

    def cov(k):
        widened = widen_bands(pct_model, np.sqrt(k) * f0, np.sqrt(k) * s0)
        return observed_coverage(widened, observed, sigma)

    if cov(0.0) >= target_coverage or (f0 == 0 and s0 == 0):
        return 0.0, 0.0
    k = _smallest_scale_reaching(cov, target_coverage)
    return float(np.sqrt(k) * f0), float(np.sqrt(k) * s0)


CALIBRATION_METHODS = ("deconvolved", "observed")


def calibrate_bands(
    pct_model,
    observed,
    sigma,
    *,
    shape=None,
    target_coverage: float = 0.68,
    method: str = "deconvolved",
    fitted=None,
    info: dict | None = None,
) -> tuple[float, float, float]:
    """(scale, f, s) of calibrated bands of the true extinction, fitted on held-out stars:
    ``widen_bands(pct_model, f, s, scale)``, i.e. P50 +- sqrt(scale^2 w^2 + (f P50)^2 + s^2).

    The model's bands (half-widths w, no model error) and a model error of shape (f0, s0)
    (``shape``: the learned term, or None / (0, 0): the maximum-likelihood shape of
    `calibrate_posthoc`) give each star a predictive variance of its true extinction
    tau^2 = w^2 + (f0 P50)^2 + s0^2, and the calibration scales the whole of it by one factor k
    (scale = sqrt(k), (f, s) = sqrt(k) (f0, s0)). k may be below 1: an over-wide posterior is
    narrowed, which the earlier calibrations (a model error *added* to the model's bands,
    `calibrate_posthoc`, `calibrate_model_error`) could not do.

    How k is chosen (``method``), against stars whose observed extinction carries a known
    Gaussian noise sigma:

    * ``"observed"``: the observed extinctions fall inside P50 +- sqrt(k tau^2 + sigma^2) for
      ``target_coverage`` of the stars (`observed_coverage`, the earlier calibrations' rule).
      Where the noise dominates (10 % noise, a few % model error) this pins the *variance* of
      the model's error, not its quantiles: with heavy-tailed errors (most stars well fitted, a
      few badly) the band of +-1 standard deviation then holds 80 % of the true extinctions
      (the paper-size simulation, issue 18).
    * ``"deconvolved"`` (default): the standardised error (A_true - P50) / tau is taken as a
      two-component Gaussian scale mixture, (1 - p) N(0, a) + p N(0, a K) with K >= 1, and
      (a, K, p) are fitted by maximum likelihood to the observed residuals, each component
      convolved with the star's known noise (a mixture of Gaussians plus a Gaussian is again
      one: variances a tau^2 + sigma^2 and a K tau^2 + sigma^2). k is then the squared band
      half-width, in units of tau, that holds ``target_coverage`` of the fitted mixture: the
      quantile of the deconvolved error, not its variance. The mixture is kept only where it
      raises the log-likelihood by more than ``_MIXTURE_GATE`` over one Gaussian (4.6: a
      likelihood-ratio test of its two extra parameters at ~1 %; BIC's log N, used before,
      kept one Gaussian where 20,000 residuals resolve the tails); else one Gaussian's
      maximum-likelihood variance sets k (its 68 % quantile; it over-covers heavy-tailed
      errors, as "observed"). Where the fit drives the mixture's narrow part below a tenth of
      the median noise (sd), its width is not measured: it is then raised to its
      profile-likelihood upper limit (the log-likelihood 1.92 below its maximum,
      `_core_upper_limit`), so that the band errs wide rather than collapsing to the model's.

    ``fitted`` (optional, "deconvolved" only): the same three arrays (the model's bands, observed
    extinctions, noise) for the stars *in* the fit. Where the model error is a third of the noise
    or less, the validation stars' residuals alone cannot tell a heavy-tailed error from a
    Gaussian one (their tails add ~0.1 to the residuals' kurtosis, within its noise at 2,000 or
    12,000 stars), the gate keeps one Gaussian, and its +-1 sd holds 80 % of the truth
    (docs/validation.md, "The calibration when the model error is small"). The fitted stars
    (9x as many) carry the same information about the error's *shape*: a GP fitted to N >> M
    stars barely follows any one of them, so their residuals are distributed as held-out
    ones'. The family, (a, K, p) and the gate are then fitted on the validation and (at most
    ``_MAX_SHAPE_STARS`` of the) fitted stars' residuals together; but only where the
    validation stars allow it: if the fitted stars' one-Gaussian error variance is below the
    validation stars' by more than three standard errors (the fit has followed its own stars:
    in-sample residuals narrower than held-out ones), they are left out and the validation
    stars decide alone. The held-out truth is never used. ``info`` (a dict, "deconvolved"):
    filled with what was decided (stars pooled, mixture or one Gaussian, its parameters) and
    ``error_to_noise``, the median ratio of the model error's sd (one Gaussian's) to the noise:
    below ~0.35 a heavy tail is not resolved even by ~10^5 residuals and the one-Gaussian band
    over-covers it (docs/validation.md, "The paper-size simulation's over-coverage").
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if not 0.0 < target_coverage < 1.0:
        raise ValueError(f"target_coverage must be in (0, 1), got {target_coverage}")
    pct = np.asarray(pct_model, np.float64)
    observed = np.asarray(observed, np.float64)
    sigma = np.asarray(sigma, np.float64)
    if pct.shape != (3, observed.size) or sigma.shape != observed.shape or observed.size < 10:
        raise ValueError(
            f"need bands (3, N) and N >= 10 observed extinctions and sigmas, got {pct.shape}, "
            f"{observed.shape}, {sigma.shape}"
        )
    f0, s0 = (0.0, 0.0) if shape is None else (float(v) for v in shape)
    if f0 == 0.0 and s0 == 0.0:
        f0, s0 = _maximum_likelihood(pct, observed, sigma)
    r2, tau2, noise2 = _residual_terms(pct, observed, sigma, f0, s0)
    if not np.any(tau2 > 0):
        raise ValueError("the bands have zero width and no model error: nothing to scale")
    pool = None
    if fitted is not None:
        fpct, fobs, fsig = (np.asarray(v, np.float64) for v in fitted)
        if fpct.shape != (3, fobs.size) or fsig.shape != fobs.shape:
            raise ValueError(
                f"fitted: need bands (3, N), extinctions and sigmas (N,), got {fpct.shape}, "
                f"{fobs.shape}, {fsig.shape}"
            )
        pool = _residual_terms(fpct, fobs, fsig, f0, s0)
    if method == "observed":
        k = _scale_for_observed_coverage(r2, tau2, noise2, target_coverage)
    else:
        k = _deconvolved_scale(r2, tau2, noise2, target_coverage, pool=pool, info=info)
    c = float(np.sqrt(k))
    return c, c * f0, c * s0


_K_RANGE = (1e-6, 1e6)


def _scale_for_observed_coverage(r2, tau2, noise2, target_coverage) -> float:
    """k in _K_RANGE with a fraction ``target_coverage`` of r2 <= k tau2 + noise2 (bisection
    on log k; the fraction rises with k)."""

    def cov(log_k):
        return float(np.mean(r2 <= np.exp(log_k) * tau2 + noise2))

    lo, hi = (float(np.log(v)) for v in _K_RANGE)
    if cov(lo) >= target_coverage:
        return _K_RANGE[0]
    if cov(hi) < target_coverage:
        return _K_RANGE[1]
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if cov(mid) >= target_coverage else (mid, hi)
    return float(np.exp(hi))


def _mixture_nll(theta, r2, tau2, noise2) -> float:
    """Negative log-likelihood of residuals under (1 - p) N(0, a tau2 + noise2) + p N(0, a K
    tau2 + noise2); theta = (log a, log(K - 1), logit p)."""
    theta = np.clip(theta, -30.0, 30.0)  # Nelder-Mead may wander where p -> 0 or K -> inf
    a, k_minus_1, p = np.exp(theta[0]), np.exp(theta[1]), 1.0 / (1.0 + np.exp(-theta[2]))
    v1 = a * tau2 + noise2
    v2 = a * (1.0 + k_minus_1) * tau2 + noise2
    l1 = np.log1p(-p) - 0.5 * (np.log(v1) + r2 / v1)
    l2 = np.log(p) - 0.5 * (np.log(v2) + r2 / v2)
    return -float(np.sum(np.logaddexp(l1, l2)))


def _residual_terms(pct, observed, sigma, f0, s0):
    """(r2, tau2, noise2) per star: the squared residual of P50, the model's squared band
    half-width plus the model error (f0 P50)^2 + s0^2, and the squared noise."""
    tau2 = ((pct[2] - pct[0]) / 2.0) ** 2 + (f0 * pct[1]) ** 2 + s0**2
    return (observed - pct[1]) ** 2, tau2, sigma**2


_MIXTURE_GATE = 4.6  # log-likelihood gain the mixture's two extra parameters must exceed
_MAX_SHAPE_STARS = 20_000  # fitted stars pooled for the error's shape (a seeded random subset)


def _gauss_nll(log_a, r2, tau2, noise2) -> float:
    v = np.exp(log_a) * tau2 + noise2
    return 0.5 * float(np.sum(np.log(v) + r2 / v))


def _gauss_fit(r2, tau2, noise2) -> tuple[float, float, float]:
    """(nll, a, standard error of a) of one Gaussian N(0, a tau2 + noise2) by maximum likelihood
    (the standard error from the Fisher information, 0.5 sum tau2^2 / (a tau2 + noise2)^2)."""
    from scipy.optimize import minimize_scalar

    g = minimize_scalar(
        _gauss_nll, bounds=tuple(np.log(_K_RANGE)), args=(r2, tau2, noise2), method="bounded",
        options=dict(xatol=1e-6),
    )  # fmt: skip
    a = float(np.exp(g.x))
    info = 0.5 * float(np.sum(tau2**2 / (a * tau2 + noise2) ** 2))
    return float(g.fun), a, 1.0 / np.sqrt(max(info, 1e-300))


def _mixture_fit(r2, tau2, noise2) -> tuple[float, float, float, float]:
    """(nll, a, K, p) of the scale mixture by maximum likelihood (Nelder-Mead, four starts)."""
    from scipy.optimize import minimize

    best = None
    for start in ((0.0, 1.0, -2.0), (0.0, 2.0, -1.0), (-1.0, 3.0, -3.0), (0.0, 0.5, 0.0)):
        res = minimize(
            _mixture_nll, np.asarray(start), args=(r2, tau2, noise2), method="Nelder-Mead",
            options=dict(xatol=1e-5, fatol=1e-6, maxiter=4000),
        )  # fmt: skip
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise FloatingPointError("the scale-mixture fit of the calibration did not converge")
    x = np.clip(best.x, -30.0, 30.0)
    return (
        float(best.fun),
        float(np.exp(x[0])),
        1.0 + float(np.exp(x[1])),
        float(1.0 / (1.0 + np.exp(-x[2]))),
    )


def _deconvolved_scale(r2, tau2, noise2, target_coverage, pool=None, info=None) -> float:
    """k of `calibrate_bands`' ``"deconvolved"`` method (see there). ``pool``: the fitted
    stars' (r2, tau2, noise2), pooled with the validation stars' where the two agree; ``info``
    (a dict) is filled with what was decided, for the record."""
    from scipy.special import erf

    def usable(r2, tau2, noise2):
        keep = tau2 + noise2 > 0  # a star with neither band nor noise says nothing
        return r2[keep], tau2[keep], noise2[keep]

    r2, tau2, noise2 = usable(r2, tau2, noise2)
    validation_fit = _gauss_fit(r2, tau2, noise2)
    _, a_val, se_val = validation_fit
    shape_set, pooled, a_fit = (r2, tau2, noise2), 0, None
    if pool is not None:
        pr2, ptau2, pnoise2 = usable(*(np.asarray(v, np.float64) for v in pool))
        if pr2.size > _MAX_SHAPE_STARS:
            pick = np.random.default_rng(0).choice(pr2.size, _MAX_SHAPE_STARS, replace=False)
            pr2, ptau2, pnoise2 = pr2[pick], ptau2[pick], pnoise2[pick]
        _, a_fit, _ = _gauss_fit(pr2, ptau2, pnoise2)
        # the fitted stars' residuals speak for held-out ones unless the fit visibly followed
        # them (their error variance below the validation stars' by > 3 standard errors)
        if pr2.size and a_fit >= a_val - 3.0 * se_val:
            shape_set = tuple(
                np.concatenate(v) for v in zip(shape_set, (pr2, ptau2, pnoise2), strict=True)
            )
            pooled = int(pr2.size)
    nll_mix, a, wide_ratio, p = _mixture_fit(*shape_set)
    # one Gaussian on the same set (the validation stars' fit above when nothing was pooled)
    nll_gauss, a_gauss, _ = _gauss_fit(*shape_set) if pooled else validation_fit
    # the one Gaussian (p = 0) unless the mixture's two more parameters pay their way: where
    # the noise dominates, a Gaussian error's residuals are fitted a little better by a
    # spurious mixture, whose tail would narrow the band below 68 %
    mixture = nll_gauss - nll_mix > _MIXTURE_GATE
    # a narrow part below a tenth of the typical noise (sd) is not resolved: the fit drives it
    # to zero width, which would collapse the band; its width is then taken at the upper end of
    # what the data allow (the profile likelihood ~95 % upper limit), so the band errs wide
    a_min = 0.01 * np.median(shape_set[2]) / np.median(shape_set[1])
    unresolved = mixture and a < a_min
    if unresolved:
        a, wide_ratio, p = _core_upper_limit(shape_set, nll_mix, a, a_gauss)
    if info is not None:
        # the model error's typical size against the noise: its tails' imprint on the residuals
        # falls as this ratio^4 (at 0.26, the paper-size simulation, 120,000 residuals do not
        # resolve a kurtosis-11 error and one Gaussian's band holds ~80 % of the truth)
        with np.errstate(divide="ignore"):  # a noise-free star: an infinite ratio
            error_to_noise = float(np.median(np.sqrt(a_gauss * shape_set[1] / shape_set[2])))
        info.update(error_to_noise=error_to_noise, a_validation=a_val, a_fitted=a_fit,
                    pooled_fitted_stars=pooled, mixture=bool(mixture),
                    core_upper_limit=bool(unresolved), gain=nll_gauss - nll_mix,
                    a=a if mixture else a_gauss, K=wide_ratio if mixture else 1.0,
                    p=p if mixture else 0.0)  # fmt: skip
    if not mixture:  # one Gaussian: its target quantile (0.9945 sd for 68 %)
        a, wide_ratio, p = a_gauss, 1.0, 0.0
    wide = a * wide_ratio

    def cov(k):  # fraction of the mixture inside +-sqrt(k) (units of tau)
        c = np.sqrt(k)
        return (1.0 - p) * erf(c / np.sqrt(2.0 * a)) + p * erf(c / np.sqrt(2.0 * wide))

    return float(np.clip(_smallest_scale_reaching(cov, target_coverage), *_K_RANGE))


def _core_upper_limit(data, nll_best, a_fit, a_hi, drop=1.92):
    """(a, K, p) with the narrow part's variance a at its profile-likelihood upper limit: the
    largest a in (a_fit, a_hi) whose best (K, p) lowers the log-likelihood by less than
    ``drop`` (1.92: chi^2_1 at 95 %, two-sided) from the maximum (bisection on log a, K and p
    refitted at each a, from the previous a's solution)."""
    from scipy.optimize import minimize

    x = np.array([1.0, -2.0])

    def profile(log_a):
        nonlocal x
        best = None
        for start in (x, np.array([3.0, -2.0])):
            res = minimize(
                lambda t: _mixture_nll(np.array([log_a, t[0], t[1]]), *data), start,
                method="Nelder-Mead", options=dict(xatol=1e-4, fatol=1e-5, maxiter=2000),
            )  # fmt: skip
            if best is None or res.fun < best.fun:
                best = res
        x = np.clip(best.x, -30.0, 30.0)
        return best.fun

    lo, hi = np.log(max(a_fit, 1e-12)), np.log(a_hi)
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if profile(mid) - nll_best < drop else (lo, mid)
    profile(hi)
    return float(np.exp(hi)), 1.0 + float(np.exp(x[0])), float(1.0 / (1.0 + np.exp(-x[1])))


def _smallest_scale_reaching(cov, target_coverage: float) -> float:
    """The smallest variance scale k > 0 with ``cov(k) >= target_coverage`` (coverage rises with
    k): brackets it by factors of 4 from 1 (up to 1e8), then bisects 60 times."""
    lo, hi = 0.0, 1.0
    while cov(hi) < target_coverage and hi < 1e8:
        lo, hi = hi, hi * 4.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if cov(mid) >= target_coverage else (mid, hi)
    return hi


def _maximum_likelihood(pct, observed, sigma) -> tuple[float, float]:
    from scipy.optimize import minimize

    p16, p50, p84 = (np.asarray(p, np.float64) for p in pct)
    observed = np.asarray(observed, np.float64)
    sigma = np.asarray(sigma, np.float64)
    w2 = ((p84 - p16) / 2.0) ** 2
    r2 = (observed - p50) ** 2

    def nll(theta):
        f, s = np.exp(theta)
        var = w2 + (f * p50) ** 2 + s**2 + sigma**2
        return 0.5 * float(np.sum(np.log(var) + r2 / var))

    best = minimize(nll, np.log([0.05, 0.01]), method="Nelder-Mead", options=dict(xatol=1e-4))
    f, s = np.exp(best.x)
    return float(f), float(s)


def widen_bands(pct, frac, floor_mag, scale=1.0) -> np.ndarray:
    """16/50/84 % bands with (f P50)^2 + s^2 added in quadrature to each half-width, after each
    half-width is multiplied by ``scale`` (1: the model's own band; < 1 narrows it,
    `calibrate_bands`)."""
    p16, p50, p84 = pct
    extra = (frac * p50) ** 2 + floor_mag**2
    lo, hi = scale**2 * (p50 - p16) ** 2, scale**2 * (p84 - p50) ** 2
    return np.stack([p50 - np.sqrt(lo + extra), p50, p50 + np.sqrt(hi + extra)])


def observed_coverage(pct, observed, sigma) -> float:
    """Fraction of stars whose observed extinction lies within P50 +- sqrt(w^2 + sigma^2) (w the
    band's half-width each side): 68 % when the bands and the noise model are right."""
    p16, p50, p84 = pct
    lo = p50 - np.sqrt((p50 - p16) ** 2 + sigma**2)
    hi = p50 + np.sqrt((p84 - p50) ** 2 + sigma**2)
    return float(np.mean((lo <= observed) & (observed <= hi)))


def coverage(pct, true) -> float:
    """Fraction of the true values inside the 16-84 % band."""
    return float(np.mean((pct[0] <= true) & (true <= pct[2])))
