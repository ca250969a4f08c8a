#!/usr/bin/env bash
# Issue 17: one ~20-minute training per region, in two consecutive calls on a warm device
# (a call lasts at most 10 minutes; the workdirs under $WD live as long as the machine does).
#   PHASE=1 OUT_DIR=DIR BUDGET_S=590 REAL_DIR=DIR bash tools/device/issue17b.sh  # measure, plan, train
#   PHASE=2 OUT_DIR=DIR BUDGET_S=590 REAL_DIR=DIR bash tools/device/issue17b.sh  # resume, calibrate, score
#   PHASE=mid ... between the two (as many calls as wanted): resume and train until the call's end
# RUNS lists REGION:ARM, one per GPU of CUDA_VISIBLE_DEVICES in order (default "LR:deriv SR:plain":
# LR with the LOS-derivative channel on the first GPU, the plain SR recipe on the second).
# Phase 1 measures the step rate with and without the observation loop (item 2), sizes one
# warm-up + cosine schedule for TOTAL_TRAIN_S seconds of training over both calls, writes it to
# $WD/plan_REGION.json and trains until its call's end (config.stop_before_unix: no epoch is cut).
# Phase 2 resumes the same workdir and schedule, then calibrates the variance head with 8 Monte
# Carlo redraws and scores the model on the real cubes (literature and catalogue routes,
# tools.realsky_vnet) and on held-out sky simulations beside NNLS (tools.sky_heldout). When phase
# 2 finds no workdir (the machine was given back between the calls) it trains from scratch for
# what its own budget allows, and its summary says so.
# PHASE=2 on an empty $WD trains from scratch in one call; RATE=steps/s (known from an earlier
# phase 1 on the same GPU) skips the measurement. REFINE=0.003,0.01,0.03 also scores the
# physics refinement of the V-net's map (dustjax.vnet.refine) at those literature noise floors.
# SMOKE=1 JAX_PLATFORMS=cpu: tiny models and catalogues, for a test on a laptop.
# Phase 2 also writes REGION_ARM/heldout_arrays.npz (tools.sky_heldout --save_arrays: held-out
# cubes, V-net hats, SR's stars) and REGION_ARM/{literature,catalogue}_arrays.npz (real cubes,
# hats, SR's catalogue), to choose a refinement on CPU (issue 17).
set -u
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT_DIR:?set OUT_DIR}
PHASE=${PHASE:?set PHASE=1, mid or 2}
case "$PHASE" in 1|mid|2) ;; *) echo "issue17b: PHASE must be 1, mid or 2, got $PHASE" >&2; exit 2;; esac
BUDGET_S=${BUDGET_S:-590}
REAL_DIR=${REAL_DIR:-../real}
SMOKE=${SMOKE:-0}
PY=${PY:-python3}
RUNS=${RUNS:-"LR:deriv SR:plain"}
TOTAL_TRAIN_S=${TOTAL_TRAIN_S:-700}  # training seconds over both calls (sizes the schedule)
EPOCHS=${EPOCHS:-16}
SCORE_RESERVE=${SCORE_RESERVE:-200}  # phase 2: s kept after training for calibration and scores
# FINISH_S (default 180): of those, the most the batch-norm statistics and the calibration may take
HELDOUT_N=${HELDOUT_N:-8}
REFINE_CORR=${REFINE_CORR:-2:0.3:auto}  # with REFINE: the catalogue refinement chosen on held-out sims
REFINE_GRID=${REFINE_GRID:-1}  # with REFINE: the catalogue refinement's grids (1,3: also 3 x finer)
# EMA=0.999 (or EMA_LR / EMA_SR): evaluate, choose the best epoch and predict with a moving
# average of the weights (config.optimizer.ema_decay; run 9's LR validation loss jumped from
# epoch to epoch at a flat training loss). Give phase 2 the same value as phase 1.
# Per-region overrides: HELDOUT_N_SR / HELDOUT_N_LR (0: no held-out scoring), REFINE_CORR_SR /
# REFINE_CORR_LR (a list ELL:NU[:auto],... scores each setting; LR's 10^6 stars cost ~1 min each),
# REFINE_GRID_SR / REFINE_GRID_LR (grid factors, e.g. 1,3: each setting also on a grid 3 x finer).
WD=${WORKDIR_ROOT:-/tmp/i17b_wd}
EV=${EVAL_ROOT:-/tmp/i17b_eval}
mkdir -p "$OUT_DIR" "$WD"
[ "$PHASE" = 1 ] && rm -rf "$WD"/* "$EV"
mkdir -p "$EV"
T0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
IFS=, read -r -a G <<< "${CUDA_VISIBLE_DEVICES:-0,1}"
echo "issue17b phase $PHASE: budget ${BUDGET_S}s, runs '$RUNS', GPUs ${G[*]}, smoke=$SMOKE, $(date -u)" \
  | tee -a "$OUT_DIR/run.log"

declare -A CAT=(
  [SR]="--num_stars=30000 --sigma_a=0.03 --sigma_b=0.05 --distance_error=0"
  [LR]="--num_stars=1000000 --sigma_a=0.05 --sigma_b=0.05 --distance_error=0.05"
)
SETS=()
for s_ in ${SET_EXTRA:-}; do SETS+=(--set="$s_"); done  # e.g. SET_EXTRA="LR:model.kwargs.bn_momentum=0.999"
MEASURE=${MEASURE_STEPS:-64}  # >= 4 observed batches at echo 16: the rate includes their cost
if [ "$SMOKE" = 1 ]; then
  CAT[SR]="--num_stars=3000 --sigma_a=0.03 --sigma_b=0.05 --distance_error=0 --num_redraws=2"
  CAT[LR]="--num_stars=20000 --sigma_a=0.05 --sigma_b=0.05 --distance_error=0.05 --num_redraws=2"
  for R in SR LR; do
    SETS+=(--set="$R:model.kwargs.features=[4,8]" --set="$R:batch_size=2" --set="$R:data.eval_steps=1"
           --set="$R:observation.echo=1" --set="$R:observation.group=0")
  done
  SETS+=(--set="SR:observation.num_stars_range=[2000,4000]" --set="LR:observation.num_stars_range=[10000,20000]")
  MEASURE=2 HELDOUT_N=2
fi

# ---- smoke (20 s): imports, configs, cubes, devices ---------------------------------------------
timeout 25 $PY - "$REAL_DIR" <<'PY' 2>&1 | tee -a "$OUT_DIR/run.log"
import sys, jax
from dustjax.configs import vnet_sky_lr, vnet_sky_sr
from dustjax.vnet import realsky
from tools import realsky_vnet, sky_heldout, vnet_sky_device  # noqa: F401
for r in ("SR", "LR"):
    print("smoke: cube", r, realsky.load_cube(f"{sys.argv[1]}/bayestar19_{r}_anticentre.npy").density.shape)
print("smoke: configs", vnet_sky_sr.get_config().name, vnet_sky_lr.get_config().name)
print("smoke: devices", jax.devices())
PY
[ "${PIPESTATUS[0]}" = 0 ] || { echo "issue17b: smoke failed" | tee -a "$OUT_DIR/run.log"; exit 1; }

arm() {  # REGION GPU ARM
  local R=$1 GPU=$2 ARM=$3 L=${1,,}
  local NV="HELDOUT_N_$R" CV="REFINE_CORR_$R"
  local GV="REFINE_GRID_$R"
  local NHELD=${!NV:-$HELDOUT_N} CORR=${!CV:-$REFINE_CORR} GRID=${!GV:-$REFINE_GRID}
  local EV_="EMA_$R"; local EMA_R=${!EV_:-${EMA:-}}
  local RD="$OUT_DIR/${R}_$ARM"; mkdir -p "$RD"
  export CUDA_VISIBLE_DEVICES=$GPU XLA_PYTHON_CLIENT_MEM_FRACTION=0.85
  local ARGS=(--regions=$R --epochs=$EPOCHS --measure_steps=$MEASURE --calibration_redraws=${CAL_REDRAWS:-8}
              --rate_factor=${RATE_FACTOR:-0.9} --plan="$WD/plan_$R.json" --workdir_root="$WD/$ARM"
              --out="$RD" --set="$R:progress_bar=false" --population_bn=${POP_BN:-16})
  [ "$ARM" = deriv ] && ARGS+=(--set="$R:model.derivative_channel=true")
  [ -n "$EMA_R" ] && ARGS+=(--set="$R:optimizer.ema_decay=$EMA_R")
  ARGS+=(${SETS[@]+"${SETS[@]}"})
  local LOG="$RD/train_phase$PHASE.log"
  if [ "$PHASE" = 1 ] || [ "$PHASE" = mid ]; then  # mid: the plan exists, so it resumes
    local CALL=$(( $(left) - 25 ))
    if [ "$PHASE" = mid ] && ! { [ -f "$WD/plan_$R.json" ] && [ -d "$WD/$ARM/vnet_sky_$L/checkpoints" ]; }; then
      echo "$R $ARM: phase mid found no workdir in $WD (machine given back?): nothing to resume" | tee -a "$LOG"
      return
    fi
    echo "$R $ARM: phase $PHASE, ${TOTAL_TRAIN_S}s of training planned, this call ${CALL}s" >> "$LOG"
    timeout $(( CALL + 15 )) $PY -m tools.vnet_sky_device --train_seconds=$TOTAL_TRAIN_S \
      --call_seconds=$CALL "${ARGS[@]}" >> "$LOG" 2>&1
    echo "$R $ARM: phase $PHASE exit $? at $(( $(date +%s) - T0 ))s" >> "$LOG"
    cp "$WD/plan_$R.json" "$RD/" 2>/dev/null
    return
  fi
  local CALL=$(( $(left) - SCORE_RESERVE ))
  if [ -f "$WD/plan_$R.json" ] && [ -d "$WD/$ARM/vnet_sky_$L/checkpoints" ]; then
    echo "$R $ARM: phase 2 resumes $WD/$ARM/vnet_sky_$L, training until ${CALL}s" >> "$LOG"
    local TRAIN_ARGS=(--train_seconds=$TOTAL_TRAIN_S)
  else
    local FRESH=$(( CALL - ${OVERHEAD:-200} )); [ $FRESH -lt 20 ] && FRESH=20
    echo "$R $ARM: phase 2 found no workdir (machine given back?): training from scratch, ${FRESH}s" >> "$LOG"
    echo "{\"fresh_start_in_phase_2\": true, \"train_seconds\": $FRESH}" > "$RD/phase2_fresh.json"
    local TRAIN_ARGS=(--train_seconds=$FRESH)
    if [ -n "${RATE:-}" ]; then  # a known step rate (steps/s, alone on the GPU): no measuring
      local STEPS=$(python3 -c "print(max($EPOCHS, int(0.9 * $RATE * $FRESH)) // $EPOCHS)")
      echo "{\"steps_per_epoch\": $STEPS, \"num_epochs\": $EPOCHS, \"train_seconds\": $FRESH, \"steps_per_s\": $RATE, \"rate_factor\": 0.9}" > "$WD/plan_$R.json"
      cp "$WD/plan_$R.json" "$RD/"
    fi
  fi
  # the training stops by CALL; the population batch-norm statistics (~35 s on SR) and the
  # calibration (8 redraws a validation cube, ~70 s) follow: run 12's 60 s cut the calibration
  timeout $(( CALL + ${FINISH_S:-180} )) $PY -m tools.vnet_sky_device "${TRAIN_ARGS[@]}" --call_seconds=$CALL --finish \
    "${ARGS[@]}" >> "$LOG" 2>&1
  echo "$R $ARM: phase 2 training + calibration exit $? at $(( $(date +%s) - T0 ))s" >> "$LOG"
  local MODEL="$WD/$ARM/vnet_sky_$L"
  local CUBE="$REAL_DIR/bayestar19_${R}_anticentre.npy"
  for ROUTE in literature catalogue; do
    local EXTRA=""; [ $ROUTE = catalogue ] && EXTRA=${CAT[$R]}
    local T=$(( $(left) - 15 )); [ $T -lt 5 ] && break
    timeout $T $PY -m tools.realsky_vnet --cube="$CUBE" --region=$R --route=$ROUTE --model="$MODEL" \
      $EXTRA ${REFINE:+--refine=$REFINE} ${REFINE:+--refine_corr=$CORR} ${REFINE:+--refine_grid=$GRID} --save_arrays \
      --out="$EV/${R}_${ROUTE}_vnet_$ARM" >> "$RD/score.log" 2>&1
    cp "$EV/${R}_${ROUTE}_vnet_$ARM/arrays.npz" "$RD/${ROUTE}_arrays.npz" 2>/dev/null
    echo "$R $ARM: $ROUTE scored (exit $?) at $(( $(date +%s) - T0 ))s" >> "$RD/score.log"
  done
  local HO=""; [ "$SMOKE" = 1 ] && HO="--nnls_steps=20"
  # the refinement settings on the held-out sims too (LR: 10^6 stars a cube; one shared blocked
  # operator per cube since i17s; keep HELDOUT_N_LR small, e.g. 2)
  [ -n "${REFINE:-}" ] && [ -n "$CORR" ] && HO="$HO --refine_corr=$CORR --refine_grid=$GRID"
  local T=$(( $(left) - 8 ))
  [ $T -gt 5 ] && [ "$NHELD" -gt 0 ] && timeout $T $PY -m tools.sky_heldout --model="$MODEL" --num_cubes=$NHELD --nnls $HO \
    ${REFINE:+--refine=$REFINE} \
    ${CAT[$R]//--num_redraws=2/} --save_arrays="$RD/heldout_arrays.npz" --out="$RD/heldout_sims.json" \
    >> "$RD/score.log" 2>&1
  echo "$R $ARM: held-out exit $? at $(( $(date +%s) - T0 ))s" >> "$RD/score.log"
  cp "$MODEL/metrics.jsonl" "$MODEL/calibration.json" "$MODEL/loss_curve.png" "$RD/" 2>/dev/null
}

PIDS=() i=0
for RUN in $RUNS; do
  GPU=${G[$i]:-${G[0]}}
  arm "${RUN%%:*}" "$GPU" "${RUN##*:}" & PIDS+=($!)
  i=$(( i + 1 ))
done
wait "${PIDS[@]}"

if [ "$PHASE" = 2 ]; then
  timeout 20 $PY - "$OUT_DIR" "$EV" <<'PY' 2>&1 | tee -a "$OUT_DIR/run.log"
import json, pathlib, shutil, sys
out, ev = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
rows = {}
for p in sorted(ev.glob("*/realsky.json")):
    rows[p.parent.name] = json.loads(p.read_text())
    if p.with_suffix(".png").exists():
        shutil.copy(p.with_suffix(".png"), out / f"{p.parent.name}.png")
(out / "realsky_rows.json").write_text(json.dumps(rows, indent=1))
for name, r in rows.items():
    s = r["scores"]
    print(f"{name:26s} skill {s['skill']:.3f} dust {s['dust_recovered']:.3f} log_r {s['log_r']:.3f} "
          f"min_c_r {s.get('min_c_r')} band {s.get('band_coverage')}")
    for k, v in (r.get("refined") or {}).items():
        q = v["scores"]
        print(f"  refined {k:14s} skill {q['skill']:.3f} dust {q['dust_recovered']:.3f} log_r {q['log_r']:.3f}")
for h in sorted(out.glob("*/heldout_sims.json")):
    for k, v in json.loads(h.read_text())["summary"].items():
        print(f"held-out {h.parent.name} {k:22s} " + ", ".join(f"{a} {b:.3f}" if isinstance(b, (int, float)) else f"{a} {b}" for a, b in v.items()))
PY
fi
echo "issue17b phase $PHASE: done in $(( $(date +%s) - T0 ))s" | tee -a "$OUT_DIR/run.log"
