#!/usr/bin/env bash
# Issue 17 device run: train vnet_sky_lr and vnet_sky_sr in parallel (one GPU each; two arms per
# GPU, with and without the LOS-derivative input channels), then score
# every route on the real cubes (tools.realsky_vnet: literature + catalogue, V-net and NNLS rows,
# band coverage) and on held-out sky simulations (tools.sky_heldout).
#   OUT_DIR=DIR BUDGET_S=540 REAL_DIR=DIR [SMOKE=1] bash tools/device/issue17.sh
# CUDA_VISIBLE_DEVICES (set by the caller) lists the GPUs: LR trains on the first, SR on the
# second (both on the first when only one is given). Everything that comes back is under $OUT_DIR.
set -u
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT_DIR:?set OUT_DIR}
BUDGET_S=${BUDGET_S:-540}
REAL_DIR=${REAL_DIR:-../real}
SMOKE=${SMOKE:-0}
PY=${PY:-python3}
mkdir -p "$OUT_DIR"
T0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
IFS=, read -r -a G <<< "${CUDA_VISIBLE_DEVICES:-0,1}"
GPU_LR=${G[0]:-0}
GPU_SR=${G[1]:-$GPU_LR}
# RUNS: REGION:ARM pairs (default: both arms of both regions); NNLS_REGIONS: NNLS rows beside them.
# A second, shorter call (17b: RUNS=LR:deriv NNLS_REGIONS= RATE_FACTOR=1) trains one model alone.
RUNS=${RUNS:-"LR:plain LR:deriv SR:plain SR:deriv"}
NNLS_REGIONS=${NNLS_REGIONS-"LR SR"}
RATE_FACTOR=${RATE_FACTOR:-0.6}
MEM_ARM=0.38 MEM_NNLS=0.15  # per process: two arms + NNLS on each GPU
[ "$GPU_SR" = "$GPU_LR" ] && MEM_ARM=0.19 MEM_NNLS=0.08  # one GPU for all six processes
[ "$(wc -w <<< "$RUNS")" = 1 ] && MEM_ARM=0.75  # one training alone
WD=${WORKDIR_ROOT:-/tmp/i17_wd}
EV=${EVAL_ROOT:-/tmp/i17_eval}
rm -rf "$WD" "$EV"; mkdir -p "$WD" "$EV"
echo "issue17: budget ${BUDGET_S}s, GPUs LR=$GPU_LR SR=$GPU_SR, smoke=$SMOKE, $(date -u)" | tee "$OUT_DIR/run.log"

# ---- 1. smoke (20 s): imports, configs, cubes, devices --------------------------------------
timeout 25 $PY - "$REAL_DIR" <<'PY' 2>&1 | tee -a "$OUT_DIR/run.log"
import sys, jax
from experiments.configs import vnet_sky_lr, vnet_sky_sr
from dustjax.vnet import realsky
from tools import realsky_vnet, sky_heldout, vnet_sky_device  # noqa: F401
for r in ("SR", "LR"):
    c = realsky.load_cube(f"{sys.argv[1]}/bayestar19_{r}_anticentre.npy")
    print("smoke: cube", r, c.density.shape)
print("smoke: configs", vnet_sky_sr.get_config().name, vnet_sky_lr.get_config().name)
print("smoke: devices", jax.devices())
PY
[ "${PIPESTATUS[0]}" = 0 ] || { echo "issue17: smoke failed" | tee -a "$OUT_DIR/run.log"; exit 1; }

# ---- 2. per region: train (budgeted), calibrate, score -------------------------------------
declare -A CAT=(
  [SR]="--num_stars=30000 --sigma_a=0.03 --sigma_b=0.05 --distance_error=0"
  [LR]="--num_stars=1000000 --sigma_a=0.05 --sigma_b=0.05 --distance_error=0.05"
)
SCORE_RESERVE=${SCORE_RESERVE:-110}  # s kept after training for the real-sky and held-out scores
OVERHEAD=${OVERHEAD:-300}  # s before and after the steps: runs 3-4 took ~210 s to the first step (90 s compiling the observation loop), + validation, calibration
EPOCHS=${EPOCHS:-3}
SETS=()
HELDOUT_N=${HELDOUT_N:-12}
if [ "$SMOKE" = 1 ]; then
  CAT[SR]="--num_stars=3000 --sigma_a=0.03 --sigma_b=0.05 --distance_error=0 --num_redraws=2"
  CAT[LR]="--num_stars=20000 --sigma_a=0.05 --sigma_b=0.05 --distance_error=0.05 --num_redraws=2"
  for R in SR LR; do
    SETS+=(--set="$R:model.kwargs.features=[4,8]" --set="$R:batch_size=2" --set="$R:data.eval_steps=1"
           --set="$R:observation.echo=1" --set="$R:observation.group=0")
  done
  SETS+=(--set="SR:observation.num_stars_range=[2000,4000]" --set="LR:observation.num_stars_range=[10000,20000]")
  HELDOUT_N=2
fi
HO_ARGS="--nnls"; [ "$SMOKE" = 1 ] && HO_ARGS="--nnls --nnls_steps=20"

# Two arms per region, trained side by side on the region's GPU (each gets about half of it):
#   plain: experiments/configs/vnet_sky_{sr,lr}.py as they are;
#   deriv: the same with model.derivative_channel=true (the LOS derivative of the extinction as
#          two more input channels: a physics estimate the network corrects).
# Both arms start together and get the same training time; each measures its throughput (with the
# other arm on the GPU too: the ratio observed / noiseless is taken under the same sharing) and
# counts its steps at 0.6 x the measured rate (between alone and fully shared).
arm() {  # region gpu arm
  local R=$1 GPU=$2 ARM=$3 L=${1,,}
  local RD="$OUT_DIR/${R}_$ARM"; mkdir -p "$RD"
  export CUDA_VISIBLE_DEVICES=$GPU XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_ARM
  local EXTRA_SET=(--set="$R:progress_bar=false")
  if [ "$ARM" = deriv ]; then
    EXTRA_SET+=(--set="$R:model.derivative_channel=true")
  fi
  local TRAIN=$(( $(left) - SCORE_RESERVE - OVERHEAD )); [ $TRAIN -lt 10 ] && TRAIN=10
  local STOP=$(( $(left) - SCORE_RESERVE + 30 ))
  echo "$R $ARM: training budget ${TRAIN}s, hard stop ${STOP}s, at $(( $(date +%s) - T0 ))s" >> "$RD/train.log"
  timeout $STOP $PY -m tools.vnet_sky_device --regions=$R --train_seconds=$TRAIN --epochs=$EPOCHS \
    --measure_steps=${MEASURE_STEPS:-40} --calibration_redraws=${CAL_REDRAWS:-8} --rate_factor=$RATE_FACTOR "${EXTRA_SET[@]}" \
    ${SETS[@]+"${SETS[@]}"} --out="$RD" --workdir_root="$WD/$ARM" >> "$RD/train.log" 2>&1
  echo "$R $ARM: training exit $? at $(( $(date +%s) - T0 ))s" >> "$RD/train.log"
  local MODEL="$WD/$ARM/vnet_sky_$L"
  local CUBE="$REAL_DIR/bayestar19_${R}_anticentre.npy"
  for ROUTE in literature catalogue; do
    local EXTRA=""; [ $ROUTE = catalogue ] && EXTRA=${CAT[$R]}
    local T=$(( $(left) - 15 )); [ $T -lt 5 ] && break
    timeout $T $PY -m tools.realsky_vnet --cube="$CUBE" --region=$R --route=$ROUTE --model="$MODEL" \
      $EXTRA --out="$EV/${R}_${ROUTE}_vnet_$ARM" >> "$RD/score.log" 2>&1
  done
  local T=$(( $(left) - 10 ))
  [ $T -gt 5 ] && timeout $T $PY -m tools.sky_heldout --model="$MODEL" --num_cubes=$HELDOUT_N $HO_ARGS \
    ${CAT[$R]//--num_redraws=2/} --out="$RD/heldout_sims.json" >> "$RD/score.log" 2>&1
  echo "$R $ARM: scored at $(( $(date +%s) - T0 ))s" >> "$RD/score.log"
}

nnls_rows() {  # NNLS beside the training (independent of it), on the region's GPU
  local R=$1 GPU=$2
  export CUDA_VISIBLE_DEVICES=$GPU XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_NNLS
  local STEPS=""; [ "$SMOKE" = 1 ] && STEPS="--nnls_steps=20"
  for ROUTE in literature catalogue; do
    local EXTRA=""; [ $ROUTE = catalogue ] && EXTRA=${CAT[$R]}
    timeout $(( $(left) - 20 )) $PY -m tools.realsky_vnet --cube="$REAL_DIR/bayestar19_${R}_anticentre.npy" \
      --region=$R --route=$ROUTE --model=nnls $STEPS $EXTRA --no_figure --out="$EV/${R}_${ROUTE}_nnls" \
      >> "$OUT_DIR/nnls_$R.log" 2>&1
  done
}

PIDS=()
for RUN in $RUNS; do
  R=${RUN%%:*} ARM=${RUN##*:}
  GPU=$GPU_LR; [ $R = SR ] && GPU=$GPU_SR
  arm $R "$GPU" "$ARM" & PIDS+=($!)
done
for R in $NNLS_REGIONS; do
  GPU=$GPU_LR; [ $R = SR ] && GPU=$GPU_SR
  nnls_rows $R "$GPU" & PIDS+=($!)
done
wait "${PIDS[@]}"

# ---- 3. collect ---------------------------------------------------------------------------------
timeout 20 $PY - "$OUT_DIR" "$EV" <<'PY' 2>&1 | tee -a "$OUT_DIR/run.log"
import json, pathlib, shutil, sys
out, ev = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
rows = {}
for p in sorted(ev.glob("*/realsky.json")):
    rows[p.parent.name] = json.loads(p.read_text())
    png = p.with_suffix(".png")
    if png.exists():
        shutil.copy(png, out / f"{p.parent.name}.png")
(out / "realsky_rows.json").write_text(json.dumps(rows, indent=1))
for name, r in rows.items():
    s = r["scores"]
    print(f"{name:24s} skill {s['skill']:.3f} dust {s['dust_recovered']:.3f} log_r {s['log_r']:.3f} "
          f"min_c_r {s.get('min_c_r')} band {s.get('band_coverage')}")
for h in sorted(out.glob("*/heldout_sims.json")):
    for k, v in json.loads(h.read_text())["summary"].items():
        print(f"held-out {h.parent.name} {k:22s} " + ", ".join(f"{a} {b:.3f}" for a, b in v.items()))
PY
echo "issue17: done in $(( $(date +%s) - T0 ))s" | tee -a "$OUT_DIR/run.log"
