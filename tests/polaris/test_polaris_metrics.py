"""Tests of dustjax.polaris.metrics: MSE, accuracy and residual bins on hand-made images."""

import numpy as np
import pytest

from dustjax.polaris import metrics


def test_mse_accuracy_and_residual_bins_on_hand_made_images():
    true = np.zeros((2, 2, 2))
    pred = np.array([[[0.0, 0.1], [0.3, 0.0]], [[1.0, 1.0], [1.0, 0.05]]])
    assert metrics.mse(pred, true) == pytest.approx(np.mean(pred**2))
    np.testing.assert_allclose(metrics.accuracy_per_image(pred, true, 0.2), [0.75, 0.25])
    curve = metrics.accuracy_curve(pred, true, [0.2, 2.0])
    np.testing.assert_allclose(curve["mean"], [0.5, 1.0])
    np.testing.assert_allclose(curve["std"], [0.25, 0.0])
    true_b = np.array([[[1.0, 1.0], [3.0, 3.0]]])
    pred_b = true_b + np.array([[[0.1, 0.3], [-1.0, -1.0]]])
    bins = metrics.residuals_per_bin(pred_b, true_b, [0.0, 2.0, 4.0])
    np.testing.assert_allclose(bins["mean"], [0.2, -1.0])
    np.testing.assert_array_equal(bins["count"], [2, 2])
    mask = np.ones_like(pred, bool)
    mask[1] = False
    assert metrics.mse(pred, true, mask) == pytest.approx(np.mean(pred[0] ** 2))
