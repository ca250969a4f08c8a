"""Execute the Colab notebooks on the CPU at their tiny sizes (nbclient), as CI does.

The train notebook trains `vnet_test` into a temporary workdir; the apply notebook then maps a
small demo catalogue with that model; the GP notebook fits `gp_test`; the U-Net notebook trains
`unet_test`. ``DUSTJAX_NOTEBOOK_TINY=1`` shortens each run to the fewest steps that still pass
through every cell. No notebook installs anything outside Colab, starts a subprocess or touches
matplotlib's backend.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = ("vnet_train.ipynb", "vnet_apply.ipynb", "gp_fit.ipynb", "unet.ipynb")


def _execute(name: str, cwd: Path, timeout: int = 600):
    book = nbformat.read(COLAB / name, as_version=4)
    client = nbclient.NotebookClient(
        book, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return book


def _outputs(book) -> str:
    text = []
    for cell in book.cells:
        for out in cell.get("outputs", []):
            text.append(str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """The notebooks' kernel sees this checkout's dustjax, on the CPU, at tiny sizes, and has no
    tensorflow (tests/no_tensorflow): the core install trains, applies and fits without it."""
    parts = (str(ROOT / "tests" / "no_tensorflow"), str(ROOT), os.environ.get("PYTHONPATH"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in parts if p))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("DUSTJAX_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("DUSTJAX_NOTEBOOK_ROOT", str(tmp_path / "runs"))
    return monkeypatch


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_thin_and_install_only_on_colab(name):
    book = nbformat.read(COLAB / name, as_version=4)
    cells = [c.source for c in book.cells if c.cell_type == "code"]
    code = "\n".join(cells)
    install = cells[0]
    assert "ON_COLAB and" in install and "%pip install" in install, name  # pip only on Colab
    urls = re.findall(r"https?://[^\s\"']+", code)
    assert len(urls) == 1 and "REPO_URL =" in install, f"{name}: the repository URL, once: {urls}"
    assert "def " not in code and "class " not in code, f"{name} should call the library"
    # in-process: nothing runs in a child process once the kernel holds the TPU
    assert "subprocess" not in code and "!python" not in code and "os.system" not in code, name
    assert "matplotlib.use" not in code and "plt." not in code, name  # no backend switching
    assert "USE_DRIVE" in code and "drive.mount" in code, name  # the optional Drive workdir
    assert "experiments." not in code and "data_gen." not in code, name  # installed names only


def test_train_then_apply_notebooks(tmp_path, tiny):
    workdir = tmp_path / "vnet_test"
    tiny.setenv("DUSTJAX_NOTEBOOK_CONFIG", "vnet_test")
    tiny.setenv("DUSTJAX_NOTEBOOK_WORKDIR", str(workdir))
    tiny.setenv("DUSTJAX_NOTEBOOK_MAX_EVAL_CUBES", "4")
    book = _execute("vnet_train.ipynb", tmp_path)
    assert (workdir / "config.json").exists() and (workdir / "checkpoints").is_dir()
    assert "backend cpu" in _outputs(book)

    tiny.setenv("DUSTJAX_NOTEBOOK_MODEL", str(workdir))
    tiny.setenv("DUSTJAX_NOTEBOOK_STARS", "3000")
    tiny.setenv("DUSTJAX_NOTEBOOK_REDRAWS", "4")
    tiny.setenv("DUSTJAX_NOTEBOOK_OUTDIR", str(tmp_path / "apply"))
    book = _execute("vnet_apply.ipynb", tmp_path)
    for name in ("density.fits", "summary.json", "slices.png", "face_on.png"):
        assert (tmp_path / "apply" / name).exists(), name
    assert "extinction (mag):" in _outputs(book)


def test_gp_notebook(tmp_path, tiny):
    tiny.setenv("DUSTJAX_NOTEBOOK_CONFIG", "gp_test")
    tiny.setenv("DUSTJAX_NOTEBOOK_WORKDIR", str(tmp_path / "gp"))
    book = _execute("gp_fit.ipynb", tmp_path)
    assert (tmp_path / "gp" / "summary.json").exists()
    assert list((tmp_path / "gp").glob("*.fits")) and list((tmp_path / "gp").glob("*.png"))
    assert "iterations;" in _outputs(book)


def test_unet_notebook(tmp_path, tiny):
    tiny.setenv("DUSTJAX_NOTEBOOK_CONFIG", "unet_test")
    tiny.setenv("DUSTJAX_NOTEBOOK_WORKDIR", str(tmp_path / "nb"))
    _execute("unet.ipynb", tmp_path)
    assert (tmp_path / "nb" / "validation" / "polaris_metrics.json").exists()
    assert (tmp_path / "nb" / "map_density.fits").exists()


def test_no_run_lands_outside_the_workdirs(tmp_path, tiny):
    """With no workdir given, a run goes under ROOT (the Drive folder on Colab when USE_DRIVE)."""
    book = nbformat.read(COLAB / "gp_fit.ipynb", as_version=4)
    params = next(c.source for c in book.cells if "WORKDIR =" in c.source)
    assert 'f"{ROOT}/{CONFIG}"' in params and '"/content/drive/MyDrive/dustjax"' in params
