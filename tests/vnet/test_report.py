"""The first run's ending (`dustjax.vnet.report`) and `apply` without a model: what a newcomer
sees after `make train` and types next (issue 19, first-run experience)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dustjax.vnet import apply as ap
from dustjax.vnet.output import default_model_workdir
from dustjax.vnet.report import closing_lines
from experiments.configs import vnet_sr_cpu

REPO = Path(__file__).resolve().parents[2]


def _metrics(loss, zero):
    return dict(
        loss_eq3=loss, loss_eq3_zero_prediction=zero, num_cubes=60,
        residual_mag_per_pc=dict(dispersion=0.0021), region=dict(shape=[16, 16, 16]),
        c_r_table=dict(k=[0.04, 0.08, 0.12, 0.16, 0.2, 0.24], c_r=[0.9, 0.7, 0.5, 0.3, 0.2, 0.1]),
    )  # fmt: skip


def test_closing_lines_say_how_good_where_and_what_next(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = Path("workdirs/vnet_sr_cpu")
    (workdir / "eval").mkdir(parents=True)
    for name in ("loss_curve.png", "eval/slices.png", "eval/scatter.png"):
        (workdir / name).write_bytes(b"png")
    summary = dict(epochs_run=4, backend="cpu", best_val_loss=3.1e-4, best_epoch=4,
                   stop_reason="reached num_epochs=4", num_params=402553)  # fmt: skip
    text = closing_lines(vnet_sr_cpu.get_config(), workdir, summary, _metrics(3.0e-4, 4.0e-4))
    assert (
        "test split (60 cubes of 16x16x16): eq. 3 loss 0.0003, 25 % below predicting no dust"
        in text
    )
    assert "c_r 0.90 / 0.70 / 0.50 at k = 0.04 / 0.08 / 0.12 pc^-1 (1: perfect)" in text
    assert (
        "figures: workdirs/vnet_sr_cpu/loss_curve.png, workdirs/vnet_sr_cpu/eval/slices.png" in text
    )
    assert "next: a 3D map from a star catalogue with this model: make apply REGION=SR (" in text
    assert "demonstration of the pipeline, not a science-grade map" in text
    worse = closing_lines(vnet_sr_cpu.get_config(), tmp_path / "elsewhere", summary,
                          _metrics(5.0e-4, 4.0e-4))  # fmt: skip
    assert "25 % ABOVE (worse)" in worse and f"MODEL={tmp_path / 'elsewhere'}" in worse


def test_apply_without_a_model_takes_the_one_make_train_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ap.ApplyError, match=r"none trained for SR here .*`make train REGION=SR`"):
        default_model_workdir("SR")
    for name in ("vnet_sr", "vnet_sr_cpu"):
        (tmp_path / "workdirs" / name).mkdir(parents=True)
        (tmp_path / "workdirs" / name / "config.json").write_text("{}")
    os.utime(tmp_path / "workdirs/vnet_sr/config.json", (1, 1))  # the older one
    assert default_model_workdir("SR") == Path("workdirs/vnet_sr_cpu")


def test_make_apply_without_model_does_not_pass_the_family_as_a_workdir():
    proc = subprocess.run(["make", "-n", "apply", "PY=python"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)  # fmt: skip
    command = proc.stdout[proc.stdout.index("cli.apply") :]
    assert "--model" not in command and "--catalog=demo" in command


@pytest.mark.slow  # ~25 s on 2 idle cores: a training, an evaluation, in a fresh process
def test_train_ends_with_test_metrics_figures_and_the_next_command(tmp_path):
    """experiments.train on the test config with eval.after_training, end to end: the closing
    lines, and no library chatter in the log."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train",
         f"--config={REPO}/experiments/configs/vnet_test.py", f"--workdir={tmp_path}/run",
         "--config.num_epochs=1", "--config.eval.after_training=True",
         "--config.progress_bar=False"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test split (8 cubes of 16x16x16): eq. 3 loss" in proc.stdout
    assert "predicting no dust (" in proc.stdout
    assert f"MODEL={tmp_path}/run" in proc.stdout and "not a science-grade map" in proc.stdout
    metrics = json.loads((tmp_path / "run/eval/test_metrics.json").read_text())
    assert metrics["loss_eq3_zero_prediction"] > 0  # the baseline of the closing line
    assert "orbax" not in proc.stderr and "Unable to initialize" not in proc.stderr
