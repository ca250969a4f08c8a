"""DustMap.query in dustmaps' conventions: modes, pct, flags, frames, profiles, scalars, memory."""

from __future__ import annotations

import tracemalloc
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import (
    CartesianRepresentation,
    Galactocentric,
    SkyCoord,
    UnitSphericalRepresentation,
)

from dustjax import maps
from dustjax.geometry import Region

BOX = Region((-60.0, -60.0, -30.0), (60.0, 60.0, 30.0), (12, 12, 6), name="box")
RHO = 2e-3  # mag/pc


def _uniform_cartesian(rho=RHO):
    return maps.DustMap.from_region(BOX, np.full(BOX.shape, rho, np.float32))


def _spherical(k=0, seed=0, shape=(4, 3, 5)):
    """l 170-190 (5 deg), b -7.5..7.5 (5 deg), d 0-500 pc (100 pc); k posterior samples, sample
    j a uniform density c_j, so that its integral to distance d is c_j * d."""
    edges = (np.linspace(170, 190, 5), np.linspace(-7.5, 7.5, 4), np.linspace(0, 500, 6))
    density = np.full(shape, RHO, np.float32)
    samples = None
    if k:
        c = np.random.default_rng(seed).uniform(1e-3, 3e-3, k)
        samples = np.broadcast_to(c[:, None, None, None], (k, *shape)).astype(np.float32)
    return maps.DustMap("spherical", density, edges, samples=samples)


def _gal(l, b, d_pc=None):  # noqa: E741
    dist = None if d_pc is None else np.asarray(d_pc) * u.pc
    return SkyCoord(
        l=np.asarray(l) * u.deg, b=np.asarray(b) * u.deg, distance=dist, frame="galactic"
    )


# ---- analytic answers -------------------------------------------------------------------------
def test_uniform_density_integrates_to_rho_times_distance():
    d = np.array([5.0, 17.0, 29.5, 41.0])
    c = _gal([10.0, 100.0, 200.0, 300.0], [0.0, 20.0, -30.0, 5.0], d)
    np.testing.assert_allclose(_uniform_cartesian().query(c, integrated=True), RHO * d, rtol=2e-6)
    s = _gal([171.0, 175.0, 181.0, 189.0], [-7.0, 0.0, 3.0, 7.0], [12.0, 99.9, 250.0, 499.0])
    np.testing.assert_allclose(
        _spherical().query(s, integrated=True), RHO * s.distance.pc, rtol=1e-6
    )


def test_scalar_in_numpy_scalar_out():
    m = _uniform_cartesian()
    for out in (
        m.query(_gal(30.0, 10.0, 20.0)),
        m.query(_gal(30.0, 10.0, 20.0), integrated=True),
        m.query_gal(30.0, 10.0, 0.02, integrated=True),
    ):
        assert isinstance(out, np.float64) and np.ndim(out) == 0
    value, flags = m.query(_gal(30.0, 10.0, 20.0), return_flags=True)
    assert isinstance(value, np.float64) and bool(flags["inside"])
    assert m.query(_gal([30.0], [10.0], [20.0])).shape == (1,)


def test_every_frame_and_representation_gives_the_same_answer():
    m = _uniform_cartesian()
    gal = _gal([30.0, 250.0], [10.0, -20.0], [20.0, 35.0])
    expect = m.query(gal, integrated=True)
    galactocentric = gal.transform_to(Galactocentric())
    cartesian = SkyCoord(CartesianRepresentation(gal.cartesian.xyz), frame="galactic")
    for other in (galactocentric, cartesian, gal.icrs, gal.fk5):
        np.testing.assert_allclose(m.query(other, integrated=True), expect, rtol=1e-6)
    np.testing.assert_allclose(m.query(galactocentric.frame, integrated=True), expect, rtol=1e-6)
    np.testing.assert_allclose(
        m.query_gal([30.0, 250.0], [10.0, -20.0], [0.020, 0.035], integrated=True), expect
    )
    icrs = gal.icrs
    np.testing.assert_allclose(
        m.query_equ(icrs.ra.deg, icrs.dec.deg, icrs.distance.kpc, integrated=True),
        expect,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        m.query_equ(icrs.ra, icrs.dec, icrs.distance, frame="icrs", integrated=True),
        expect,
        rtol=1e-6,
    )
    with pytest.raises(TypeError, match="SkyCoord"):
        m.query(np.zeros((2, 3)))


def test_no_distance_gives_the_profile_on_the_map_distance_bins():
    m = _spherical()
    np.testing.assert_allclose(m.distances.to_value(u.pc), [50, 150, 250, 350, 450])
    lines = _gal([[172.0, 180.0, 188.0]], [[0.0, 5.0, -5.0]])  # shape (1, 3)
    profile = m.query(lines, integrated=True)
    assert profile.shape == (1, 3, 5)
    np.testing.assert_allclose(profile, RHO * np.broadcast_to(m.distances.value, (1, 3, 5)))
    # The same as asking at those distances.
    d = m.distances.to_value(u.pc)
    at = m.query(_gal(np.full(5, 180.0), np.full(5, 5.0), d), integrated=True)
    np.testing.assert_allclose(profile[0, 1], at)
    # A Cartesian map: steps of its cell size from the Sun to its far corner.
    c = _uniform_cartesian()
    prof, flags = c.query_gal([0.0, 0.0], [0.0, 80.0], return_flags=True)
    d = c.profile_distances_pc
    np.testing.assert_allclose(d[:3], [5.0, 15.0, 25.0])
    assert prof.shape == (2, len(d)) and flags.shape == (2,)
    # Along l = 0, b = 0 the box ends at X = 60 pc; towards b = 80 deg at Z = 30 pc.
    for line, end in ((0, 60.0), (1, 30.0 / np.sin(np.deg2rad(80.0)))):
        inside = d < end
        np.testing.assert_allclose(prof[line][inside], RHO, rtol=1e-6)
        assert np.all(np.isnan(prof[line][~inside]))
        np.testing.assert_allclose(flags["min_reliable_distmod"][line], 5 * np.log10(5.0) - 5)
        last = d[inside][-1]
        np.testing.assert_allclose(flags["max_reliable_distmod"][line], 5 * np.log10(last) - 5)
    assert list(flags.dtype.names) == ["inside", "min_reliable_distmod", "max_reliable_distmod"]
    assert flags["inside"].all()


def test_flags_say_inside_or_outside():
    m = _uniform_cartesian()
    c = _gal([10.0, 10.0, 90.0], [0.0, 0.0, 60.0], [20.0, 500.0, 10.0]).reshape(3, 1)
    with pytest.warns(maps.OutsideMapWarning, match="1 of 3 points"):
        value, flags = m.query(c, return_flags=True)
    assert value.shape == flags.shape == (3, 1)
    assert list(flags.dtype.names) == ["inside", "reliable_dist"]
    np.testing.assert_array_equal(flags["inside"][:, 0], [True, False, True])
    np.testing.assert_array_equal(np.isnan(value[:, 0]), ~flags["inside"][:, 0])


# ---- modes over posterior samples -------------------------------------------------------------
def test_percentiles_mean_and_samples_are_numpys_over_the_samples():
    m = _spherical(k=9)
    c = _gal([172.0, 183.0], [1.0, -4.0], [120.0, 430.0])
    per_point = m.query(c, integrated=True, mode="samples")
    assert per_point.shape == (2, 9)
    np.testing.assert_allclose(per_point, m.samples[:, 0, 0, 0][None, :] * c.distance.pc[:, None])
    for pct in (16.0, [5, 50, 95]):
        got = m.query(c, integrated=True, mode="percentile", pct=pct)
        expect = np.percentile(per_point, pct, axis=1)
        np.testing.assert_allclose(got, np.moveaxis(np.atleast_2d(expect), 0, -1).squeeze())
        assert got.shape == ((2,) if np.ndim(pct) == 0 else (2, 3))
    np.testing.assert_allclose(m.query(c, mode="mean"), m.samples[:, 0, 0, 0].mean())
    np.testing.assert_allclose(
        m.query(c, integrated=True), np.median(per_point, axis=1)
    )  # median of integrals
    np.testing.assert_allclose(m.query(c, mode="best", integrated=True), RHO * c.distance.pc)
    np.testing.assert_allclose(
        m.query(c, mode="percentile", pct=[50.0])[:, 0], np.median(m.samples[:, 0, 0, 0])
    )
    prof = m.query(
        c[:1].realize_frame(c[:1].data.represent_as(UnitSphericalRepresentation)), mode="samples"
    )
    assert prof.shape == (1, 5, 9)


def test_random_samples_are_samples_and_per_pixel_draws_are_shared():
    m = _spherical(k=40, seed=5)
    c_k = m.samples[:, 0, 0, 0].astype(np.float64)
    # 200 points in one (l, b) pixel at different distances, 200 in another.
    d = np.linspace(10.0, 490.0, 200)
    c = _gal(np.r_[np.full(200, 171.0), np.full(200, 186.0)], np.full(400, 1.0), np.r_[d, d])
    one = m.query(c, integrated=True, mode="random_sample", rng=1) / c.distance.pc
    assert np.all(np.isclose(one[:, None], c_k[None, :], rtol=1e-6).any(axis=1))
    assert len(np.unique(np.round(one, 10))) > 10  # independent draws per point
    per_pix = m.query(c, integrated=True, mode="random_sample_per_pix", rng=1) / c.distance.pc
    assert np.ptp(per_pix[:200]) < 1e-12 and np.ptp(per_pix[200:]) < 1e-12
    assert np.isclose(per_pix[0], c_k, rtol=1e-6).any()
    # Without distances, one draw per sight line: the profile is one sample's.
    lines = _gal([171.0, 186.0, 176.0], [1.0, 1.0, -6.0])
    prof = m.query(lines, integrated=True, mode="random_sample", rng=3) / m.distances.value
    assert np.all(np.ptp(prof, axis=1) < 1e-9)


def test_modes_that_need_samples_say_so_on_a_map_without_them():
    m = _spherical()
    c = _gal(175.0, 0.0, 100.0)
    for mode in maps.DustMap.SAMPLE_MODES:
        with pytest.raises(maps.MapError, match="needs posterior samples.*carries none"):
            m.query(c, mode=mode, pct=50)
    with pytest.raises(maps.MapError, match="mode must be one of"):
        m.query(c, mode="typical")
    s = _spherical(k=3)
    with pytest.raises(maps.MapError, match="needs pct"):
        s.query(c, mode="percentile")
    with pytest.raises(maps.MapError, match=r"in \[0, 100\]"):
        s.query(c, mode="percentile", pct=[50, 120])


def test_chunked_queries_equal_one_pass():
    m = _spherical(k=5)
    rng = np.random.default_rng(0)
    c = _gal(rng.uniform(170, 190, 101), rng.uniform(-7, 7, 101), rng.uniform(1, 499, 101))
    for kw in ({"integrated": True}, {"mode": "percentile", "pct": [10, 90], "integrated": True}):
        np.testing.assert_array_equal(m.query(c, chunk=7, **kw), m.query(c, **kw))
    lines = c[:13].realize_frame(c[:13].data.represent_as(UnitSphericalRepresentation))
    np.testing.assert_array_equal(m.query(lines, chunk=11), m.query(lines))


def test_a_million_point_integrated_query_stays_under_500_mb():
    """10^6 points on a GP-sized spherical map with 12 samples, default mode (the median of the
    samples' integrals): the peak of numpy allocations stays far below 500 MB."""
    rng = np.random.default_rng(0)
    shape, k, n = (60, 30, 80), 12, 1_000_000
    edges = (np.linspace(150, 210, 61), np.linspace(-15, 15, 31), np.linspace(0, 2000, 81))
    m = maps.DustMap(
        "spherical",
        rng.uniform(0, 1e-3, shape).astype(np.float32),
        edges,
        samples=rng.uniform(0, 1e-3, (k, *shape)).astype(np.float32),
    )
    c = _gal(rng.uniform(150, 210, n), rng.uniform(-15, 15, n), rng.uniform(10, 1990, n))
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = m.query(c, integrated=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (n,) and np.all(np.isfinite(out))
    assert peak < 500 * 2**20, f"peak {peak / 2**20:.0f} MiB"
