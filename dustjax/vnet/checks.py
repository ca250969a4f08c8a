"""Warnings a catalogue map owes its user (issue 17, item 6 and "Bad input").

1. **Consistency** (fig. 11 of Chen, Qin & Li): the predicted density integrated back to every
   star, E_rho, against the catalogue's E. `consistency_warning` fires when

   - |median(E_rho - E)| > ``MEDIAN_BIAS_MAX`` x median(sigma_E)  (a systematic offset), or
   - the fraction of stars with |E_rho - E| < sigma_E is below ``WITHIN_1SIGMA_MIN``.

   Thresholds (docs/validation.md, "Real sky", measured by ``tools/consistency_thresholds.py``):
   the regridded TRUE density of sky-like simulations (`dustjax.sims.sky`) is as good as a map on
   the region's cells can be; over 10 SR and LR cubes it scores |median offset| <= 0.39 sigma_E
   and 50-68 % of stars within 1 sigma (below the ideal 68 % where a star sees the cell-averaged
   density, not the fine one, and where distances are uncertain). A failing map (the
   paper-recipe V-net on the real SR catalogue: median offset 0.04 mag ~ 1.3 sigma_E, 37 % within
   1 sigma; maps with twice the true dust on LR: 0.8-1.4 sigma_E) lies outside.
2. **Input unlike the training data**: `training_mismatch_warnings` compares a catalogue with the
   observation settings of the model's training config (``config.observation``: the keys
   ``enabled``, ``num_stars_range``, ``sigma_a_range``, ``sigma_b_range``; ``config.data.source ==
   "simulate_observed"``): a model trained on exact extinction cubes (no observation loop) gets a
   warning on any catalogue; a catalogue whose star count in the region, or whose sigma_E at its
   own extinctions, lies more than ``FAR_FACTOR`` outside the trained range gets a warning naming
   both numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MEDIAN_BIAS_MAX = 0.6  # x median sigma_E
WITHIN_1SIGMA_MIN = 0.45
FAR_FACTOR = 2.0  # "far outside": beyond the trained range by more than this factor


def consistency_warning(check: dict[str, Any], median_sigma: float | None = None) -> str | None:
    """A one-line warning when the fig.-11 statistics ``check`` (`apply.consistency`) fail.

    With distance uncertainties in the catalogue, the check uses the effective sigma
    hypot(sigma_E, rho sigma_d) (``*_sigma_eff*`` keys of `apply.consistency`): a star whose
    distance is uncertain has an uncertain E_rho too. ``median_sigma`` overrides the check's own.
    """
    if not check or not check.get("num_stars"):
        return None
    eff = "fraction_within_1sigma_eff" in check
    if median_sigma is None:
        median_sigma = check.get(
            "median_sigma_eff_mag" if eff else "median_sigma_extinction_mag", math.nan
        )
    what = "sigma_eff = hypot(sigma_E, rho sigma_d)" if eff else "sigma_E"
    med = float(check["median_difference_mag"])
    within = float(check["fraction_within_1sigma_eff" if eff else "fraction_within_1sigma"])
    problems = []
    if abs(med) > MEDIAN_BIAS_MAX * median_sigma:
        problems.append(
            f"median E_rho - E = {med:+.3f} mag exceeds {MEDIAN_BIAS_MAX:g} x the median "
            f"{what} ({median_sigma:.3f} mag)"
        )
    if within < WITHIN_1SIGMA_MIN:
        problems.append(
            f"only {100 * within:.0f} % of stars have |E_rho - E| < {what} "
            f"(a consistent map gives 50-68 %; threshold {100 * WITHIN_1SIGMA_MIN:.0f} %)"
        )
    if not problems:
        return None
    return (
        "the map fails its own consistency check (fig. 11): "
        + "; ".join(problems)
        + ". The density integrated back to the stars does not give their extinctions: do not "
        "trust this map without checking it."
    )


def _get(config, dotted: str, default=None):
    node = config
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node.get(part, None) if hasattr(node, "get") else getattr(node, part, None)
        except (AttributeError, KeyError, TypeError):
            return default
    return default if node is None else node


def trained_with_observation(config) -> bool:
    """Whether the training config ran the observation loop (catalogue-like inputs)."""
    return bool(_get(config, "observation.enabled", False)) and (
        _get(config, "data.source", "") == "simulate_observed"
    )


def training_mismatch_warnings(catalog, config) -> list[str]:
    """Warnings for a catalogue (`dustjax.catalog.StarCatalog`, already cut to the model's region)
    given to a model trained with `config` (a ConfigDict or dict); [] when all is well."""
    if config is None:
        return []
    if not trained_with_observation(config):
        return [
            "this model was trained without the observation loop (on exact, noiseless extinction "
            "cubes, data.source = "
            f"{_get(config, 'data.source', 'unknown')!r}), but it is given a star catalogue: "
            "gridded, noisy extinctions it has never seen. Expect biased maps (issue 17: skill "
            "-0.18 on the real SR catalogue); use a model trained with config.observation.enabled"
        ]
    out = []
    n = len(catalog)
    lo_hi = _get(config, "observation.num_stars_range")
    if lo_hi is not None:
        lo, hi = (float(v) for v in lo_hi)
        if n < lo / FAR_FACTOR or n > hi * FAR_FACTOR:
            out.append(
                f"the catalogue has {n:,} stars in the region, but the model was trained on "
                f"{lo:,.0f}-{hi:,.0f} stars per cube: its star density lies far outside the "
                "training range (the gridding's resolution and noise differ)"
            )
    a_range = _get(config, "observation.sigma_a_range")
    b_range = _get(config, "observation.sigma_b_range")
    if a_range is not None and b_range is not None and n:
        (a_lo, a_hi), (b_lo, b_hi) = ((float(v) for v in r) for r in (a_range, b_range))
        e = np.maximum(np.asarray(catalog.extinction, np.float64), 0.0)
        sigma = np.asarray(catalog.sigma_extinction, np.float64)
        ratio_hi = float(np.median(sigma / np.hypot(a_hi, b_hi * e)))
        ratio_lo = float(np.median(sigma / np.maximum(np.hypot(a_lo, b_lo * e), 1e-12)))
        med = float(np.median(sigma))
        if ratio_hi > FAR_FACTOR or ratio_lo < 1.0 / FAR_FACTOR:
            side = "larger" if ratio_hi > FAR_FACTOR else "smaller"
            factor = ratio_hi if ratio_hi > FAR_FACTOR else 1.0 / max(ratio_lo, 1e-12)
            out.append(
                f"the catalogue's extinction uncertainties (median sigma_E {med:.3f} mag) are "
                f"{factor:.1f}x {side} than the training range sigma_E = hypot(a, b E) with a in "
                f"[{a_lo:g}, {a_hi:g}] mag, b in [{b_lo:g}, {b_hi:g}] at the same E"
            )
    return out


def median_sigma(catalog) -> float:
    s = np.asarray(catalog.sigma_extinction, np.float64)
    return float(np.median(s)) if s.size else math.nan
