"""A training run that fails before its first checkpoint leaves nothing it created (no empty or
config-only workdir), and never touches what was there before (issue 19, item 8)."""

from __future__ import annotations

import pytest

from dustjax import training
from dustjax.training import loop
from experiments.configs import vnet_test


def test_a_run_refused_at_its_data_leaves_no_directory(tmp_path):
    config = vnet_test.get_config()
    config.data.source = "tfrecord"
    config.data.data_dir = str(tmp_path / "no_such_dataset")
    workdir = tmp_path / "workdirs" / "run"
    with pytest.raises(Exception, match="no_such_dataset"):
        training.train_and_evaluate(config, workdir)
    assert not (tmp_path / "workdirs").exists()  # nor the parent it made


def test_a_run_failing_before_its_first_checkpoint_removes_only_its_own_files(
    tmp_path, monkeypatch
):
    def broken_epoch(*args, **kwargs):
        raise RuntimeError("the first epoch failed")

    monkeypatch.setattr(loop, "_train_epoch", broken_epoch)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine")
    config = vnet_test.get_config()
    config.data.shape, config.model.kwargs.features = (8, 8, 8), (2, 4)  # compiles in seconds
    with pytest.raises(RuntimeError, match="first epoch failed"):
        training.train_and_evaluate(config, workdir)
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]  # config.json went


def test_a_workdir_with_a_checkpoint_is_kept_to_resume(tmp_path):
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "3").mkdir(parents=True)
    (workdir / "config.json").write_text("{}")
    assert loop.remove_failed_start(workdir, before=None, new_dirs=[workdir]) == []
    assert (workdir / "config.json").exists()
    (workdir / "checkpoints" / "3").rmdir()
    assert loop.remove_failed_start(workdir, None, [workdir]) == ["checkpoints", "config.json"]
    assert not workdir.exists()


def test_an_unwritable_workdir_is_refused_before_any_data_is_simulated(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "a_file").write_text("")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config=experiments/configs/vnet_lr_cpu.py",
         f"--workdir={tmp_path}/a_file/run", f"--data_dir={tmp_path}/data",
         "--make_data_if_missing"],
        capture_output=True, text=True, cwd=repo, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: cannot create output directory {tmp_path}/a_file/run: {tmp_path}/a_file is a "
        "file, not a directory"
    )
    assert not (tmp_path / "data").exists()  # refused before the dataset was simulated
