"""Outputs of a GP fit: figures, FITS extensions (foreground, posterior samples), masses."""

from __future__ import annotations

import numpy as np
import pytest

from dustjax.gp import plots
from dustjax.gp.grid import LBDGrid

GRID = LBDGrid((50.0, 90.0), (-10.0, 10.0), (180.0, 500.0), (8, 4, 5))


def _bright_pixel_lb(fig, ax):
    """(l, b) in the axes' data coordinates of the bright pixels the figure shows in ``ax``,
    read from the rendered image (not from the imshow arguments)."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    height = rgba.shape[0]
    box = ax.get_window_extent()
    rows, cols = np.nonzero(rgba[..., 1] > 200)  # viridis / magma at vmax: G > 200
    x, y = cols + 0.5, height - rows - 0.5  # display coordinates, origin bottom left
    inside = (x > box.x0 + 2) & (x < box.x1 - 2) & (y > box.y0 + 2) & (y < box.y1 - 2)
    assert inside.sum() > 0, "no bright pixel drawn"
    data = ax.transData.inverted().transform(np.stack([x[inside], y[inside]], axis=1))
    return data.mean(axis=0)


@pytest.mark.parametrize("which", ["fig4", "fig5"])
def test_maps_draw_a_pixel_at_its_own_longitude_with_l_increasing_to_the_left(which, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    i, j = 1, 2  # l in [55, 60], b in [0, 5]
    img = np.zeros(GRID.shape[:2])
    img[i, j] = 1.0
    if which == "fig4":
        plots.plot_extinction_maps(GRID, img, "unused.png")
    else:
        cube = np.zeros(GRID.full_shape)
        cube[i, j, 2] = 1.0
        plots.plot_density_slices(GRID, cube, [GRID.d_centres_pc()[2]], "unused.png")
    (fig,) = figures
    ax = fig.axes[0]
    lon, lat = _bright_pixel_lb(fig, ax)
    assert lon == pytest.approx(GRID.l_centres_deg()[i], abs=0.5)
    assert lat == pytest.approx(GRID.b_centres_deg()[j], abs=0.5)
    left, right = ax.get_xlim()
    assert left > right  # l increases to the left, as on the sky
    assert (min(left, right), max(left, right)) == pytest.approx(GRID.l_range_deg)
