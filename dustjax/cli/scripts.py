"""The console scripts of ``pyproject.toml`` (``dustjax-train = "dustjax.cli.scripts:train"`` ...):
one function each, starting the `dustjax.cli` module that `dustjax.cli.ENTRY_POINTS` names."""

from __future__ import annotations

from dustjax.cli import ENTRY_POINTS, run


def _console(name: str):
    def entry() -> None:
        run(ENTRY_POINTS[name])

    entry.__name__ = entry.__qualname__ = name.removeprefix("dustjax-").replace("-", "_")
    entry.__doc__ = f"The ``{name}`` console script (`dustjax.cli.{ENTRY_POINTS[name]}`)."
    return entry


train = _console("dustjax-train")
evaluate = _console("dustjax-evaluate")
apply = _console("dustjax-apply")
fit_gp = _console("dustjax-fit-gp")
predict_map = _console("dustjax-predict-map")
polaris_validate = _console("dustjax-polaris-validate")
make_dataset = _console("dustjax-make-dataset")
make_clouds = _console("dustjax-make-clouds")
preview = _console("dustjax-preview")
preview_clouds = _console("dustjax-preview-clouds")
make_cloud_cubes = _console("dustjax-make-cloud-cubes")
polaris_study = _console("dustjax-polaris-study")
