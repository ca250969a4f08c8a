r"""Average the maps of several trained V-nets of one real cube and score them (issue 17).

    python -m tools.ensemble_arrays --arrays=A/literature_arrays.npz,B/literature_arrays.npz,... \
        --out=ens.json
    python -m tools.ensemble_arrays --arrays=A/catalogue_arrays.npz,... --refine_corr=2:0.3:auto \
        --refine_grid=1,2 --out=ens.json

Each file is a `tools.realsky_vnet --save_arrays` file of the same route, cube and (catalogue
route) stars, from an independently trained network (checked: the truths, the input cubes and
the stars must agree). Scores (`dustjax.vnet.realsky.scores`) of every member's map and of the
mean map of **every** subset of two or more members (so no subset is picked after the fact),
and with ``--refine_corr`` the catalogue refinement (`dustjax.vnet.refine.refine_settings`, on
each ``--refine_grid``) of the whole ensemble's prior (`dustjax.vnet.refine.ensemble_prior`).
Why: one LR training is one draw (literature skill 0.67-0.89 across runs 5-11, the errors of
the dust budget of either sign), and the mean of independent draws cancels part of it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("ensemble_arrays")
KEYS = ("skill", "dust_recovered", "log_r", "min_c_r", "band_coverage")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.ensemble_arrays",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--arrays", required=True, help="comma-separated realsky_vnet arrays.npz files")
    p.add_argument("--names", default="", help="comma-separated member names (default: paths)")
    p.add_argument("--refine_corr", default="", help="catalogue route: refine the ensemble's "
                   "prior at these ELL:NUGGET[:auto] settings (dustjax.vnet.refine)")  # fmt: skip
    p.add_argument("--refine_grid", default="1", help="--refine_corr on these grid factors")
    p.add_argument("--config", default="", help="normalisation if a file has none (e.g. "
                   "vnet_sky_sr)")  # fmt: skip
    p.add_argument("--out", required=True, help="output JSON")
    return p.parse_args(argv)


def read_member(path):
    """(arrays, meta) of one realsky_vnet arrays.npz file."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "meta"}
        meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
    if "truth" not in arrays or "density" not in arrays:
        raise ValueError(f"{path}: no truth / density: not a realsky_vnet --save_arrays file")
    return arrays, meta


def check_same_case(members, paths) -> None:
    """One clear error unless every member saw the same cube, input and stars (equal to float32
    rounding: the same catalogue integrated on two GPUs differs by ~1e-7 mag)."""
    a0 = members[0][0]

    def same(x, y):
        return x.shape == y.shape and np.allclose(x, y, rtol=1e-5, atol=1e-6 * np.abs(x).max())

    for (a, _), path in zip(members[1:], paths[1:], strict=True):
        for key in ("truth", "extinction", "star_extinction", "star_xyz_pc"):
            if (key in a0) != (key in a) or (key in a0 and not same(a0[key], a[key])):
                raise ValueError(f"{path} and {paths[0]} differ in {key!r}: not the same real "
                                 "cube, route and catalogue")  # fmt: skip


def _scores(pred, truth, region):
    from dustjax.vnet import realsky

    s = realsky.scores(pred, truth, region)
    return {k: s[k] for k in KEYS if k in s}


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from dustjax import io as dio
    from dustjax.geometry import Region
    from dustjax.vnet import refine

    t0 = time.perf_counter()
    paths = [p.strip() for p in args.arrays.split(",") if p.strip()]
    if len(paths) < 2:
        raise ValueError(f"--arrays needs two or more files, got {len(paths)}")
    names = [n.strip() for n in args.names.split(",") if n.strip()] or paths
    if len(names) != len(paths):
        raise ValueError(f"--names gives {len(names)} names for {len(paths)} files")
    members = [read_member(p) for p in paths]
    check_same_case(members, paths)
    arrays0, meta0 = members[0]
    region = Region.from_dict(meta0["region"])
    truth = arrays0["truth"].astype(np.float64)
    maps = {n: a["density"].astype(np.float64) for n, (a, _) in zip(names, members, strict=True)}
    out: dict = dict(members={n: _scores(m, truth, region) for n, m in maps.items()}, subsets={})
    for r in range(2, len(names) + 1):
        for subset in itertools.combinations(names, r):
            mean = np.mean([maps[n] for n in subset], axis=0)
            out["subsets"][" + ".join(subset)] = _scores(mean, truth, region)
    settings = refine.parse_corr_settings(args.refine_corr)
    if settings:
        if "star_extinction" not in arrays0 or any("mu_hat" not in a for a, _ in members):
            raise ValueError("--refine_corr needs catalogue-route files with stars and a "
                             "variance head's mu_hat / sigma_hat")  # fmt: skip
        from tools.refine_heldout import case_from_real

        # each member's stars and prior (m, s) as refine_heldout reads a real catalogue's arrays
        cases = [case_from_real(argparse.Namespace(real=p, config=args.config, region="",
                                                   cube="")) for p in paths]  # fmt: skip
        catalog = cases[0][1][0]
        m, s = refine.ensemble_prior([c[1][2] for c in cases], [c[1][3] for c in cases])
        out["ensemble_prior_median"] = _scores(m, truth, region)
        out["refined"] = {}
        for factor in refine.parse_grid_factors(args.refine_grid):
            t = time.perf_counter()
            infos: list = []
            rhos = refine.refine_settings(catalog, m, s, region, settings, factor=factor,
                                          infos=infos)  # fmt: skip
            for setting, rho, info in zip(settings, rhos, infos, strict=True):
                out["refined"][refine.setting_label(setting, factor)] = dict(
                    _scores(rho, truth, region), model_error=info.get("model_error"),
                    seconds=time.perf_counter() - t,
                )  # fmt: skip
    out.update(files=paths, names=names, region=region.to_dict(),
               seconds=time.perf_counter() - t0,
               command="python -m tools.ensemble_arrays " + " ".join(argv or []))  # fmt: skip
    dio.write_json(Path(args.out), out)
    for name, s in {**out["members"], **out["subsets"], **out.get("refined", {})}.items():
        log.info("%-60s skill %.3f dust %.3f log-r %.3f", name[-60:], s["skill"],
                 s["dust_recovered"], s["log_r"])  # fmt: skip
    return out


if __name__ == "__main__":
    main()
