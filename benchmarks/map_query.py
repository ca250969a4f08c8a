r"""Time and memory of `DustMap.query` on many points (issue 20: 10^6 integrated points on a GP
map under 500 MB).

    python -m benchmarks.map_query --case=gp_median --num=1000000 --out=/tmp/map_query
    python -m benchmarks.map_query --case=cartesian --num=1000000 --out=/tmp/map_query

Cases: ``gp_median`` (a GP-sized spherical map, 60 x 30 x 80 cells with 12 posterior samples;
integrated extinction in the default mode, the median of the 12 samples' integrals),
``gp_percentile`` (the same, ``mode="percentile", pct=[16, 50, 84]``), ``gp_density`` (the density
of the cell, no integral), ``gp_profile`` (``--num`` sight lines without distances: the profile
at the map's 80 distances), ``cartesian`` (a 96^3 Cartesian cube, integrated: the JAX crossing
kernel). The SkyCoord is built before measuring. Reported: wall seconds, the peak of traced
(numpy and Python) allocations during the query (tracemalloc), and the growth of the process's
peak resident memory (``ru_maxrss``; it includes XLA's buffers and compilation, which tracemalloc
does not see). Appends one JSON line per run to ``map_query.jsonl`` in --out.
"""

from __future__ import annotations

import json
import platform
import resource
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "case", "gp_median", ["gp_median", "gp_percentile", "gp_density", "gp_profile", "cartesian"],
    "What to query.",
)  # fmt: skip
flags.DEFINE_integer("num", 1_000_000, "Points (sight lines for gp_profile).")
flags.DEFINE_string("out", "/tmp/map_query", "Output directory for map_query.jsonl.")


def _map_and_coords(case: str, num: int):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    from dustjax.maps import DustMap

    rng = np.random.default_rng(0)
    if case == "cartesian":
        edges = tuple(np.linspace(-960.0, 960.0, 97) for _ in range(3))
        dustmap = DustMap("cartesian", rng.uniform(0, 1e-3, (96, 96, 96)).astype(np.float32), edges)
        lon, lat, dist = (
            rng.uniform(0, 360, num),
            rng.uniform(-30, 30, num),
            rng.uniform(10, 900, num),
        )
    else:
        shape, k = (60, 30, 80), 12
        edges = (np.linspace(150, 210, 61), np.linspace(-15, 15, 31), np.linspace(0, 2000, 81))
        dustmap = DustMap(
            "spherical",
            rng.uniform(0, 1e-3, shape).astype(np.float32),
            edges,
            foreground=np.zeros(shape[:2], np.float32),
            samples=rng.uniform(0, 1e-3, (k, *shape)).astype(np.float32),
            foreground_samples=np.zeros((k, *shape[:2]), np.float32),
        )
        lon, lat, dist = (
            rng.uniform(150, 210, num),
            rng.uniform(-15, 15, num),
            rng.uniform(10, 1990, num),
        )
    distance = None if case == "gp_profile" else dist * u.pc
    coords = SkyCoord(l=lon * u.deg, b=lat * u.deg, distance=distance, frame="galactic")
    return dustmap, coords


def main(argv):
    del argv
    case, num = FLAGS.case, FLAGS.num
    kwargs = {
        "gp_median": dict(integrated=True),
        "gp_percentile": dict(integrated=True, mode="percentile", pct=[16, 50, 84]),
        "gp_density": dict(),
        "gp_profile": dict(integrated=True),
        "cartesian": dict(integrated=True),
    }[case]
    dustmap, coords = _map_and_coords(case, num)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dustmap.query(coords[:8], **kwargs)  # imports and (Cartesian) the first compilation
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        t0 = time.perf_counter()
        out = dustmap.query(coords, **kwargs)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row = dict(
        case=case, num=num, out_shape=list(np.shape(out)), seconds=round(seconds, 2),
        traced_peak_mib=round(peak / 2**20, 1), maxrss_growth_mib=round((rss - rss0) / 1024, 1),
        maxrss_mib=round(rss / 1024, 1),
        date=time.strftime("%Y-%m-%d", time.gmtime()), python=platform.python_version(),
    )  # fmt: skip
    print(json.dumps(row))
    out_dir = Path(FLAGS.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "map_query.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    app.run(main)
