"""dustjax maps behind dustmaps' own DustMap base class (skipped when dustmaps is absent)."""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from dustjax import maps

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    map_base = pytest.importorskip("dustmaps.map_base")


def _map_file(tmp_path, k=6):
    """A GP-convention spherical map with k samples written to FITS."""
    from astropy.io import fits

    rng = np.random.default_rng(4)
    rho = rng.uniform(1e-3, 3e-3, (4, 3, 5)).astype(np.float32)  # (l, b, d)
    samples = rng.uniform(1e-3, 3e-3, (k, 4, 3, 5)).astype(np.float32)
    h = fits.Header()
    h["CTYPE1"], h["CRPIX1"], h["CRVAL1"], h["CDELT1"] = "GLON-CAR", 1.0, 172.5, 5.0
    h["CTYPE2"], h["CRPIX2"], h["CRVAL2"], h["CDELT2"] = "GLAT-CAR", 2.0, 0.0, 5.0
    h["CTYPE3"], h["CUNIT3"], h["CRPIX3"], h["CRVAL3"], h["CDELT3"] = "DISTANCE", "pc", 1, 50, 100
    h["BUNIT"] = "mag/pc"
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(rho.T, header=h, name="P50"),
            fits.ImageHDU(np.transpose(samples, (0, 3, 2, 1)), header=h, name="SAMPLES"),
        ]
    ).writeto(tmp_path / "density.fits")
    return tmp_path / "density.fits"


def test_a_dustjax_map_is_a_dustmaps_map_and_answers_like_one(tmp_path):
    from dustjax.dustmaps_adapter import DustjaxQuery

    path = _map_file(tmp_path)
    ours = maps.DustMap.from_fits(path)
    query = DustjaxQuery(path, integrated=True)
    assert isinstance(query, map_base.DustMap) and query.n_samples == 6
    c = SkyCoord(l=[173.0, 181.0] * u.deg, b=[1.0, -4.0] * u.deg, distance=[120, 460] * u.pc,
                 frame="galactic")  # fmt: skip
    expect = ours.query(c, integrated=True)
    np.testing.assert_array_equal(query(c), expect)  # dustmaps' __call__
    # dustmaps' own query_gal / query_equ: degrees and kpc.
    np.testing.assert_allclose(query.query_gal([173.0, 181.0], [1.0, -4.0], [0.12, 0.46]), expect)
    icrs = c.icrs
    np.testing.assert_allclose(
        query.query_equ(icrs.ra.deg, icrs.dec.deg, icrs.distance.kpc), expect, rtol=1e-9
    )
    pct = query.query(c, mode="percentile", pct=[16, 84])
    per_sample = ours.query(c, integrated=True, mode="samples")
    np.testing.assert_allclose(pct, np.percentile(per_sample, [16, 84], axis=1).T)
    profile, flags = query.query_gal(173.0, 1.0, return_flags=True)  # no distance: the profile
    assert profile.shape == query.distances.shape == (5,) and bool(flags["inside"])
    with pytest.raises(TypeError, match="SkyCoord"):
        query([1.0, 2.0])
    density = DustjaxQuery(ours)
    assert not density.integrated
    np.testing.assert_array_equal(density(c), ours.query(c))
