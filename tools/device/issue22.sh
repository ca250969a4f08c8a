#!/usr/bin/env bash
# Issue 22 on the device (2 H200s of one host):
#   cd <tree> && OUT_DIR=<dir> BUDGET_S=<seconds> bash tools/device/issue22.sh
# 1. smoke: the fused Monte Carlo on a tiny V-net (fails fast on a bug);
# 2. the Monte Carlo benchmark: 10^6 stars, 300 redraws, LR, paper V-net (bf16), fused on 1 and
#    on 2 GPUs (benchmarks.apply --mc_only --mc_devices=1,2), first run and best of 3 warm;
# 3. the compilation cache, first vs second run of experiments.train (vnet_test),
#    experiments.apply (demo catalogue) and benchmarks.apply (paper V-net);
# 4. two processes, one GPU each, against one process with both GPUs: vnet_test training and a
#    GP fit (tools.multiprocess_check).
# SMOKE=1: CPU-sized versions of every step (JAX_PLATFORMS=cpu), for a test on the laptop.
# STEPS=compile_cache (a comma list of smoke,mc,compile_cache,multiprocess): only those steps.
# CC_ENTRIES: the compile_cache entries (default train,bench_apply: experiments.apply's demo
# writes its catalogue as FITS, which needs astropy, absent on the device).
# Everything lands in $OUT_DIR (JSON + logs, < 1 MiB); the script stops within $BUDGET_S.
set -u
export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0  # no NVLink multicast (KINDS.md)
OUT_DIR=${OUT_DIR:?set OUT_DIR}
BUDGET_S=${BUDGET_S:-240}
SMOKE=${SMOKE:-0}
STEPS=${STEPS:-smoke,mc,compile_cache,multiprocess}
want() { [[ ",$STEPS," == *",$1,"* ]]; }
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
START=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
# run NAME SHARE_OF_WHAT_IS_LEFT(%) MIN_S CMD...: a step under `timeout`, its log in $OUT_DIR
run() {
  local name=$1 share=$2 floor=$3; shift 3
  local t=$(( $(left) * share / 100 ))
  [ "$t" -lt "$floor" ] && t=$floor
  [ "$t" -gt "$(( $(left) - 3 ))" ] && t=$(( $(left) - 3 ))
  if [ "$t" -lt 5 ]; then echo "$name: skipped, no time left" | tee -a "$OUT_DIR/steps.txt"; return; fi
  local t0=$(date +%s)
  timeout -k 5 "$t" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $(( $(date +%s) - t0 )) s (limit $t s)" | tee -a "$OUT_DIR/steps.txt"
  grep -v "^[IW][0-9]\{4\} \|Warning\|warn(\|Gloo" "$OUT_DIR/$name.log" | tail -25
}
{
  echo "date: $(date -u)"; git rev-parse HEAD 2>/dev/null
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
  $PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"
CACHE=/tmp/issue22_jax_cache
rm -rf "$CACHE"
export DUSTJAX_COMPILATION_CACHE=$CACHE

if [ "$SMOKE" = 1 ]; then
  export JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2
  BIG="--region=SR --num_stars=20000 --num_redraws=8 --batch_size=4 --features=4,8 --knn_backend=kdtree --mc_repeats=1"
  CC="--entries=train --timeout=600"
  MP="--platform=cpu --devices_per_process=1 --what=train --epochs=1 --timeout=600"
else
  BIG="--num_stars=1000000 --num_redraws=300 --batch_size=32 --mc_repeats=2"
  CC="--entries=${CC_ENTRIES:-train,bench_apply} --bench_features=128,256,512,1024 --bench_stars=100000 --bench_redraws=64 --timeout=120"
  MP="--platform=gpu --rtol=2e-3 --timeout=150"
fi

# 1. smoke (20 s): tiny V-net, fused Monte Carlo on every local device
want smoke && run smoke 15 20 $PY -m benchmarks.apply --mc_only --region=SR --num_stars=5000 --num_redraws=4 \
  --batch_size=2 --features=4,8 --mc_repeats=1 --knn_backend=kdtree --out="$OUT_DIR/smoke"
# 2. the Monte Carlo benchmark
want mc && run mc 40 60 $PY -m benchmarks.apply --mc_only --mc_devices=1,2 $BIG --out="$OUT_DIR/mc"
# 3. the compilation cache, first vs second run (its own fresh cache directory)
if want compile_cache; then
  rm -rf /tmp/issue22_cc
  CC_SHARE=60; [ "$STEPS" = compile_cache ] && CC_SHARE=95
  run compile_cache $CC_SHARE 60 $PY -m benchmarks.compile_cache $CC --out=/tmp/issue22_cc
  mkdir -p "$OUT_DIR/compile_cache"
  cp /tmp/issue22_cc/results.json /tmp/issue22_cc/*.log /tmp/issue22_cc/*_compile.json \
    "$OUT_DIR/compile_cache/" 2>/dev/null
  for d in /tmp/issue22_cc/bench_apply*; do
    [ -f "$d/results.json" ] && cp "$d/results.json" "$OUT_DIR/compile_cache/$(basename "$d").json"
  done
fi
# 4. two processes, one GPU each, against one process with both
unset DUSTJAX_COMPILATION_CACHE
rm -rf /tmp/issue22_mp
want multiprocess && run multiprocess 95 60 $PY -m tools.multiprocess_check --processes=2 $MP --out=/tmp/issue22_mp
if want multiprocess; then
  mkdir -p "$OUT_DIR/multiprocess"
  for d in one many; do
    for f in /tmp/issue22_mp/$d/worker*.log; do
      [ -f "$f" ] && tail -c 20000 "$f" > "$OUT_DIR/multiprocess/${d}_$(basename "$f")"
    done
  done
  cp /tmp/issue22_mp/report.json "$OUT_DIR/multiprocess/" 2>/dev/null
fi
rm -rf "$OUT_DIR"/mc/map "$OUT_DIR"/smoke/map
echo "total $(( $(date +%s) - START )) s of $BUDGET_S" | tee -a "$OUT_DIR/steps.txt"
du -sh "$OUT_DIR"
