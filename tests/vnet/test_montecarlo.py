"""The fused Monte Carlo (`dustjax.vnet.montecarlo`) against the per-batch loop of `apply`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax import catalog as cat
from dustjax.geometry import Region
from dustjax.vnet import apply as ap
from dustjax.vnet import gridding, montecarlo

REGION = Region.named("SR").with_shape((8, 8, 8))


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    n = 2000
    catalog = cat.StarCatalog.from_arrays(
        xyz_pc=rng.uniform(REGION.lower_pc, REGION.upper_pc, (n, 3)),
        extinction=rng.uniform(0.0, 1.0, n),  # some redraws clip at 0
        sigma_extinction=rng.uniform(0.05, 0.3, n),
    )
    knn = gridding.knn_weights(REGION, catalog)
    # a small non-linear "model" that closes over its weights, as a V-net predictor does
    kernel = jnp.asarray(rng.normal(0, 0.3, (3, 3, 3, 1, 2)), jnp.float32)
    mix = jnp.asarray([0.02, -0.01], jnp.float32)

    def predictor(extinction):
        y = jax.lax.conv_general_dilated(
            extinction[..., None], kernel, (1, 1, 1), "SAME",
            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        )  # fmt: skip
        return jax.nn.softplus(jnp.tanh(y) @ mix + 0.01)

    predictor.weights = (kernel, mix)
    nominal = ap.predict_one(predictor, np.maximum(knn.apply(catalog.extinction), 0.0))
    return catalog, knn, predictor, nominal


@pytest.mark.parametrize("subregion", [False, True])
def test_fused_route_gives_the_loops_moments(setup, subregion):
    catalog, knn, predictor, nominal = setup
    inside = None
    if subregion:
        inside = ap.subregion_mask(REGION, ((-150, 0), (-100, 100), (-100, 100)))
    kwargs = dict(num_redraws=21, batch_size=8, seed=3, reference=nominal, inside_mask=inside)
    loop = ap.monte_carlo(predictor, knn, catalog, REGION, progress=False, fused=False, **kwargs)
    fused = ap.monte_carlo(predictor, knn, catalog, REGION, **kwargs)  # the default route
    for key in ("density_mean", "density_std", "extinction_std"):
        assert fused[key].shape == REGION.shape
        assert np.all(np.isfinite(fused[key]))
        scale = np.max(np.abs(loop[key]))
        assert scale > 0
        np.testing.assert_allclose(fused[key], loop[key], rtol=0, atol=1e-5 * scale, err_msg=key)
    # another seed is another sample: the comparison above can fail
    other = ap.monte_carlo(predictor, knn, catalog, REGION, **{**kwargs, "seed": 4})
    assert np.max(np.abs(other["density_std"] - loop["density_std"])) > 1e-4 * scale


def test_the_program_is_compiled_once_and_the_weights_are_arguments(setup):
    catalog, knn, predictor, nominal = setup
    montecarlo._PROGRAMS.clear()
    kw = dict(num_redraws=6, batch_size=3, reference=nominal)
    montecarlo.monte_carlo(predictor, knn, catalog, REGION, seed=0, **kw)
    run, consts, _ = next(iter(montecarlo._PROGRAMS[predictor].values()))
    # the model's weights are lifted out of the program (not embedded as constants)
    n_weights = sum(x.size for x in predictor.weights)
    assert sum(np.size(c) for c in consts) >= n_weights
    montecarlo.monte_carlo(predictor, knn, catalog, REGION, seed=1, **kw)
    assert run._cache_size() == 1 and len(montecarlo._PROGRAMS[predictor]) == 1


def test_hoisted_function_equals_the_closure():
    w = jnp.arange(6.0).reshape(2, 3)
    fn = lambda x: jnp.tanh(x @ w) + w.sum()  # noqa: E731
    pure, consts = montecarlo.hoist_constants(fn, jax.ShapeDtypeStruct((4, 2), jnp.float32))
    x = jnp.linspace(-1, 1, 8).reshape(4, 2)
    np.testing.assert_allclose(jax.jit(pure)(consts, x), fn(x), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(pure)([c * 0 for c in consts], x), 0 * fn(x), atol=1e-6)


def test_the_model_is_traced_once_for_its_hoisting():
    w = jnp.arange(6.0).reshape(2, 3)
    calls = []

    def fn(x):
        calls.append(x.shape)
        return jnp.tanh(x @ w)

    pure, _ = montecarlo.hoist_constants(fn, jax.ShapeDtypeStruct((5, 2), jnp.float32))
    assert calls == [(5, 2)]


def test_padded_size_is_a_small_overhead_on_few_sizes():
    sizes = [montecarlo.padded_size(n) for n in range(1, 5000)]
    assert all(n <= p <= n + max(1, n // 8) for n, p in enumerate(sizes, start=1))
    assert sizes[:16] == list(range(1, 17))  # small catalogues: exact
    assert len(set(sizes[1024:2048])) == 8  # 8 sizes an octave (n = 1025 ... 2048)


def _compile_events(fn):
    """(result, number of traces + lowerings during ``fn()``): 0 = nothing compiled."""
    import jax.monitoring as mon

    count = []
    names = ("/jax/core/compile/jaxpr_trace_duration",
             "/jax/core/compile/jaxpr_to_mlir_module_duration")  # fmt: skip

    def listener(event, duration, **kw):
        if event in names:
            count.append(kw.get("fun_name"))

    mon.register_event_duration_secs_listener(listener)
    try:
        return fn(), count
    finally:
        mon.unregister_event_duration_listener(listener)


def test_another_catalogue_of_about_the_same_size_compiles_nothing(setup):
    catalog, knn, predictor, nominal = setup
    rng = np.random.default_rng(7)
    n = len(catalog) + 50
    other = cat.StarCatalog.from_arrays(
        xyz_pc=rng.uniform(REGION.lower_pc, REGION.upper_pc, (n, 3)),
        extinction=rng.uniform(0.0, 1.5, n),
        sigma_extinction=rng.uniform(0.05, 0.3, n),
    )
    knn2 = gridding.knn_weights(REGION, other)
    used1, used2 = len(knn.compact()[0]), len(knn2.compact()[0])
    assert used1 != used2 and montecarlo.padded_size(used1) == montecarlo.padded_size(used2)
    kw = dict(num_redraws=6, batch_size=3)
    ap.predict_one(predictor, np.maximum(knn.apply(catalog.extinction), 0.0))
    montecarlo.monte_carlo(predictor, knn, catalog, REGION, seed=0, reference=nominal, **kw)

    def second():
        ext = np.maximum(knn2.apply(other.extinction), 0.0)
        density = ap.predict_one(predictor, ext)
        return montecarlo.monte_carlo(predictor, knn2, other, REGION, seed=1,
                                      reference=density, **kw)  # fmt: skip

    result, events = _compile_events(second)
    assert events == []  # no trace, no lowering: the nominal and the MC programs are reused
    assert np.all(np.isfinite(result["density_std"])) and np.max(result["density_std"]) > 0
