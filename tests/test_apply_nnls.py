"""`experiments/apply.py --method=nnls`: the NNLS baseline through the same pipeline and outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dustjax import maps
from dustjax.geometry import Region

ROOT = Path(__file__).resolve().parents[1]


def test_cli_nnls_literature_cube_writes_the_vnet_outputs(tmp_path):
    pytest.importorskip("astropy")
    fine = Region.named("SR").with_shape((16, 16, 16))
    zc = fine.cell_centres_pc()[..., 2]
    density = np.where(np.abs(zc) < 36, 1e-3, 0.0).astype(np.float32)  # a uniform slab
    maps.write_cartesian_map(tmp_path / "cube.fits", fine, density)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.apply", "--method=nnls", "--region=SR",
         "--shape=8,8,8", "--nnls_steps=3000", f"--literature_cube={tmp_path / 'cube.fits'}",
         f"--workdir={tmp_path / 'out'}", "--plots=false"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["method"] == "nnls" and summary["nnls"]["num_steps"] == 3000
    assert "model_workdir" not in summary
    out = maps.DustMap.from_fits(tmp_path / "out" / "density.fits")
    assert out.shape == (8, 8, 8) and out.density.min() >= 0
    # Regridded to 24 pc cells (smoothed) the slab keeps its dust: NNLS gives it back.
    assert out.density.sum() == pytest.approx(density.sum() / 8, rel=0.05)
    assert summary["residual_vs_truth"]["dispersion"] < 1e-4


def test_cli_vnet_without_model_is_a_usage_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    # run in tmp_path: a directory without workdirs/ of trained models
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.apply", "--catalog=demo",
         f"--workdir={tmp_path / 'out'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode != 0
    # no --model and no trained workdir of the region here: one line naming where it looked
    assert "no model given and none trained for SR" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
