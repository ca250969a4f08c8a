"""The calibration of the GP's extinction bands on held-out stars (`dustjax.gp.calibration`,
issue 18): it narrows an over-wide posterior as well as widening a narrow one, and it holds 68 %
of the true extinctions where the model's errors are heavy-tailed and the noise dominates."""

import dataclasses

import numpy as np
import pytest

from dustjax.gp import calibration


def _stars(rng, n, model_sd_frac, band_frac, noise_frac=0.1):
    """n stars: true A, the model's P50 = A + error (error sd ``model_sd_frac`` A: a number or
    an array per star), bands P50 +- ``band_frac`` P50, observed = A + N(0, (noise_frac A)^2)."""
    a = rng.uniform(0.2, 2.0, n)
    p50 = a + model_sd_frac * a * rng.standard_normal(n)
    w = band_frac * a
    sigma = noise_frac * a
    observed = a + sigma * rng.standard_normal(n)
    return np.stack([p50 - w, p50, p50 + w]), observed, sigma, a


@pytest.mark.parametrize("method", calibration.CALIBRATION_METHODS)
def test_an_over_wide_posterior_is_narrowed_to_68_percent_of_held_out_truths(method):
    """Model error 5 %, the posterior's bands 3x too wide (99.7 % coverage), noise 10 %: fitted
    on one set of stars, the calibration brings another set's bands back to ~68 % of the true
    extinctions with a band scale near 1/3 (within 3 points; "observed", which counts stars
    rather than fitting a likelihood, within 5). The earlier calibration (a model error added to
    the bands) could only leave them as they were."""
    rng = np.random.default_rng(0)
    val = _stars(rng, 10_000, 0.05, 0.15)
    hold = _stars(rng, 10_000, 0.05, 0.15)
    assert calibration.coverage(hold[0], hold[3]) > 0.99
    assert calibration.calibrate_model_error(*val[:3]) == (0.0, 0.0)  # the old rule: no change
    scale, f, s = calibration.calibrate_bands(*val[:3], method=method)
    assert scale < 0.6
    cov = calibration.coverage(calibration.widen_bands(hold[0], f, s, scale), hold[3])
    assert cov == pytest.approx(0.68, abs=0.03 if method == "deconvolved" else 0.05)


@pytest.mark.parametrize("method", calibration.CALIBRATION_METHODS)
def test_a_narrow_posterior_is_widened_and_a_right_one_left_alone(method):
    """Bands a third of the truth's scatter are widened to ~68 %; bands that are right stay
    ~right (scale and model error together reproduce the truth's scatter)."""
    rng = np.random.default_rng(1)
    for band_frac in (0.05 / 3, 0.05):
        val = _stars(rng, 20_000, 0.05, band_frac)
        hold = _stars(rng, 20_000, 0.05, band_frac)
        scale, f, s = calibration.calibrate_bands(*val[:3], method=method)
        cov = calibration.coverage(calibration.widen_bands(hold[0], f, s, scale), hold[3])
        tol = 0.03 if method == "deconvolved" else 0.05
        assert cov == pytest.approx(0.68, abs=tol), (band_frac, scale, f, s)


def test_heavy_tailed_model_errors_deconvolved_not_matched_in_variance():
    """Most stars fitted to 3 %, one in five off by 15 %, bands of 1.5 %, noise 6 % (heavy
    tails as in the paper-size simulation, where 68 % coverage of the observed extinctions gave
    80 % of the true ones): matching the observed coverage pins the error's variance and
    over-covers the truth; the scale-mixture deconvolution holds ~68 % of it."""
    rng = np.random.default_rng(2)

    def draw(n):
        sd = np.where(rng.uniform(size=n) < 0.2, 0.15, 0.03)
        return _stars(rng, n, sd, 0.015, noise_frac=0.06)

    val, hold = draw(12_000), draw(12_000)
    got = {}
    for method in calibration.CALIBRATION_METHODS:
        scale, f, s = calibration.calibrate_bands(*val[:3], method=method)
        got[method] = calibration.coverage(calibration.widen_bands(hold[0], f, s, scale), hold[3])
    assert got["observed"] > 0.76
    assert got["deconvolved"] == pytest.approx(0.68, abs=0.04)
    f, s = calibration.calibrate_model_error(*val[:3])  # the rule before: widen only, observed
    assert calibration.coverage(calibration.widen_bands(hold[0], f, s), hold[3]) > 0.76


def test_calibrate_bands_keeps_a_learned_shape_and_rejects_bad_input():
    rng = np.random.default_rng(3)
    pct, observed, sigma, _ = _stars(rng, 2000, 0.05, 0.01)
    scale, f, s = calibration.calibrate_bands(pct, observed, sigma, shape=(0.04, 0.01))
    assert f / s == pytest.approx(4.0) and f == pytest.approx(0.04 * scale)
    with pytest.raises(ValueError, match="method"):
        calibration.calibrate_bands(pct, observed, sigma, method="bayes")
    with pytest.raises(ValueError, match="target_coverage"):
        calibration.calibrate_bands(pct, observed, sigma, target_coverage=1.2)
    with pytest.raises(ValueError, match=r"\(3, N\)"):
        calibration.calibrate_bands(pct[:, :5], observed, sigma)


def test_widen_bands_scale_multiplies_the_models_half_widths_first():
    pct = np.array([[0.8, 1.7], [1.0, 2.0], [1.3, 2.2]])
    np.testing.assert_allclose(calibration.widen_bands(pct, 0.0, 0.0), pct)
    half = calibration.widen_bands(pct, 0.0, 0.0, 0.5)
    np.testing.assert_allclose(half[1] - half[0], 0.5 * (pct[1] - pct[0]))
    np.testing.assert_allclose(half[2] - half[1], 0.5 * (pct[2] - pct[1]))
    both = calibration.widen_bands(pct, 0.1, 0.05, 0.5)
    np.testing.assert_allclose(
        both[2] - both[1], np.sqrt(0.25 * (pct[2] - pct[1]) ** 2 + (0.1 * pct[1]) ** 2 + 0.05**2)
    )


def test_a_maps_calibrated_band_scale_narrows_its_integrated_percentiles():
    """A GP map whose header holds ``CALSCALE`` (and no model error): integrated percentiles and
    uncertainties from the samples have that factor times the samples' own spread; the raw
    draws and ``model_error=False`` are the samples'."""
    from dustjax.catalog import galactic_to_cartesian_np
    from dustjax.gp.pipeline import extinction_band_scale
    from dustjax.maps import DustMap

    rng = np.random.default_rng(4)
    c = rng.normal(2e-3, 5e-4, 2000)
    edges = (np.array([60.0, 70.0, 80.0]), np.array([-5.0, 0.0, 5.0]), np.linspace(100, 600, 6))
    samples = np.broadcast_to(c[:, None, None, None], (2000, 2, 2, 5)).astype(np.float64)
    plain = DustMap("spherical", np.full((2, 2, 5), 2e-3), edges, samples=samples)
    m = dataclasses.replace(plain, meta=dict(CALFRAC=0.0, CALFLOOR=0.0, CALSCALE=0.5))
    assert m.extinction_band_scale() == 0.5 and plain.extinction_band_scale() == 1.0
    xyz = galactic_to_cartesian_np(np.array([65.0, 75.0]), np.array([2.0, -3.0]), np.array(
        [150.0, 420.0]))  # fmt: skip
    kw = dict(integrated=True, mode="percentile", pct=[16, 50, 84])
    raw, got = plain.query_xyz(xyz, **kw), m.query_xyz(xyz, **kw)
    np.testing.assert_allclose(got[:, 1], raw[:, 1])
    np.testing.assert_allclose(got[:, 2] - got[:, 1], 0.5 * (raw[:, 2] - raw[:, 1]), rtol=1e-9)
    np.testing.assert_allclose(m.query_xyz(xyz, **kw, model_error=False), raw)
    _, s_plain = plain.query_xyz(xyz, integrated=True, return_uncertainty=True)
    _, s_cal = m.query_xyz(xyz, integrated=True, return_uncertainty=True)
    np.testing.assert_allclose(s_cal, 0.5 * s_plain, rtol=1e-9)
    assert extinction_band_scale(dict(calibration=dict(band_scale=0.7))) == 0.7
    assert extinction_band_scale(dict(model_error=dict(frac=0.1, floor_mag=0.0))) == 1.0


def _two_population_stars(rng, n, frac_bad, bad_sd, good_sd):
    """`_stars` with a model error of sd ``good_sd`` A for most stars and ``bad_sd`` A for a
    fraction ``frac_bad`` (the stars behind badly fitted clumps), bands 1.3 %, noise 10 %."""
    sd = np.where(rng.uniform(size=n) < frac_bad, bad_sd, good_sd)
    return _stars(rng, n, sd, 0.013)


def test_heavy_tails_under_the_noise_are_resolved_by_pooling_the_fitted_stars():
    """Model error 2.5 % for 85 % of the stars and 9 % for 15 %, against 10 % noise (the regime
    of the paper-size simulation, issue 18): on 2,000 validation stars alone the tails do not
    show, one Gaussian's variance sets the band and it holds > 76 % of a fresh set's true
    extinctions (84 % here); pooled with 18,000 fitted stars' residuals (the same
    distribution, as a GP's fitted stars are), the scale mixture is resolved and its quantile
    holds 60-76 % (72 % here). Over six draws of this set-up: 5 of 6 inside 60-76 % pooled,
    1 of 6 with the validation stars alone (docs/validation.md)."""
    rng = np.random.default_rng(3)
    val, fit, hold = (
        _two_population_stars(rng, n, 0.15, 0.09, 0.025) for n in (2000, 18000, 20000)
    )
    c, f, s = calibration.calibrate_bands(*val[:3])
    assert calibration.coverage(calibration.widen_bands(hold[0], f, s, c), hold[3]) > 0.76
    info = {}
    c, f, s = calibration.calibrate_bands(*val[:3], fitted=fit[:3], info=info)
    assert info["pooled_fitted_stars"] == 18000 and info["mixture"]
    cov = calibration.coverage(calibration.widen_bands(hold[0], f, s, c), hold[3])
    assert 0.60 <= cov <= 0.76, (cov, info)


def test_gaussian_errors_pooled_with_the_fitted_stars_stay_at_68_percent():
    """A Gaussian model error (3.5 % against 10 % noise): pooling the fitted stars keeps one
    Gaussian (the mixture does not pay its way) and ~68 % of the true extinctions."""
    from scipy.special import erfinv

    rng = np.random.default_rng(0)
    val, fit, hold = (_stars(rng, n, 0.035, 0.013) for n in (2000, 18000, 20000))
    info = {}
    c, f, s = calibration.calibrate_bands(*val[:3], fitted=fit[:3], info=info)
    assert not info["mixture"] and info["pooled_fitted_stars"] == 18000
    # one Gaussian N(0, a): the band is its 68 % quantile, sqrt(2) erfinv(0.68) sqrt(a)
    assert c**2 == pytest.approx(info["a"] * 2.0 * erfinv(0.68) ** 2, rel=1e-6)
    cov = calibration.coverage(calibration.widen_bands(hold[0], f, s, c), hold[3])
    assert cov == pytest.approx(0.68, abs=0.03)


def test_fitted_stars_the_fit_followed_are_left_out():
    """Fitted stars whose P50 followed their own noise (residuals far narrower than the
    validation stars') are not pooled: the validation stars decide alone, as without them."""
    rng = np.random.default_rng(5)
    val = _two_population_stars(rng, 2000, 0.15, 0.09, 0.025)
    pct, observed, sigma, true = _two_population_stars(rng, 18000, 0.15, 0.09, 0.025)
    followed = pct + 0.7 * (observed - pct[1])  # the fit pulled each star to its observation
    info = {}
    got = calibration.calibrate_bands(*val[:3], fitted=(followed, observed, sigma), info=info)
    assert info["pooled_fitted_stars"] == 0
    assert got == calibration.calibrate_bands(*val[:3])
    with pytest.raises(ValueError, match="fitted"):
        calibration.calibrate_bands(*val[:3], fitted=(followed[:, :5], observed, sigma))


def test_an_unresolved_narrow_part_takes_its_profile_likelihood_upper_limit():
    """Where the mixture's narrow part is driven to zero width (unresolved under the noise),
    its variance is raised to where the profile log-likelihood has fallen by 1.92 (the ~95 %
    upper limit): checked against the mixture likelihood itself, and the band is wider than
    the collapsed fit's."""
    from scipy.special import erf

    rng = np.random.default_rng(0)
    n = 20000
    bad = rng.uniform(size=n) < 0.1
    tau2 = np.full(n, 0.04**2)
    noise2 = np.full(n, 0.1**2)
    err = np.where(bad, 3.0, 0.05) * 0.04 * rng.standard_normal(n)  # core sd 0.05 tau: unresolved
    r2 = (err + 0.1 * rng.standard_normal(n)) ** 2
    nll, a_fit, _, _ = calibration._mixture_fit(r2, tau2, noise2)
    _, a_gauss, _ = calibration._gauss_fit(r2, tau2, noise2)
    assert a_fit < 0.01 * 0.1**2 / 0.04**2  # the fit collapsed the core
    a, wide_ratio, p = calibration._core_upper_limit((r2, tau2, noise2), nll, a_fit, a_gauss)
    theta = np.array([np.log(a), np.log(wide_ratio - 1.0), np.log(p / (1.0 - p))])
    assert calibration._mixture_nll(theta, r2, tau2, noise2) - nll == pytest.approx(1.92, abs=0.05)
    assert a > 10 * a_fit
    info = {}
    k = calibration._deconvolved_scale(r2, tau2, noise2, 0.68, info=info)
    assert info["core_upper_limit"] and info["a"] == pytest.approx(a, rel=1e-6)
    cov = (1 - p) * erf(np.sqrt(k / (2 * a))) + p * erf(np.sqrt(k / (2 * a * wide_ratio)))
    assert cov == pytest.approx(0.68, abs=1e-6)


def test_the_record_gives_the_model_errors_size_against_the_noise():
    """``info["error_to_noise"]``: the median ratio of the model error's sd (one Gaussian's
    scale times the band's) to the noise: 3.5 % against 10 % here, so ~0.35 (the paper-size
    simulation's 0.26 is why its heavy tail is not resolved, docs/validation.md); and it is
    the same whether or not the fitted stars are pooled."""
    rng = np.random.default_rng(0)
    val, fit = (_stars(rng, n, 0.035, 0.013) for n in (2000, 18000))
    for fitted in (None, fit[:3]):
        info = {}
        calibration.calibrate_bands(*val[:3], fitted=fitted, info=info)
        assert info["error_to_noise"] == pytest.approx(0.35, abs=0.04), info
