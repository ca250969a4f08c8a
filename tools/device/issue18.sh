#!/usr/bin/env bash
# Issue 18 on one H200 (two if CUDA_VISIBLE_DEVICES names two): the latent GP on the real sky at
# the paper's size, fine grid, with the kNN baseline and the band coverages, log-spherical kernel
# and its XYZ counterpart.
#
#   OUT_DIR=DIR BUDGET_S=300 REAL_DIR=.device_carry/real bash tools/device/issue18.sh
#   SMOKE=1 JAX_PLATFORMS=cpu OUT_DIR=/tmp/x BUDGET_S=60 REAL_DIR=... bash tools/device/issue18.sh
#
# Writes to OUT_DIR: smoke/, logsph/suite.json, xyz/suite.json (every score, the ELBO every 50
# iterations, timings), *.log, elbo.png, times.txt. Every part is bounded by `timeout` and the
# fits by their own time limit (tools.gp_realsky_suite --max_fit_seconds), within BUDGET_S.
set -uo pipefail
export PYTHONUNBUFFERED=1
# several processes may share a GPU (the fit_gp calibration runs beside the big fit)
export XLA_PYTHON_CLIENT_PREALLOCATE=false
: "${OUT_DIR:?set OUT_DIR}"
BUDGET_S=${BUDGET_S:-300}
REAL_DIR=${REAL_DIR:-../shared/data/real}
SMOKE=${SMOKE:-0}
PY=${PYTHON:-python}
CUBE="$REAL_DIR/bayestar19_LR_anticentre.npy"
[ -f "$CUBE" ] || CUBE="$REAL_DIR/bayestar19_LR_anticentre.fits"
mkdir -p "$OUT_DIR"
T0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
note() { echo "$(date -u +%H:%M:%S) t=$(( $(date +%s) - T0 ))s $*" | tee -a "$OUT_DIR/times.txt"; }

# GPUs named by the caller (the fits run in parallel when there are two)
IFS=',' read -r -a GPUS <<< "${CUDA_VISIBLE_DEVICES:-0}"
NGPU=${#GPUS[@]}
note "start: budget ${BUDGET_S}s, ${NGPU} GPU(s) [${CUDA_VISIBLE_DEVICES:-unset}], cube $CUBE, smoke=$SMOKE"
nvidia-smi -L >> "$OUT_DIR/times.txt" 2>&1 || true

# 1. smoke: a tiny real-sky test, fails fast on a bug
SMOKE_TIMEOUT=60
[ "$SMOKE" = "1" ] && SMOKE_TIMEOUT=400  # a loaded 2-core CPU
timeout $SMOKE_TIMEOUT $PY -m tools.gp_realsky_suite --suite=smoke --cube="$CUBE" --out="$OUT_DIR/smoke" \
    > "$OUT_DIR/smoke.log" 2>&1
rc=$?
note "smoke rc=$rc"
if [ $rc -ne 0 ]; then tail -30 "$OUT_DIR/smoke.log"; exit 3; fi

# 2. the paper-size real-sky fits: 120,000 stars, 60 x 40 x 100 grid, 1,000 inducing points,
#    plateau stopping rule, bounded in time. Outside the fit each test needs ~75 s on an H200
#    (compile ~20 s, drawing stars and cell averages ~10 s, column samples, kNN, densities).
OVERHEAD=100
MARGIN=15
if [ "$SMOKE" = "1" ]; then SUITE=smoke_paper; OVERHEAD=200; else SUITE=device; fi
run_one() {  # name test gpu fit_seconds
    local name=$1 test=$2 gpu=$3 fit=$4
    note "$name: fit ${fit}s on GPU $gpu"
    CUDA_VISIBLE_DEVICES=$gpu timeout $(( fit + OVERHEAD + 5 )) \
        $PY -m tools.gp_realsky_suite --suite=$SUITE --only="$test" --cube="$CUBE" \
        --max_fit_seconds="$fit" --out="$OUT_DIR/$name" > "$OUT_DIR/$name.log" 2>&1
    note "$name rc=$?"
}
R=$(( $(left) - MARGIN ))

# 2b. beside the big fit(s), on the last GPU: calibrated bands through experiments/fit_gp on
#     three simulated seeds (the paper's clumps, CPU size: 20,000 stars, 12 x 12 x 20, M = 300)
#     and the real cube (gp_taurus_cpu), each with the paper's likelihood and with the learned
#     model error; summary.json only (~20-30 s each on a GPU).
calib_set() {
    local gpu=$1 deadline=$(( $(date +%s) + $2 ))
    local runs=""
    for me in False True; do
        for seed in 1 2 3; do runs="$runs sim${seed}_me$me:gp_paper_sim_cpu:$seed:$me"; done
        runs="$runs real_me$me:gp_taurus_cpu:0:$me"
    done
    for r in $runs; do
        IFS=':' read -r name cfg seed me <<< "$r"
        local t=$(( deadline - $(date +%s) ))
        if [ "$t" -lt 30 ]; then note "calib: no time for $name"; continue; fi
        local iters=1500; [ "$SMOKE" = "1" ] && iters=20
        CUDA_VISIBLE_DEVICES=$gpu timeout "$t" $PY -m experiments.fit_gp \
            --config="experiments/configs/$cfg.py" --workdir="$OUT_DIR/calib_work/$name" \
            --config.seed="$seed" --config.fit.model_error="$me" --config.data.cube="$CUBE" \
            --config.fit.max_iterations=$iters --config.fit.min_iterations=$(( iters / 4 )) \
            --config.output.plots=False --config.output.fits=False \
            > "$OUT_DIR/calib_$name.log" 2>&1
        note "calib $name rc=$?"
        mkdir -p "$OUT_DIR/calib"
        cp "$OUT_DIR/calib_work/$name/summary.json" "$OUT_DIR/calib/$name.json" 2>/dev/null
        rm -rf "$OUT_DIR/calib_work/$name"
    done
    rm -rf "$OUT_DIR/calib_work"
}
calib_set "${GPUS[$(( NGPU - 1 ))]}" "$R" &
CALIB_PID=$!

if [ "$NGPU" -ge 2 ]; then
    FIT=$(( R - OVERHEAD ))
    run_one logsph real_paper_logsph "${GPUS[0]}" "$FIT" &
    run_one xyz real_paper_xyz "${GPUS[1]}" "$FIT" &
    wait
else
    # one GPU: the XYZ counterpart only if the log-spherical fit still gets >= ~140 s
    FREE=$(( R - 2 * OVERHEAD ))
    if [ "$FREE" -ge 200 ] || { [ "$SMOKE" = "1" ] && [ "$FREE" -ge 60 ]; }; then
        run_one logsph real_paper_logsph "${GPUS[0]}" $(( FREE * 2 / 3 ))
        R2=$(( $(left) - MARGIN - OVERHEAD ))
        if [ "$R2" -ge 20 ]; then run_one xyz real_paper_xyz "${GPUS[0]}" "$R2"; fi
    else
        run_one logsph real_paper_logsph "${GPUS[0]}" $(( R - OVERHEAD ))
    fi
fi

wait $CALIB_PID

# 3. the ELBO curves and one summary table (CPU only, seconds)
timeout 60 $PY - "$OUT_DIR" <<'PYEOF' >> "$OUT_DIR/summary.txt" 2>&1
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for name in ("logsph", "xyz"):
    p = out / name / "suite.json"
    if p.is_file():
        for test, r in json.loads(p.read_text()).items():
            rows[f"{name}/{test}"] = r
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, r in rows.items():
        if "fit" in r:
            e = r["fit"]["elbo_every_50"]
            ax.plot([50 * i for i in range(len(e))][1:], e[1:], label=key)
    ax.set_xlabel("iteration"); ax.set_ylabel("ELBO (every 50th)"); ax.legend()
    fig.tight_layout(); fig.savefig(out / "elbo.png", dpi=110)
except Exception as err:  # the numbers matter more than the figure
    print("no figure:", err)
from dustjax.gp.realsky import summary_row
print("fit_gp calibration runs: name, status, iterations, held-out (validation) true coverage "
      "before -> after, fit stars' true coverage uncalibrated -> calibrated, (f, s), density "
      "residual, P50 < 0.9 A")
for p in sorted((out / "calib").glob("*.json")):
    s = json.loads(p.read_text())
    c, m = s.get("calibration") or {}, s.get("simulation", {}).get("metrics", {})
    print(p.stem, s["status"], s["iterations"],
          c.get("validation_coverage_true_before"), "->", c.get("validation_coverage_true_after"),
          m.get("fraction_true_within_p16_p84_fit_stars_uncalibrated"), "->",
          m.get("fraction_true_within_p16_p84"), (c.get("frac"), c.get("floor_mag")),
          m.get("density_residual_typical"), m.get("fraction_underestimated_median_below_90pct"))
for key, r in rows.items():
    if "error" in r:
        print(key, "ERROR", r["error"]); continue
    f = r["fit"]
    print(key, f["status"], f["iterations"], f["timings"].get("per_iteration_ms"),
          json.dumps(summary_row(r)))
    for band, s in r["gp"]["stars"].items():
        print("   ", band, json.dumps(s))
PYEOF
cat "$OUT_DIR/summary.txt"
note "end"
