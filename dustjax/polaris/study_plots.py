"""The figures of the U-Net studies (`dustjax.polaris.studies`), drawn from a study's table.

- `accuracy_map`: fig. 14, accuracy over base filters x levels;
- `curves_and_residuals`: fig. 16 (one vs two convolutions per block) and the KAN variants beside
  the U-Net (figs. 19-20): accuracy(sigma) and residuals per bin of true density;
- `accuracy_vs_train_size`: figs. 22-23, accuracy against the training-set size, one panel per
  "virtual batch" size, hollow where a pass over the set leaves crops unseen.

Points not done yet are shown as missing (grey cells, absent markers), so a partial study still
draws. matplotlib through `dustjax.plots` (Agg backend, atomic writes).
"""

from __future__ import annotations

import numpy as np

from dustjax.plots import pyplot, save_figure

MIN_BIN_PIXELS = 100  # residual bins with fewer validation pixels are not drawn


def _done(table):
    return [r for r in table["points"] if r["status"] == "done"]


def _seed_mean(rows, keys):
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r["params"][k] for k in keys), []).append(float(r["accuracy"]))
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def accuracy_map(table, path) -> None:
    """Fig. 14: Acc(sigma) of each (base filters, levels), mean over seeds; grey = not done."""
    plt = pyplot()
    filters = sorted({r["params"]["base_features"] for r in table["points"]})
    levels = sorted({r["params"]["levels"] for r in table["points"]})
    acc = _seed_mean(_done(table), ("base_features", "levels"))
    grid = np.full((len(levels), len(filters)), np.nan)
    for (f, lv), (mean, _, _) in acc.items():
        grid[levels.index(lv), filters.index(f)] = mean
    fig, ax = plt.subplots(figsize=(1.3 * len(filters) + 2.5, 0.9 * len(levels) + 1.8))
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, origin="lower", aspect="auto")
    finite = grid[np.isfinite(grid)]
    mid = 0.5 * (finite.min() + finite.max()) if finite.size else 0.0
    for i in range(len(levels)):
        for j in range(len(filters)):
            v = grid[i, j]
            text = "not run" if not np.isfinite(v) else f"{v:.3f}"
            colour = "black" if not np.isfinite(v) or v > mid else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(filters)), [str(f) for f in filters])
    ax.set_yticks(range(len(levels)), [str(lv) for lv in levels])
    ax.set_xlabel("base filters")
    ax.set_ylabel("levels")
    fig.colorbar(im, ax=ax, label=f"accuracy (|error| < {table['sigma']:g} dex)")
    ax.set_title("U-Net complexity map (fig. 14)")
    save_figure(fig, path)


def _label(study, params, multi):
    if study == "kan":
        return params["model"]
    label = f"{params['convs_per_block']} conv" + ("s" if params["convs_per_block"] > 1 else "")
    if multi:
        label += f" (f{params['base_features']}, L{params['levels']})"
    return label


def curves_and_residuals(table, path) -> None:
    """Fig. 16 / the KAN comparison: accuracy(sigma) up to 0.5 dex (band: std over images) and
    the residual per bin of true log10 density (line: mean, band: 16th-84th percentiles; bins of
    fewer than `MIN_BIN_PIXELS` pixels left out); one line a point."""
    plt = pyplot()
    rows = _done(table)
    study = table["study"]
    if study == "kan":
        names = list(dict.fromkeys(r["params"]["model"] for r in rows))
        palette = {"unet": "black", "knet": "tab:blue", "ukan": "tab:orange",
                   "unet_kan_branch": "tab:green"}  # fmt: skip
        colour = {n: palette.get(n, f"C{i}") for i, n in enumerate(names)}
        key = [r["params"]["model"] for r in rows]
        styles = {k: "-" for k in key}
    else:  # the paper: two convs black, one conv green
        combos = list(dict.fromkeys((r["params"]["base_features"], r["params"]["levels"])
                                    for r in rows))  # fmt: skip
        colour = {1: "tab:green", 2: "black"}
        key = [r["params"]["convs_per_block"] for r in rows]
        styles = {c: ls for c, ls in zip(combos, ["-", "--", ":", "-."] * 4, strict=False)}
    fig, (ax_a, ax_r) = plt.subplots(1, 2, figsize=(12, 4.5))
    seen = set()
    for r, k in zip(rows, key, strict=True):
        c = colour.get(k, "tab:gray")
        if study == "kan":
            ls = "-"
        else:
            ls = styles[(r["params"]["base_features"], r["params"]["levels"])]
        label = _label(study, r["params"], study != "kan" and len(styles) > 1)
        label = None if label in seen else label
        seen.add(label)
        curve = r["accuracy_curve"]
        s, m, sd = (np.asarray(curve[x], float) for x in ("sigma", "mean", "std"))
        ax_a.plot(s, m, color=c, ls=ls, marker="o", ms=3, label=label)
        ax_a.fill_between(s, m - sd, m + sd, color=c, alpha=0.12)
        res = r["residuals"]
        x = np.asarray(res["bin_centres"], float)
        mean, lo, hi = (np.asarray(res[q], float) for q in ("mean", "p16", "p84"))
        few = np.asarray(res["count"], float) < MIN_BIN_PIXELS  # too noisy to draw
        mean, lo, hi = (np.where(few, np.nan, v) for v in (mean, lo, hi))
        ax_r.plot(x, mean, color=c, ls=ls, label=label)
        ax_r.fill_between(x, lo, hi, color=c, alpha=0.12)
    ax_a.set_xlim(0, 0.5)
    ax_a.set_xlabel("sigma [dex]")
    ax_a.set_ylabel("accuracy (eqs. 5-6)")
    ax_a.set_ylim(0, 1)
    ax_a.legend(fontsize=8)
    ax_r.axhline(0, color="0.5", lw=0.8)
    ax_r.set_xlabel("true log10 density [cm$^{-3}$]")
    ax_r.set_ylabel("residual prediction - true [dex]")
    ax_r.legend(fontsize=8)
    title = ("KAN variants beside the U-Net (sect. 3.3)" if study == "kan"
             else "one vs two convolutions per block (fig. 16)")  # fmt: skip
    fig.suptitle(title)
    save_figure(fig, path)


def accuracy_vs_train_size(table, path) -> None:
    """Figs. 22-23: Acc(sigma) against the number of training crops, a panel per virtual batch
    size (mean +- std over seeds); hollow markers where each pass leaves crops unseen."""
    plt = pyplot()
    batches = sorted({r["params"]["virtual_batch"] for r in table["points"]}, reverse=True)
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.2), squeeze=False)
    rows = _done(table)
    for ax, batch in zip(axes[0], batches, strict=True):
        mine = [r for r in rows if r["params"]["virtual_batch"] == batch]
        acc = _seed_mean(mine, ("num_train_crops",))
        sizes = sorted(n for (n,) in acc)
        unseen = {r["params"]["num_train_crops"]: r["params"]["unseen_per_pass"] for r in mine}
        if sizes:
            means = [acc[(n,)][0] for n in sizes]
            ax.plot(sizes, means, color="tab:blue", lw=1)
        for n in sizes:
            mean, sd, count = acc[(n,)]
            full = unseen[n] == 0
            face = "tab:blue" if full else "white"
            yerr = sd if count > 1 else None
            ax.errorbar(n, mean, yerr=yerr, fmt="o", ms=7, color="tab:blue", mfc=face, capsize=3)
            if not full:
                ax.annotate(f"{unseen[n]} unseen", (n, mean), textcoords="offset points",
                            xytext=(4, -12), fontsize=7)  # fmt: skip
        ax.set_xlabel("training crops")
        ax.set_ylabel(f"accuracy (|error| < {table['sigma']:g} dex)")
        ax.set_title(f"virtual batch {batch}")
    fig.suptitle("effect of the training-set size (figs. 22-23); hollow: n % batch crops unseen "
                 "per pass")  # fmt: skip
    save_figure(fig, path)
