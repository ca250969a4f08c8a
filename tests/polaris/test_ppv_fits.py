"""FITS in and out for 13CO PPV cubes (dustjax.polaris.ppv_fits): round trips and bad input."""

import numpy as np
import pytest

pytest.importorskip("astropy")
from astropy.io import fits  # noqa: E402

from dustjax.polaris import emission as em  # noqa: E402
from dustjax.polaris import ppv_fits  # noqa: E402
from dustjax.polaris.predict_map import read_column_map  # noqa: E402

SPECTRAL = em.SpectralAxis.centred(5.0, 10)


@pytest.fixture()
def pair(tmp_path):
    """A simulated PPV cube and its column density map, written with one WCS."""
    rng = np.random.default_rng(0)
    t_b = rng.uniform(0.0, 3.0, (12, 16, 10)).astype(np.float32)
    column = rng.uniform(1e21, 1e22, (12, 16)).astype(np.float32)
    wcs = ppv_fits.simulation_wcs((12, 16), pixel_size_pc=0.1, distance_pc=140.0)
    ppv_path = ppv_fits.write_ppv_fits(tmp_path / "ppv.fits", t_b, SPECTRAL, wcs)
    column_path = ppv_fits.write_column_fits(tmp_path / "column.fits", column, wcs)
    return t_b, column, ppv_path, column_path


def _rewrite(path, out, data=None, **cards):
    with fits.open(path) as hdul:
        header = hdul[0].header.copy()
        data = hdul[0].data if data is None else data
    for key, value in cards.items():
        if value is None:
            header.remove(key, ignore_missing=True)
        else:
            header[key] = value
    fits.PrimaryHDU(data, header).writeto(out)
    return out


def test_ppv_round_trip_with_the_column_map(pair):
    t_b, column, ppv_path, column_path = pair
    n_h, column_wcs, _, _ = read_column_map(column_path)
    np.testing.assert_allclose(n_h, column, rtol=1e-6)
    cube, velocities, wcs = ppv_fits.read_ppv_cube(ppv_path, column_wcs, n_h.shape)
    np.testing.assert_array_equal(cube, t_b)
    np.testing.assert_allclose(velocities, SPECTRAL.centres, atol=1e-6)
    axis = ppv_fits.spectral_axis_of(velocities)
    assert axis.num_channels == 10 and abs(axis.channel_width_kms - 1.0) < 1e-9
    np.testing.assert_allclose(axis.edges, SPECTRAL.edges, atol=1e-9)
    header = fits.getheader(ppv_path)
    assert header["CTYPE3"] == "VRAD" and header["BUNIT"] == "K"
    assert header["RESTFRQ"] == pytest.approx(110.201354e9)
    assert wcs.wcs.ctype[0].startswith("GLON")


def test_velo_lsr_in_m_per_s_with_decreasing_channels_is_read_in_km_per_s(pair, tmp_path):
    t_b, _, ppv_path, column_path = pair
    flipped = np.moveaxis(t_b[..., ::-1], -1, 0)
    out = _rewrite(
        ppv_path, tmp_path / "velo.fits", flipped, CTYPE3="VELO-LSR", CUNIT3="m/s",
        CRVAL3=SPECTRAL.centres[-1] * 1e3, CDELT3=-SPECTRAL.channel_width_kms * 1e3,
    )  # fmt: skip
    _, column_wcs, _, _ = read_column_map(column_path)
    cube, velocities, _ = ppv_fits.read_ppv_cube(out, column_wcs, (12, 16))
    np.testing.assert_allclose(velocities, SPECTRAL.centres, atol=1e-6)
    np.testing.assert_array_equal(cube, t_b)


@pytest.mark.parametrize(
    "cards, message",
    [
        (dict(CTYPE3="FREQ", CUNIT3="Hz", CRVAL3=110.2e9, CDELT3=1e5), "'FREQ' is not a velocity"),
        (dict(CTYPE3=None, CUNIT3=None, CRVAL3=None, CDELT3=None, CRPIX3=None),
         "no spectral axis"),
        (dict(CTYPE3="VRAD", CUNIT3="deg"), "which is not a velocity"),
        (dict(BUNIT="Jy/beam"), "brightness temperature in K"),
    ],
)  # fmt: skip
def test_a_cube_without_a_velocity_axis_gets_one_clear_error(pair, tmp_path, cards, message):
    _, _, ppv_path, column_path = pair
    out = _rewrite(ppv_path, tmp_path / "bad.fits", **cards)
    _, column_wcs, _, _ = read_column_map(column_path)
    with pytest.raises(ppv_fits.PPVError, match=message):
        ppv_fits.read_ppv_cube(out, column_wcs, (12, 16))


def test_a_cube_on_another_sky_grid_than_the_column_map_is_refused(pair, tmp_path):
    t_b, _, ppv_path, column_path = pair
    _, column_wcs, _, _ = read_column_map(column_path)
    shifted = _rewrite(
        ppv_path, tmp_path / "shifted.fits", CRPIX1=fits.getheader(ppv_path)["CRPIX1"] + 2
    )
    with pytest.raises(ppv_fits.PPVError, match="spatial WCS do not match"):
        ppv_fits.read_ppv_cube(shifted, column_wcs, (12, 16))
    smaller = _rewrite(ppv_path, tmp_path / "small.fits", np.moveaxis(t_b[:10], -1, 0))
    with pytest.raises(ppv_fits.PPVError, match=r"16 x 10 .* does not match .* 16 x 12"):
        ppv_fits.read_ppv_cube(smaller, column_wcs, (12, 16))
    equatorial = _rewrite(ppv_path, tmp_path / "radec.fits", CTYPE1="RA---CAR", CTYPE2="DEC--CAR")
    with pytest.raises(ppv_fits.PPVError, match="celestial axes .* do not match"):
        ppv_fits.read_ppv_cube(equatorial, column_wcs, (12, 16))
    image = _rewrite(column_path, tmp_path / "image.fits")
    with pytest.raises(ppv_fits.PPVError, match="no spectral axis: a 2D image"):
        ppv_fits.read_ppv_cube(image, column_wcs, (12, 16))
    # without a map to match, the cube itself is fine
    cube, _, _ = ppv_fits.read_ppv_cube(shifted)
    assert cube.shape == (12, 16, 10)


def test_writer_refuses_a_cube_whose_channels_disagree_with_the_axis(tmp_path):
    wcs = ppv_fits.simulation_wcs((4, 4), 0.1)
    with pytest.raises(ValueError, match="10 channels"):
        ppv_fits.write_ppv_fits(tmp_path / "x.fits", np.zeros((4, 4, 3)), SPECTRAL, wcs)
    assert not (tmp_path / "x.fits").exists()
