"""Map headers through astropy.wcs / astropy.units (dustjax.mapwcs) and their numpy twin."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

from dustjax import maps, mapwcs

SHAPE = (6, 5, 4)  # (nx, ny, nz)
LOWER = np.array([-60.0, -20.0, -10.0])
STEP = np.array([10.0, 8.0, 5.0])


def _cartesian_header(form: str) -> fits.Header:
    """One WCS written four equivalent ways: CDELT, a CD matrix, PC + CDELT, CRPIX elsewhere."""
    h = fits.Header()
    for i, name in enumerate("XYZ", start=1):
        a = i - 1
        h[f"CTYPE{i}"], h[f"CUNIT{i}"] = name, "pc"
        first_centre = LOWER[a] + 0.5 * STEP[a]
        if form == "crpix":  # reference pixel 3 (1-based): CRVAL is the third centre
            h[f"CRPIX{i}"], h[f"CRVAL{i}"] = 3.0, first_centre + 2 * STEP[a]
        else:
            h[f"CRPIX{i}"], h[f"CRVAL{i}"] = 1.0, first_centre
        if form == "cd":
            for j in (1, 2, 3):
                h[f"CD{i}_{j}"] = STEP[a] if i == j else 0.0
        elif form == "pc":
            h[f"CDELT{i}"] = 1.0
            for j in (1, 2, 3):
                h[f"PC{i}_{j}"] = STEP[a] if i == j else 0.0
        else:
            h[f"CDELT{i}"] = STEP[a]
    h["BUNIT"] = "mag/pc"
    return h


def _write(path, cube_xyz, header):
    fits.PrimaryHDU(np.ascontiguousarray(cube_xyz.T), header=header).writeto(path)
    return path


@pytest.fixture
def density():
    return np.random.default_rng(1).uniform(0.0, 0.01, SHAPE).astype(np.float32)


def test_equivalent_wcs_forms_give_the_same_map_and_the_same_queries(tmp_path, density):
    coords = SkyCoord(
        l=[170.0, 200.0, 185.0] * u.deg,
        b=[-5.0, 3.0, 10.0] * u.deg,
        distance=[30.0, 12.0, 20.0] * u.pc,
        frame="galactic",
    )
    expected_edges = [LOWER[a] + STEP[a] * np.arange(SHAPE[a] + 1) for a in range(3)]
    results = []
    for form in ("cdelt", "cd", "pc", "crpix"):
        header = _cartesian_header(form)
        m = maps.DustMap.from_fits(_write(tmp_path / f"{form}.fits", density, header))
        for a in range(3):
            np.testing.assert_allclose(m.edges[a], expected_edges[a], rtol=0, atol=1e-9)
        # The numpy route (header dicts, no astropy) reads the same edges.
        plain = mapwcs.linear_edges(dict(header), density.T.shape, form)
        for a in range(3):
            np.testing.assert_allclose(plain[a], expected_edges[a], rtol=0, atol=1e-9)
        results.append((m.query(coords), m.query(coords, integrated=True)))
    for got in results[1:]:
        np.testing.assert_array_equal(got[0], results[0][0])
        np.testing.assert_array_equal(got[1], results[0][1])


def test_rotated_or_non_linear_grids_are_refused(tmp_path, density):
    h = _cartesian_header("cd")
    h["CD1_2"] = 0.5  # a skewed cube
    with pytest.raises(maps.MapError, match="not a regular grid"):
        maps.DustMap.from_fits(_write(tmp_path / "skew.fits", density, h))
    with pytest.raises(maps.MapError, match="not diagonal"):
        mapwcs.linear_edges(dict(h), density.T.shape, "skew")
    # CAR with CRVAL2 != 0 is not linear in latitude: refused, not misread.
    s = fits.Header()
    for i, (ctype, value, step) in enumerate(
        [("GLON-CAR", 172.5, 5.0), ("GLAT-CAR", 20.0, 5.0), ("DIST", 25.0, 50.0)], 1
    ):
        s[f"CTYPE{i}"], s[f"CRPIX{i}"], s[f"CRVAL{i}"], s[f"CDELT{i}"] = ctype, 1.0, value, step
    with pytest.raises(maps.MapError, match="CRVAL2"):
        maps.DustMap.from_fits(_write(tmp_path / "car.fits", density, s))


def test_any_length_unit_on_the_axes(tmp_path, density):
    h = _cartesian_header("cdelt")
    h["CUNIT2"], h["CRVAL2"], h["CDELT2"] = "kpc", h["CRVAL2"] / 1e3, h["CDELT2"] / 1e3
    h["CUNIT3"], h["CRVAL3"], h["CDELT3"] = "m", h["CRVAL3"] * u.pc.to(u.m), STEP[2] * u.pc.to(u.m)
    m = maps.DustMap.from_fits(_write(tmp_path / "units.fits", density, h))
    np.testing.assert_allclose(m.edges[1], LOWER[1] + STEP[1] * np.arange(SHAPE[1] + 1))
    np.testing.assert_allclose(m.edges[2], LOWER[2] + STEP[2] * np.arange(SHAPE[2] + 1))
    h["CUNIT3"] = "s"
    with pytest.raises(maps.MapError, match="'s' is not a length"):
        maps.DustMap.from_fits(_write(tmp_path / "time.fits", density, h))


@pytest.mark.parametrize(
    ("bunit", "factor"),
    [("mag/pc", 1.0), ("mag pc-1", 1.0), ("mag/kpc", 1e-3), ("mag / kpc", 1e-3), ("mag/Mpc", 1e-6)],
)
def test_density_units_are_converted_to_mag_per_pc(tmp_path, density, bunit, factor):
    h = _cartesian_header("cdelt")
    h["BUNIT"] = bunit
    m = maps.DustMap.from_fits(_write(tmp_path / "d.fits", density, h))
    np.testing.assert_allclose(m.density, density * factor, rtol=1e-6)
    header = {k: h[k] for k in h}  # the same through the dict route
    np.testing.assert_allclose(
        maps.DustMap.from_array(density.T, header).density, density * factor, rtol=1e-6
    )


@pytest.mark.parametrize(
    ("bunit", "message"),
    [
        ("mag", "BUNIT 'mag'.*extinction map"),
        ("1/cm3", "BUNIT '1/cm3'.*gas density.*density_scale"),
        ("g / cm3", "BUNIT 'g / cm3'.*gas density"),
        ("Jy", "BUNIT 'Jy'.*not a dust density"),
        ("furlongs", "BUNIT 'furlongs' is not a unit"),
    ],
)
def test_a_file_that_is_not_a_density_is_refused_naming_its_unit(tmp_path, density, bunit, message):
    h = _cartesian_header("cdelt")
    h["BUNIT"] = bunit
    path = _write(tmp_path / "x.fits", density, h)
    with pytest.raises(maps.MapError, match=message):
        maps.DustMap.from_fits(path)


def test_an_explicit_density_scale_converts_what_bunit_cannot(tmp_path, density):
    h = _cartesian_header("cdelt")
    h["BUNIT"] = "1/cm3"  # n_H: the caller knows A/N_H, the file does not
    m = maps.DustMap.from_fits(_write(tmp_path / "n.fits", density, h), density_scale=2e-3)
    np.testing.assert_allclose(m.density, 2e-3 * density, rtol=1e-6)


def test_extension_units_are_checked_by_kind(tmp_path, density):
    h = _cartesian_header("cdelt")
    ext = h.copy()
    ext["BUNIT"] = "mmag"  # an extinction uncertainty in millimag
    fits.HDUList(
        [
            fits.PrimaryHDU(np.ascontiguousarray(density.T), header=h),
            fits.ImageHDU(np.ascontiguousarray(density.T) * 1e3, header=ext, name="EXTUNC"),
        ]
    ).writeto(tmp_path / "e.fits")
    m = maps.DustMap.from_fits(tmp_path / "e.fits")
    np.testing.assert_allclose(m.extinction_uncertainty, density, rtol=1e-6)


def test_spherical_distance_axis_in_kpc_equals_pc(tmp_path):
    rho = np.random.default_rng(2).uniform(0, 0.01, (4, 3, 5)).astype(np.float32)

    def header(unit, scale):
        h = fits.Header()
        h["CTYPE1"], h["CRPIX1"], h["CRVAL1"], h["CDELT1"] = "GLON-CAR", 1.0, 172.5, 5.0
        h["CTYPE2"], h["CRPIX2"], h["CRVAL2"], h["CDELT2"] = "GLAT-CAR", 2.0, 0.0, 5.0
        h["CTYPE3"], h["CUNIT3"] = "DISTANCE", unit
        h["CRPIX3"], h["CRVAL3"], h["CDELT3"] = 1.0, 25.0 * scale, 50.0 * scale
        h["BUNIT"] = "mag/pc"
        return h

    a = maps.DustMap.from_fits(_write(tmp_path / "pc.fits", rho, header("pc", 1.0)))
    b = maps.DustMap.from_fits(_write(tmp_path / "kpc.fits", rho, header("kpc", 1e-3)))
    np.testing.assert_allclose(a.edges[2], np.arange(6) * 50.0)
    np.testing.assert_allclose(b.edges[2], a.edges[2], rtol=1e-12)
    np.testing.assert_allclose(a.edges[1], [-7.5, -2.5, 2.5, 7.5])


def test_header_dicts_are_read_without_astropy(monkeypatch, density):
    """The GPU path (a .npy cube + its header as JSON) has no astropy: a small table of units."""
    import sys

    header = {k: v for k, v in _cartesian_header("cd").items()}
    header.update(BUNIT="mag / kpc", CUNIT1="kpc", CRVAL1=header["CRVAL1"] / 1e3)
    header["CD1_1"] = STEP[0] / 1e3
    for name in [m for m in sys.modules if m == "astropy" or m.startswith("astropy.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import astropy...` now fails
    m = maps.DustMap.from_array(density.T, header)
    np.testing.assert_allclose(m.density, density * 1e-3, rtol=1e-6)
    np.testing.assert_allclose(m.edges[0], LOWER[0] + STEP[0] * np.arange(SHAPE[0] + 1))
    header["BUNIT"] = "1/cm3"
    with pytest.raises(maps.MapError, match="'1/cm3' is not understood without astropy"):
        maps.DustMap.from_array(density.T, header)
