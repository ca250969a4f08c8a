"""The POLARIS studies as batch runs (dustjax.polaris.studies, experiments/polaris_study.py): the
grids, the crops' batching per pass and training subsets, training + skipping + resuming on the
test config, the table and the figures."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dustjax import io as dio
from dustjax import training as train
from dustjax.polaris import data, studies
from dustjax.polaris.projection import COLUMN, FEATURE_NAMES
from experiments.configs import load_config_module

REPO = Path(__file__).resolve().parents[2]


# the module's trainings share one compilation cache (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("shared_compilation_cache")


def _config():
    return load_config_module("polaris_study_test")


def test_grids_follow_the_config_and_the_paper():
    device = load_config_module("polaris_study")
    fl = studies.study_points(device, "filters_levels")
    assert len(fl) == 3 * 4 and len({p.name for p in fl}) == 12
    cfg = studies.point_config(device, fl[0])
    assert "study" not in cfg and cfg.model.kwargs.base_features == 16
    assert cfg.model.kwargs.levels == 2 and cfg.num_epochs == device.num_epochs

    sizes = studies.study_points(device, "train_size")
    by_name = {p.name: p for p in sizes}
    # fig. 22: 59 crops in batches of 32 leave 27 unseen per pass; 7 crops make one batch of 7
    assert by_name["b32_n59_s0"].params["unseen_per_pass"] == 27
    assert by_name["b32_n7_s0"].overrides["batch_size"] == 7
    # fig. 23: every size a multiple of the batch
    assert all(p.params["unseen_per_pass"] == 0 for p in sizes if p.params["virtual_batch"] == 16)
    c = studies.point_config(device, by_name["b32_n79_s0"])
    assert c.data.num_train_crops == 79 and c.data.passes_per_epoch == 30 and c.num_epochs == 10

    # the KAN variants as their own configs build them (experiments/configs/ukan.py, ...)
    kan = {p.params["model"]: studies.point_config(device, p) for p in
           studies.study_points(device, "kan")}  # fmt: skip
    for name in ("knet", "ukan", "unet_kan_branch"):
        own = load_config_module(name)
        assert kan[name].model.name == own.model.name
        for key, value in own.model.kwargs.items():
            assert tuple(np.atleast_1d(kan[name].model.kwargs[key])) == tuple(
                np.atleast_1d(value)
            ), (name, key)

    conv = studies.study_points(device, "convs_per_block")
    assert sorted(p.params["convs_per_block"] for p in conv) == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="unknown study"):
        studies.study_points(device, "depth")


def test_fingerprint_ignores_run_time_keys_only():
    config = _config()
    point = studies.study_points(config, "filters_levels")[0]
    a = studies.point_config(config, point)
    b = studies.point_config(config, point)
    b.max_train_seconds, b.progress_bar, b.log_every_steps = 12.0, True, 99
    assert studies.fingerprint(a) == studies.fingerprint(b)
    b.optimizer.learning_rate = 3e-4
    assert studies.fingerprint(a) != studies.fingerprint(b)


def _synthetic_config(n_train=10, n_val=3, size=8):
    rng = np.random.default_rng(0)

    def split(n, offset):
        d = {k: rng.uniform(1, 2, (n, size, size)).astype(np.float32) for k in FEATURE_NAMES}
        d[COLUMN] = (1e21 * (np.arange(n) + offset + 1.0)[:, None, None] *
                     np.ones((size, size))).astype(np.float32)  # fmt: skip
        return d

    c = _config()
    c.data.num_crops = 999_999  # a key no simulation uses: these crops come from preload
    splits = {"train": split(n_train, 0), "validation": split(n_val, 100)}
    data.preload_splits(c.data, int(c.data.seed), splits)
    return c, splits


def test_each_pass_drops_the_remainder_and_subsets_take_the_first_crops():
    c, splits = _synthetic_config(n_train=10)
    c.data.passes_per_epoch = 3
    batches = list(data.crop_source(c, "train", batch_size=4, seed=1, epoch=0, train=True))
    assert len(batches) == 3 * (10 // 4)
    # crop i has N = (i + 1) 1e21 cm^-2, and the input is log10 N - 21.5
    ids = [np.rint(10 ** (b[data.INPUT_KEY][:, 0, 0, 0] + 0.5) - 1).astype(int) for b in batches]
    for p in range(3):  # each pass: 8 distinct crops of 10, 2 unseen
        seen = np.concatenate(ids[2 * p : 2 * p + 2])
        assert len(set(seen)) == 8 and set(seen) <= set(range(10))
    assert not all(np.array_equal(ids[0], ids[2 * p]) for p in (1, 2))  # fresh permutations
    c.data.passes_per_epoch = 1
    one = list(data.crop_source(c, "train", batch_size=4, seed=1, epoch=0, train=True))
    np.testing.assert_array_equal(one[0][data.INPUT_KEY], batches[0][data.INPUT_KEY])

    c.data.num_train_crops = 6
    sub = data.load_splits(c)
    np.testing.assert_array_equal(sub["train"][COLUMN], splits["train"][COLUMN][:6])
    assert len(sub["validation"][COLUMN]) == 3
    c.data.num_train_crops = 11
    with pytest.raises(ValueError, match="num_train_crops = 11: the train split has 10"):
        data.load_splits(c)


def _train_calls(monkeypatch):
    calls = []
    real = train.train_and_evaluate

    def counting(config, workdir):
        calls.append(Path(workdir).name)
        return real(config, workdir)

    monkeypatch.setattr(train, "train_and_evaluate", counting)
    return calls


def test_study_trains_its_grid_then_skips_it_and_draws(tmp_path, monkeypatch):
    config = _config()
    calls = _train_calls(monkeypatch)
    table = studies.run_study(config, "filters_levels", tmp_path)
    assert calls == ["f4_l1_s0", "f4_l2_s0"]
    assert table["num_done"] == 2 and set(table["run"].values()) == {"trained"}
    study_dir = tmp_path / "filters_levels"
    for name in ("results.json", "results.md", "fig14_accuracy_map.png"):
        assert (study_dir / name).stat().st_size > 0
    saved = dio.read_json(study_dir / "results.json")
    assert [r["name"] for r in saved["points"]] == ["f4_l1_s0", "f4_l2_s0"]
    for r in saved["points"]:
        assert r["training"]["epochs_run"] == 2 and 0 <= r["accuracy"] <= 1
        assert r["val_mse"] > 0 and r["mse_ratio"] == pytest.approx(
            r["val_mse"] / r["val_mse_reference"]
        )
        i = r["accuracy_curve"]["sigma"].index(0.1)
        assert r["accuracy"] == r["accuracy_curve"]["mean"][i]
    # the best checkpoint's validation loss is the MSE of normalised log10 density: eq. 4
    assert saved["points"][0]["val_mse"] == pytest.approx(
        saved["points"][0]["training"]["best_val_loss"], rel=1e-4
    )
    assert "| 4 | 1 | 1 | 0 |" in (study_dir / "results.md").read_text()

    again = studies.run_study(config, "filters_levels", tmp_path)
    assert calls == ["f4_l1_s0", "f4_l2_s0"]  # nothing retrained
    assert set(again["run"].values()) == {"skipped: finished"}
    assert dio.read_json(study_dir / "results.json") == saved


def test_deadline_leaves_points_pending_and_a_partial_table(tmp_path, monkeypatch):
    calls = _train_calls(monkeypatch)
    table = studies.run_study(_config(), "convs_per_block", tmp_path, deadline_s=1.0)
    assert calls == [] and table["num_done"] == 0 and table["figure"] is None
    assert set(table["run"].values()) == {"not started: deadline"}
    md = (tmp_path / "convs_per_block" / "results.md").read_text()
    assert md.count("pending") == 2 and "0 of 2 points done" in md


@pytest.mark.slow
def test_interrupted_point_resumes_and_a_foreign_workdir_restarts(tmp_path):
    config = _config()
    points = studies.study_points(config, "convs_per_block")
    study_dir = tmp_path / "convs_per_block"
    # point 0 interrupted after one of its two epochs (a time budget, not part of the config)
    first = studies.point_config(config, points[0])
    first.max_train_seconds = 1e-9
    studies.prepare_data(config, tmp_path)
    train.train_and_evaluate(first, study_dir / "points" / points[0].name)
    lines = (study_dir / "points" / points[0].name / "metrics.jsonl").read_text().splitlines()
    # point 1's workdir holds a run of another model (one conv instead of two)
    train.train_and_evaluate(studies.point_config(config, points[0]),
                             study_dir / "points" / points[1].name)  # fmt: skip
    table = studies.run_study(config, "convs_per_block", tmp_path)
    assert table["num_done"] == 2
    resumed = (study_dir / "points" / points[0].name / "metrics.jsonl").read_text().splitlines()
    assert len(resumed) == 2 and resumed[0] == lines[0]  # epoch 1 kept, epoch 2 trained
    saved = dio.read_json(study_dir / "points" / points[1].name / "config.json")
    assert saved["model"]["kwargs"]["convs_per_block"] == 2
    assert (study_dir / "fig16_convs_per_block.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("study", ["train_size", "kan"])
def test_the_other_studies_run_on_the_test_config(tmp_path, study):
    table = studies.run_study(_config(), study, tmp_path)
    assert table["num_done"] == table["num_points"] and table["figure"]
    assert Path(table["figure"]).stat().st_size > 0
    if study == "train_size":
        rows = {r["name"]: r for r in table["points"]}
        assert rows["b4_n3_s0"]["steps_per_epoch"] == 2  # 2 passes of one batch of 3
        assert rows["b4_n8_s0"]["steps_per_epoch"] == 4 and rows["b4_n8_s0"]["num_train_crops"] == 8


def _fake_row(name, params, rng, sigma=0.1):
    sig = [0.05, 0.1, 0.2]
    mean = np.sort(rng.uniform(0, 1, 3)).tolist()
    return dict(
        name=name, params=params, status="done", accuracy=mean[1], accuracy_std=0.05,
        val_mse=0.02, val_mse_reference=0.04, mse_ratio=0.5, sigma=sigma, steps_per_epoch=3,
        train_call_s=4.0, accuracy_curve=dict(sigma=sig, mean=mean, std=[0.01] * 3),
        residuals=dict(bin_centres=[1.0, 2.0, 3.0], count=[4, 5, 0], mean=[0.1, -0.1, None],
                       p16=[0.0, -0.2, None], p84=[0.2, 0.0, None]),
        training=dict(num_params=10, epochs_run=3, best_epoch=2, stop_reason="early stop: x"),
    )  # fmt: skip


def test_every_figure_draws_from_a_partial_table(tmp_path):
    """Figures and tables from a table with one point not done (grey cell, missing marker)."""
    rng = np.random.default_rng(3)
    config = load_config_module("polaris_study")
    for study in studies.STUDIES:
        points = studies.study_points(config, study)
        rows = [_fake_row(p.name, p.params, rng) for p in points[:-1]]
        rows.append(dict(name=points[-1].name, params=points[-1].params, status="pending"))
        table = dict(study=study, sigma=0.1, num_points=len(rows), num_done=len(rows) - 1,
                     points=rows)  # fmt: skip
        path = studies.draw_figure(study, table, tmp_path)
        assert Path(path).name == studies.FIGURES[study] and Path(path).stat().st_size > 0
        md = studies.markdown_table(table)
        assert md.count("\n| ") == len(rows) + 1 and "pending" in md


def test_cli_refuses_an_unknown_study_and_draws_an_empty_root(tmp_path):
    cmd = [sys.executable, "-m", "experiments.polaris_study",
           "--config=experiments/configs/polaris_study_test.py", f"--root={tmp_path}"]  # fmt: skip
    bad = subprocess.run([*cmd, "--study=depth"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "depth" in bad.stderr
    ok = subprocess.run([*cmd, "--study=kan", "--draw_only"], cwd=REPO, capture_output=True,
                        text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "0 of 4 points done" in ok.stdout and "no figure yet" in ok.stdout


def test_an_earlier_runs_table_seeds_its_finished_points_only(tmp_path):
    """Run 2's table (docs/results) resumes on the device config it was made with (one device a
    process); run 1's points, trained with other settings, are not taken."""
    runs = REPO / "docs" / "results"
    run1, run2 = runs / "polaris_study_h200_run1", runs / "polaris_study_h200_run2"
    device = load_config_module("polaris_study")
    device.num_devices = 1  # as tools/device/issue21s.sh runs it
    seeded = studies.seed_results(device, "filters_levels", tmp_path, run2 / "filters_levels.json")
    assert len(seeded["seeded"]) == 9 and not seeded["kept"] and not seeded["other_config"]
    table = studies.collect_results(device, "filters_levels", tmp_path)
    assert table["num_done"] == 9
    pending = {r["name"] for r in table["points"] if r["status"] == "pending"}
    assert pending == {"f64_l4_s0", "f32_l5_s0", "f64_l5_s0"}  # the three run 2 did not start
    again = studies.seed_results(device, "filters_levels", tmp_path, run2 / "filters_levels.json")
    assert len(again["kept"]) == 9 and not again["seeded"]
    fl1 = run1 / "filters_levels.json"
    old = studies.seed_results(device, "filters_levels", tmp_path / "r", fl1)
    assert len(old["other_config"]) == 12 and not old["seeded"]
    with pytest.raises(ValueError, match="table of study 'kan', not 'train_size'"):
        studies.seed_results(device, "train_size", tmp_path, run2 / "kan.json")
