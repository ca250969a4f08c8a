#!/usr/bin/env bash
# Issue 22 (c) on the device (one H200): does the second run of an entry point now compile in
# < 2 s? (The first measurement, commit 3c1c95d: benchmarks.apply with the paper V-net 2.26 s,
# experiments.train 1.72 s; what was left was JAX's tracing and lowering, redone per process.)
#
#   cd <tree> && OUT_DIR=<dir> BUDGET_S=180 bash tools/device/issue22c.sh   # one H200, unshared
#   SMOKE=1 JAX_PLATFORMS=cpu OUT_DIR=/tmp/x BUDGET_S=200 bash tools/device/issue22c.sh  # CPU
#
# 1. smoke (<= 20 s): the fused Monte Carlo on a tiny V-net (fails fast on a bug);
# 2. the compilation cache: benchmarks.compile_cache, each entry run twice as a new process on one
#    fresh cache: benchmarks.apply --mc_only (paper V-net, random weights, 10^5 stars, 64
#    redraws: the same command as the first measurement), then experiments.train (vnet_test,
#    1 epoch);
# 3. a training workdir of the random paper V-net (benchmarks.apply --save_random_model; not
#    timed), then the benchmarks.apply pair again with --model=it: apply's own loading path
#    (orbax restore into shapes, no initialisation program), on its own fresh cache;
# 4. only if >= 50 s are left: the step-2 benchmarks.apply pair with the code before these
#    changes (main at 61a53f8, from git), for a before/after on one machine.
# Writes (< 1 MiB) in $OUT_DIR: env.txt, steps.txt, *.log, compile_cache/ and model/ (step 3):
# results.json, <entry><run>_compile.json (per process: trace/lower/XLA seconds, programs, cache
# hits, costliest functions), <entry><run>.json (stage timings), and before/ likewise (step 4).
# Stops within $BUDGET_S (every step under `timeout`).
set -u
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT_DIR:?set OUT_DIR}
BUDGET_S=${BUDGET_S:-180}
SMOKE=${SMOKE:-0}
BEFORE=${BEFORE:-61a53f8}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
START=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
# run NAME LIMIT_S CMD...: a step under `timeout` (never past the budget), its log in $OUT_DIR
run() {
  local name=$1 t=$2; shift 2
  [ "$t" -gt "$(( $(left) - 3 ))" ] && t=$(( $(left) - 3 ))
  if [ "$t" -lt 5 ]; then echo "$name: skipped, no time left" | tee -a "$OUT_DIR/steps.txt"; return 1; fi
  local t0=$(date +%s)
  timeout -k 3 "$t" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $(( $(date +%s) - t0 )) s (limit $t s)" | tee -a "$OUT_DIR/steps.txt"
  grep -v "^[IW][0-9]\{4\} \|Warning\|warn(" "$OUT_DIR/$name.log" | tail -15
  return $rc
}
# collect SRC DEST: the small result files of a benchmarks.compile_cache directory
collect() {
  mkdir -p "$2"
  cp "$1"/results.json "$1"/*_compile.json "$2"/ 2>/dev/null
  for d in "$1"/bench_apply*; do
    [ -f "$d/results.json" ] && cp "$d/results.json" "$2/$(basename "$d").json"
  done
  for f in "$1"/*.log; do [ -f "$f" ] && tail -c 4000 "$f" > "$2/$(basename "$f")"; done
}
{
  echo "date: $(date -u)"; git rev-parse HEAD 2>/dev/null
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
  $PY -c "import jax, flax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"
WORK=$(mktemp -d /tmp/issue22c.XXXXXX)
export DUSTJAX_COMPILATION_CACHE="$WORK/smoke_cache"

if [ "$SMOKE" = 1 ]; then  # CPU-sized: a V-net of the paper's depth, narrow
  FEATURES=4,8,16,32
  CC="--bench_features=$FEATURES --bench_stars=20000 --bench_redraws=8 --timeout=150"
  ENTRIES=bench_apply  # experiments.train takes minutes on a loaded CPU
  CC_LIMIT=170 SAVE_LIMIT=120 MODEL_LIMIT=170
  SMOKE_LIMIT=90  # a loaded 2-core CPU compiles for a minute
else
  FEATURES=128,256,512,1024
  # per process 90 s: a first run took 27 s on a GPU alone, > 50 s on one shared with another
  # job (2026-11-30 04:03: cut there); give the script >= 180 s then
  CC="--bench_features=$FEATURES --bench_stars=100000 --bench_redraws=64 --timeout=90"
  ENTRIES=bench_apply,train
  CC_LIMIT=130 SAVE_LIMIT=60 MODEL_LIMIT=120
  SMOKE_LIMIT=20
fi

# 1. smoke (20 s)
run smoke $SMOKE_LIMIT $PY -m benchmarks.apply --mc_only --region=SR --num_stars=5000 --num_redraws=4 \
  --batch_size=2 --features=4,8 --mc_repeats=1 --knn_backend=kdtree --plots=false \
  --out="$WORK/smoke" || { echo "smoke failed: stopping"; exit 1; }
# 2. first vs second run on one fresh cache (compile_cache makes its own cache directory)
run compile_cache $CC_LIMIT $PY -m benchmarks.compile_cache $CC --entries=$ENTRIES --out="$WORK/cc"
collect "$WORK/cc" "$OUT_DIR/compile_cache"
# 3. the same with a trained-model workdir (random weights): apply's loading path
if run save_model $SAVE_LIMIT $PY -m benchmarks.apply --save_random_model="$WORK/model_lr" --region=LR \
    --features=$FEATURES; then
  run model $MODEL_LIMIT $PY -m benchmarks.compile_cache $CC --entries=bench_apply_model \
    --bench_model="$WORK/model_lr" --out="$WORK/cc_model"
  collect "$WORK/cc_model" "$OUT_DIR/model"
fi
rm -rf "$WORK/model_lr"
# 4. before/after on this machine: the old code's benchmarks.apply pair
# (only from a git checkout of its own: inside another repository git archive gives the
# subdirectory of that repository's commit, i.e. nothing)
if [ "$(left)" -ge 50 ] && [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$PWD" ] \
    && git cat-file -e "$BEFORE^{commit}" 2>/dev/null; then
  mkdir -p "$WORK/before" && git archive "$BEFORE" | tar -x -C "$WORK/before"
  if [ -f "$WORK/before/benchmarks/compile_cache.py" ]; then
    (cd "$WORK/before" && run before $(( $(left) - 5 )) $PY -m benchmarks.compile_cache $CC \
      --entries=bench_apply --out="$WORK/cc_before")
    collect "$WORK/cc_before" "$OUT_DIR/before"
  else
    echo "before: skipped (git archive $BEFORE gave no benchmarks/)" | tee -a "$OUT_DIR/steps.txt"
  fi
else
  echo "before: skipped ($(left) s left, or no git history)" | tee -a "$OUT_DIR/steps.txt"
fi
rm -rf "$WORK"
echo "total $(( $(date +%s) - START )) s of $BUDGET_S" | tee -a "$OUT_DIR/steps.txt"
du -sh "$OUT_DIR"
