r"""Simulated sky (`dustjax.sims.sky`) against the shared Bayestar19 cubes, SR and LR.

    python -m tools.sky_vs_real --out=docs/figures/sky_vs_real.png

For each region: N simulated cubes (default 64) and the real cube regridded to the region's cells
as the literature route does it (`DustMap.from_fits` + `maps.regrid_nearest`: nearest cell, LR
smoothed to 60 pc first). Three panels a region: the density histogram (log axis; simulations as
the median and 5-95 % band over cubes, the paper's simulator dashed), the isotropic power
spectrum of log10(rho + 1e-5) (the floor of issue 17's log-r metric), and the mean vertical
profile. Writes the PNG and a JSON of the statistics (``docs/results/<stem>.json`` when the figure
goes to ``docs/figures/``, else beside it): density percentiles, spectral slopes, scale heights,
the extinction through the region's exact LOS operator, whether each real value lies within the
simulations' 5-95 % range, and the real cubes' log-density spectral slopes at their native
resolution (3 pc SR, 20 pc LR).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
CUBES = {"SR": "bayestar19_SR_anticentre.fits", "LR": "bayestar19_LR_anticentre.fits"}
PAPER = {"SR": "levy", "LR": "lognormal"}
FLOOR = 1e-5  # mag/pc, the floor of log10(rho + floor) in issue 17's metrics
HIST_EDGES = np.logspace(-9, 0, 46)
PERCENTILES = (50, 90, 99, 99.9)  # lower ones are 0 in the real cubes (Bayestar19's zeros)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m tools.sky_vs_real", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", default="docs/figures/sky_vs_real.png", help="figure path (.png)")
    p.add_argument("--json", default=None, help="statistics path (default: see module doc)")
    p.add_argument("--real_dir", default=str(REAL_DIR), help="folder of the shared FITS cubes")
    p.add_argument("--num", type=int, default=64, help="simulated cubes per region")
    p.add_argument("--num_paper", type=int, default=8, help="cubes of the paper's simulator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--regions", default="SR,LR")
    return p.parse_args(argv)


# ---- statistics (numpy) ------------------------------------------------------------------------
def isotropic_power_spectrum(cube: np.ndarray, cell_pc: float, num_bins: int | None = None):
    """Shell-averaged |FFT|^2 dV / N (pc^3) of a cube's fluctuations; k in rad/pc, to Nyquist.

    Normalised per unit volume, so that cubes of different cells are comparable."""
    cube = np.asarray(cube, np.float64)
    n = cube.shape
    power = np.abs(np.fft.rfftn(cube - cube.mean())) ** 2 * cell_pc**3 / cube.size
    freqs = [2 * np.pi * np.fft.fftfreq(m, cell_pc) for m in n[:-1]]
    freqs.append(2 * np.pi * np.fft.rfftfreq(n[-1], cell_pc))
    k = np.sqrt(sum(g**2 for g in np.meshgrid(*freqs, indexing="ij")))
    k_min, k_max = 2 * np.pi / (max(n) * cell_pc), np.pi / cell_pc
    num_bins = num_bins or max(n) // 2
    edges = np.linspace(k_min / 2, k_max, num_bins + 1)
    which = np.digitize(k.ravel(), edges) - 1
    ok = (which >= 0) & (which < num_bins)
    # rfftn holds half the modes: weight the non-edge planes twice to count both halves.
    weight = np.full(power.shape, 2.0)
    weight[..., 0] = 1.0
    if n[-1] % 2 == 0:
        weight[..., -1] = 1.0
    total = np.bincount(which[ok], (power * weight).ravel()[ok], num_bins)
    count = np.bincount(which[ok], weight.ravel()[ok], num_bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    keep = count > 0
    return centres[keep], total[keep] / count[keep]


def spectral_slope(k, p, k_lo, k_hi) -> float:
    """Least-squares slope of log P against log k over [k_lo, k_hi]."""
    m = (k >= k_lo) & (k <= k_hi) & (p > 0)
    return float(np.polyfit(np.log(k[m]), np.log(p[m]), 1)[0])


def scale_height_fit(z, profile, lo=30.0, hi=600.0) -> float | None:
    """h of exp(-|Z - Z_peak| / h) fitted to a mean vertical profile (pc); None: too few points."""
    peak = z[np.argmax(profile)]
    d = np.abs(z - peak)
    m = (d > lo) & (d < hi) & (profile > 0)
    if m.sum() < 3:
        return None
    slope = np.polyfit(d[m], np.log(profile[m]), 1)[0]
    return float(-1.0 / slope) if slope < 0 else None


def cube_stats(cube, region) -> dict:
    cube = np.asarray(cube, np.float64)
    cell = float(region.cell_size_pc[0])
    k, p = isotropic_power_spectrum(np.log10(cube + FLOOR), cell)
    k_lo, k_hi = 2 * k[0], 0.7 * np.pi / cell
    z = region.centres_pc(2)
    pct = np.percentile(cube, PERCENTILES)
    return dict(
        mean=float(cube.mean()),
        **{f"p{q:g}": float(v) for q, v in zip(PERCENTILES, pct, strict=True)},
        fraction_below_1e5=float(np.mean(cube < 1e-5)),
        decades_dusty_p1_p99=_decades(cube[cube > 1e-6]),
        log10_std=float(np.log10(cube + FLOOR).std()),
        logspec_slope=spectral_slope(k, p, k_lo, k_hi),
        scale_height_pc=scale_height_fit(z, cube.mean(axis=(0, 1))),
    )


def extinction_stats(cubes, region) -> list[dict]:
    """Median and maximum of the extinction (mag) integrated from the Sun to each cell."""
    from dustjax.los import los_operator

    extinction = np.asarray(los_operator(region)(np.asarray(cubes, np.float32)))
    return [
        dict(extinction_p50=float(np.median(e)), extinction_max=float(e.max())) for e in extinction
    ]


def _decades(values) -> float | None:
    """log10(p99 / p1) of the cells that hold dust (> 1e-6 mag/pc)."""
    if values.size < 10:
        return None
    lo, hi = np.percentile(values, [1, 99])
    return float(np.log10(hi / lo))


def summarise(per_cube: list[dict], real: dict) -> dict:
    out = {}
    for name in real:
        values = np.array([c[name] for c in per_cube if c[name] is not None], np.float64)
        if values.size == 0:
            continue
        lo, med, hi = np.percentile(values, [5, 50, 95])
        entry = dict(sim_p5=float(lo), sim_median=float(med), sim_p95=float(hi), real=real[name])
        if real[name] is not None:
            entry["real_within_sim_5_95"] = bool(lo <= real[name] <= hi)
        out[name] = entry
    return out


# ---- cubes -------------------------------------------------------------------------------------
def real_cube(region, real_dir: Path) -> np.ndarray:
    from dustjax.maps import DustMap

    try:  # the layout refactor (issue 16) moves regrid_nearest from apply.py to maps.py
        from dustjax.maps import regrid_nearest
    except ImportError:
        from dustjax.maps import regrid_nearest

    dustmap = DustMap.from_fits(real_dir / CUBES[region.name])
    return regrid_nearest(dustmap, region), dustmap


def simulate(region, name: str, num: int, seed: int) -> np.ndarray:
    import jax

    from dustjax.sims import get_simulator

    sim = jax.jit(jax.vmap(lambda key: get_simulator(name)(key, region)))
    keys = jax.random.split(jax.random.key(seed), num)
    chunks = [np.asarray(sim(keys[i : i + 16])) for i in range(0, num, 16)]
    return np.concatenate(chunks)


# ---- figure ------------------------------------------------------------------------------------
def _band(ax, x, curves, color, label):
    lo, med, hi = np.percentile(curves, [5, 50, 95], axis=0)
    ax.fill_between(x, lo, hi, color=color, alpha=0.25, lw=0)
    ax.plot(x, med, color=color, lw=1.5, label=label)


def figure(results: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results)
    fig, axes = plt.subplots(len(rows), 3, figsize=(13, 3.6 * len(rows)), squeeze=False)
    centres = np.sqrt(HIST_EDGES[1:] * HIST_EDGES[:-1])
    for row, name in enumerate(rows):
        r = results[name]
        ax = axes[row, 0]
        _band(ax, centres, r["sim_hist"], "C0", f"sky sims ({len(r['sim_hist'])})")
        ax.plot(centres, r["paper_hist"], "C2--", lw=1.2, label=f"paper sims ({PAPER[name]})")
        ax.plot(centres, r["real_hist"], "k", lw=1.8, label="Bayestar19 (regridded)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(1e-4, 1)
        ax.set_xlabel("density (mag/pc)")
        ax.set_ylabel("fraction of cells per bin")
        ax.set_title(f"{name}: density PDF (zeros: real {r['real_zero']:.0%})", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")

        ax = axes[row, 1]
        _band(ax, r["k"], r["sim_pk"], "C0", "sky sims")
        ax.plot(r["k"], r["real_pk"], "k", lw=1.8, label="Bayestar19 (regridded)")
        kn, pn = r["native_k"], r["native_pk"]
        ax.plot(kn, pn, "k:", lw=1.2, label="Bayestar19 (native cells)")
        ref = r["real_pk"][1] * (r["k"] / r["k"][1]) ** (-11 / 3)
        ax.plot(r["k"], ref, color="0.6", lw=1, ls="--", label="k^-11/3")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("k (rad/pc)")
        ax.set_ylabel("P(k) of log10(rho + 1e-5)")
        s = r["stats"]["logspec_slope"]
        ax.set_title(
            f"{name}: slope real {s['real']:.2f}, sims {s['sim_median']:.2f} "
            f"[{s['sim_p5']:.2f}, {s['sim_p95']:.2f}]",
            fontsize=10,
        )
        ax.legend(fontsize=7, loc="lower left")

        ax = axes[row, 2]
        _band(ax, r["z"], r["sim_profile"], "C0", "sky sims")
        ax.plot(r["z"], r["real_profile"], "k", lw=1.8, label="Bayestar19 (regridded)")
        ax.set_yscale("log")
        ax.set_xlabel("Z (pc)")
        ax.set_ylabel("mean density over X, Y (mag/pc)")
        ax.set_title(f"{name}: vertical profile", fontsize=10)
        ax.legend(fontsize=7, loc="lower center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from dustjax.geometry import Region

    t0 = time.perf_counter()
    results, summary = {}, {}
    for name in args.regions.split(","):
        region = Region.named(name)
        real, dustmap = real_cube(region, Path(args.real_dir))
        sims = simulate(region, "sky", args.num, args.seed)
        paper = simulate(region, PAPER[name], args.num_paper, args.seed + 1)
        cell = float(region.cell_size_pc[0])

        def hist(cubes):
            h = np.stack([np.histogram(c, HIST_EDGES)[0] / c.size for c in cubes])
            return np.maximum(h, 1e-9)

        spectra = [isotropic_power_spectrum(np.log10(c + FLOOR), cell) for c in sims]
        k, real_pk = isotropic_power_spectrum(np.log10(real + FLOOR), cell)
        native_cell = float(np.mean(np.diff(dustmap.edges[0])))
        kn, pn = isotropic_power_spectrum(np.log10(dustmap.density + FLOOR), native_cell)
        real_stats = cube_stats(real, region) | extinction_stats(real[None], region)[0]
        sim_stats = [
            c | e
            for c, e in zip(
                [cube_stats(c, region) for c in sims], extinction_stats(sims, region), strict=True
            )
        ]
        stats = summarise(sim_stats, real_stats)
        native_slope = spectral_slope(kn, pn, 2 * kn[0], 0.7 * np.pi / native_cell)
        results[name] = dict(
            sim_hist=hist(sims),
            paper_hist=np.maximum(hist(paper).mean(axis=0), 1e-9),
            real_hist=np.maximum(hist(real[None])[0], 1e-9),
            real_zero=float(np.mean(real <= 0)),
            k=k,
            sim_pk=np.stack([p for _, p in spectra]),
            real_pk=real_pk,
            native_k=kn,
            native_pk=pn,
            z=region.centres_pc(2),
            sim_profile=np.maximum(sims.mean(axis=(1, 2)), 1e-12),
            real_profile=np.maximum(real.mean(axis=(0, 1)), 1e-12),
            stats=stats,
        )
        paper_stats = [cube_stats(c, region) for c in paper]
        summary[name] = dict(
            region=str(region),
            num_sims=args.num,
            stats=stats,
            real_native_logspec_slope=native_slope,
            real_native_cell_pc=native_cell,
            paper_simulator=PAPER[name],
            paper_sim_median={
                key: float(np.median([s[key] for s in paper_stats if s[key] is not None]))
                for key in ("mean", "p50", "p99", "fraction_below_1e5", "logspec_slope")
            },
        )
        covered = [k_ for k_, v in stats.items() if v.get("real_within_sim_5_95")]
        print(f"{name}: real within sims' 5-95 %: {covered}", file=sys.stderr)

    out = Path(args.out)
    figure(results, out)
    if args.json:
        json_path = Path(args.json)
    elif out.parent.name == "figures" and (out.parent.parent / "results").is_dir():
        json_path = out.parent.parent / "results" / (out.stem + ".json")
    else:
        json_path = out.with_suffix(".json")
    summary["settings"] = dict(
        command="python -m tools.sky_vs_real " + " ".join(sys.argv[1:] if argv is None else argv),
        floor_mag_per_pc=FLOOR,
        seed=args.seed,
        seconds=round(time.perf_counter() - t0, 1),
        note="sim_p5/median/p95: over simulated cubes; real: the shared cube regridded "
        "to the region (literature route); logspec_slope: P(k) of log10(rho + 1e-5) fitted over "
        "k in [2 k_min, 0.7 pi / cell]; scale_height_pc: exp fit of the mean vertical profile "
        "30-600 pc from its peak",
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=1, default=_jsonable) + "\n")
    print(f"wrote {out} and {json_path}", file=sys.stderr)
    return summary


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(type(value))


if __name__ == "__main__":
    main()
