"""The package says what it is: the wheel's contents and metadata, the console scripts, configs by
name from any directory, ``--help`` exiting 0, and a core install that needs no tensorflow."""

from __future__ import annotations

import ast
import email
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from dustjax.cli import ENTRY_POINTS, resolve_config_args
from dustjax.configs import CONFIG_DIR, available_configs, config_path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: sitecustomize of a child interpreter that behaves as if tensorflow were not installed.
NO_TENSORFLOW = ROOT / "tests" / "no_tensorflow"


def no_tensorflow_env() -> dict[str, str]:
    """The environment of a child interpreter without tensorflow (and with this checkout)."""
    parts = (str(NO_TENSORFLOW), str(ROOT), os.environ.get("PYTHONPATH"))
    path = os.pathsep.join(p for p in parts if p)
    return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}


def _run(args, cwd, env=None, timeout=300):
    return subprocess.run(
        args, cwd=cwd, env=env or {**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources the package is made of (no checkout extras)."""
    import shutil

    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "dustjax", src / "dustjax", ignore=shutil.ignore_patterns("__pycache__"))
    proc = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp / "dist"), str(src)],
        cwd=tmp,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp / "dist").glob("dustjax-*.whl")
    return path


def test_the_wheel_holds_dustjax_its_configs_and_license_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    version = PYPROJECT["project"]["version"]
    tops = {n.split("/")[0] for n in names}
    assert tops == {"dustjax", f"dustjax-{version}.dist-info"}, tops  # no experiments/, data_gen/
    for config in available_configs():
        assert f"dustjax/configs/{config}.py" in names, config
    for module in ENTRY_POINTS.values():
        assert f"dustjax/cli/{module}.py" in names, module
    assert f"dustjax-{version}.dist-info/licenses/LICENSE" in names
    # nothing installed imports the checkout-only aliases
    with zipfile.ZipFile(wheel) as zf:
        for name in (n for n in names if n.endswith(".py")):
            tree = ast.parse(zf.read(name).decode(), name)
            for node in ast.walk(tree):
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    mods = [node.module or ""]
                bad = [m for m in mods if m.split(".")[0] in ("experiments", "data_gen", "tools")]
                assert not bad, f"{name} imports {bad}: not installed"


def test_the_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        dist = next(n.split("/")[0] for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(f"{dist}/METADATA"))
        entry_points = zf.read(f"{dist}/entry_points.txt").decode()
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["License-Expression"] == "MIT"
    requires = meta.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if r.startswith(("tensorflow", "tensorflow-datasets"))], core
    tf_extra = [r for r in requires if 'extra == "tfrecord"' in r]
    assert any(r.startswith("tensorflow-datasets") for r in tf_extra), tf_extra
    assert any(r.startswith("tensorflow-cpu") for r in tf_extra), tf_extra
    assert any(r.startswith("jax>=0.") for r in core)
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Source", "Issues"} <= set(urls), urls
    for script, module in ENTRY_POINTS.items():
        target = f"{script} = dustjax.cli.scripts:{module}"
        assert target in entry_points, target


def test_the_installed_wheel_runs_from_anywhere(wheel, tmp_path):
    """Installed (no checkout on the path): configs by name and a console script's --help."""
    site = tmp_path / "site"
    proc = _run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", str(site), str(wheel)],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    code = "import dustjax.configs as c; print(c.__file__); print(c.config_path('gp_test'))"
    proc = _run([sys.executable, "-c", code], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    module_file, config_file = proc.stdout.split()
    assert Path(module_file).is_relative_to(site) and Path(config_file).is_relative_to(site)
    script = site / "bin" / "dustjax-fit-gp"
    proc = _run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--config" in proc.stdout and "--workdir" in proc.stdout
    assert "dustjax-fit-gp --config=" in proc.stdout  # the module's usage text


def test_pyproject_scripts_are_the_entry_points():
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts == {k: f"dustjax.cli.scripts:{v}" for k, v in ENTRY_POINTS.items()}
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["dustjax*"]


@pytest.mark.parametrize("module", sorted(set(ENTRY_POINTS.values())))
def test_help_exits_0_with_the_usage_and_flags(module):
    proc = _run([sys.executable, "-m", f"dustjax.cli.{module}", "--help"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flags:" in proc.stdout and "dustjax-" in proc.stdout, proc.stdout[-2000:]


def test_helpfull_exits_0_and_the_checkout_alias_still_runs():
    proc = _run([sys.executable, "-m", "experiments.fit_gp", "--helpfull"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--config" in proc.stdout


def test_configs_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = str(CONFIG_DIR / "vnet_sr.py")
    assert config_path("vnet_sr") == packaged
    assert config_path("vnet_sr.py") == packaged
    assert config_path("experiments/configs/vnet_sr.py") == packaged  # the old spelling
    assert config_path("gp_test:some_argument") == str(CONFIG_DIR / "gp_test.py") + ":some_argument"
    own = tmp_path / "vnet_sr.py"
    own.write_text("def get_config(): ...\n")
    assert config_path("vnet_sr.py") == "vnet_sr.py"  # a file of the user's own wins
    with pytest.raises(ValueError, match="no config file 'nope'.*Packaged configs: .*vnet_sr"):
        config_path("nope")
    with pytest.raises(ValueError, match="no config file 'mine/gp_test.py'"):
        config_path("mine/gp_test.py")  # a missing file of the user's own is not replaced
    assert "vnet_sr" in available_configs() and "vnet_common" not in available_configs()
    argv = ["prog", "--config", "gp_test", "--config.fit.max_iterations=3", "--workdir=w"]
    assert resolve_config_args(argv) == [
        "prog", "--config", str(CONFIG_DIR / "gp_test.py"), "--config.fit.max_iterations=3",
        "--workdir=w",
    ]  # fmt: skip
    assert resolve_config_args(["p", "--config=unet_test"]) == [
        "p", f"--config={CONFIG_DIR / 'unet_test.py'}"
    ]  # fmt: skip


def test_an_unknown_config_name_is_one_line_and_status_2(tmp_path):
    proc = _run([sys.executable, "-m", "dustjax.cli.fit_gp", "--config=vnet_nope"], cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "no config file 'vnet_nope'" in proc.stderr and "gp_test" in proc.stderr


def test_the_core_install_imports_without_tensorflow(tmp_path):
    """Every module of dustjax imports in an interpreter that has no tensorflow; the notebooks'
    test runs training, apply, the GP and the U-Net in such an interpreter."""
    code = """
import pkgutil, importlib, sys
import dustjax
names = [m.name for m in pkgutil.walk_packages(dustjax.__path__, "dustjax.")]
for name in names:
    importlib.import_module(name)
assert "tensorflow" not in sys.modules
try:
    import tensorflow
except ImportError:
    print("no tensorflow;", len(names), "modules imported")
"""
    proc = _run([sys.executable, "-c", code], cwd=tmp_path, env=no_tensorflow_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no tensorflow;" in proc.stdout


def test_the_plots_leave_matplotlib_backend_and_pyplot_alone(tmp_path):
    """Figures go through the object API: a notebook's backend stays, pyplot is never imported."""
    code = f"""
import sys, matplotlib
from dustjax.plots import loss_curve
history = [dict(epoch=e, train_loss=1.0 / e, val_loss=1.2 / e) for e in (1, 2, 3)]
loss_curve(history, {str(tmp_path / "loss.png")!r}, title="t")
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
print(matplotlib.get_backend())
"""
    env = {**os.environ, "MPLBACKEND": "svg", "PYTHONPATH": str(ROOT)}
    proc = _run([sys.executable, "-c", code], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "svg"
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lower_bounds_are_the_minimum_versions_file():
    """constraints-min.txt (the documented minimum-versions check) pins the declared bounds."""
    pins = {}
    for line in (ROOT / "constraints-min.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    for requirement in PYPROJECT["project"]["dependencies"]:
        name, _, bound = requirement.partition(">=")
        assert pins.get(name.lower().replace("_", "-")) == bound, requirement


def test_without_tensorflow_make_dataset_names_the_extra_in_one_line(tmp_path):
    proc = _run(
        [sys.executable, "-m", "dustjax.cli.make_dataset", "--num=3", f"--out={tmp_path / 'd'}"],
        cwd=tmp_path, env=no_tensorflow_env(),
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "pip install 'dustjax[tfrecord]'" in proc.stderr
    assert not (tmp_path / "d").exists()
