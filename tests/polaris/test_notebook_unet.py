"""Execute colab/unet.ipynb on the CPU with the unet_test config (what CI runs)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_unet_notebook_runs_on_cpu(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DUSTJAX_UNET_CONFIG", "unet_test")
    monkeypatch.setenv("DUSTJAX_UNET_WORKDIR", str(tmp_path / "nb"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    notebook = nbformat.read(ROOT / "colab" / "unet.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    assert (tmp_path / "nb" / "validation" / "polaris_metrics.json").exists()
    assert (tmp_path / "nb" / "map_density.fits").exists()
