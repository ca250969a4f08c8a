"""What the V-net apply pipeline writes (`dustjax.vnet.apply`): a FITS map, a JSON summary and
the figures of `dustjax.vnet.plots`."""

from __future__ import annotations

import os
from pathlib import Path

from dustjax import io as dio
from dustjax import maps
from dustjax.plots import save_figure
from dustjax.vnet.apply import MapResult
from dustjax.vnet.plots import (
    plot_consistency,
    plot_edge_effect,
    plot_face_on,
    plot_slices,
    plot_truth_vs_prediction,
)


def write_outputs(
    outdir: str | os.PathLike,
    result: MapResult,
    *,
    write_fits: bool = True,
    plots: bool = True,
    header: dict | None = None,
) -> dict[str, str]:
    """FITS map, JSON summary and figures into `outdir`; returns ``{what: path}``.

    Files: ``density.fits`` (primary: density; UNCERT: MC dispersion; EXTINCT: the input
    extinction cube; EXTUNC: MC dispersion of the integrated extinction), ``summary.json``,
    ``slices.png`` (XY and XZ through the Sun's cell: extinction, density, dispersion, truth and
    residual when known), ``face_on.png`` (fig. A5), ``consistency.png`` (fig. 11),
    ``truth_vs_prediction.png`` (fig. 10) and ``edge_effect.png`` (fig. A8) when they apply.
    Every file is written atomically; the summary last.
    """
    outdir = dio.ensure_writable_dir(outdir)
    files: dict[str, str] = {}
    if write_fits:
        files["fits"] = str(
            maps.write_cartesian_map(
                outdir / "density.fits",
                result.region,
                result.density,
                uncertainty=result.density_std,
                extinction=result.extinction,
                extinction_uncertainty=result.extinction_std,
                header={"ORIGIN": "dustjax apply", **(header or {})},
            )
        )
    if plots:
        files.update(write_figures(outdir, result))
    summary = dict(result.summary, files=files)
    dio.write_json(outdir / "summary.json", summary)
    files["summary"] = str(outdir / "summary.json")
    return files


def write_figures(outdir: Path, result: MapResult) -> dict[str, str]:
    """The figures that apply to `result`, as PNGs in `outdir`; returns ``{name: path}``."""
    files = {}
    figures = {
        "slices": plot_slices,
        "face_on": plot_face_on,
        "consistency": plot_consistency,
        "truth_vs_prediction": plot_truth_vs_prediction,
        "edge_effect": plot_edge_effect,
    }
    for name, draw in figures.items():
        fig = draw(result)
        if fig is None:
            continue
        files[name] = str(save_figure(fig, outdir / f"{name}.png"))
    return files
