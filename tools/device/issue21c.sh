#!/usr/bin/env bash
# Issue 21 on one GPU (shared): does 13CO emission help the U-Net? Column-only vs column + 13CO
# moments vs column + 13CO PPV, for <n>_M (two seeds; max n on request), on the same simulated
# crops, per density bin.
#
#   OUT_DIR=/out BUDGET_S=200 bash tools/device/issue21c.sh
#   JAX_PLATFORMS=cpu SMOKE=1 OUT_DIR=/tmp/x BUDGET_S=90 bash tools/device/issue21c.sh   # CPU check
#
# Steps: (1) a smoke step (<= 20 s: imports, one ray-traced line) beside (2) the crop simulation,
# once, into $WORK/crops.npz (clouds, velocities, 13CO ray tracing, crop selection); (3) six
# U-Nets side by side, one process each (RUNS; KAN=1 adds the KAN variants), all stopped at the
# same wall-clock time (or earlier by their own early stop), then each evaluated on its best
# checkpoint; (4) the per-bin table of every finished run. What comes back is under $OUT_DIR
# (JSON, markdown, logs; < 1 MiB); checkpoints and crops stay in $WORK.
# Needs no astropy, tensorflow or absl; ml_collections on PYTHONPATH.
set -uo pipefail
export PYTHONUNBUFFERED=1
: "${OUT_DIR:?set OUT_DIR}"
BUDGET_S=${BUDGET_S:-200}
SMOKE=${SMOKE:-0}
PY=${PYTHON:-python3}
START=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
WORK=${WORK_DIR:-}
[ -z "$WORK" ] && { WORK=$(mktemp -d /tmp/issue21c.XXXXXX); OWN_WORK=1; }
mkdir -p "$OUT_DIR/logs" "$WORK"
LOG="$OUT_DIR/logs"
CONFIG=dustjax.configs.unet_emission_gpu
[ "$SMOKE" = 1 ] && CONFIG=dustjax.configs.unet_emission_test
# Two training seeds of <n>_M per input kind: on the CPU the seed scatter (column 0.0199 / 0.0174,
# moments 0.0179 / 0.0217 dex^2) was larger than the effect of the input, so one seed a run
# cannot say whether emission helps. RUNS=...,max_column,max_moments,max_ppv adds max n.
RUNS=${RUNS:-mass_weighted_column,mass_weighted_moments,mass_weighted_ppv,mass_weighted_column@1,mass_weighted_moments@1,mass_weighted_ppv@1}
# KAN=1 adds the KAN variants (part II sect. 3.3) at the same size, column only, <n>_M, beside
# the column-only U-Net on the same crops; by default only when the budget is >= 300 s (below,
# three more processes on the GPU would starve the comparison)
KAN=${KAN:-auto}
[ "$KAN" = auto ] && { [ "$BUDGET_S" -ge 300 ] && KAN=1 || KAN=0; }
[ "$KAN" = 1 ] && RUNS="$RUNS,mass_weighted_column+knet,mass_weighted_column+ukan,mass_weighted_column+unet_kan_branch"
# seconds kept after the trainings' stop: evaluation of the best checkpoint (restore, compile
# the prediction, ~10-20 s under load) and the merge
RESERVE_S=${RESERVE_S:-35}
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # six processes (and another job) share the GPU
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}
# GPU conv autotuning cost ~42 s a run for epochs of 0.13 s (call 2): off (AUTOTUNE=1 keeps it);
# the smoke step retries without the flag if this XLA refuses it
SAVED_XLA_FLAGS=${XLA_FLAGS:-}
[ "${AUTOTUNE:-0}" = 0 ] && export XLA_FLAGS="$SAVED_XLA_FLAGS --xla_gpu_autotune_level=0"
DRV=("$PY" -m tools.polaris_emission_device)
# file names under $OUT_DIR without '@' or '+' (only plain names come back from the device)
safe() { local n=${1//@/_seed}; echo "${n//+/_}"; }
{
  echo "issue21c: start $(date -u +%FT%TZ), budget ${BUDGET_S}s, config $CONFIG, runs $RUNS"
  echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset} XLA_FLAGS=${XLA_FLAGS:-}"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
} 2>&1 | tee "$OUT_DIR/run.log"

# ---- 1 + 2. smoke (fails fast) beside the crop simulation -----------------------------------
SIM_T=$(($(left) / 2)); [ "$SIM_T" -lt 30 ] && SIM_T=30
timeout "$SIM_T" "${DRV[@]}" prepare "$OUT_DIR" "$CONFIG" "$WORK" >"$LOG/prepare.log" 2>&1 &
SIM_PID=$!
timeout "${SMOKE_S:-20}" "${DRV[@]}" smoke "$OUT_DIR" >"$LOG/smoke.log" 2>&1
SMOKE_RC=$?
if [ "$SMOKE_RC" != 0 ] && [ "${AUTOTUNE:-0}" = 0 ]; then
  echo "issue21c: smoke failed (rc $SMOKE_RC) with XLA_FLAGS=$XLA_FLAGS; retrying without" \
    | tee -a "$OUT_DIR/run.log"
  tail -5 "$LOG/smoke.log" | tee -a "$OUT_DIR/run.log"
  export XLA_FLAGS="$SAVED_XLA_FLAGS"
  kill "$SIM_PID" 2>/dev/null; wait "$SIM_PID" 2>/dev/null
  timeout "${SMOKE_S:-20}" "${DRV[@]}" smoke "$OUT_DIR" >"$LOG/smoke.log" 2>&1
  SMOKE_RC=$?
  SIM_T=$(($(left) / 2)); [ "$SIM_T" -lt 30 ] && SIM_T=30
  timeout "$SIM_T" "${DRV[@]}" prepare "$OUT_DIR" "$CONFIG" "$WORK" >"$LOG/prepare.log" 2>&1 &
  SIM_PID=$!
fi
cat "$LOG/smoke.log" | tee -a "$OUT_DIR/run.log"
if [ "$SMOKE_RC" != 0 ]; then
  echo "issue21c: smoke failed (rc $SMOKE_RC)" | tee -a "$OUT_DIR/run.log"
  kill "$SIM_PID" 2>/dev/null; exit 1
fi
echo "issue21c: smoke ok at $(($(date +%s) - START)) s" | tee -a "$OUT_DIR/run.log"
wait "$SIM_PID"; SIM_RC=$?
tail -3 "$LOG/prepare.log" | tee -a "$OUT_DIR/run.log"
if [ "$SIM_RC" != 0 ]; then
  echo "issue21c: crop simulation failed or cut (rc $SIM_RC, limit ${SIM_T}s)" | tee -a "$OUT_DIR/run.log"
  exit 1
fi
echo "issue21c: crops ready at $(($(date +%s) - START)) s" | tee -a "$OUT_DIR/run.log"

# ---- 3. the U-Nets side by side, all stopped at the same time ---------------------------------
STOP_AT=$(($(date +%s) + $(left) - RESERVE_S))
HARD=$(($(left) - 8))  # a process still alive then is killed (its row is then missing)
[ "$HARD" -lt 5 ] && HARD=5  # (timeout 0 would mean no limit)
PIDS=() NAMES=()
IFS=, read -r -a RUN_LIST <<<"$RUNS"
for name in "${RUN_LIST[@]}"; do
  rest=${name%%@*} seed=""  # <target>_<kind>[+<model>][@<seed>]
  [ "$rest" != "$name" ] && seed=${name#*@}
  base=${rest%%+*} model=""
  [ "$base" != "$rest" ] && model=${rest#*+}
  target=${base%_*} kind=${base##*_}
  timeout "$HARD" "${DRV[@]}" train "$OUT_DIR" "$CONFIG" "$WORK" "$target" "$kind" "$STOP_AT" \
    "$model" "$seed" >"$LOG/$(safe "$name").log" 2>&1 &
  PIDS+=($!) NAMES+=("$name")
done
echo "issue21c: ${#PIDS[@]} trainings started, stop at +$((STOP_AT - START)) s" | tee -a "$OUT_DIR/run.log"
for k in "${!PIDS[@]}"; do
  wait "${PIDS[$k]}"; rc=$?
  f="$LOG/$(safe "${NAMES[$k]}").log"
  echo "${NAMES[$k]}: exit $rc $(grep -h '^train ' "$f" | tail -1)" | tee -a "$OUT_DIR/run.log"
  [ "$rc" = 0 ] || grep -h -E "Error|error:" "$f" | tail -3 | tee -a "$OUT_DIR/run.log"
done

# ---- 4. the table of every finished run, and the small files ----------------------------------
JAX_PLATFORMS=cpu timeout $(($(left) > 5 ? $(left) : 5)) "${DRV[@]}" merge "$OUT_DIR" "$CONFIG" \
  "$WORK" "$RUNS" >"$LOG/merge.log" 2>&1
cat "$LOG/merge.log" | tee -a "$OUT_DIR/run.log"
for name in "${RUN_LIST[@]}"; do
  d="$WORK/$name"; [ -d "$d" ] || continue
  for f in emission_eval.json metrics.jsonl train_summary.json config.json; do
    [ -f "$d/$f" ] && cp "$d/$f" "$OUT_DIR/$(safe "$name")_$f"
  done
done
cp "$WORK/crops.json" "$OUT_DIR/crops.json" 2>/dev/null
# our own temporary work dir (~0.6 GB of crops and the checkpoints) goes; a WORK_DIR given stays
[ "${OWN_WORK:-0}" = 1 ] && [ "${KEEP_WORK:-0}" != 1 ] && rm -rf "$WORK"
echo "issue21c: end at $(($(date +%s) - START)) s of ${BUDGET_S} s; outputs $(du -sh "$OUT_DIR" | cut -f1)" \
  | tee -a "$OUT_DIR/run.log"
