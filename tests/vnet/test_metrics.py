"""The evaluation metrics (dustjax.vnet.metrics): eq. 4 and the power-spectrum normalisation."""

import numpy as np
import pytest

from dustjax.vnet import metrics


def _grf(rng, num, shape, cell, slope=-2.0):
    """Gaussian random fields with P(k) proportional to k^slope (k > 0) and their analytic P."""
    k = metrics.wavenumbers(shape, cell)
    amplitude = np.where(k > 0, np.maximum(k, 1e-12) ** (slope / 2), 0.0)
    white = rng.normal(size=(num, *shape))
    fields = np.fft.ifftn(np.fft.fftn(white, axes=(1, 2, 3)) * amplitude, axes=(1, 2, 3)).real
    # White noise of unit variance has P = dV per mode, so the filtered field has |A|^2 dV.
    return fields, amplitude**2 * np.prod(np.broadcast_to(cell, (3,)))


def test_parseval_normalisation():
    rng = np.random.default_rng(1)
    cell = (6.0, 5.0, 4.0)
    field = rng.lognormal(size=(12, 10, 8))
    power = metrics.power_spectrum_3d(field, cell)
    volume = field.size * np.prod(cell)
    # var(f) = (1 / V) sum_k P(k)
    np.testing.assert_allclose(power.sum() / volume, field.var(), rtol=1e-12)
    # White noise of variance s^2 has a flat spectrum <P> = s^2 dV (pc^3 * units^2).
    noise = rng.normal(scale=0.3, size=(32, 16, 16, 16))
    p = metrics.power_spectrum_3d(noise, 6.0)
    assert p[:, 1:, 1:, 1:].mean() == pytest.approx(0.09 * 216, rel=0.02)


def test_c_r_is_one_for_identical_fields_and_invariant_to_affine_maps():
    rng = np.random.default_rng(2)
    fields, _ = _grf(rng, 3, (16, 16, 16), 6.0)
    table = metrics.cross_correlation_coefficient(fields, fields, 6.0)
    np.testing.assert_allclose(table["c_r"], 1.0, atol=1e-12)
    np.testing.assert_allclose(
        metrics.cross_correlation_coefficient(fields, 3 * fields + 5, 6.0)["c_r"], 1.0, atol=1e-12
    )
    np.testing.assert_allclose(
        metrics.cross_correlation_coefficient(fields, -fields, 6.0)["c_r"], -1.0, atol=1e-12
    )


def test_shells_run_to_the_cube_corner():
    table = metrics.cross_correlation_coefficient(
        np.ones((1, 32, 32, 32)), np.ones((1, 32, 32, 32)), 6.0
    )
    k_f = 2 * np.pi / 192
    corner = np.sqrt(3) * np.pi / 6
    assert table["k_lo"][0] == pytest.approx(0.5 * k_f)
    assert table["k_hi"][-1] >= corner > table["k_lo"][-1]
    # every mode except k = 0 is counted once
    assert table["num_modes"].sum() == 32**3 - 1
    # the paper's range [0.046, 0.893] pc^-1 is covered
    assert table["k"].min() < 0.046 and table["k"].max() > 0.893


def test_c_r_of_field_plus_independent_noise():
    """p = t + n with n independent of t: c_r(k) = sqrt(P / (P + N))."""
    rng = np.random.default_rng(3)
    shape, cell, num = (16, 16, 16), 6.0, 48
    signal, _ = _grf(rng, num, shape, cell, slope=-3.0)
    signal *= 1 / signal.std()
    sigma_n = 0.5
    noise = rng.normal(scale=sigma_n, size=signal.shape)
    table = metrics.cross_correlation_coefficient(signal, signal + noise, cell)
    # expected from the measured signal spectrum and the analytic noise spectrum s^2 dV
    n_power = sigma_n**2 * cell**3
    expected = np.sqrt(table["p_tt"] / (table["p_tt"] + n_power))
    assert expected.min() < 0.5 < 0.95 < expected.max()  # the test spans a real range of c_r
    np.testing.assert_allclose(table["c_r"], expected, atol=0.05)


def test_residual_statistics_and_pdfs():
    rng = np.random.default_rng(4)
    true = rng.uniform(0, 0.05, size=(4, 8, 8, 8))
    pred = true + rng.normal(0.001, 0.0003, size=true.shape)
    edges = np.linspace(0, 0.06, 31)
    acc = metrics.ResidualAccumulator(edges)
    for t, p in zip(true, pred, strict=True):
        acc.add(t, p)
    out = acc.result()
    assert out["median"] == pytest.approx(0.001, abs=5e-5)
    assert out["dispersion"] == pytest.approx(0.0003, rel=0.1)
    assert out["robust_dispersion"] == pytest.approx(0.0003, rel=0.15)
    np.testing.assert_allclose(np.sum(out["pdf_true"] * np.diff(edges)), 1.0)
    np.testing.assert_allclose(out["pdf_true"], metrics.density_pdf(true, edges))
    assert out["hist_2d"].sum() == true.size - np.sum(pred > 0.06)
