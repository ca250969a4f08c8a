"""The paper's evaluation of predicted density cubes (Chen, Qin & Li, sect. 3.3).

- Power spectra of 3D fields and the cross-correlation coefficient (eq. 4)

      c_r(k) = P_tp(k) / sqrt(P_tt(k) P_pp(k)),

  with the spectra binned in spherical shells of |k| (pc^-1, k = 2 pi / r). The shells run from
  the fundamental mode out to the cube's corner, sqrt(3) pi / cell: the paper quotes c_r up to
  k = 0.893 pc^-1 for 6 pc cells, beyond the per-axis Nyquist pi / 6 = 0.52 pc^-1.
- Residual statistics of rho_p - rho_t (mag/pc): median and dispersion (paper: median ~0,
  dispersion 0.0003 SR, 0.0004 LR).
- Probability densities of predicted and true density (fig. 7) and their 2D histogram (fig. 8).

Power spectrum normalisation (a continuous Fourier transform sampled on the grid): for a field f
on N cells of volume dV (pc^3), total volume V = N dV,

    P(k) = |dV * FFT[f - mean(f)](k)|^2 / V        [pc^3 (units of f)^2],

so Parseval reads  var(f) = (1 / V) sum_k P(k)  = integral P(k) d^3k / (2 pi)^3. Spectra of many
cubes are averaged mode by mode before the ratio of eq. 4 is taken (the paper's 1000 test cubes).

Everything here is numpy (host side): evaluation streams cubes through `SpectrumAccumulator` and
`ResidualAccumulator` so 1000 test cubes never need to sit in memory as spectra.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np


# ---- power spectra ----------------------------------------------------------------------------
def wavenumbers(shape: Sequence[int], cell_size_pc: float | Sequence[float]) -> np.ndarray:
    """|k| (pc^-1) of every FFT mode of a cube of `shape` with the given cell size(s)."""
    cell = np.broadcast_to(np.asarray(cell_size_pc, dtype=float), (3,))
    axes = [2 * np.pi * np.fft.fftfreq(n, d=d) for n, d in zip(shape, cell, strict=True)]
    kx, ky, kz = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(kx**2 + ky**2 + kz**2)


def default_k_edges(shape: Sequence[int], cell_size_pc: float | Sequence[float]) -> np.ndarray:
    """Shells of width k_f = 2 pi / L (the fundamental of the longest side) from k_f / 2 to the
    corner sqrt(3) pi / cell, so every mode but k = 0 falls in a shell."""
    cell = np.broadcast_to(np.asarray(cell_size_pc, dtype=float), (3,))
    length = max(n * d for n, d in zip(shape, cell, strict=True))
    k_f = 2 * np.pi / length
    k_corner = np.sqrt(np.sum((np.pi / cell) ** 2))
    n_shells = int(math.ceil(k_corner / k_f - 0.5)) + 1
    return k_f * (0.5 + np.arange(n_shells + 1))


def _fourier(cubes: np.ndarray, cell_size_pc) -> np.ndarray:
    cubes = np.asarray(cubes, dtype=np.float64)
    cell = np.broadcast_to(np.asarray(cell_size_pc, dtype=float), (3,))
    dv = float(np.prod(cell))
    mean = cubes.mean(axis=(-3, -2, -1), keepdims=True)
    return np.fft.fftn(cubes - mean, axes=(-3, -2, -1)) * dv


def power_spectrum_3d(
    field: np.ndarray, cell_size_pc, other: np.ndarray | None = None
) -> np.ndarray:
    """The unbinned (cross-)power spectrum of a cube ``(..., nx, ny, nz)``, per mode.

    ``Re[F_a F_b^*] / V`` with F the grid Fourier transform of the mean-subtracted field (see the
    module docstring for the units and Parseval's identity). With `other` None, the auto-spectrum.
    """
    field = np.asarray(field)
    cell = np.broadcast_to(np.asarray(cell_size_pc, dtype=float), (3,))
    volume = float(np.prod(field.shape[-3:]) * np.prod(cell))
    fa = _fourier(field, cell)
    fb = fa if other is None else _fourier(other, cell)
    return (fa * np.conj(fb)).real / volume


def bin_spectrum(power: np.ndarray, k: np.ndarray, edges: np.ndarray):
    """Average a per-mode spectrum ``(..., nx, ny, nz)`` over shells of |k|.

    Returns (k_mean, power_mean, counts): the mean |k| of the modes in each shell, the mean power
    in it (averaged over leading axes too) and the number of modes (NaN power where empty).
    """
    which = np.digitize(k.ravel(), edges) - 1
    inside = (which >= 0) & (which < len(edges) - 1)
    nbins = len(edges) - 1
    counts = np.bincount(which[inside], minlength=nbins).astype(float)
    k_sum = np.bincount(which[inside], weights=k.ravel()[inside], minlength=nbins)
    flat = power.reshape(-1, k.size)
    p_sum = sum(np.bincount(which[inside], weights=row[inside], minlength=nbins) for row in flat)
    with np.errstate(invalid="ignore", divide="ignore"):
        return k_sum / counts, p_sum / (counts * flat.shape[0]), counts


class SpectrumAccumulator:
    """Sums P_tt, P_pp and P_tp over many cubes, per mode, for eq. 4.

    ``add(true, pred)`` takes cubes ``(nx, ny, nz)`` or batches ``(B, nx, ny, nz)``;
    `result` bins the summed spectra into shells and returns the c_r(k) table.
    """

    def __init__(self, shape: Sequence[int], cell_size_pc, edges: np.ndarray | None = None):
        self.shape = tuple(int(n) for n in shape)
        self.cell_size_pc = cell_size_pc
        self.k = wavenumbers(self.shape, cell_size_pc)
        self.edges = default_k_edges(self.shape, cell_size_pc) if edges is None else edges
        self.p_tt = np.zeros(self.shape)
        self.p_pp = np.zeros(self.shape)
        self.p_tp = np.zeros(self.shape)
        self.num_cubes = 0

    def add(self, true: np.ndarray, pred: np.ndarray) -> None:
        true = np.asarray(true, dtype=np.float64)
        pred = np.asarray(pred, dtype=np.float64)
        if true.shape != pred.shape or true.shape[-3:] != self.shape:
            raise ValueError(
                f"true {true.shape} and predicted {pred.shape} cubes must both end in {self.shape}"
            )
        true = true.reshape(-1, *self.shape)
        pred = pred.reshape(-1, *self.shape)
        cell = np.broadcast_to(np.asarray(self.cell_size_pc, dtype=float), (3,))
        volume = float(np.prod(self.shape) * np.prod(cell))
        ft, fp = _fourier(true, cell), _fourier(pred, cell)
        self.p_tt += (np.abs(ft) ** 2).sum(0) / volume
        self.p_pp += (np.abs(fp) ** 2).sum(0) / volume
        self.p_tp += (ft * np.conj(fp)).real.sum(0) / volume
        self.num_cubes += true.shape[0]

    def result(self) -> dict[str, np.ndarray]:
        if self.num_cubes == 0:
            raise ValueError("no cubes were added")
        n = self.num_cubes
        k_mean, p_tt, counts = bin_spectrum(self.p_tt / n, self.k, self.edges)
        _, p_pp, _ = bin_spectrum(self.p_pp / n, self.k, self.edges)
        _, p_tp, _ = bin_spectrum(self.p_tp / n, self.k, self.edges)
        with np.errstate(invalid="ignore", divide="ignore"):
            c_r = p_tp / np.sqrt(p_tt * p_pp)
        keep = counts > 0
        return dict(
            k=k_mean[keep],
            k_lo=self.edges[:-1][keep],
            k_hi=self.edges[1:][keep],
            c_r=c_r[keep],
            p_tt=p_tt[keep],
            p_pp=p_pp[keep],
            p_tp=p_tp[keep],
            num_modes=counts[keep],
        )


def cross_correlation_coefficient(
    true: np.ndarray, pred: np.ndarray, cell_size_pc, edges: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """c_r(k) = P_tp / sqrt(P_tt P_pp) (eq. 4) of cubes ``(..., nx, ny, nz)``, k in pc^-1.

    Spectra are averaged over all leading axes before the ratio. Returns the dict of
    `SpectrumAccumulator.result` (k, k_lo, k_hi, c_r, p_tt, p_pp, p_tp, num_modes).
    """
    acc = SpectrumAccumulator(np.shape(true)[-3:], cell_size_pc, edges)
    acc.add(true, pred)
    return acc.result()


def min_c_r_in_range(table: dict[str, np.ndarray], k_min: float, k_max: float) -> float:
    """The smallest c_r over shells whose mean k lies in [k_min, k_max] (pc^-1)."""
    sel = (table["k"] >= k_min) & (table["k"] <= k_max)
    if not sel.any():
        raise ValueError(f"no k shell in [{k_min}, {k_max}] pc^-1")
    return float(np.nanmin(table["c_r"][sel]))


# ---- residuals and PDFs -----------------------------------------------------------------------
@dataclasses.dataclass
class ResidualAccumulator:
    """Collects rho_p - rho_t (mag/pc) and the density PDFs over many cubes.

    Residuals are kept (float32) for an exact median; 1000 cubes of 32^3 are 131 MB.
    Histograms of true/predicted density use fixed `density_edges` (mag/pc) and a 2D histogram
    of (true, predicted) pairs gives the scatter plot of fig. 8 without keeping every point.
    """

    density_edges: np.ndarray
    residuals: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        nb = len(self.density_edges) - 1
        self.hist_true = np.zeros(nb)
        self.hist_pred = np.zeros(nb)
        self.hist_2d = np.zeros((nb, nb))
        self.sum_sq_true = 0.0

    def add(self, true: np.ndarray, pred: np.ndarray) -> None:
        true = np.asarray(true, dtype=np.float64).ravel()
        pred = np.asarray(pred, dtype=np.float64).ravel()
        self.residuals.append((pred - true).astype(np.float32))
        self.hist_true += np.histogram(true, self.density_edges)[0]
        self.hist_pred += np.histogram(pred, self.density_edges)[0]
        self.hist_2d += np.histogram2d(true, pred, [self.density_edges, self.density_edges])[0]
        self.sum_sq_true += float(np.sum(true**2))

    def result(self) -> dict:
        if not self.residuals:
            raise ValueError("no cubes were added")
        res = np.concatenate(self.residuals).astype(np.float64)
        stats = residual_statistics(res)
        widths = np.diff(self.density_edges)
        stats.update(
            density_edges=self.density_edges,
            pdf_true=self.hist_true / max(self.hist_true.sum(), 1) / widths,
            pdf_pred=self.hist_pred / max(self.hist_pred.sum(), 1) / widths,
            hist_2d=self.hist_2d,
            relative_rms=float(np.sqrt(np.sum(res**2) / max(self.sum_sq_true, 1e-300))),
        )
        return stats


def residual_statistics(residual: np.ndarray) -> dict[str, float]:
    """Median, dispersion (standard deviation), robust dispersion (1.4826 MAD), mean and RMS of
    rho_p - rho_t (mag/pc)."""
    residual = np.asarray(residual, dtype=np.float64).ravel()
    median = float(np.median(residual))
    return dict(
        median=median,
        dispersion=float(np.std(residual)),
        robust_dispersion=float(1.4826 * np.median(np.abs(residual - median))),
        mean=float(np.mean(residual)),
        rms=float(np.sqrt(np.mean(residual**2))),
        num_cells=int(residual.size),
    )


def density_pdf(density: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Probability density (per mag/pc) of the cell values of `density` in the bins `edges`."""
    counts = np.histogram(np.asarray(density).ravel(), edges)[0].astype(float)
    return counts / max(counts.sum(), 1) / np.diff(edges)
