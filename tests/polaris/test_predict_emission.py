"""Column + 13CO FITS in, density FITS out (dustjax.polaris.predict_emission)."""

import math

import jax
import numpy as np
import pytest

from dustjax.polaris import emission as em
from dustjax.polaris import predict_emission as pe


def test_rebinning_conserves_the_line_integral_and_moves_it_with_the_velocity():
    v_obs = np.arange(-20.0, 20.0, 0.13) + 0.065
    line = 3.0 * np.exp(-0.5 * ((v_obs - 1.7) / 0.9) ** 2)
    spectra = np.stack([line, 0.5 * line])
    for spectral in (em.SpectralAxis.centred(8.0, 16), em.SpectralAxis.centred(8.0, 160)):
        out = pe.rebin_spectra(spectra, v_obs, spectral)
        assert out.shape == (2, spectral.num_channels)
        np.testing.assert_allclose(out.sum(-1) * spectral.channel_width_kms,
                                   spectra.sum(-1) * 0.13, rtol=1e-6)  # fmt: skip
        m1 = em.moment_maps(out, spectral)["centroid_velocity"]
        np.testing.assert_allclose(np.asarray(m1), 1.7, atol=0.02)
    # emission outside the model's band is dropped
    narrow = pe.rebin_spectra(spectra, v_obs + 10.0, em.SpectralAxis.centred(8.0, 16))
    assert narrow.sum() * 1.0 < 0.1 * spectra.sum() * 0.13


@pytest.mark.slow  # trains the test config (~1 min on 2 idle cores)
def test_predict_map_emission_end_to_end(tmp_path):
    pytest.importorskip("astropy")
    from astropy.io import fits

    from dustjax import training as train
    from dustjax.maps import MapError
    from dustjax.polaris import ppv_fits
    from dustjax.polaris.multi_input import settings_from_config
    from dustjax.polaris.projection import COLUMN, project
    from dustjax.sims import clouds, kinematics
    from experiments.configs import unet_emission_test

    config = unet_emission_test.get_config()
    train.train_and_evaluate(config, tmp_path / "run")
    grid = clouds.CloudGrid(**dict(config.data.grid))
    state = kinematics.simulate_cloud_state(jax.random.key(11), grid)
    spectral = settings_from_config(config.data).spectral
    t_b = np.asarray(em.cloud_ppv(state, 2, grid.cell_size_pc, spectral, subgrid_sigma_kms=0.3))
    column = np.asarray(project(state["density"], 2, grid.cell_size_pc)[COLUMN])
    distance = 140.0
    wcs = ppv_fits.simulation_wcs(column.shape, grid.cell_size_pc, distance)
    column_path = ppv_fits.write_column_fits(tmp_path / "n.fits", column, wcs)
    ppv_path = ppv_fits.write_ppv_fits(tmp_path / "ppv.fits", t_b, spectral, wcs)
    summary = pe.predict_map_emission(column_path, ppv_path, tmp_path / "run", distance,
                                      tmp_path / "d.fits", systemic_velocity_kms=0.0)  # fmt: skip
    density = fits.getdata(tmp_path / "d.fits")
    assert density.shape == column.shape and np.all(np.isfinite(density))
    assert summary["model_shape"] == list(column.shape) and summary["inputs"] == "ppv"
    assert fits.getheader(tmp_path / "d.fits")["CTYPE1"] == "GLON-CAR"
    # the same cloud at a systemic velocity of +5 km/s gives the same map once it is removed
    with fits.open(ppv_path) as hdul:
        hdul[0].header["CRVAL3"] += 5.0
        hdul.writeto(tmp_path / "ppv_moving.fits")
    pe.predict_map_emission(column_path, tmp_path / "ppv_moving.fits", tmp_path / "run",
                            distance, tmp_path / "d5.fits", systemic_velocity_kms=5.0)  # fmt: skip
    np.testing.assert_allclose(fits.getdata(tmp_path / "d5.fits"), density, rtol=1e-4)
    # a PPV cube on another grid than the map: one clear error
    with fits.open(ppv_path) as hdul:
        hdul[0].header["CDELT2"] *= 2
        hdul.writeto(tmp_path / "ppv_coarse.fits")
    with pytest.raises(ppv_fits.PPVError, match="spatial WCS do not match"):
        pe.predict_map_emission(column_path, tmp_path / "ppv_coarse.fits", tmp_path / "run",
                                distance)  # fmt: skip
    with pytest.raises(MapError, match="distance_pc"):
        pe.predict_map_emission(column_path, ppv_path, tmp_path / "run", -1.0)
    assert math.isfinite(summary["line_flux_in_model_band"])
