"""Tests of dustjax.polaris.reference: the pointwise reference, the residual correction (app. C)."""

import numpy as np
import pytest

from dustjax.polaris import metrics, reference


def test_reference_recovers_a_deterministic_mapping_and_round_trips():
    x = np.random.default_rng(3).uniform(20, 23, 20000)
    y = 0.8 * x - 15 + 0.1 * np.sin(3 * x)
    for method in ("binned_mean", "binned_median", "isotonic"):
        ref = reference.PointwiseReference.fit(x, y, method, num_bins=200)
        assert metrics.mse(ref(x), y) < 1e-4
        again = reference.PointwiseReference.from_dict(ref.to_dict())
        np.testing.assert_array_equal(again(x), ref(x))
    with pytest.raises(ValueError, match="unknown method"):
        reference.PointwiseReference.fit(x, y, "spline")


def test_isotonic_fit_is_the_pool_adjacent_violators_solution():
    np.testing.assert_allclose(reference._isotonic([1.0, 3.0, 2.0], [1.0, 1.0, 1.0]), [1, 2.5, 2.5])
    np.testing.assert_allclose(
        reference._isotonic([4.0, 1.0, 1.0, 5.0], [1.0, 1.0, 2.0, 1.0]), [1.75, 1.75, 1.75, 5.0]
    )


def test_reference_is_beaten_only_with_context():
    """Noise the reference cannot see (a neighbour-dependent target) leaves it an MSE floor."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (50, 8, 8))
    y = x + 0.3 * np.roll(x, 1, axis=2)  # depends on the neighbour: invisible pointwise
    ref, scores = reference.best_pointwise_reference(x[:40], y[:40], x[40:], y[40:], 64)
    assert min(scores.values()) == pytest.approx(metrics.mse(ref(x[40:]), y[40:]))
    assert metrics.mse(ref(x[40:]), y[40:]) == pytest.approx(0.09 / 12, rel=0.25)


def test_residual_correction_removes_a_smooth_bias():
    rng = np.random.default_rng(5)
    true = rng.uniform(1, 5, 50000)
    pred = true - 0.1 * (true - 1) ** 2 / 4 + rng.normal(0, 0.05, true.size)  # underestimates
    corr = reference.ResidualCorrection.fit(pred, true, values_per_bin=500, window=3)
    assert metrics.mse(corr(pred), true) < 0.2 * metrics.mse(pred, true)
    again = reference.ResidualCorrection.from_dict(corr.to_dict())
    np.testing.assert_array_equal(again(pred), corr(pred))
