"""Fitting the latent GP: sharding, minibatches, the stopping rule, failures, a tiny recovery."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.catalog import StarCatalog
from dustjax.gp import fit, simulate, svgp
from dustjax.gp.grid import LBDGrid
from dustjax.sharding import make_mesh

GRID = LBDGrid((60, 70), (-5, 5), (100, 200), (3, 3, 4), ghost_cells=1)

_SHARDED = textwrap.dedent(
    """
    import json, os
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from dustjax.catalog import StarCatalog
    from dustjax.gp import fit, svgp
    from dustjax.gp.grid import LBDGrid
    from dustjax.sharding import make_mesh
    grid = LBDGrid((60, 70), (-5, 5), (100, 200), (3, 3, 4), ghost_cells=1)
    rng = np.random.default_rng(0)
    n = 41  # padded to 44 over 4 devices: padding must not change anything
    cat = StarCatalog.from_arrays(l_deg=rng.uniform(60, 70, n), b_deg=rng.uniform(-5, 5, n),
        distance_pc=rng.uniform(100, 200, n), extinction=rng.uniform(0.1, 0.5, n),
        sigma_extinction=np.full(n, 0.05))
    stars = fit.make_star_data(cat, grid, num_shards=4, dtype=jnp.float64)
    params = fit.initial_params(cat, dict(num_inducing=7, scale_lengths_pc=30.0,
        amplitude_dex=0.4, mean_dex=-2.5, q_std=0.5), dtype=jnp.float64)
    model = svgp.SVGPModel(num_samples=4)
    out = {}
    for ndev in (1, 4):
        mesh = make_mesh(axis=fit.STAR_AXIS, devices=jax.devices()[:ndev])
        f = fit.make_elbo_fn(mesh, grid, model, batch_size=None, num_stars_padded=44,
                             dtype=jnp.float64)
        val, grad = jax.jit(jax.value_and_grad(f))(params, jax.random.key(3),
                                                   fit.shard_stars(stars, mesh), 1e-6)
        out[ndev] = dict(val=float(val), grad={k: np.asarray(v).ravel().tolist()
                                               for k, v in grad.items()})
    key_phi, _ = jax.random.split(jax.random.key(3))
    cells = jnp.asarray(grid.cell_centres_xyz())
    out["plain"] = float(svgp.elbo(params, key_phi, cells, stars, jnp.asarray(grid.d_widths_pc()),
                                   grid.full_shape, model, 1e-6))
    out["devices"] = len(jax.devices())
    print("RESULT" + json.dumps(out))
    """
)


def test_sharded_over_four_devices_equals_one_device_and_the_plain_elbo():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    assert out["devices"] == 4
    one, four = out["1"], out["4"]
    assert four["val"] == pytest.approx(one["val"], rel=1e-12)
    assert four["val"] == pytest.approx(out["plain"], rel=1e-12)
    for k in one["grad"]:
        np.testing.assert_allclose(four["grad"][k], one["grad"][k], rtol=1e-9, atol=1e-9)


def _catalog(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return StarCatalog.from_arrays(
        l_deg=rng.uniform(60, 70, n),
        b_deg=rng.uniform(-5, 5, n),
        distance_pc=rng.uniform(100, 200, n),
        extinction=rng.uniform(0.1, 0.5, n),
        sigma_extinction=np.full(n, 0.05),
    )


def test_minibatch_estimate_is_unbiased():
    with jax.enable_x64(True):
        cat = _catalog()
        stars = fit.make_star_data(cat, GRID, dtype=jnp.float64)
        params = fit.initial_params(
            cat,
            dict(
                num_inducing=6, scale_lengths_pc=30.0, amplitude_dex=0.3, mean_dex=-2.5, q_std=0.3
            ),
            dtype=jnp.float64,
        )
        mesh = make_mesh(axis=fit.STAR_AXIS, devices=jax.devices()[:1])
        model = svgp.SVGPModel(num_samples=2)
        kw = dict(num_stars_padded=40, dtype=jnp.float64)
        full = fit.make_elbo_fn(mesh, GRID, model, batch_size=None, **kw)
        mini = fit.make_elbo_fn(mesh, GRID, model, batch_size=8, **kw)
        keys = jax.random.split(jax.random.key(0), 4000)
        diff = jax.jit(
            jax.vmap(lambda k: mini(params, k, stars, 1e-6) - full(params, k, stars, 1e-6))
        )(keys)
        diff = np.asarray(diff)
        assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(len(diff))
        assert diff.std() > 0  # it really is a minibatch


def test_stopping_rule():
    flat = [-1000.0 + 0.1 * np.sin(i) for i in range(30)]
    assert fit.converged(flat, tol=0.01, window=10, min_iterations=20)
    assert not fit.converged(flat[:15], tol=0.01, window=10, min_iterations=20)
    rising = list(-1000.0 + 5.0 * np.arange(30))
    assert not fit.converged(rising, tol=0.01, window=10, min_iterations=20)
    assert not fit.converged(flat[:-1] + [float("nan")], tol=0.01, window=10, min_iterations=20)


def test_nan_elbo_stops_and_saves_the_last_good_state(tmp_path):
    cat = _catalog()
    stars = fit.make_star_data(cat, GRID)
    params = fit.initial_params(
        cat,
        dict(num_inducing=6, scale_lengths_pc=30.0, amplitude_dex=0.3, mean_dex=-2.5, q_std=0.3),
    )
    # A huge step sends 10^phi past the float32 range within a few iterations.
    settings = fit.FitSettings(
        learning_rate=30.0, max_iterations=50, num_samples=2, steps_per_call=5, jitter=1e-4
    )
    res = fit.fit(params, stars, GRID, settings, workdir=tmp_path, progress=False)
    assert res.status == "nan_elbo"
    assert res.failed_iteration >= 1 and "non-finite" in res.message
    assert len(res.elbo_history) == res.failed_iteration
    assert np.all(np.isfinite(res.elbo_history))
    saved = fit.load_params(tmp_path / "last_good_state.npz")
    assert all(np.all(np.isfinite(v)) for v in saved.values())
    # The saved state is the one whose ELBO was the last finite one: recompute it.
    model = settings.model
    mesh = make_mesh(axis=fit.STAR_AXIS, devices=jax.devices()[:1])
    f = fit.make_elbo_fn(mesh, GRID, model, batch_size=None, num_stars_padded=40)
    key = jax.random.fold_in(jax.random.key(settings.seed), res.failed_iteration - 1)
    value = f(jax.tree.map(jnp.asarray, saved), key, stars, res.jitter)
    assert float(value) == pytest.approx(res.elbo_history[-1], rel=1e-4)


def test_cholesky_failure_retries_with_more_jitter_then_gives_a_clear_error():
    # 50 inducing points within 1e-3 pc of each other: K_uu is numerically rank one (float32).
    rng = np.random.default_rng(0)
    z = np.array([100.0, 50.0, 10.0]) + 1e-3 * rng.normal(size=(50, 3))
    params = svgp.init_params(z, scale_lengths_pc=30.0, amplitude_dex=0.3, mean_dex=-2.5)
    assert not fit.cholesky_ok(params, 0.0)
    jitter = fit.stable_jitter(params, 1e-12, 1e-2)
    assert 1e-12 < jitter <= 1e-2 and fit.cholesky_ok(params, jitter)
    with pytest.raises(svgp.CholeskyError, match="not positive definite"):
        fit.stable_jitter(params, 1e-12, 1e-11)


def test_distance_uncertainty_inflates_sigma_by_the_column_gradient():
    rng = np.random.default_rng(0)
    d = rng.uniform(100, 200, 200)
    cat = StarCatalog.from_arrays(
        l_deg=np.full(200, 65.0),
        b_deg=np.zeros(200),
        distance_pc=d,
        extinction=0.01 * d,
        sigma_extinction=np.full(200, 0.1),
        sigma_distance=np.full(200, 20.0),
    )
    sigma = fit.inflate_sigma_for_distance(cat, GRID)
    np.testing.assert_allclose(sigma, np.hypot(0.1, 0.01 * 20.0), rtol=1e-9)


def test_tiny_fit_recovers_a_clump_position_within_one_scale_length():
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        box = dict(l_range_deg=(60.0, 80.0), b_range_deg=(-8.0, 8.0), d_range_pc=(150.0, 350.0))
        field = simulate.random_clump_field(
            rng,
            num_clumps=1,
            clump_width_pc=(20.0, 20.0),
            clump_peak=(0.03, 0.03),
            margin=0.3,
            **box,
        )
        cat, _ = simulate.simulate_stars(
            field,
            rng,
            num_stars=4000,
            l_range_deg=box["l_range_deg"],
            b_range_deg=box["b_range_deg"],
        )
        grid = LBDGrid(box["l_range_deg"], box["b_range_deg"], box["d_range_pc"], (8, 8, 12))
        stars = fit.make_star_data(cat, grid, dtype=jnp.float64)
        params = fit.initial_params(
            cat,
            dict(
                num_inducing=80,
                scale_lengths_pc=20.0,
                amplitude_dex=0.5,
                mean_dex=np.log10(1.6e-3),
                q_std=0.1,
            ),
            dtype=jnp.float64,
        )
        settings = fit.FitSettings(
            learning_rate=0.03,
            num_samples=8,
            max_iterations=250,
            min_iterations=250,
            jitter=1e-6,
            steps_per_call=25,
        )
        res = fit.fit(params, stars, grid, settings, progress=False)
        assert res.status in ("max_iterations", "converged")
        assert res.elbo_history[-1] > res.elbo_history[0]
        p = jax.tree.map(jnp.asarray, res.params)
        cells = grid.cell_centres_xyz()
        mean, _ = svgp.predictive_moments(p, jnp.asarray(cells), jitter=1e-6)
        peak = cells[int(np.argmax(np.asarray(mean)))]
        scale = float(np.mean(np.asarray(svgp.hyperparameters(p)["scale_lengths_pc"])))
        offset = np.linalg.norm(peak - field.centres_xyz[0])
        assert offset < max(scale, 1e-9), (offset, scale)


def test_plateau_rule_waits_for_a_noisy_rising_elbo_and_stops_on_a_noisy_flat_one():
    rng = np.random.default_rng(0)
    t = np.arange(1000)
    # the real-sky trace of issue 18: ~-4e4, climbing ~15 nats an iteration, MC noise ~100 nats
    rising = list(-47_800 + 15.0 * t + 100.0 * rng.standard_normal(1000))
    flat = list(-39_700 + 100.0 * rng.standard_normal(1000))
    kw = dict(window=100, z=2.0, min_iterations=200)
    # the paper's rule is fooled by the rising trace (range 10 iterations ~ 700 < 1 % of 4e4) ...
    assert any(
        fit.converged(rising[:n], tol=0.01, window=10, min_iterations=400) for n in range(400, 1001)
    )
    # ... the plateau rule is not, at any point of it
    assert not any(fit.plateau_converged(rising[:n], **kw) for n in range(200, 1001, 10))
    assert fit.plateau_converged(flat[:400], **kw)
    assert not fit.plateau_converged(flat[:150], **kw)  # before min_iterations / 2 windows
    # a clear rise is seen even early
    assert not fit.plateau_converged(list(np.arange(400) * 50.0 + flat[:400]), **kw)
    # noise-free: the relative floor stops a fit whose rise no longer matters
    smooth = list(-1e4 + 1e-3 * np.arange(400))
    assert not fit.plateau_converged(smooth, **kw)
    assert fit.plateau_converged(smooth, **kw, rel_floor=1e-4)  # rise 0.1 < 1 nat per window
    assert not fit.plateau_converged(flat[:399] + [float("nan")], **kw)


def test_should_stop_dispatches_on_the_rule_and_bad_rules_are_refused():
    flat = [-1000.0 + 0.1 * np.sin(i) for i in range(300)]
    paper = fit.FitSettings(min_iterations=20)
    plateau = fit.FitSettings(min_iterations=20, stop_rule="plateau", plateau_window=100)
    assert fit.should_stop(flat[:30], paper)
    assert not fit.should_stop(flat[:30], plateau)  # needs two windows
    assert fit.should_stop(flat, plateau)
    with pytest.raises(ValueError, match="stop_rule"):
        fit.FitSettings(stop_rule="patience")


def test_model_error_term_is_learned_and_enters_the_sharded_elbo():
    cat = _catalog()
    stars = fit.make_star_data(cat, GRID)
    params = fit.initial_params(
        cat,
        dict(num_inducing=6, scale_lengths_pc=30.0, amplitude_dex=0.3, mean_dex=-2.5, q_std=0.3),
        model_error=(0.1, 0.02),
    )
    model = svgp.SVGPModel(num_samples=4)
    elbo_fn = fit.make_elbo_fn(
        make_mesh(axis=fit.STAR_AXIS),
        GRID,
        model,
        batch_size=None,
        num_stars_padded=stars.num_stars,
    )
    key = jax.random.key(3)
    # the single-device ELBO with the same samples (elbo_fn splits the key the same way)
    key_phi, _ = jax.random.split(key)
    single = svgp.elbo(
        params,
        key_phi,
        jnp.asarray(GRID.cell_centres_xyz(), jnp.float32),
        stars,
        jnp.asarray(GRID.d_widths_pc(), jnp.float32),
        GRID.full_shape,
        model,
        1e-4,
    )
    np.testing.assert_allclose(float(elbo_fn(params, key, stars, 1e-4)), float(single), rtol=1e-5)
    without = {k: v for k, v in params.items() if k not in svgp.MODEL_ERROR_KEYS}
    assert float(elbo_fn(without, key, stars, 1e-4)) != float(elbo_fn(params, key, stars, 1e-4))
    grads = jax.grad(lambda p: elbo_fn(p, key, stars, 1e-4))(params)
    for k in svgp.MODEL_ERROR_KEYS:
        assert np.isfinite(float(grads[k])) and float(grads[k]) != 0.0
    # fit() adds the term when asked, starting from the configured values
    res = fit.fit(
        without,
        stars,
        GRID,
        fit.FitSettings(
            model_error=True, model_error_init=(0.2, 0.05), max_iterations=20, num_samples=2,
            jitter=1e-4, max_fit_seconds=1e-9,
        ),
        progress=False,
    )  # fmt: skip
    assert set(svgp.MODEL_ERROR_KEYS) <= set(res.params)
    # the time limit is checked after each call (the first, compiling, call is not counted)
    assert res.status == "time_limit" and res.iterations == 10


def test_annealing_runs_its_steps_at_the_reduced_rate_after_the_fit_would_stop():
    cat = _catalog()
    stars = fit.make_star_data(cat, GRID)
    params = fit.initial_params(
        cat, dict(num_inducing=6, scale_lengths_pc=30.0, amplitude_dex=0.3, mean_dex=-2.5)
    )
    base = dict(num_samples=2, jitter=1e-4, min_iterations=1000, learning_rate=0.05)
    plain = fit.fit(params, stars, GRID, fit.FitSettings(max_iterations=10, **base), progress=False)
    assert plain.anneal_start is None and plain.iterations == 10
    # max_iterations 30 leaves room for 20 annealing steps after the first 10; at a step factor
    # of 1e-6 they move nothing, so the result is the 10-step fit's
    res = fit.fit(
        params, stars, GRID,
        fit.FitSettings(max_iterations=30, anneal_iterations=20, anneal_factor=1e-6, **base),
        progress=False,
    )  # fmt: skip
    assert res.status == "max_iterations" and res.anneal_start == 10 and res.iterations == 30
    np.testing.assert_allclose(
        res.params_before_anneal["q_mean"], plain.params["q_mean"], rtol=1e-5
    )
    for k in plain.params:
        np.testing.assert_allclose(res.params[k], plain.params[k], rtol=1e-4, atol=1e-5)
    assert not np.allclose(plain.params["q_mean"], params["q_mean"], atol=1e-3)  # 10 steps moved
    with pytest.raises(ValueError, match="anneal"):
        fit.FitSettings(anneal_iterations=10, anneal_factor=0.0)


@pytest.mark.slow  # four compiled fits: ~35 s on 2 cores
def test_anneal_average_is_the_mean_of_the_iterates_of_the_annealing_second_half():
    cat = _catalog()
    stars = fit.make_star_data(cat, GRID)
    params = fit.initial_params(
        cat, dict(num_inducing=6, scale_lengths_pc=30.0, amplitude_dex=0.3, mean_dex=-2.5)
    )
    base = dict(num_samples=2, jitter=1e-4, min_iterations=1000, learning_rate=0.05,
                steps_per_call=5, anneal_factor=0.5)  # fmt: skip
    # all anneal from iteration 10 (max_iterations - anneal_iterations): the same iterates;
    # 20 annealing steps are 4 calls, the second half the iterates after 15 and 20 steps
    runs = {
        n: fit.fit(params, stars, GRID, fit.FitSettings(max_iterations=10 + n,
                   anneal_iterations=n, **base), progress=False)
        for n in (10, 15, 20)
    }  # fmt: skip
    avg = fit.fit(
        params, stars, GRID,
        fit.FitSettings(max_iterations=30, anneal_iterations=20, anneal_average=True, **base),
        progress=False,
    )  # fmt: skip
    assert avg.anneal_start == 10 and all(r.anneal_start == 10 for r in runs.values())
    assert runs[20].params_last_iterate is None
    for k in params:
        np.testing.assert_allclose(
            avg.params_last_iterate[k], runs[20].params[k], rtol=1e-5, atol=1e-7
        )
        np.testing.assert_allclose(
            avg.params[k], 0.5 * (runs[15].params[k] + runs[20].params[k]), rtol=1e-5, atol=1e-6
        )
    assert not np.allclose(runs[15].params["q_mean"], runs[20].params["q_mean"], atol=1e-4)
    assert not np.allclose(avg.params["q_mean"], runs[10].params["q_mean"], atol=1e-5)
