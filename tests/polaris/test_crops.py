"""Tests of dustjax.polaris.crops: crop scores, acceptance (appendix B), simulated crop datasets."""

import math

import numpy as np
import pytest

from dustjax.geometry import PC_CM
from dustjax.polaris import crops, projection


def test_smoothness_score_vanishes_for_flat_and_log_linear_images():
    assert crops.smoothness_score(np.full((8, 8), 1e21)) == 0.0
    ramp = 1e20 * np.exp(np.add.outer(np.arange(8.0), 2 * np.arange(8.0)))  # log(1+x) ~ linear
    assert crops.smoothness_score(ramp) < 1e-6
    bumpy = np.exp(np.random.default_rng(0).normal(size=(8, 8)) * 3) * 1e21
    assert crops.smoothness_score(bumpy) > 1.0


def test_difference_score_is_zero_for_proportional_images():
    image = np.random.default_rng(1).uniform(1, 2, (6, 6))
    assert crops.difference_score(image, 7 * image + 3) == pytest.approx(0.0, abs=1e-20)
    assert crops.difference_score(image, -image) > 0


def test_acceptance_is_the_sigmoid_of_eq_14():
    assert crops.acceptance_probability(2.0, 3.0, 2.0) == pytest.approx(0.5)
    assert crops.acceptance_probability(3.0, 1.0, 2.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert crops.acceptance_probability(100.0, 5.0, 0.0) == pytest.approx(1.0)


def test_selected_crops_never_overlap_and_diffuse_faces_are_rejected():
    rng = np.random.default_rng(2)
    face = np.exp(rng.normal(size=(64, 64))) * 1e22
    selection = crops.CropSelection(
        crop_size=16, attempts_per_face=300, steepness=0.0, max_diffuse_fraction=1.0
    )  # f(s) = 1/2 for every score
    corners = crops.select_crops(rng, face, face, selection)
    assert len(corners) >= 4
    for i, (r1, c1) in enumerate(corners):
        for r2, c2 in corners[i + 1 :]:
            assert abs(r1 - r2) >= 16 or abs(c1 - c2) >= 16
    diffuse = crops.CropSelection(
        crop_size=16, attempts_per_face=50, max_diffuse_fraction=0.5, diffuse_column_cm2=1e30
    )
    assert crops.select_crops(rng, face, face, diffuse) == []


def test_simulated_crop_dataset_has_physical_features_and_consistent_targets():
    from dustjax.sims import clouds

    grid = clouds.CloudGrid(
        n_cells=32,
        cell_size_pc=0.2,
        num_filaments=2,
        points_per_filament=128,
        num_cores=4,
        core_window_cells=5,
    )
    selection = crops.CropSelection(crop_size=16, attempts_per_face=30, max_diffuse_fraction=1)
    features, info = crops.simulate_crop_dataset(0, 10, grid, selection)
    assert set(features) == set(projection.FEATURE_NAMES)
    assert all(v.shape == (10, 16, 16) and v.dtype == np.float32 for v in features.values())
    f = features
    # <n>_V <= <n>_M <= max n along every line of sight, <n>_V = N / L
    assert np.all(f["density_volume_weighted"] <= f["density_mass_weighted"] * (1 + 1e-5))
    assert np.all(f["density_mass_weighted"] <= f["density_max"] * (1 + 1e-5))
    np.testing.assert_allclose(
        f["density_volume_weighted"], f["column_density"] / (32 * 0.2 * PC_CM), rtol=1e-5
    )
    again, _ = crops.simulate_crop_dataset(0, 10, grid, selection)
    np.testing.assert_array_equal(again["column_density"], f["column_density"])
    assert info["num_cubes"] >= 1


def test_accumulate_crops_keeps_the_first_crops_shuffled_and_stops_at_max_cubes():
    from dustjax.polaris.crops import accumulate_crops

    def cut_cube(rng, k_params, k_cube, index):  # cube i gives i crops, numbered in order
        first = index * (index - 1) // 2
        ids = np.arange(first, first + index, dtype=np.float32)
        return {"a": ids[:, None], "b": -ids[:, None]}

    features, info = accumulate_crops(3, 7, cut_cube, ("a", "b"))
    assert info == {"num_cubes": 5, "crops_per_cube": 10 / 5}  # 0 + 1 + 2 + 3 + 4 >= 7
    assert features["a"].dtype == np.float32 and features["a"].shape == (7, 1)
    assert sorted(features["a"][:, 0]) == list(range(7))  # the first 7, shuffled
    assert not np.array_equal(features["a"][:, 0], np.arange(7))
    np.testing.assert_array_equal(features["b"], -features["a"])  # one order for every name
    again, _ = accumulate_crops(3, 7, cut_cube, ("a", "b"))
    np.testing.assert_array_equal(again["a"], features["a"])  # a function of the seed
    with pytest.raises(RuntimeError, match="only 0 of 2 crops accepted from 3 cubes"):
        accumulate_crops(0, 2, lambda *a: {"a": []}, ("a",), max_cubes=3)
