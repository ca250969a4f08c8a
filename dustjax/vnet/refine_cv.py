"""Choose (or refuse) the catalogue refinement on the user's own stars, by cross-validation.

`dustjax.vnet.refine` turns the V-net's map into the prior of a fit to the stars' extinctions;
its settings (correlated prior errors ``ELL:NU``, a model error ``auto``) were chosen on held-out
*simulations*. On a real catalogue a setting can fail where the simulations said it helps (issue
17: the real LR catalogue, 10^6 stars with 5 % distance errors, falls from skill 0.69 to 0.27
when refined). The truth is unknown to a user, but the stars are not: hold out a random
fraction of them, refine on the rest with each candidate setting, and score how well each map
predicts the held-out extinctions. "No refinement" (the V-net's map itself) is always a
candidate, and it is kept unless a refinement beats it by more than the held-out noise.

The score of a candidate (``criterion="nlpd"``, the default) is the mean negative log
predictive density of the held-out stars under N(A_n rho, sigma_n^2 + tau^2 (A_n rho)^2):
sigma_n the stars' own `refine.star_sigma` (the same for every candidate), tau the candidate's
model error estimated from its *fitted* stars by the discrepancy principle
(`refine.model_error_scale`, 0 when they fit), for every candidate, "no refinement" included. A
proper score: a wider predictive error is paid for in its log-variance term, so a candidate
cannot win by declaring its stars noisier (a mean chi^2 with each candidate's own model error
would reward that). ``criterion="chi2"``: the mean chi^2 with the stars' sigma alone. Also
tabulated, not used: the median |pull| with the stars' sigma.

The gate: the best-scoring refinement is chosen only when its mean score beats no refinement's by
more than ``gate`` standard errors of the per-star paired difference; otherwise no refinement.
The same star operator (`refine.catalog_operator`) serves every fit and every prediction: the
held-out stars are rows of weight 0 in the fit (`refine.refine_catalog`'s ``fit_rows``).

What it can and cannot tell (docs/validation.md, "Choosing the refinement on the user's own
stars"): it detects a refinement that chases the noise of the stars it fitted, not an error that
all the stars share. On held-out simulations it chooses well (never below the V-net with sky
patches); on the real SR and LR catalogues the stars are not explained by the scored truth
either (structure inside the cells, distance errors; on LR the truth's chi^2 per held-out star
is 12.6) and the held-out stars prefer maps that the truth rejects (LR: the independent
refinement, skill -0.45). Read its table as a consistency check, not as a guarantee.

Caveat: the V-net's map was made from the gridded extinctions of *all* the stars, the held-out
ones included, and every candidate shares that prior; the leak favours candidates that stay close
to the prior (no refinement), i.e. errs on the safe side.
"""

from __future__ import annotations

import math
import time

import numpy as np

from dustjax.geometry import Region
from dustjax.vnet import refine

NONE = "none"  # the candidate "no refinement": the V-net's map itself
CRITERIA = ("nlpd", "chi2")
DEFAULT_HOLDOUT = 0.15
DEFAULT_GATE = 2.0


def parse_candidates(spec) -> tuple:
    """``"none,2:0.3:auto,0:1"`` (or a sequence of such items / setting tuples) -> the candidates
    (`NONE` first, always present; then ``(ell, nu[, tau])`` as `refine.parse_corr_settings`
    returns them, ``0:1`` the independent prior). Duplicates are refused."""
    items = [v.strip() for v in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list = [NONE]
    for item in items:
        if item in ("", NONE, "vnet"):
            continue
        setting = refine.parse_corr_settings(item)[0] if isinstance(item, str) else tuple(item)
        if len(setting) not in (2, 3) or (len(setting) == 3 and not _is_tau(setting[2])):
            raise ValueError(f"candidate {item!r}: use ELL:NU or ELL:NU:TAU (TAU a number or auto)")
        if setting in out:
            raise ValueError(f"candidate {item!r} is listed twice")
        out.append(setting)
    return tuple(out)


def _is_tau(t) -> bool:
    return t == "auto" or (isinstance(t, (int, float)) and t >= 0)


def setting_name(setting) -> str:
    """``"none"`` or ``"ELL:NU[:TAU]"`` (the candidate's spelling in `parse_candidates`)."""
    if setting == NONE:
        return NONE
    return ":".join(t if isinstance(t, str) else f"{float(t):g}" for t in setting)


def holdout_mask(num_stars: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask, True for the round(fraction * num_stars) held-out stars, drawn without
    replacement by ``numpy.random.default_rng(seed)``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must lie in (0, 1), got {fraction}")
    num_out = int(round(fraction * num_stars))
    if num_out < 10 or num_stars - num_out < 10:
        raise ValueError(
            f"{num_stars} stars with holdout {fraction} leave {num_out} held out and "
            f"{num_stars - num_out} to fit: need at least 10 of each"
        )
    mask = np.zeros(num_stars, bool)
    mask[np.random.default_rng(seed).choice(num_stars, num_out, replace=False)] = True
    return mask


def sky_patches(catalog, region: Region, block_cells: float) -> np.ndarray:
    """A patch number per star: its direction binned in squares of side delta in (l, b), delta
    the angle that ``block_cells`` cells subtend at the stars' median distance (deg)."""
    cell = float(np.mean(region.cell_size_pc))
    dist = float(np.median(np.asarray(catalog.distance_pc, np.float64)))
    delta = math.degrees(block_cells * cell / max(dist, 1e-9))
    lb = np.floor(np.asarray(catalog.l_deg, np.float64) / delta).astype(np.int64)
    bb = np.floor((np.asarray(catalog.b_deg, np.float64) + 90.0) / delta).astype(np.int64)
    return lb * (int(180.0 / delta) + 2) + bb


def holdout_patches(groups, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask holding out whole groups (`sky_patches`), drawn in a seeded random order
    until at least ``fraction`` of the stars are out."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must lie in (0, 1), got {fraction}")
    labels, counts = np.unique(np.asarray(groups), return_counts=True)
    order = np.random.default_rng(seed).permutation(len(labels))
    total = np.cumsum(counts[order])
    num = int(np.searchsorted(total, fraction * len(groups))) + 1
    mask = np.isin(groups, labels[order[:num]])
    if mask.sum() < 10 or (~mask).sum() < 10:
        raise ValueError(f"holding out {num} of {len(labels)} sky patches leaves "
                         f"{int(mask.sum())} held out and {int((~mask).sum())} to fit")  # fmt: skip
    return mask


def paired_se(d, groups) -> float:
    """Standard error of mean(d) with the groups as the independent units (a ratio estimator;
    each star its own group: the usual std / sqrt(n))."""
    d = np.asarray(d, np.float64)
    labels, inv, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    k = len(labels)
    if k < 2:
        return 0.0
    sums = np.bincount(inv, weights=d, minlength=k)
    resid = sums - d.mean() * counts
    return float(math.sqrt(k / (k - 1) * np.sum(resid**2)) / len(d))


def star_scores(observed, sigma, predicted, tau: float) -> dict[str, np.ndarray]:
    """Per star: ``nlpd`` (Gaussian, variance sigma^2 + tau^2 p^2), ``chi2`` and ``pull`` (with
    sigma alone)."""
    r = np.asarray(observed, np.float64) - np.asarray(predicted, np.float64)
    sigma = np.asarray(sigma, np.float64)
    var = sigma**2 + (tau * np.asarray(predicted, np.float64)) ** 2
    return dict(
        nlpd=0.5 * r**2 / var + 0.5 * np.log(2.0 * math.pi * var),
        chi2=(r / sigma) ** 2,
        pull=r / sigma,
    )


def cross_validate(
    catalog,
    prior_mean,
    prior_sd,
    region: Region,
    candidates,
    *,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    criterion: str = "nlpd",
    gate: float = DEFAULT_GATE,
    operator=None,
    maps: dict | None = None,
    max_stars: int = 0,
    block_cells: float = 0.0,
    extra_maps: dict | None = None,
    **kw,
) -> dict:
    """Score each candidate (`parse_candidates`) by the held-out stars and choose one.

    Returns a dict: ``chosen`` (a candidate name, `setting_name`), ``chosen_setting``, ``best``
    (the best score before the gate), ``table`` (one row per candidate: its scores on the
    held-out stars, the paired difference to no refinement and its standard error, the fit's
    model error and chi^2 per star, seconds), and the split's settings. ``maps`` (a dict)
    receives each candidate's map fitted on the kept stars (for a report; the choice never
    sees a truth). ``max_stars`` > 0: cross-validate on that many stars drawn at random (seeded;
    their own operator, ``operator`` unused), for a catalogue too large to fit several times.
    ``block_cells`` > 0: hold out whole patches of sky (`sky_patches`, that many cells across at
    the stars' median distance) instead of single stars, so that few fitted stars share a
    held-out star's line of sight (the stars' errors are correlated in space: structure inside
    the cells, distance errors); the standard errors then count patches, not stars.
    ``extra_maps`` (name -> map): scored on the same held-out stars, listed under ``extra`` and
    never chosen (a diagnostic, e.g. the truth of a test).
    ``kw`` goes to `refine.refine_catalog` (``num_steps``)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if not gate >= 0:
        raise ValueError(f"gate must be >= 0, got {gate}")
    cands = parse_candidates(candidates)
    num_stars = len(catalog)
    if max_stars < 0:
        raise ValueError(f"max_stars must be >= 0, got {max_stars}")
    if 0 < max_stars < num_stars:
        keep = np.zeros(num_stars, bool)
        keep[np.random.default_rng([seed, 1]).choice(num_stars, max_stars, replace=False)] = True
        catalog, operator = catalog.select(keep), None
    e = np.asarray(catalog.extinction, np.float64)
    if block_cells < 0:
        raise ValueError(f"block_cells must be >= 0, got {block_cells}")
    if block_cells > 0:
        groups = sky_patches(catalog, region, block_cells)
        out_rows = holdout_patches(groups, holdout, seed)
    else:
        groups = np.arange(len(e))
        out_rows = holdout_mask(len(e), holdout, seed)
    fit_rows = ~out_rows
    groups = groups[out_rows]
    sigma = refine.star_sigma(catalog, prior_mean, region)
    t = time.perf_counter()
    op = refine.catalog_operator(catalog, region) if operator is None else operator
    op_seconds = time.perf_counter() - t

    import jax.numpy as jnp

    per_star: dict[str, dict] = {}
    table = []
    extra = dict(extra_maps or {})
    for cand in [*cands, *extra]:
        name = setting_name(cand) if cand not in extra else f"extra:{cand}"
        t = time.perf_counter()
        info: dict = {}
        if cand in extra:
            rho = np.asarray(extra[cand], np.float32)
        else:  # fitted on the kept stars only
            rho = refit(catalog, prior_mean, prior_sd, region, cand, operator=op, info=info,
                        fit_rows=fit_rows, **kw)  # fmt: skip
        pred = np.maximum(np.asarray(op.apply(jnp.asarray(rho, jnp.float32)), np.float64), 0.0)
        tau_pred = refine.model_error_scale((e - pred)[fit_rows], sigma[fit_rows], pred[fit_rows])
        sc = star_scores(e[out_rows], sigma[out_rows], pred[out_rows], tau_pred)
        per_star[name] = sc
        table.append(
            dict(
                name=name, nlpd=float(sc["nlpd"].mean()), chi2=float(sc["chi2"].mean()),
                median_abs_pull=float(np.median(np.abs(sc["pull"]))),
                predictive_model_error=float(tau_pred),
                fit_chi2_per_star=float(np.mean(((e - pred)[fit_rows] / sigma[fit_rows]) ** 2)),
                seconds=time.perf_counter() - t, **info,
            )
        )  # fmt: skip
        if maps is not None:
            maps[name] = rho
    base = per_star[NONE][criterion]
    for row in table:
        d = per_star[row["name"]][criterion] - base
        row["diff_vs_none"] = float(d.mean())
        row["diff_se"] = paired_se(d, groups)
    extra_rows = table[len(cands) :]
    table = table[: len(cands)]
    best = min(table, key=lambda r: r[criterion])
    chosen = best
    if best["name"] != NONE and not best["diff_vs_none"] < -gate * best["diff_se"]:
        chosen = table[0]  # the gain is within the held-out noise: keep the V-net's map
    return dict(
        chosen=chosen["name"], chosen_setting=cands[table.index(chosen)], best=best["name"],
        criterion=criterion, gate=float(gate), holdout=float(holdout), seed=int(seed),
        extra=extra_rows, num_stars=num_stars, num_fit=int(fit_rows.sum()),
        num_heldout=int(out_rows.sum()),
        block_cells=float(block_cells), num_heldout_units=int(len(np.unique(groups))),
        table=table,
        operator_seconds=op_seconds,
    )  # fmt: skip


def refine_cv(
    catalog,
    prior_mean,
    prior_sd,
    region: Region,
    candidates,
    *,
    operator=None,
    info: dict | None = None,
    **kw,
) -> tuple[np.ndarray, dict]:
    """``(map, report)``: `cross_validate`, then the chosen candidate refitted on *all* the stars
    (no refinement: the prior's median itself). ``report`` is `cross_validate`'s, with the final
    fit's info under ``final``; ``kw`` goes to `cross_validate` (``holdout``, ``seed``,
    ``criterion``, ``gate``, ``maps``, ``num_steps``)."""
    op = refine.catalog_operator(catalog, region) if operator is None else operator
    report = cross_validate(catalog, prior_mean, prior_sd, region, candidates, operator=op, **kw)
    final: dict = {}
    steps = {k: v for k, v in kw.items() if k == "num_steps"}
    rho = refit(catalog, prior_mean, prior_sd, region, report["chosen_setting"], operator=op,
                info=final, **steps)  # fmt: skip
    report["final"] = final
    if info is not None:
        info.update(report)
    return rho, report


def refit(catalog, prior_mean, prior_sd, region: Region, setting, *, operator=None, info=None,
          **kw) -> np.ndarray:  # fmt: skip
    """One candidate's map: `NONE` is the prior's median, a setting ``(ell, nu[, tau])`` its
    `refine.refine_catalog` from all the stars (``kw``: ``num_steps``; ``fit_rows`` to fit only
    those)."""
    if setting == NONE:
        return np.array(prior_mean, np.float32)
    ell, nu, *tau = setting
    return refine.refine_catalog(catalog, prior_mean, prior_sd, region, corr_length=ell,
                                 nugget=nu, model_error=tau[0] if tau else 0.0, info=info,
                                 operator=operator, **kw)  # fmt: skip
