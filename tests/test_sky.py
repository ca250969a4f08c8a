"""The sky simulator: shapes, determinism, the disc's scale height, the dynamic range, the spread
of amplitudes, exact clump deposition, jit == eager, and the registry route."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.geometry import Region
from dustjax.los import los_operator
from dustjax.sims import SIMULATORS, get_simulator, simulate_batch_fn
from dustjax.sims.sky import (
    SKY,
    SKY_LR,
    SKY_SR,
    SkyParams,
    deposit_gaussians,
    preset_name,
    radial_smear,
    sky_density,
    smoothed_exponential,
)

# Small boxes with the paper regions' cell sizes, so that the tests compile in seconds.
SMALL_SR = Region((-48.0, -48.0, -48.0), (0.0, 48.0, 48.0), (8, 16, 16), name="SR@small")
SMALL_LR = Region((-960.0, -480.0, -480.0), (0.0, 480.0, 480.0), (16, 16, 16), name="LR@small")
N = 96  # cubes per batch (one compilation per region serves every test)


@functools.lru_cache
def _batch_fn(region, params):
    return jax.jit(jax.vmap(lambda k: sky_density(k, region, params)))


def _batch(region, params, n, seed=0):
    return np.asarray(_batch_fn(region, params)(jax.random.split(jax.random.key(seed), n)))


def test_presets_follow_the_region():
    assert preset_name(Region.named("SR")) == "SR"
    assert preset_name(Region.named("LR").with_shape((64, 64, 64))) == "LR"
    assert preset_name(Region((0, 0, 0), (100, 100, 100), (4, 4, 4))) == "LR"  # 25 pc cells
    assert preset_name(Region((0, 0, 0), (100, 100, 100), (20, 20, 20))) == "SR"  # 5 pc cells
    assert SKY.resolve(Region.named("SR")) == SKY_SR
    assert SKY.resolve(Region.named("LR")) == SKY_LR
    assert SKY_SR.num_complexes_range != SKY_LR.num_complexes_range
    # Explicit values win over the preset.
    custom = dataclasses.replace(SKY, clumps_per_complex=3).resolve(Region.named("LR"))
    assert custom.clumps_per_complex == 3 and custom.step_pc == SKY_LR.step_pc
    assert SIMULATORS["sky"][1] == SKY
    with pytest.raises(ValueError):
        SkyParams(diffuse_mid_range_mag_per_pc=(1e-3, 1e-4))
    with pytest.raises(ValueError):
        SkyParams(empty_fraction_range=(0.0, 1.0))


@pytest.mark.parametrize("region", [SMALL_SR, SMALL_LR], ids=["SR", "LR"])
def test_shape_dtype_nonnegative_and_determinism(region):
    a = _batch_fn(region, SKY)(jax.random.split(jax.random.key(7), N))
    assert a.shape == (N, *region.shape) and a.dtype == jnp.float32
    a = np.asarray(a)
    assert np.all(np.isfinite(a)) and a.min() >= 0.0 and a.max() > 0.0
    np.testing.assert_array_equal(a, _batch(region, SKY, N, seed=7))
    assert not np.allclose(a, _batch(region, SKY, N, seed=8))
    assert not np.allclose(a[0], a[1])


def test_jit_equals_eager():
    region = Region((-24.0, -12.0, -12.0), (0.0, 12.0, 12.0), (4, 4, 4), name="SR@tiny")
    params = dataclasses.replace(SKY, num_complexes_range=(1, 1), clumps_per_complex=2)
    key = jax.random.key(11)
    eager = np.asarray(sky_density(key, region, params))
    jitted = np.asarray(jax.jit(lambda k: sky_density(k, region, params))(key))
    np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-6 * eager.max())


@pytest.mark.parametrize("preset", [SKY_SR, SKY_LR], ids=["SR-clouds", "LR-clouds"])
def test_mean_vertical_profile_follows_the_scale_height(preset):
    """With the disc's geometry fixed (h = 100 pc, mid-plane at Z = 0, no tilt, no gradient, no
    cavities), the mean density over many cubes, clouds included, is exp(-|Z| / h)."""
    h = 100.0
    params = dataclasses.replace(
        preset,
        scale_height_range_pc=(h, h),
        midplane_range_pc=(0.0, 0.0),
        tilt_max=0.0,
        scale_length_range_pc=None,
        bubble_probability=0.0,
        cone_probability=0.0,
        radial_smearing_probability=0.0,
        empty_fraction_range=(0.0, 0.0),
    )
    region = Region((-300.0, -300.0, -600.0), (300.0, 300.0, 600.0), (6, 6, 60))
    profile = _batch(region, params, 128, seed=3).mean(axis=(0, 1, 2))
    z = region.centres_pc(2)
    fit = (np.abs(z) > 20) & (np.abs(z) < 400)
    slope = np.polyfit(np.abs(z[fit]), np.log(profile[fit]), 1)[0]
    assert abs(-1.0 / slope - h) < 0.15 * h, -1.0 / slope
    # Both sides of the plane alike (the profile is symmetric in expectation).
    np.testing.assert_allclose(profile[fit & (z > 0)].sum() / profile[fit & (z < 0)].sum(), 1, 0.2)


def test_empty_cone_is_a_cone_of_directions_from_the_sun():
    """Same key with and without the cone: the ratio is 1 outside and the depletion inside, and
    the emptied cells' directions fit in a cone of 45 deg half-angle (pairwise <= 90 deg)."""
    region = Region((-480.0, -480.0, -480.0), (480.0, 480.0, 480.0), (12, 12, 12), name="LR@c")
    base = dataclasses.replace(
        SKY,
        bubble_probability=0.0,
        empty_fraction_range=(0.0, 0.0),
        depletion_range=(1e-5, 1e-5),
        radial_smearing_probability=0.0,
    )
    cone = dataclasses.replace(base, cone_probability=1.0, cone_half_angle_range_deg=(45.0, 45.0))
    with_cone = _batch(region, cone, 4, seed=2)
    without = _batch(region, dataclasses.replace(base, cone_probability=0.0), 4, seed=2)
    directions = (
        region.cell_centres_pc() / np.linalg.norm(region.cell_centres_pc(), axis=-1)[..., None]
    )
    for a, b in zip(with_cone, without, strict=True):
        ratio = a / b
        emptied = ratio < 1e-3
        assert 0.05 < emptied.mean() < 0.5  # a 45-deg cone holds ~15 % of the directions
        assert np.mean((ratio > 1e-3) & (ratio < 0.99)) < 0.1  # a sharp edge
        d = directions[emptied]
        assert (d @ d.T).min() > -0.1  # no two emptied directions more than ~95 deg apart
        np.testing.assert_allclose(np.median(ratio[emptied]), 1e-5, rtol=0.5)


def test_dynamic_range_and_amplitude_spread():
    """Cells span >= 3 decades (1st to 99th percentile over a batch); the cube means spread at
    least as widely as a log-uniform law over 1.5 decades (std of log10 >= 1.5 / sqrt(12))."""
    density = _batch(SMALL_LR, SKY, N, seed=5)
    lo, hi = np.percentile(density, [1, 99])
    assert lo > 0 and math.log10(hi / lo) >= 3.0, (lo, hi)
    means = density.mean(axis=(1, 2, 3))
    assert np.std(np.log10(means)) >= 1.5 / math.sqrt(12), np.std(np.log10(means))
    # Real-sky-like levels: 1e-4 .. 1e-1 mag/pc all occur, and no ceiling of the paper's kind
    # (0.01-0.5 mag/pc for most cells) holds.
    assert np.mean(density > 1e-4) > 0.05 and np.median(means) < 1e-3
    sr = _batch(SMALL_SR, SKY, N, seed=6)
    assert np.percentile(sr, 99.9) > 1e-2 and np.median(sr) < 1e-3


def test_deposit_gaussians_keeps_mass_and_peak():
    region = Region((0.0, 0.0, 0.0), (60.0, 60.0, 60.0), (10, 10, 10))  # 6 pc cells
    # A clump much smaller than a cell keeps its mass peak (2 pi)^(3/2) s^3.
    s, peak = 1.5, 0.3
    cube = deposit_gaussians(
        jnp.array([[31.0, 29.0, 33.0]]), jnp.array([s]), jnp.array([peak]), region
    )
    mass = float(cube.sum()) * region.cell_volume_pc3
    np.testing.assert_allclose(mass, peak * (2 * math.pi) ** 1.5 * s**3, rtol=1e-4)
    # ... all of it within the 3^3 cells around the cell holding the centre (cell 5, 4, 5).
    block = np.asarray(cube)[4:7, 3:6, 4:7].sum()
    np.testing.assert_allclose(block, float(cube.sum()), rtol=1e-5)
    # A clump much wider than a cell, centred on a cell centre: that cell holds ~the peak.
    wide = deposit_gaussians(
        jnp.array([[33.0, 33.0, 33.0]]), jnp.array([40.0]), jnp.ones(1), region
    )
    np.testing.assert_allclose(float(wide[5, 5, 5]), 1.0, rtol=3e-3)


def test_radial_smear_stretches_along_the_line_of_sight():
    """A clump at distance ~300 pc on the X axis: smearing by 20 % in distance widens it along X
    (the line of sight) to ~sqrt(s^2 + (0.2 d)^2) and leaves Y, Z nearly alone; 0 returns the
    input."""
    region = Region((-600.0, -150.0, -150.0), (0.0, 150.0, 150.0), (40, 20, 20))  # 15 pc cells
    clump = deposit_gaussians(
        jnp.array([[-307.5, 7.5, 7.5]]), jnp.array([20.0]), jnp.ones(1), region
    )
    unsmeared = np.asarray(radial_smear(clump, region, 0.0))
    np.testing.assert_allclose(unsmeared, clump, rtol=1e-5, atol=1e-6 * float(clump.max()))
    smeared = np.asarray(jax.jit(lambda c: radial_smear(c, region, 0.2))(clump))

    def widths(cube):
        total = cube.sum()
        out = []
        for axis in range(3):
            c = region.centres_pc(axis)
            marginal = cube.sum(axis=tuple(a for a in range(3) if a != axis)) / total
            mean = (marginal * c).sum()
            out.append(np.sqrt((marginal * (c - mean) ** 2).sum()))
        return np.array(out)

    before, after = widths(np.asarray(clump)), widths(smeared)
    assert after[0] > 2.5 * before[0]  # sqrt(20^2 + 60^2) / 20 ~ 3.2
    # Across the line of sight only the trilinear interpolation's blur (< 1 cell in quadrature).
    assert np.all(after[1:] < np.hypot(before[1:], 15.0)) and np.all(after[1:] >= before[1:])
    # Columns along the rays are kept, so the volume integral grows by E[exp(-2 f t)] = e^(2 f^2).
    np.testing.assert_allclose(smeared.sum() / float(clump.sum()), np.exp(2 * 0.2**2), rtol=0.03)
    # ... and the extinction behind the clump (at the far face, X = -600 pc) is unchanged.
    operator = los_operator(region)
    far = [np.asarray(operator(jnp.asarray(c)[None]))[0, 0] for c in (np.asarray(clump), smeared)]
    np.testing.assert_allclose(far[1].sum(), far[0].sum(), rtol=0.05)


def test_smoothed_exponential_is_the_convolution():
    u = np.linspace(-800.0, 800.0, 16_001)  # 0.1 pc steps
    h, sigma = 100.0, 25.0
    offsets = np.arange(-1500, 1501) * 0.1  # the kernel to +-6 sigma
    gauss = np.exp(-0.5 * (offsets / sigma) ** 2)
    numeric = np.convolve(np.exp(-np.abs(u) / h), gauss / gauss.sum(), mode="same")
    inner = np.abs(u) < 500
    analytic = np.asarray(smoothed_exponential(jnp.asarray(u), h, sigma))
    np.testing.assert_allclose(analytic[inner], numeric[inner], rtol=1e-4)
    # Far from the cusp it is exp(-|u| / h) times exp(sigma^2 / 2 h^2); finite far out.
    far = np.asarray(smoothed_exponential(jnp.asarray([400.0, 5000.0]), h, sigma))
    np.testing.assert_allclose(far[0], np.exp(-4.0 + 0.5 * (sigma / h) ** 2), rtol=1e-5)
    assert np.isfinite(far[1]) and far[1] >= 0


def test_through_the_registry_and_the_los_operator():
    keys = jax.random.split(jax.random.key(1), 3)
    density, extinction = simulate_batch_fn(SMALL_SR, "sky")(keys)
    assert density.shape == extinction.shape == (3, *SMALL_SR.shape)
    np.testing.assert_allclose(
        np.asarray(extinction), np.asarray(los_operator(SMALL_SR)(density)), rtol=1e-5, atol=1e-9
    )
    single = np.asarray(get_simulator("sky")(keys[0], SMALL_SR))
    # float32 erf tails differ between the batched and the single program: atol at 1e-6 of max.
    np.testing.assert_allclose(np.asarray(density[0]), single, rtol=1e-4, atol=1e-6 * single.max())
