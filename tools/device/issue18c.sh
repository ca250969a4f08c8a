#!/usr/bin/env bash
# Issue 18, device call 4 (one H200): the accuracy attempt on the real sky at the paper's size
# (Taurus-Perseus, 120,000 stars, 60 x 40 x 100 + 2 ghost cells, M inducing points, log-spherical
# kernel, plateau rule, then ANNEAL steps at ANNEAL_FACTOR x the rate whose iterates are averaged:
# `fit.anneal_average`), and item 7's speed: the paper-size iteration benchmark and the paper's
# simulated test end to end (target < 60 s).
#
#   OUT_DIR=DIR BUDGET_S=330 REAL_DIR=.device_carry/real bash tools/device/issue18c.sh
#   SMOKE=1 JAX_PLATFORMS=cpu OUT_DIR=/tmp/x BUDGET_S=900 REAL_DIR=... bash tools/device/issue18c.sh
#
# Order: smoke (a tiny real-sky test with the same code path, ~25 s; a bug stops the script),
# benchmark (~20 s), the accuracy fit, then the paper's simulated test if >= SIM_S is left. With
# less budget the accuracy fit goes first and the simulated test is dropped (noted in times.txt);
# below ~MIN_FIT_S of fitting the accuracy fit is skipped and the simulated test runs instead.
# Writes to OUT_DIR: times.txt, smoke/, smoke.log, bench/gp_iteration.json, bench.log,
# real/suite.json + real/real_paper_logsph_stars.npz (per-star bands, ~0.6 MB), real.log,
# paper_sim_summary.json, paper_sim.log, elbo.png, summary.txt (< 2 MB in all).
set -uo pipefail
export PYTHONUNBUFFERED=1
: "${OUT_DIR:?set OUT_DIR}"
BUDGET_S=${BUDGET_S:-330}
REAL_DIR=${REAL_DIR:-../shared/data/real}
SMOKE=${SMOKE:-0}
PY=${PYTHON:-python}
ANNEAL_DEFAULT=800; M_DEFAULT=1000; [ "$SMOKE" = "1" ] && { ANNEAL_DEFAULT=10; M_DEFAULT=50; }
ANNEAL=${ANNEAL:-$ANNEAL_DEFAULT}  # annealing steps (the converged fit had 200)
ANNEAL_FACTOR=${ANNEAL_FACTOR:-0.1}
NUM_INDUCING=${NUM_INDUCING:-$M_DEFAULT}
SIM_S=75                         # the paper's simulated test: ~50 s + start-up
OVERHEAD=80                      # the real-sky test outside its fit: start, draw, compile (~17 s),
                                 # scores (~45 s); measured 148 - 99 s + start-up in call 2
MIN_FIT_S=90                     # below this the fit cannot reach its plateau and anneal
MARGIN=10
CUBE="$REAL_DIR/bayestar19_LR_anticentre.npy"
[ -f "$CUBE" ] || CUBE="$REAL_DIR/bayestar19_LR_anticentre.fits"
mkdir -p "$OUT_DIR"
T0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
note() { echo "$(date -u +%H:%M:%S) t=$(( $(date +%s) - T0 ))s $*" | tee -a "$OUT_DIR/times.txt"; }
GPU=${CUDA_VISIBLE_DEVICES:-0}; export CUDA_VISIBLE_DEVICES=${GPU%%,*}
note "start: budget ${BUDGET_S}s, GPU ${CUDA_VISIBLE_DEVICES}, cube $CUBE, smoke=$SMOKE," \
     "anneal $ANNEAL x $ANNEAL_FACTOR averaged, M $NUM_INDUCING"
nvidia-smi -L >> "$OUT_DIR/times.txt" 2>&1 || true
$PY -c "import jax; print('jax', jax.__version__, jax.devices())" >> "$OUT_DIR/times.txt" 2>&1

# 1. smoke: the tiny real-sky test through the same code (annealing with averaging included)
SMOKE_TIMEOUT=60; [ "$SMOKE" = "1" ] && SMOKE_TIMEOUT=400  # a loaded 2-core CPU
timeout $SMOKE_TIMEOUT $PY -m tools.gp_realsky_suite --suite=smoke --anneal_average \
    --cube="$CUBE" --out="$OUT_DIR/smoke" > "$OUT_DIR/smoke.log" 2>&1
rc=$?
note "smoke rc=$rc"
if [ $rc -ne 0 ]; then tail -30 "$OUT_DIR/smoke.log"; exit 3; fi

# 2. item 7: the paper-size ELBO iteration (120,000 stars, 20 x 20 x 35, M = 1000)
SIZE=paper; [ "$SMOKE" = "1" ] && SIZE=small
timeout 90 $PY -m benchmarks.gp_iteration --size=$SIZE --calls=5 --out="$OUT_DIR/bench" \
    > "$OUT_DIR/bench.log" 2>&1
note "bench rc=$? $(grep -o '"ms_per_iteration_median": [0-9.]*' "$OUT_DIR/bench/gp_iteration.json" 2>/dev/null)"

paper_sim() {  # the paper's simulated test as a user runs it (compile + fit + predict)
    local cfg=gp_paper_sim extra=""
    [ "$SMOKE" = "1" ] && { cfg=gp_test; extra="--config.fit.max_iterations=30"; }
    local t0=$(date +%s) to=$(( $(left) - 2 ))
    [ "$to" -gt $(( SIM_S + 15 )) ] && to=$(( SIM_S + 15 ))
    timeout "$to" $PY -m dustjax.cli.fit_gp --config=$cfg \
        --workdir="$OUT_DIR/paper_sim_work" --config.output.plots=False \
        --config.output.fits=False $extra > "$OUT_DIR/paper_sim.log" 2>&1
    local rc=$?
    note "paper_sim rc=$rc wall $(( $(date +%s) - t0 ))s (process, including start-up)"
    cp "$OUT_DIR/paper_sim_work/summary.json" "$OUT_DIR/paper_sim_summary.json" 2>/dev/null
    rm -rf "$OUT_DIR/paper_sim_work"
}

# 3. the accuracy attempt: real sky at paper size, bounded in time
SUITE=device; [ "$SMOKE" = "1" ] && { SUITE=smoke_paper; OVERHEAD=200; MIN_FIT_S=20; }
FIT=$(( $(left) - OVERHEAD - MARGIN - SIM_S ))
RUN_SIM_AFTER=1
if [ "$FIT" -lt "$MIN_FIT_S" ]; then  # not both: the accuracy fit first, alone
    FIT=$(( $(left) - OVERHEAD - MARGIN )); RUN_SIM_AFTER=0
    note "not enough budget for both: the paper's simulated test is dropped"
fi
if [ "$FIT" -ge "$MIN_FIT_S" ]; then
    note "real: fit ${FIT}s, M $NUM_INDUCING, anneal $ANNEAL x $ANNEAL_FACTOR averaged"
    # bounded by its own fit time limit; the timeout only guards against a hang (an overrun
    # costs the simulated test, which runs only if its time is still left)
    timeout $(( $(left) - 8 )) $PY -m tools.gp_realsky_suite --suite=$SUITE \
        --only=real_paper_logsph --cube="$CUBE" --max_fit_seconds="$FIT" \
        --anneal_iterations="$ANNEAL" --anneal_factor="$ANNEAL_FACTOR" --anneal_average \
        --num_inducing="$NUM_INDUCING" --out="$OUT_DIR/real" > "$OUT_DIR/real.log" 2>&1
    note "real rc=$?"
else
    note "no time for the accuracy fit (${FIT}s < ${MIN_FIT_S}s)"; RUN_SIM_AFTER=1
fi
if [ "$RUN_SIM_AFTER" = "1" ] && [ "$(left)" -ge $(( SIM_S + 5 )) ]; then
    paper_sim
else
    note "no time for the paper's simulated test ($(left)s left)"
fi

# 4. the ELBO curve and one summary (CPU only, seconds)
T_SUM=$(left); [ "$T_SUM" -gt 30 ] && T_SUM=30; [ "$T_SUM" -lt 5 ] && T_SUM=5
timeout "$T_SUM" $PY - "$OUT_DIR" <<'PYEOF' > "$OUT_DIR/summary.txt" 2>&1
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
p = out / "bench" / "gp_iteration.json"
if p.is_file():
    b = json.loads(p.read_text())
    print("bench", b["size"], b["num_stars"], b["shape"], b["num_inducing"],
          "ms/it median", b["ms_per_iteration_median"], "min", b["ms_per_iteration_min"],
          "compile", b["compile_and_first_call_s"], b.get("jax_version"))
p = out / "paper_sim_summary.json"
if p.is_file():
    s = json.loads(p.read_text())
    print("paper_sim", s.get("status"), s.get("iterations"), "timings", json.dumps(s.get("timings")))
    print("   metrics", json.dumps(s.get("simulation", {}).get("metrics")))
p = out / "real" / "suite.json"
if p.is_file():
    from dustjax.gp.realsky import summary_row
    for key, r in json.loads(p.read_text()).items():
        if "error" in r:
            print(key, "ERROR", r["error"]); continue
        f = r["fit"]
        print(key, f["status"], f["iterations"], "anneal from", f.get("anneal_start"),
              f["timings"], json.dumps(summary_row(r)))
        for band, sc in r["gp"]["stars"].items():
            print("   ", band, json.dumps(sc))
        print("   knn", json.dumps(r["knn"]))
        print("   gp density", json.dumps(r["gp"]["density"]))
        print("   discretisation", json.dumps(r["discretisation"]))
        print("   calibration", json.dumps(r["gp"]["calibration"]))
        print("   hyper", f["scale_lengths_pc"], f["amplitude_dex"], f["mean_dex"])
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            e = f["elbo_every_50"]
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot([50 * i for i in range(len(e))][2:], e[2:])
            if f.get("anneal_start"):
                ax.axvline(f["anneal_start"], color="k", ls=":", label="annealing")
                ax.legend()
            ax.set_xlabel("iteration"); ax.set_ylabel("ELBO (every 50th)")
            fig.tight_layout(); fig.savefig(out / "elbo.png", dpi=110)
        except Exception as err:  # the numbers matter more than the figure
            print("no figure:", err)
PYEOF
cat "$OUT_DIR/summary.txt"
note "end"
