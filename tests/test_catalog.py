"""Star catalogue reading, validation, and gridding (dustjax.catalog)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dustjax import catalog as cat
from dustjax import geometry
from dustjax.geometry import Region, galactic_to_cartesian_astropy


def _stars(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        l=rng.uniform(0, 360, n),
        b=rng.uniform(-30, 30, n),
        distance=rng.uniform(10, 300, n),
        extinction=rng.uniform(0, 2, n),
        sigma_extinction=rng.uniform(0.01, 0.1, n),
        sigma_distance=rng.uniform(1, 10, n),
    )


def _write(path, cols, units=None):
    from astropy.table import Table

    t = Table(cols)
    for name, unit in (units or {}).items():
        t[name].unit = unit
    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits"}[path.suffix]
    t.write(path, format=fmt, overwrite=True)
    return path


@pytest.mark.parametrize("ext", [".fits", ".csv", ".ecsv"])
def test_read_round_trip_each_format(tmp_path, ext):
    s = _stars()
    path = _write(tmp_path / f"stars{ext}", s)
    c = cat.read_star_catalog(path)
    assert len(c) == 50 and c.num_read == 50 and c.num_dropped == 0
    np.testing.assert_allclose(c.l_deg, s["l"])
    np.testing.assert_allclose(c.extinction, s["extinction"])
    np.testing.assert_allclose(c.sigma_distance, s["sigma_distance"])
    # Positions agree with astropy's Galactic frame (an independent route).
    xyz = galactic_to_cartesian_astropy(s["l"], s["b"], s["distance"])
    np.testing.assert_allclose(c.xyz_pc, xyz, atol=1e-9)
    assert c.xyz_pc.dtype == np.float64


def test_custom_column_names_case_insensitive_and_optional_sigma_distance(tmp_path):
    s = _stars()
    cols = dict(
        GLON=s["l"], GLAT=s["b"], Dist=s["distance"], A0=s["extinction"], eA=s["sigma_extinction"]
    )
    path = _write(tmp_path / "s.csv", cols)
    c = cat.read_star_catalog(path, {"sigma_extinction": "ea", "extinction": "A0"})
    np.testing.assert_allclose(c.sigma_extinction, s["sigma_extinction"])
    np.testing.assert_allclose(c.distance_pc, s["distance"])
    assert c.sigma_distance is None


def test_missing_columns_are_named(tmp_path):
    s = _stars()
    del s["sigma_extinction"]
    path = _write(tmp_path / "s.csv", s)
    with pytest.raises(cat.CatalogError, match=r"missing column\(s\): sigma_extinction"):
        cat.read_star_catalog(path)
    # A column named explicitly but absent is named too, even the optional one.
    s = _stars()
    path = _write(tmp_path / "t.csv", s)
    with pytest.raises(cat.CatalogError, match="sigma_distance.*'edist'"):
        cat.read_star_catalog(path, {"sigma_distance": "edist"})
    with pytest.raises(cat.CatalogError, match="unknown logical column"):
        cat.read_star_catalog(path, {"parallax": "plx"})


def test_nan_rows_dropped_counted_and_logged(tmp_path, caplog):
    s = _stars()
    s["extinction"][[3, 7]] = np.nan
    s["distance"][11] = np.inf
    s["sigma_distance"][20] = np.nan
    path = _write(tmp_path / "s.fits", s)
    with caplog.at_level(logging.WARNING, logger="dustjax.catalog"):
        c = cat.read_star_catalog(path)
    assert c.num_dropped_nonfinite == 4 and len(c) == 46 and c.num_read == 50
    assert "dropped 4 of 50 rows" in caplog.text
    keep = np.setdiff1d(np.arange(50), [3, 7, 11, 20])
    np.testing.assert_allclose(c.extinction, s["extinction"][keep])


def test_masked_values_count_as_missing(tmp_path):
    from astropy.table import MaskedColumn, Table

    s = _stars(10)
    t = Table(s)
    t["extinction"] = MaskedColumn(s["extinction"], mask=[0, 1] + [0] * 8)
    t.write(tmp_path / "m.ecsv", format="ascii.ecsv")
    c = cat.read_star_catalog(tmp_path / "m.ecsv")
    assert c.num_dropped_nonfinite == 1 and len(c) == 9


def test_stars_outside_region_dropped(tmp_path):
    region = Region.named("SR")
    rng = np.random.default_rng(1)
    xyz = rng.uniform(-250, 100, (400, 3))
    n_in = int(region.contains(xyz).sum())
    path = _write(
        tmp_path / "c.csv",
        dict(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], E=np.ones(400), sigma_E=np.full(400, 0.1)),
    )
    c = cat.read_star_catalog(path, coords="cartesian", region=region)
    assert len(c) == n_in and c.num_dropped_outside == 400 - n_in > 0
    assert region.contains(c.xyz_pc).all()
    # Galactic angles recomputed from XYZ.
    back = geometry.galactic_to_cartesian_np(c.l_deg, c.b_deg, c.distance_pc)
    np.testing.assert_allclose(back, c.xyz_pc, atol=1e-9)


def test_galactic_box_wraps_through_zero():
    s = _stars(500, seed=3)
    box = cat.galactic_box((350, 10), (-5, 5), (0, 1000))
    c = cat.StarCatalog.from_arrays(
        l_deg=s["l"],
        b_deg=s["b"],
        distance_pc=s["distance"],
        extinction=s["extinction"],
        sigma_extinction=s["sigma_extinction"],
        region=box,
    )
    expect = ((s["l"] >= 350) | (s["l"] <= 10)) & (np.abs(s["b"]) <= 5)
    assert len(c) == expect.sum() > 0 and c.num_dropped_outside == 500 - expect.sum()


def test_non_positive_sigma_is_an_error_naming_the_count(tmp_path):
    s = _stars()
    s["sigma_extinction"][[1, 2, 5]] = [0.0, -0.1, -1.0]
    with pytest.raises(cat.CatalogError, match="3 row"):
        cat.read_star_catalog(_write(tmp_path / "s.csv", s))
    s = _stars()
    s["distance"][0] = -5
    with pytest.raises(cat.CatalogError, match="1 row.*negative distance"):
        cat.read_star_catalog(_write(tmp_path / "d.csv", s))


def test_units_in_file_are_converted(tmp_path):
    s = _stars()
    cols = dict(s, distance=s["distance"] / 1000.0, sigma_distance=s["sigma_distance"] / 1000.0)
    path = _write(tmp_path / "k.ecsv", cols, units={"distance": "kpc", "sigma_distance": "kpc"})
    c = cat.read_star_catalog(path)
    np.testing.assert_allclose(c.distance_pc, s["distance"])
    np.testing.assert_allclose(c.sigma_distance, s["sigma_distance"])
    # Unitless columns take `distance_unit`.
    path = _write(tmp_path / "k.csv", cols)
    c = cat.read_star_catalog(path, distance_unit="kpc")
    np.testing.assert_allclose(c.distance_pc, s["distance"])


def test_format_from_parameter_and_bad_extension(tmp_path):
    s = _stars()
    path = _write(tmp_path / "s.csv", s)
    odd = path.rename(tmp_path / "stars.table")
    with pytest.raises(cat.CatalogError, match="cannot tell the format"):
        cat.read_star_catalog(odd)
    assert len(cat.read_star_catalog(odd, format="ascii.csv")) == 50
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cat.read_star_catalog(tmp_path / "nope.fits")


def test_from_arrays_equals_file_and_write_round_trip(tmp_path):
    s = _stars()
    a = cat.StarCatalog.from_arrays(
        l_deg=s["l"],
        b_deg=s["b"],
        distance_pc=s["distance"],
        extinction=s["extinction"],
        sigma_extinction=s["sigma_extinction"],
        sigma_distance=s["sigma_distance"],
    )
    for ext in (".fits", ".ecsv", ".csv"):
        cat.write_star_catalog(tmp_path / f"w{ext}", a)
        b = cat.read_star_catalog(tmp_path / f"w{ext}")
        np.testing.assert_allclose(b.xyz_pc, a.xyz_pc, atol=1e-9)
        np.testing.assert_allclose(b.sigma_extinction, a.sigma_extinction)
    with pytest.raises(cat.CatalogError, match="either"):
        cat.StarCatalog.from_arrays(
            l_deg=s["l"],
            xyz_pc=np.zeros((50, 3)),
            extinction=s["extinction"],
            sigma_extinction=s["sigma_extinction"],
        )
    with pytest.raises(cat.CatalogError, match="different lengths"):
        cat.StarCatalog.from_arrays(
            xyz_pc=np.zeros((50, 3)),
            extinction=s["extinction"][:3],
            sigma_extinction=s["sigma_extinction"],
        )


def test_implausible_inputs_are_named_with_their_numbers(tmp_path, caplog):
    """Issue 19 (3): unitless kpc distances read as pc, negative extinctions and uncertainties
    of another unit warn with the numbers (all-negative extinctions are refused); a plausible
    catalogue, or the same file read with its right unit, warns nothing."""
    s = _stars()
    kpc = dict(s, distance=s["distance"] / 1000.0)  # 0.01-0.3 "pc" when read as pc
    path = _write(tmp_path / "kpc.csv", kpc)
    with caplog.at_level(logging.WARNING, logger="dustjax.catalog"):
        cat.read_star_catalog(path)
    assert "implausible distances: median" in caplog.text and "kpc" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dustjax.catalog"):
        good = cat.read_star_catalog(path, distance_unit="kpc")
        cat.StarCatalog.from_arrays(**_arrays(s))
    assert caplog.text == ""
    np.testing.assert_allclose(good.distance_pc, s["distance"])

    with pytest.raises(cat.CatalogError, match="all 50 extinctions are negative"):
        cat.StarCatalog.from_arrays(**_arrays(dict(s, extinction=-s["extinction"] - 0.1)))
    mostly = s["extinction"].copy()
    mostly[:40] *= -1
    with caplog.at_level(logging.WARNING, logger="dustjax.catalog"):
        cat.StarCatalog.from_arrays(**_arrays(dict(s, extinction=mostly)))
    assert "40 of 50 extinctions are negative" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dustjax.catalog"):
        cat.StarCatalog.from_arrays(
            **_arrays(dict(s, sigma_extinction=100 * s["sigma_extinction"]))
        )
    assert "implausible extinction uncertainties: median" in caplog.text


def _arrays(s):
    return dict(
        l_deg=s["l"],
        b_deg=s["b"],
        distance_pc=s["distance"],
        extinction=s["extinction"],
        sigma_extinction=s["sigma_extinction"],
    )
