"""Queryable dust maps (dustjax.maps); their integrals are tested in test_los.py."""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import CartesianRepresentation, SkyCoord
from astropy.io import fits

from dustjax import maps
from dustjax.geometry import Region
from dustjax.los import integrate_to_points

SMALL = Region((-48.0, -24.0, -24.0), (0.0, 24.0, 24.0), (8, 8, 8), name="small")


def _density(region, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 0.02, region.shape).astype(np.float32)


def test_cartesian_round_trip_and_skycoord_query(tmp_path):
    rho = _density(SMALL)
    unc = 0.1 * rho
    path = maps.write_cartesian_map(
        tmp_path / "m.fits", SMALL, rho, uncertainty=unc, extinction_uncertainty=rho * 3
    )
    h = fits.getheader(path)
    assert h["CTYPE1"] == "X" and h["CUNIT1"] == "pc" and h["SUN_POSX"] == 8.0
    assert h["STEP"] == 6.0 and h["BUNIT"] == "mag/pc"
    m = maps.DustMap.from_fits(path)
    np.testing.assert_array_equal(m.density, rho)
    np.testing.assert_allclose(m.edges[0], SMALL.edges_pc(0))
    # A point in cell (2, 5, 7), given in ICRS: the frame is converted.
    xyz = SMALL.cell_centres_pc()[2, 5, 7] + np.array([1.0, -2.0, 2.5])
    gal = SkyCoord(CartesianRepresentation(*(xyz * u.pc)), frame="galactic")
    icrs = gal.transform_to("icrs")
    value, sigma = m.query(icrs, return_uncertainty=True)
    np.testing.assert_allclose(value, rho[2, 5, 7], rtol=1e-6)
    np.testing.assert_allclose(sigma, unc[2, 5, 7], rtol=1e-6)
    integ = m.query(icrs, integrated=True)
    expect = integrate_to_points(rho, SMALL, xyz[None])
    np.testing.assert_allclose(integ, np.asarray(expect)[0], rtol=1e-5)


def test_query_is_vectorised_nan_outside_with_one_warning(tmp_path):
    path = maps.write_cartesian_map(tmp_path / "m.fits", SMALL, _density(SMALL))
    m = maps.DustMap.from_fits(path)
    coords = SkyCoord(
        l=[180.0, 180.0, 0.0, 100.0, 180.0, 200.0] * u.deg,
        b=[0.0, 10.0, 0.0, 0.0, 0.0, 0.0] * u.deg,
        distance=[20.0, 30.0, 20.0, 10.0, 500.0, 40.0] * u.pc,
        frame="galactic",
    ).reshape(2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = m(coords, integrated=True)
    assert out.shape == (2, 3)
    outside = np.isnan(out)
    # l = 0 (X > 0) and 500 pc lie outside; the others inside.
    np.testing.assert_array_equal(outside, [[False, False, True], [False, True, False]])
    assert len([w for w in caught if issubclass(w.category, maps.OutsideMapWarning)]) == 1
    with pytest.raises(maps.MapError, match="no density uncertainty"):
        m.query(coords[0], return_uncertainty=True)
    # Without distances: the profile at the map's distances, as dustmaps' 3D maps return.
    profile = m.query(SkyCoord(l=180 * u.deg, b=2 * u.deg, frame="galactic"))
    assert profile.shape == m.distances.shape


def test_reads_vergely_style_cube_without_wcs(tmp_path):
    # STEP + SUN_POS only, density in mag/kpc, stored (nz, ny, nx) as the 2022 cubes are.
    rho = _density(SMALL, seed=3)
    h = fits.Header()
    h["STEP"] = 6.0
    h["SUN_POSX"], h["SUN_POSY"], h["SUN_POSZ"] = 8.0, 4.0, 4.0
    h["BUNIT"] = "mag/kpc"
    fits.PrimaryHDU(rho.transpose(2, 1, 0) * 1e3, header=h).writeto(tmp_path / "v.fits")
    m = maps.DustMap.from_fits(tmp_path / "v.fits")
    np.testing.assert_allclose(m.density, rho, rtol=1e-6)
    assert m.region.lower_pc == SMALL.lower_pc and m.region.upper_pc == SMALL.upper_pc


def _spherical_file(tmp_path, rho, l0=170.0, dl=5.0, b0=-10.0, db=5.0, d0=0.0, dd=50.0):
    h = fits.Header()
    for i, (ctype, cunit, start, step) in enumerate(
        [("GLON-CAR", "deg", l0, dl), ("GLAT-CAR", "deg", b0, db), ("DIST", "pc", d0, dd)], 1
    ):
        h[f"CTYPE{i}"], h[f"CUNIT{i}"] = ctype, cunit
        h[f"CRPIX{i}"], h[f"CRVAL{i}"], h[f"CDELT{i}"] = 1.0, start + 0.5 * step, step
    # CAR is linear in latitude only with CRVAL2 = 0: the reference pixel moves instead.
    h["CRPIX2"], h["CRVAL2"] = 1.0 - (b0 + 0.5 * db) / db, 0.0
    h["BUNIT"] = "mag/pc"
    path = tmp_path / "gp.fits"
    fits.HDUList(
        [
            fits.PrimaryHDU(rho.transpose(2, 1, 0), header=h),
            fits.ImageHDU(0.5 * rho.transpose(2, 1, 0), header=h, name="UNCERT"),
        ]
    ).writeto(path)
    return path


def test_spherical_map_density_and_integrated(tmp_path):
    # 4 longitudes x 4 latitudes x 6 distance bins of 50 pc.
    rho = np.zeros((4, 4, 6), np.float32)
    rho[:, :, 1] = 0.01  # 50-100 pc
    rho[:, :, 3] = 0.03  # 150-200 pc
    rho[2, 1, 4] = 0.5  # one clump at l in [180,185], b in [-5,0], d in [200,250]
    m = maps.DustMap.from_fits(_spherical_file(tmp_path, rho))
    assert m.grid == "spherical"
    c = SkyCoord(
        l=[182.0, 182.0, 172.0, 182.0] * u.deg,
        b=[-2.0, -2.0, 3.0, 30.0] * u.deg,
        distance=[120.0, 230.0, 175.0, 100.0] * u.pc,
        frame="galactic",
    )
    with pytest.warns(maps.OutsideMapWarning, match="1 of 4"):
        dens, sig = m.query(c, return_uncertainty=True)
        ext = m.query(c, integrated=True)
    np.testing.assert_allclose(dens[:3], [0.0, 0.5, 0.03], rtol=1e-6)
    np.testing.assert_allclose(sig[:3], [0.0, 0.25, 0.015], rtol=1e-6)
    np.testing.assert_allclose(ext[:3], [0.5, 0.5 + 1.5 + 0.5 * 30, 0.5 + 0.03 * 25], rtol=1e-5)
    assert np.isnan(dens[3]) and np.isnan(ext[3])


def test_spherical_map_with_decreasing_longitude_and_wrap(tmp_path):
    # CDELT1 < 0 (sky-image convention) and a longitude range through l = 0.
    rho = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    path = _spherical_file(tmp_path, rho, l0=10.0, dl=-5.0, b0=-5.0, db=5.0, d0=0.0, dd=10.0)
    m = maps.DustMap.from_fits(path)
    np.testing.assert_allclose(m.edges[0], [-10.0, -5.0, 0.0, 5.0, 10.0])
    c = SkyCoord(
        l=[357.0, 7.0] * u.deg, b=[2.0, -2.0] * u.deg, distance=[5.0, 25.0] * u.pc, frame="galactic"
    )
    # l = 357 deg is l = -3: the file's third longitude pixel (l in [0, -5] -> index 2).
    np.testing.assert_allclose(m.query(c), [rho[2, 1, 0], rho[0, 0, 2]])


def test_not_a_map(tmp_path):
    fits.PrimaryHDU(np.zeros((2, 2), np.float32)).writeto(tmp_path / "img.fits")
    with pytest.raises(maps.MapError, match="no 3D image"):
        maps.DustMap.from_fits(tmp_path / "img.fits")
    fits.PrimaryHDU(np.zeros((2, 2, 2), np.float32)).writeto(tmp_path / "cube.fits")
    with pytest.raises(maps.MapError, match="cannot find the grid"):
        maps.DustMap.from_fits(tmp_path / "cube.fits")


def test_reads_the_gp_output_convention(tmp_path):
    # dustjax.gp.output: empty primary, P16/P50/P84 image HDUs, CRVAL2 = 0 with CRPIX2 shifted,
    # CTYPE3 = DISTANCE; extinction.fits alongside with the integrated percentiles.
    rho = np.full((4, 3, 5), 0.01, np.float32)  # l 170-190 (5 deg), b -7.5..7.5 (5 deg), d 0-250
    h = fits.Header()
    h["CTYPE1"], h["CUNIT1"], h["CRPIX1"], h["CRVAL1"], h["CDELT1"] = "GLON-CAR", "deg", 1, 172.5, 5
    h["CTYPE2"], h["CUNIT2"], h["CRPIX2"], h["CRVAL2"], h["CDELT2"] = "GLAT-CAR", "deg", 2.0, 0, 5
    h["CTYPE3"], h["CUNIT3"], h["CRPIX3"], h["CRVAL3"], h["CDELT3"] = "DISTANCE", "pc", 1, 25, 50
    h["BUNIT"] = "mag/pc"

    def write(name, cubes, bunit):
        h["BUNIT"] = bunit
        hdus = [fits.PrimaryHDU()] + [
            fits.ImageHDU(c.transpose(2, 1, 0), header=h, name=n)
            for n, c in zip(("P16", "P50", "P84"), cubes, strict=True)
        ]
        fits.HDUList(hdus).writeto(tmp_path / name)

    write("density.fits", (0.5 * rho, rho, 2 * rho), "mag/pc")
    write("extinction.fits", (rho, 2 * rho, 5 * rho), "mag")
    m = maps.DustMap.from_fits(tmp_path / "density.fits")
    assert m.grid == "spherical"
    np.testing.assert_allclose(m.edges[1], [-7.5, -2.5, 2.5, 7.5])
    np.testing.assert_allclose(m.density, rho)
    np.testing.assert_allclose(m.uncertainty, 0.75 * rho)
    np.testing.assert_allclose(m.extinction_uncertainty, 2 * rho)
    c = SkyCoord(l=181 * u.deg, b=1 * u.deg, distance=120 * u.pc, frame="galactic")
    value, sigma = m.query(c, integrated=True, return_uncertainty=True)
    np.testing.assert_allclose(value, 0.01 * 120, rtol=1e-5)
    np.testing.assert_allclose(sigma, 0.02, rtol=1e-5)
