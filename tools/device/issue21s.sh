#!/usr/bin/env bash
# Issue 21 items 4-5 on the device: the POLARIS U-Net studies (figs. 14, 16, 22-23) and the KAN
# variants trained beside the U-Net, as resumable batch runs (experiments/polaris_study.py).
#
#   OUT_DIR=/out BUDGET_S=300 bash tools/device/issue21s.sh          # one (or two) H200
#   JAX_PLATFORMS=cpu SMOKE=1 OUT_DIR=/tmp/x BUDGET_S=150 bash tools/device/issue21s.sh
#   SEED_FROM=docs/results/polaris_study_h200_run2 OUT_DIR=/out BUDGET_S=300 bash ...  # resume run 2
#
# Steps: a smoke point (fails fast) while the crops are simulated once (shared by every study),
# then ten processes at once on the visible GPU(s) (filters x levels in four shards, convs per
# block, training-set size and the KAN variants in two each), each with --deadline_s so that no point
# starts late and each point's training is bounded; then the tables and figures are rebuilt
# from all the points and copied to $OUT_DIR with the logs (checkpoints stay in $WORK_DIR).
set -uo pipefail
export PYTHONUNBUFFERED=1
: "${OUT_DIR:?set OUT_DIR}"
BUDGET_S=${BUDGET_S:-300}
SMOKE=${SMOKE:-0}
WORK=${WORK_DIR:-$(mktemp -d /tmp/issue21s.XXXXXX)}
START=$(date +%s)
left() { local l=$((BUDGET_S - ($(date +%s) - START))); echo $((l > 10 ? l : 10)); }
mkdir -p "$OUT_DIR/logs" "$WORK"
LOG="$OUT_DIR/logs"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share a GPU
export JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache"  # same shapes compile once across points
PY=${PYTHON:-python}
RUN=("$PY" -m experiments.polaris_study)
ONE=(--config.num_devices=1 --root="$WORK/root")  # after --config: one device a process

if [ "$SMOKE" = 1 ]; then
  CONFIG=experiments/configs/polaris_study_test.py
  SCALE=0.05
else
  CONFIG=experiments/configs/polaris_study.py
  # the per-point training budgets of the config are sized for BUDGET_S=300; scale them
  SCALE=$(awk -v b="$BUDGET_S" 'BEGIN { s = (b - 60) / 240; if (s < 0.2) s = 0.2; print s }')
fi
caps() {  # per-point training budgets (seconds) of the four studies, scaled
  awk -v s="$SCALE" -v smoke="$SMOKE" 'BEGIN {
    if (smoke == 1) { printf "5 5 5 5"; exit }
    printf "%.0f %.0f %.0f %.0f", 25 * s, 25 * s, 20 * s, 60 * s }'
}
read -r CAP_FL CAP_CONV CAP_SIZE CAP_KAN <<<"$(caps)"
{
  echo "start $(date -u +%FT%TZ) budget ${BUDGET_S}s smoke=$SMOKE config=$CONFIG"
  echo "caps: filters_levels=$CAP_FL convs=$CAP_CONV train_size=$CAP_SIZE kan=$CAP_KAN"
  $PY -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
} >"$LOG/env.txt" 2>&1
cat "$LOG/env.txt"

# 1. smoke: one tiny point end to end on the device (a bug fails here, in ~20 s), while
# 2. the crops are simulated, once, into $WORK/root/data for every process
DATA_T=$(($(left) - 60)); [ "$DATA_T" -lt 20 ] && DATA_T=20
timeout "$DATA_T" "${RUN[@]}" --config="$CONFIG" "${ONE[@]}" --prepare_data_only \
  >"$LOG/data.log" 2>&1 &
DATA_PID=$!
if ! timeout 60 "${RUN[@]}" --config=experiments/configs/polaris_study_test.py "${ONE[@]}" \
    --root="$WORK/smoke" --study=filters_levels \
    --config.study.filters_levels.levels="(1,)" --config.num_epochs=1 >"$LOG/smoke.log" 2>&1; then
  echo "smoke step failed:"; tail -30 "$LOG/smoke.log"; kill "$DATA_PID"; exit 1
fi
echo "smoke ok at $(($(date +%s) - START)) s"
if ! wait "$DATA_PID"; then
  echo "crop simulation failed:"; tail -30 "$LOG/data.log"; exit 1
fi
echo "crops ready at $(($(date +%s) - START)) s: $(tail -1 "$LOG/data.log")"

# finished points of an earlier run (its $OUT_DIR) are not trained again: their result.json
# files are put back (the crops are simulated again from the same seed)
if [ -n "${RESUME_FROM:-}" ]; then
  for f in "$RESUME_FROM"/*/points/*/result.json; do
    [ -f "$f" ] || continue
    rel=${f#"$RESUME_FROM"/}; mkdir -p "$WORK/root/$(dirname "$rel")"; cp "$f" "$WORK/root/$rel"
  done
  echo "resumed $(find "$WORK/root" -name result.json | wc -l) finished points from $RESUME_FROM"
fi
# or from the tables of an earlier run kept in the repository (SEED_FROM=docs/results/
# polaris_study_h200_run2: <study>.json each); only points of the same config are taken
if [ -n "${SEED_FROM:-}" ]; then
  for s in filters_levels convs_per_block train_size kan; do
    [ -f "$SEED_FROM/$s.json" ] || continue
    JAX_PLATFORMS=cpu "${RUN[@]}" --config="$CONFIG" "${ONE[@]}" --study="$s" --draw_only \
      --seed_from="$SEED_FROM/$s.json" 2>&1 | grep "^from " | sed "s/^/$s: /"
  done
fi

# 3. the studies, ten processes at once, one GPU each (round robin over the visible ones)
GPUS=()
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then IFS=, read -r -a GPUS <<<"$CUDA_VISIBLE_DEVICES"; fi
DEADLINE=$(($(left) - 40))  # seconds each process may start points in; 40 s for tables + copy
i=0
PIDS=() NAMES=()
launch() {
  local name=$1; shift
  local env=()
  if [ ${#GPUS[@]} -gt 0 ]; then env=(CUDA_VISIBLE_DEVICES="${GPUS[$((i % ${#GPUS[@]}))]}"); fi
  i=$((i + 1))
  env "${env[@]}" timeout $((DEADLINE + 15)) "${RUN[@]}" --config="$CONFIG" "${ONE[@]}" \
    --deadline_s="$DEADLINE" "$@" >"$LOG/$name.log" 2>&1 &
  PIDS+=($!) NAMES+=("$name")
}
for k in 0 1; do
  launch "kan$k" --study=kan --shard="$k/2" --config.study.kan.max_train_seconds="$CAP_KAN"
done
for k in 0 1 2 3; do
  launch "fl$k" --study=filters_levels --shard="$k/4" \
    --config.study.filters_levels.max_train_seconds="$CAP_FL"
done
for k in 0 1; do
  launch "size$k" --study=train_size --shard="$k/2" \
    --config.study.train_size.max_train_seconds="$CAP_SIZE"
  launch "convs$k" --study=convs_per_block --shard="$k/2" \
    --config.study.convs_per_block.max_train_seconds="$CAP_CONV"
done
for k in "${!PIDS[@]}"; do
  wait "${PIDS[$k]}"; rc=$?
  echo "${NAMES[$k]}: exit $rc$([ $rc = 124 ] && echo ' (timed out: its last point resumes next time)')" \
    >>"$LOG/exit_codes.txt"
done
cat "$LOG/exit_codes.txt"
echo "trainings done at $(($(date +%s) - START)) s"

# 4. the tables and figures from every point (all shards), on the CPU, then the copy
for s in filters_levels convs_per_block train_size kan; do
  JAX_PLATFORMS=cpu timeout $(($(left) - 5)) "${RUN[@]}" --config="$CONFIG" "${ONE[@]}" --study="$s" --draw_only \
    >"$LOG/draw_$s.log" 2>&1 &
done
wait
for s in filters_levels convs_per_block train_size kan; do
  src="$WORK/root/$s"; dst="$OUT_DIR/$s"
  [ -d "$src" ] || continue
  mkdir -p "$dst"
  cp "$src"/results.json "$src"/results.md "$src"/*.png "$dst"/ 2>/dev/null
  for p in "$src"/points/*/; do
    n=$(basename "$p"); mkdir -p "$dst/points/$n"
    cp "$p"/result.json "$p"/metrics.jsonl "$p"/train_summary.json "$p"/loss_curve.png \
      "$dst/points/$n"/ 2>/dev/null
  done
  echo "== $s"; grep -E "points done|^$s:|: (trained|skipped|not started)" "$LOG/draw_$s.log"
done
cp "$WORK/root/data/crops.json" "$OUT_DIR/crops.json" 2>/dev/null
grep -H -E "^(error:|[A-Za-z.]*(Error|Exception)\b)" "$LOG"/*.log | head -20
echo "end at $(($(date +%s) - START)) s of ${BUDGET_S} s; outputs: $(du -sh "$OUT_DIR" | cut -f1)"
