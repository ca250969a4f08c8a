"""Execute the Colab notebooks on the CPU with their test configurations (nbclient).

The train notebook trains `vnet_test` into a temporary workdir; the apply notebook then maps a
small demo catalogue with that model; the GP notebook runs `gp_test` (skipped until the GP entry
point and its test config exist). No notebook pip-installs anything outside Colab.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = ("vnet_train.ipynb", "vnet_apply.ipynb", "gp_fit.ipynb")  # the ones this file runs


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


def test_notebooks_are_thin_and_guard_the_install():
    for path in (COLAB / name for name in NOTEBOOKS):
        book = nbformat.read(path, as_version=4)
        code = "\n".join(c.source for c in book.cells if c.cell_type == "code")
        assert "ON_COLAB and" in code, path.name  # pip install only on Colab
        assert "def " not in code and "class " not in code, f"{path.name} should call the library"


def test_train_then_apply_notebooks(tmp_path, monkeypatch):
    workdir = tmp_path / "vnet_test"
    monkeypatch.setenv("DUSTJAX_NOTEBOOK_CONFIG", "vnet_test")
    monkeypatch.setenv("DUSTJAX_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.setenv("DUSTJAX_NOTEBOOK_MAX_EVAL_CUBES", "4")
    book = _execute("vnet_train.ipynb", tmp_path)
    assert (workdir / "config.json").exists() and (workdir / "checkpoints").is_dir()
    assert "backend cpu" in _outputs(book)

    monkeypatch.setenv("DUSTJAX_NOTEBOOK_MODEL", str(workdir))
    monkeypatch.setenv("DUSTJAX_NOTEBOOK_STARS", "3000")
    monkeypatch.setenv("DUSTJAX_NOTEBOOK_REDRAWS", "4")
    monkeypatch.setenv("DUSTJAX_NOTEBOOK_OUTDIR", str(tmp_path / "apply"))
    book = _execute("vnet_apply.ipynb", tmp_path)
    for name in ("density.fits", "summary.json", "slices.png", "face_on.png"):
        assert (tmp_path / "apply" / name).exists(), name
    assert "extinction (mag):" in _outputs(book)


def test_gp_notebook(tmp_path, monkeypatch):
    if (
        not (ROOT / "experiments" / "fit_gp.py").exists()
        or not (ROOT / "experiments" / "configs" / "gp_test.py").exists()
    ):
        pytest.skip("experiments/fit_gp.py or experiments/configs/gp_test.py not there yet")
    monkeypatch.setenv("DUSTJAX_NOTEBOOK_CONFIG", "gp_test")
    monkeypatch.setenv("DUSTJAX_NOTEBOOK_WORKDIR", str(tmp_path / "gp"))
    _execute("gp_fit.ipynb", tmp_path)
    assert any((tmp_path / "gp").iterdir())
