"""tools.sky_vs_real's statistics: the power spectrum and the scale-height fit on known answers."""

import numpy as np

from tools.sky_vs_real import isotropic_power_spectrum, scale_height_fit, spectral_slope


def test_power_spectrum_finds_a_plane_wave_and_a_power_law():
    n, cell = 32, 6.0
    x = np.arange(n) * cell
    k0 = 2 * np.pi * 4 / (n * cell)  # the fourth harmonic
    wave = np.cos(k0 * x)[:, None, None] * np.ones((n, n, n))
    k, p = isotropic_power_spectrum(wave, cell)
    assert abs(k[np.argmax(p)] - k0) < 0.6 * (k[1] - k[0])
    assert p.max() > 1e6 * np.median(p)  # nothing elsewhere but round-off

    # A Gaussian random field with P(k) ~ k^-3.5: the fitted slope comes back within 0.25.
    rng = np.random.default_rng(0)
    freqs = [2 * np.pi * np.fft.fftfreq(n, cell)] * 2 + [2 * np.pi * np.fft.rfftfreq(n, cell)]
    kk = np.sqrt(sum(g**2 for g in np.meshgrid(*freqs, indexing="ij")))
    kk[0, 0, 0] = np.inf
    field = np.fft.irfftn(np.fft.rfftn(rng.normal(size=(n, n, n))) * kk ** (-3.5 / 2), s=(n,) * 3)
    k, p = isotropic_power_spectrum(field, cell)
    assert abs(spectral_slope(k, p, 2 * k[0], 0.7 * np.pi / cell) + 3.5) < 0.25


def test_scale_height_fit_recovers_an_exponential():
    z = np.linspace(-950, 950, 32)
    assert abs(scale_height_fit(z, np.exp(-np.abs(z - 30) / 110.0)) - 110.0) < 5.0
    assert scale_height_fit(np.array([-10.0, 0.0, 10.0]), np.array([0.5, 1.0, 0.5])) is None
