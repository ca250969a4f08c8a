"""Outputs of a GP fit: figures, FITS extensions (foreground, posterior samples), masses."""

from __future__ import annotations

import numpy as np
import pytest

from dustjax.gp import plots
from dustjax.gp.grid import LBDGrid

GRID = LBDGrid((50.0, 90.0), (-10.0, 10.0), (180.0, 500.0), (8, 4, 5))


def _bright_pixel_lb(fig, ax):
    """(l, b) in the axes' data coordinates of the bright pixels the figure shows in ``ax``,
    read from the rendered image (not from the imshow arguments)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # a raster canvas to read pixels from (the figure has no backend's)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    height = rgba.shape[0]
    box = ax.get_window_extent()
    rows, cols = np.nonzero(rgba[..., 1] > 200)  # viridis / magma at vmax: G > 200
    x, y = cols + 0.5, height - rows - 0.5  # display coordinates, origin bottom left
    inside = (x > box.x0 + 2) & (x < box.x1 - 2) & (y > box.y0 + 2) & (y < box.y1 - 2)
    assert inside.sum() > 0, "no bright pixel drawn"
    data = ax.transData.inverted().transform(np.stack([x[inside], y[inside]], axis=1))
    return data.mean(axis=0)


@pytest.mark.parametrize("which", ["fig4", "fig5"])
def test_maps_draw_a_pixel_at_its_own_longitude_with_l_increasing_to_the_left(
    which, monkeypatch, tmp_path
):
    drawn = []  # the figures the plot functions save (object API: pyplot never holds them)
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, p: drawn.append(fig) or save(fig, p))
    i, j = 1, 2  # l in [55, 60], b in [0, 5]
    img = np.zeros(GRID.shape[:2])
    img[i, j] = 1.0
    if which == "fig4":
        plots.plot_extinction_maps(GRID, img, tmp_path / "fig4.png")
    else:
        cube = np.zeros(GRID.full_shape)
        cube[i, j, 2] = 1.0
        plots.plot_density_slices(GRID, cube, [GRID.d_centres_pc()[2]], tmp_path / "fig5.png")
    (fig,) = drawn
    monkeypatch.undo()
    ax = fig.axes[0]
    lon, lat = _bright_pixel_lb(fig, ax)
    assert lon == pytest.approx(GRID.l_centres_deg()[i], abs=0.5)
    assert lat == pytest.approx(GRID.b_centres_deg()[j], abs=0.5)
    left, right = ax.get_xlim()
    assert left > right  # l increases to the left, as on the sky
    assert (min(left, right), max(left, right)) == pytest.approx(GRID.l_range_deg)


def _uniform_posterior(rho, dtype=np.float64):
    """Parameters of a GP whose every sample is (to 1e-9 dex) the uniform density ``rho``."""
    import math

    from dustjax.gp import svgp

    z = np.random.default_rng(0).uniform(-300, 300, (6, 3))
    return svgp.init_params(
        z, scale_lengths_pc=50.0, amplitude_dex=1e-9, mean_dex=math.log10(rho), dtype=dtype
    )


def test_dust_in_the_box_of_a_uniform_field_is_the_analytic_volume_integral():
    import jax

    from dustjax.gp import predict

    grid = LBDGrid((50.0, 90.0), (-10.0, 10.0), (180.0, 500.0), (4, 4, 8), 2, 3)
    rho = 2e-3
    omega = np.deg2rad(40.0) * (np.sin(np.deg2rad(10.0)) - np.sin(np.deg2rad(-10.0)))
    per_mag_pc2 = np.log(10) / 2.5 * predict.PC_CM**2 / 26000.0 / predict.MSUN_G
    exact = per_mag_pc2 * rho * omega * (500.0**3 - 180.0**3) / 3.0  # ghost, background: out
    mass = predict.dust_mass_in_box_msun(np.full(grid.full_shape, rho), grid)
    assert mass == pytest.approx(exact, rel=1e-12)
    # the same through the prediction's samples; eq. 9 is kept beside it, (d_max / d)^2 too big
    with jax.enable_x64(True):
        maps = predict.predict_maps(
            _uniform_posterior(rho), grid, num_samples=4, max_chunk_cells=40, progress=False
        )
    np.testing.assert_allclose(maps["dust_mass_in_box_msun"], exact, rtol=1e-7)
    np.testing.assert_allclose(maps["gas_mass_in_box_msun"], 124 * exact, rtol=1e-7)
    eq9 = per_mag_pc2 * rho * 500.0 * omega * 500.0**2  # A(d_max) = rho d_max (ghost cells)
    np.testing.assert_allclose(maps["dust_mass_eq9_msun"], eq9, rtol=1e-7)


def _query_lbd(dustmap, lon, lat, dist, **kw):
    from dustjax.catalog import galactic_to_cartesian_np

    xyz = galactic_to_cartesian_np(np.asarray(lon), np.asarray(lat), np.asarray(dist))
    return dustmap.query_xyz(xyz.reshape(-1, 3), **kw)


def test_integrated_queries_of_a_gp_map_include_the_foreground_in_front_of_the_grid(tmp_path):
    """A map with a known foreground F(l, b): E(l, b, d) = F(l, b) + the grid's integral."""
    from dustjax.gp.output import write_fits_cubes
    from dustjax.maps import DustMap

    grid = LBDGrid((50.0, 90.0), (-10.0, 10.0), (180.0, 500.0), (4, 2, 8), ghost_cells=3)
    rho = 1e-3
    density = np.full(grid.full_shape, rho)
    foreground = 0.1 + 0.05 * np.arange(4)[:, None] + 0.01 * np.arange(2)[None, :]  # (nl, nb)
    zeros2 = np.zeros((3, 4, 2))
    prediction = dict(
        density_pct=np.stack([0.5 * density, density, 2 * density]),
        extinction_pct=np.zeros((3, *grid.full_shape)),
        total_extinction_pct=zeros2,
        foreground_pct=np.stack([foreground - 0.02, foreground, foreground + 0.04]),
    )
    write_fits_cubes(tmp_path, prediction, grid)
    m = DustMap.from_fits(tmp_path / "density.fits")
    np.testing.assert_allclose(m.foreground, foreground, rtol=1e-6)
    np.testing.assert_allclose(m.foreground_uncertainty, 0.03, rtol=1e-5)
    lon, lat, d = (
        np.array([52.0, 77.0, 88.0]),
        np.array([-5.0, 5.0, 1.0]),
        np.array([200, 333, 499]),
    )
    expected = foreground[[0, 2, 3], [0, 1, 1]] + rho * (d - 180.0)
    np.testing.assert_allclose(_query_lbd(m, lon, lat, d, integrated=True), expected, rtol=1e-5)
    np.testing.assert_allclose(_query_lbd(m, lon, lat, d), rho, rtol=1e-6)  # density: as before


def test_a_fitted_map_with_ghost_cells_integrates_from_the_sun():
    """predict_maps -> FITS -> DustMap on a uniform posterior: E = rho d, the ghost cells' dust
    in front of d_min included (the old output left it out: rho (d - d_min))."""
    import tempfile

    import jax

    from dustjax.gp import predict
    from dustjax.gp.output import write_fits_cubes
    from dustjax.maps import DustMap

    grid = LBDGrid((50.0, 90.0), (-10.0, 10.0), (180.0, 500.0), (4, 3, 8), 3, 2)
    rho = 2e-3
    with jax.enable_x64(True):
        maps = predict.predict_maps(
            _uniform_posterior(rho), grid, num_samples=4, max_chunk_cells=40, progress=False
        )
    np.testing.assert_allclose(maps["foreground_pct"], rho * 180.0, rtol=1e-7)
    with tempfile.TemporaryDirectory() as tmp:
        write_fits_cubes(tmp, maps, grid)
        m = DustMap.from_fits(f"{tmp}/density.fits")
    d = np.array([185.0, 300.0, 520.0])
    e = _query_lbd(m, np.full(3, 70.0), np.full(3, 2.0), d, integrated=True)
    np.testing.assert_allclose(e, rho * d, rtol=1e-5)


def test_integrated_percentiles_come_from_the_samples_of_a_known_gaussian():
    """Sample k: uniform density c_k ~ N(mu, s) along the column and foreground F_k ~ N(mf, sf):
    E(d) = F + c (d - d0) is Gaussian, and its 16/50/84 % over the samples match the analytic
    ones within Monte Carlo error (the median cube's integral would not carry the spread)."""
    from scipy.stats import norm

    from dustjax.maps import DustMap

    rng = np.random.default_rng(3)
    k = 4000
    mu, s, mf, sf = 2e-3, 5e-4, 0.2, 0.05
    c = rng.normal(mu, s, k)
    fg = rng.normal(mf, sf, k)
    edges = (np.array([60.0, 70.0, 80.0]), np.array([-5.0, 0.0, 5.0]), np.linspace(100, 600, 6))
    samples = np.broadcast_to(c[:, None, None, None], (k, 2, 2, 5)).astype(np.float64)
    m = DustMap(
        "spherical",
        np.full((2, 2, 5), mu),
        edges,
        foreground=np.full((2, 2), mf),
        samples=samples,
        foreground_samples=np.broadcast_to(fg[:, None, None], (k, 2, 2)),
    )
    from dustjax.catalog import galactic_to_cartesian_np

    d = np.array([150.0, 420.0])
    xyz = galactic_to_cartesian_np(np.array([65.0, 75.0]), np.array([2.0, -3.0]), d)
    mean, sd = mf + mu * (d - 100.0), np.hypot(sf, s * (d - 100.0))
    got = m.query_xyz(xyz, integrated=True, mode="percentile", pct=[16, 50, 84])
    z = norm.ppf([0.16, 0.5, 0.84])
    expected = mean[:, None] + sd[:, None] * z[None, :]
    p = np.array([0.16, 0.5, 0.84])
    mc_error = sd[:, None] * np.sqrt(p * (1 - p) / k) / norm.pdf(z)[None, :]
    assert np.all(np.abs(got - expected) < 4 * mc_error), (got, expected, mc_error)
    value, sigma = m.query_xyz(xyz, integrated=True, return_uncertainty=True)
    np.testing.assert_allclose(value, got[:, 1])  # the default mode: median over the samples
    np.testing.assert_allclose(sigma, sd, rtol=0.05)
    assert m.query_xyz(xyz, integrated=True, mode="samples").shape == (2, k)
    # without draws of the foreground, each draw starts from the median foreground
    m_fg = DustMap("spherical", m.density, edges, foreground=m.foreground, samples=samples)
    got = m_fg.query_xyz(xyz, integrated=True, mode="samples")
    np.testing.assert_allclose(got, mf + c[None, :] * (d[:, None] - 100.0), rtol=1e-12)
    one = m.query_xyz(xyz, integrated=True, mode="random_sample", rng=0)
    assert np.all(np.isin(one[0], m.query_xyz(xyz[:1], integrated=True, mode="samples")))


def test_posterior_samples_round_trip_through_the_fits_file(tmp_path):
    """predict_maps' draws -> density.fits (SAMPLES, FG_SAMP) -> DustMap: each draw's integral
    from the Sun equals the step-function integral of that draw on the full grid, ghost
    cells included."""
    import jax
    from astropy.io import fits

    from dustjax.catalog import galactic_to_cartesian_np
    from dustjax.gp import predict, svgp
    from dustjax.gp.output import write_fits_cubes
    from dustjax.maps import DustMap

    grid = LBDGrid((50.0, 90.0), (-10.0, 10.0), (180.0, 500.0), (4, 3, 8), 3, 2)
    z = np.random.default_rng(0).uniform(-300, 300, (6, 3))
    params = svgp.init_params(z, scale_lengths_pc=80.0, amplitude_dex=0.4, mean_dex=-2.7)
    with jax.enable_x64(True):
        params = {k: jax.numpy.asarray(v, jax.numpy.float64) for k, v in params.items()}
        maps = predict.predict_maps(
            params, grid, num_samples=8, num_posterior_samples=5, progress=False
        )
    samples = maps["density_samples"]
    assert samples.shape == (5, *grid.full_shape) and samples.dtype == np.float32
    assert np.std(samples[:, 0, 0, 5]) > 0  # distinct draws
    write_fits_cubes(tmp_path, maps, grid)
    with fits.open(tmp_path / "density.fits") as hdul:
        hdr = hdul["SAMPLES"].header
        assert hdr["BUNIT"] == "mag/pc" and hdr["NSAMPLES"] == 5 and hdr["CTYPE4"] == "SAMPLE"
        assert "posterior" in hdr["POSTSAMP"]
        assert hdul["SAMPLES"].data.shape == (5, 8 + 2, 3, 4)
        assert hdul["FG_SAMP"].header["BUNIT"] == "mag"
    m = DustMap.from_fits(tmp_path / "density.fits")
    assert m.num_samples == 5 and m.samples.shape == (5, 4, 3, 10)
    i, j, d = 2, 1, 333.0  # l in [70, 80], b in [-3.3, 3.3]
    xyz = galactic_to_cartesian_np(np.array([75.0]), np.array([0.5]), np.array([d]))
    got = m.query_xyz(xyz, integrated=True, mode="samples")[0]
    edges = grid.d_edges_pc()
    lengths = np.clip(d - edges[:-1], 0.0, np.diff(edges))
    expected = np.sum(samples[:, i, j, :].astype(np.float64) * lengths, axis=1)
    np.testing.assert_allclose(got, expected, rtol=2e-6)


def test_star_bands_with_a_model_error_have_its_analytic_width():
    """A posterior without spread: the bands are the model error's alone, 2 sqrt((f A)^2 + s^2)
    wide around A = rho d; without it they have no width."""
    import jax
    from scipy.stats import norm

    from dustjax.gp import predict

    grid = LBDGrid((50.0, 90.0), (-10.0, 10.0), (180.0, 500.0), (2, 2, 4))
    rho, f, s = 2e-3, 0.1, 0.02
    rng = np.random.default_rng(1)
    d = rng.uniform(180, 500, 40)
    op = grid.star_operator(rng.uniform(50, 90, 40), rng.uniform(-10, 10, 40), d)
    with jax.enable_x64(True):
        params = _uniform_posterior(rho)
        args = (params, grid, np.asarray(op.flat_index), np.asarray(op.partial_pc, np.float64))
        plain = predict.predict_star_extinctions(*args, num_samples=8)
        wide = predict.predict_star_extinctions(*args, num_samples=2000, model_error=(f, s))
    a = rho * (d - 180.0)  # no ghost cells: the grid starts at 180 pc
    np.testing.assert_allclose(plain, np.broadcast_to(a, (3, 40)), rtol=1e-7)
    half = np.sqrt((f * a) ** 2 + s**2)
    mc = half * np.sqrt(0.16 * 0.84 / 2000) / norm.pdf(1.0)  # sd of a 16/84 % estimate
    np.testing.assert_array_less(np.abs(0.5 * (wide[2] - wide[0]) - half), 4 * mc)
    np.testing.assert_array_less(np.abs(wide[1] - a), 4 * 1.25 * half / np.sqrt(2000))


def test_integrated_percentiles_from_samples_carry_the_maps_model_error():
    """A GP map whose header holds a learned (MEFRAC, MEFLOOR) and a calibrated (CALFRAC,
    CALFLOOR) model error: integrated percentiles and uncertainties from the samples are those
    of the model plus N(0, (f A)^2 + s^2) with the calibrated (f, s), which replaces the learned
    one: for Gaussian samples, a Gaussian of the summed variance. The raw draws and the density
    queries are unchanged."""
    import dataclasses

    from scipy.stats import norm

    from dustjax.catalog import galactic_to_cartesian_np
    from dustjax.gp.pipeline import extinction_model_error
    from dustjax.maps import DustMap

    rng = np.random.default_rng(4)
    k, mu, s = 4000, 2e-3, 5e-4
    c = rng.normal(mu, s, k)
    edges = (np.array([60.0, 70.0, 80.0]), np.array([-5.0, 0.0, 5.0]), np.linspace(100, 600, 6))
    samples = np.broadcast_to(c[:, None, None, None], (k, 2, 2, 5)).astype(np.float64)
    plain = DustMap("spherical", np.full((2, 2, 5), mu), edges, samples=samples)
    meta = dict(MEFRAC=0.06, MEFLOOR=0.0, CALFRAC=0.1, CALFLOOR=0.03)
    m = dataclasses.replace(plain, meta=meta)
    f, fl = m.extinction_model_error()
    assert (f, fl) == pytest.approx((0.1, 0.03))
    learned_only = dataclasses.replace(plain, meta=dict(MEFRAC=0.06, MEFLOOR=0.01))
    assert learned_only.extinction_model_error() == pytest.approx((0.06, 0.01))
    summary = dict(model_error=dict(frac=0.06, floor_mag=0.0),
                   calibration=dict(frac=0.1, floor_mag=0.03))  # fmt: skip
    assert extinction_model_error(summary) == pytest.approx((0.1, 0.03))
    assert extinction_model_error(dict(model_error=dict(frac=0.06, floor_mag=0.0))) == (0.06, 0.0)
    assert extinction_model_error({}) == (0.0, 0.0)

    d = np.array([150.0, 420.0])
    xyz = galactic_to_cartesian_np(np.array([65.0, 75.0]), np.array([2.0, -3.0]), d)
    mean, sd = mu * (d - 100.0), s * (d - 100.0)
    total = np.sqrt(sd**2 + (f * mean) ** 2 + fl**2)
    z = norm.ppf([0.16, 0.5, 0.84])
    got = m.query_xyz(xyz, integrated=True, mode="percentile", pct=[16, 50, 84])
    expected = mean[:, None] + total[:, None] * z[None, :]
    np.testing.assert_allclose(got, expected, rtol=0.02, atol=0.02 * sd.max())
    _, sigma = m.query_xyz(xyz, integrated=True, return_uncertainty=True)
    np.testing.assert_allclose(sigma, total, rtol=0.03)
    raw = m.query_xyz(xyz, integrated=True, mode="percentile", pct=[16, 50, 84], model_error=False)
    np.testing.assert_allclose(
        raw, plain.query_xyz(xyz, integrated=True, mode="percentile", pct=[16, 50, 84])
    )
    one = m.query_xyz(xyz, integrated=True, mode="percentile", pct=84)
    np.testing.assert_allclose(one, got[:, 2])
    np.testing.assert_allclose(
        m.query_xyz(xyz, integrated=True, mode="samples"),
        plain.query_xyz(xyz, integrated=True, mode="samples"),
    )
    np.testing.assert_allclose(  # densities are the model's
        m.query_xyz(xyz, mode="percentile", pct=84), plain.query_xyz(xyz, mode="percentile", pct=84)
    )
