"""Tests of the multi-input (column density + 13CO) U-Net: crops, batches, model, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dustjax.models.unet import AttentionUNet
from dustjax.polaris import multi_input as mi
from dustjax.polaris.projection import COLUMN, TARGETS
from experiments.configs import unet_emission_test


@pytest.fixture(scope="module")
def crops():
    config = unet_emission_test.get_config()
    return config, mi.emission_splits(config)


def test_emission_crops_hold_every_input_kind_for_the_same_crops(crops):
    config, splits = crops
    train = splits["train"]
    n = len(train[COLUMN])
    assert n + len(splits["validation"][COLUMN]) == config.data.num_crops
    assert train[mi.PPV].shape == (n, 16, 16, 8)
    assert train[mi.MOMENTS].shape == (n, 16, 16, 4)
    assert np.all(train[mi.PPV] >= -1e-6)  # gas warmer than the CMB: emission
    # moment 0 is the PPV cube's integral
    dv = mi.settings_from_config(config.data).spectral.channel_width_kms
    np.testing.assert_allclose(train[mi.MOMENTS][..., 0], train[mi.PPV].sum(-1) * dv, rtol=1e-4)
    for kind, channels in [("column", 1), ("moments", 5), ("ppv", 9)]:
        batch = mi.to_model_batch(train, "max", kind)
        assert batch[mi.INPUT_KEY].shape == (n, 16, 16, channels)
        assert np.all(np.isfinite(batch[mi.INPUT_KEY]))
        # channel 0 is the column-only U-Net's input, the target the usual shifted log10
        log10_column = np.log10(train[COLUMN].astype(np.float64))
        np.testing.assert_allclose(batch[mi.INPUT_KEY][..., 0], log10_column - 21.5, atol=1e-5)
        np.testing.assert_allclose(batch[mi.TARGET_KEY][..., 0],
                                   np.log10(train[TARGETS["max"]].astype(np.float64)) - 2.5,
                                   atol=1e-5)  # fmt: skip


def test_crops_file_round_trip_and_a_file_of_another_config_is_refused(tmp_path, crops):
    config, splits = crops
    info = mi.save_emission_crops(config, tmp_path / "crops.npz")
    assert info["crops"] == {"train": len(splits["train"][COLUMN]),
                             "validation": len(splits["validation"][COLUMN])}  # fmt: skip
    # another process: an empty cache, the crops read from the file (not simulated again)
    saved = dict(mi._CACHE)
    mi._CACHE.clear()
    try:
        c = config.copy_and_resolve_references()
        c.data.crops_file = str(tmp_path / "crops.npz")
        c.data.passes_per_epoch = 3  # batching, target and input kind do not change the crops
        c.data.target = "max"
        loaded = mi.emission_splits(c)
        for split in ("train", "validation"):
            for key in (COLUMN, mi.PPV, mi.MOMENTS):
                np.testing.assert_array_equal(loaded[split][key], splits[split][key])
        other = c.copy_and_resolve_references()
        other.data.seed = 12
        with pytest.raises(ValueError, match="holds crops of another data config"):
            mi.emission_splits(other)
        other.data.crops_file = str(tmp_path / "missing.npz")
        with pytest.raises(FileNotFoundError, match="missing.npz"):
            mi.emission_splits(other)
    finally:
        mi._CACHE.clear()
        mi._CACHE.update(saved)


def test_emission_source_makes_passes_over_the_same_crops(crops):
    config, splits = crops
    c = config.copy_and_resolve_references()
    n = len(splits["train"][COLUMN])
    one = list(mi.emission_source(c, "train", batch_size=4, seed=3, epoch=2, train=True))
    c.data.passes_per_epoch = 2
    two = list(mi.emission_source(c, "train", batch_size=4, seed=3, epoch=2, train=True))
    assert len(one) == n // 4 and len(two) == 2 * (n // 4)
    np.testing.assert_array_equal(two[0][mi.INPUT_KEY], one[0][mi.INPUT_KEY])  # pass 0 unchanged
    evaluation = list(mi.emission_source(c, "validation", batch_size=4, seed=3, epoch=0,
                                         train=False))  # fmt: skip
    assert sum(len(b[mi.INPUT_KEY]) for b in evaluation) == len(splits["validation"][COLUMN])


def test_collect_comparison_reads_the_runs_trained_apart(tmp_path):
    from dustjax import io as dio

    row = {"inputs": "column", "input_channels": 1, "val_mse": 0.02, "val_mse_reference": 0.04,
           "accuracy_0.1dex": 0.5, "accuracy_0.2dex": 0.8,
           "bins": {"edges_log10_cm3": [1.0, 1.5, 2.0], "count": [3, 4], "mse": [0.01, 0.03],
                    "mse_reference": [0.02, 0.05]}}  # fmt: skip
    sse, count = np.array([[1.0, 2.0], [3.0, 4.0]]), [[1, 1], [2, 2]]
    dio.write_json(tmp_path / "max_column" / mi.EVAL_FILE, dict(row, **_evaluation(sse, count)))
    kan = mi.run_name("max", "column", "unet_kan_branch")
    twice = dict(row, val_mse=0.03, **_evaluation(2 * sse, count))
    dio.write_json(tmp_path / kan / mi.EVAL_FILE, twice)
    results = mi.collect_comparison(tmp_path, ["max_column", "max_ppv", kan], {"config": "x"})
    assert results["runs"]["max_ppv"] == {"skipped": "not finished"}
    assert results["runs"]["max_column"]["val_mse"] == 0.02 and results["config"] == "x"
    table = (tmp_path / "comparison.md").read_text()
    assert table.count("target max: validation MSE") == 1  # the KAN row is in its target's table
    assert "| column (1 ch) | 0.0200 | 0.500 | 0.800 | 0.010 | 0.030 |" in table
    assert "| column+unet_kan_branch (1 ch) | 0.0300 |" in table
    assert "| pointwise N->n | 0.0400 | | | 0.020 | 0.050 |" in table
    # the paired ratio to column only (twice the squared error in every crop and bin)
    assert "| column+unet_kan_branch | **2.000** [2.000, 2.000] | 2.00 (2 crops) |" in table


def _evaluation(sse, count):
    sse, count = np.asarray(sse, float), np.asarray(count)
    return {"per_crop": {"sse": sse.tolist(), "count": count.tolist()}}


def test_paired_ratio_of_scaled_and_noisy_errors():
    rng = np.random.default_rng(1)
    count = rng.integers(1, 50, (40, 3))
    base = rng.gamma(2.0, 1.0, (40, 3)) * count
    base[:, 2] = 0.0  # a bin the baseline predicts exactly: no ratio there
    half = mi.paired_ratio(_evaluation(0.5 * base, count), _evaluation(base, count))
    assert half["ratio"] == pytest.approx(0.5) and half["low"] == pytest.approx(0.5)
    assert half["high"] == pytest.approx(0.5)  # every resample of the same crops: exactly 0.5
    assert (
        half["bins"]["ratio"][:2] == pytest.approx([0.5, 0.5]) and half["bins"]["ratio"][2] is None
    )
    assert half["bins"]["crops"] == [40, 40, 40]
    noisy = base * rng.uniform(0.5, 1.5, base.shape)  # ratio 1 on average, crop by crop
    q = mi.paired_ratio(_evaluation(noisy, count), _evaluation(base, count), num_boot=4000)
    assert q["low"] < q["ratio"] < q["high"] and q["low"] < 1.0 < q["high"]
    assert q["high"] - q["low"] < 0.3
    with pytest.raises(ValueError, match="same crops and density bins"):
        mi.paired_ratio(_evaluation(base[:10], count[:10]), _evaluation(base, count))


def test_run_names_round_trip_and_seeds_pair_with_their_own_column_run(tmp_path):
    from dustjax import io as dio

    for args in [("mass_weighted", "ppv", None, None), ("max", "column", "unet_kan_branch", 3),
                 ("mass_weighted", "moments", None, 1)]:  # fmt: skip
        assert mi.parse_run_name(mi.run_name(*args)) == args
    assert mi.run_name("max", "moments", seed=1) == "max_moments@1"
    bins = {"edges_log10_cm3": [1.0, 2.0], "count": [4], "mse": [0.1], "mse_reference": [0.2]}
    row = {"input_channels": 1, "val_mse_reference": 0.2, "accuracy_0.1dex": 0.5,
           "accuracy_0.2dex": 0.8, "bins": bins}  # fmt: skip
    count = [[1]] * 6
    for name, sse in [("max_column", 1.0), ("max_moments", 0.5), ("max_column@1", 2.0),
                      ("max_moments@1", 3.0)]:  # fmt: skip
        dio.write_json(tmp_path / name / mi.EVAL_FILE,
                       dict(row, val_mse=sse, **_evaluation([[sse]] * 6, count)))  # fmt: skip
    names = ["max_column", "max_moments", "max_column@1", "max_moments@1"]
    table = mi.comparison_table(mi.collect_comparison(tmp_path, names))
    assert "| moments | **0.500** [0.500, 0.500] |" in table  # seed 0 against seed 0
    assert "| moments@1 | **1.500** [1.500, 1.500] |" in table  # seed 1 against seed 1
    assert "| column@1 (1 ch) | 2.0000 |" in table


def test_run_config_sets_target_inputs_and_a_kan_variant():
    config = unet_emission_test.get_config()
    c = mi.run_config(config, "max", "moments")
    assert (c.data.target, c.data.emission.inputs, c.model.name) == ("max", "moments", "unet")
    assert c.name.endswith("_max_moments") and config.data.emission.inputs == "ppv"  # a copy
    u = mi.run_config(config, "mass_weighted", "column", "ukan")
    assert u.model.name == "ukan" and u.model.kwargs.kan_levels == config.model.kwargs.levels - 1
    assert u.name.endswith("_mass_weighted_column+ukan")
    assert mi.run_config(config, "max", "ppv", seed=4).seed == 4
    assert mi.run_config(config, "max", "ppv", seed=4).data.seed == config.data.seed  # same crops
    with pytest.raises(ValueError, match="model must be one of"):
        mi.run_config(config, "max", "column", "vnet")
    with pytest.raises(ValueError, match="unknown target 'mean'"):
        mi.run_config(config, "mean", "column")


def test_augmentation_rotates_every_channel_with_the_target():
    rng = np.random.default_rng(0)
    batch = {mi.INPUT_KEY: jnp.asarray(rng.normal(size=(3, 8, 8, 5)), jnp.float32)}
    batch[mi.TARGET_KEY] = batch[mi.INPUT_KEY][..., 2:3] * 2.0
    out = mi.dihedral_augment(batch, jax.random.key(4))
    np.testing.assert_allclose(out[mi.TARGET_KEY], out[mi.INPUT_KEY][..., 2:3] * 2.0)
    # the set of spectra (per pixel) is unchanged: the velocity axis is not rotated
    before = np.sort(np.asarray(batch[mi.INPUT_KEY]).reshape(3, -1, 5), axis=1)
    after = np.sort(np.asarray(out[mi.INPUT_KEY]).reshape(3, -1, 5), axis=1)
    np.testing.assert_allclose(before, after)


def test_unet_with_emission_channels_and_its_shape_check():
    model = AttentionUNet(levels=2, base_features=4, input_channels=9, kan_branch=(4, 1))
    x = jnp.zeros((2, 8, 8, 9))
    variables = model.init(jax.random.key(0), x)
    assert model.apply(variables, x).shape == (2, 8, 8, 1)
    with pytest.raises(ValueError, match=r"\(batch, H, W, 9\)"):
        model.apply(variables, jnp.zeros((2, 8, 8, 1)))


def test_unknown_input_kind_is_refused():
    with pytest.raises(ValueError, match="emission inputs must be one of"):
        mi.EmissionSettings(inputs="spectra")


@pytest.mark.slow  # ~60 s on 2 idle cores (two trainings and evaluations)
def test_compare_trains_and_evaluates_each_input_kind(tmp_path, crops):
    config, _ = crops
    results = mi.compare_inputs(config, tmp_path, inputs=("column", "ppv"),
                                targets=("mass_weighted",))  # fmt: skip
    runs = results["runs"]
    assert set(runs) == {"mass_weighted_column", "mass_weighted_ppv"}
    assert runs["mass_weighted_column"]["input_channels"] == 1
    assert runs["mass_weighted_ppv"]["input_channels"] == 9
    for r in runs.values():
        assert np.isfinite(r["val_mse"]) and sum(r["bins"]["count"]) == 5 * 16 * 16
    assert "| ppv (9 ch) |" in (tmp_path / "comparison.md").read_text()
    # resumable: a finished run is not retrained (same numbers, no new epochs)
    again = mi.compare_inputs(config, tmp_path, inputs=("column",), targets=("mass_weighted",))
    assert (
        again["runs"]["mass_weighted_column"]["val_mse"] == runs["mass_weighted_column"]["val_mse"]
    )
    # a run stopped from outside (no engine summary): its epochs come from metrics.jsonl
    first = runs["mass_weighted_column"]
    cut = mi.write_evaluation(tmp_path / "mass_weighted_column", None, 1.0)
    assert (cut["epochs_run"], cut["best_epoch"]) == (first["epochs_run"], first["best_epoch"])
    assert cut["val_mse"] == first["val_mse"] and "outside" in cut["stop_reason"]
    assert cut["num_params"] > 0 and cut["model"] == "unet"
    per_crop = np.asarray(first["per_crop"]["sse"]).sum() / np.sum(first["per_crop"]["count"])
    assert per_crop == pytest.approx(first["val_mse"], rel=1e-5)
    assert np.sum(first["per_crop"]["count"]) == 5 * 16 * 16


def test_cloud_cubes_are_written_with_velocity_and_temperature_and_resume(tmp_path):
    from dustjax.sims import kinematics

    config = unet_emission_test.get_config()
    paths = mi.write_cloud_cubes(config.data, tmp_path, 2, seed=5)
    state, meta = kinematics.load_cloud(paths[1])
    assert state["density"].shape == (32, 32, 32) and state["velocity"].shape == (3, 32, 32, 32)
    assert 8.0 <= meta["kinematics"]["temperature_k"] <= 15.0
    np.testing.assert_allclose(state["temperature"], meta["kinematics"]["temperature_k"])
    mtime = paths[0].stat().st_mtime_ns
    assert mi.write_cloud_cubes(config.data, tmp_path, 2, seed=5) == paths
    assert paths[0].stat().st_mtime_ns == mtime  # kept, not rewritten
