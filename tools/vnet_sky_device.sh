#!/usr/bin/env bash
# The real-sky V-net device run (issue 17), as run on one H200 (from a copy of the tree whose
# real cubes lie in $REAL as .npy + .header.json):
#   bash tools/vnet_sky_device.sh REGIONS TRAIN_SECONDS DEADLINE_S NNLS_REGIONS
# e.g. bash tools/vnet_sky_device.sh SR,LR 0,400 470 LR
# NNLS rows of NNLS_REGIONS run in a second process beside the training (they do not depend on
# it); the V-net rows are scored by tools/vnet_sky_device.py --evaluate after each training.
set -u
REGIONS=$1 SECONDS_=$2 DEADLINE=$3 NNLS=${4:-}
REAL=${REAL:-../real}
OUT=${OUT:-/tmp/vt_out}
mkdir -p /tmp/vt_eval "$OUT"
declare -A CAT=(
  [SR]="--num_stars=30000 --sigma_a=0.03 --sigma_b=0.05 --distance_error=0"
  [LR]="--num_stars=1000000 --sigma_a=0.05 --sigma_b=0.05 --distance_error=0.05"
)
(
  export XLA_PYTHON_CLIENT_MEM_FRACTION=0.3
  for R in ${NNLS//,/ }; do
    for ROUTE in literature catalogue; do
      EXTRA=""; [ "$ROUTE" = catalogue ] && EXTRA=${CAT[$R]}
      python3 -m tools.realsky_vnet --cube="$REAL/bayestar19_${R}_anticentre.npy" --region="$R" \
        --route=$ROUTE --model=nnls $EXTRA --no_figure --out="/tmp/vt_eval/${R}_${ROUTE}_nnls"
    done
  done
) > "$OUT/nnls.log" 2>&1 &
NNLS_PID=$!
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
python3 -m tools.vnet_sky_device --regions="$REGIONS" --train_seconds="$SECONDS_" --epochs=2 \
  --measure_steps=20 --deadline_s="$DEADLINE" --eval_reserve_s=170 --evaluate="$REAL" \
  --set=SR:progress_bar=false --set=LR:progress_bar=false --out="$OUT" \
  --workdir_root=/dev/shm/vt_wd 2>&1 | grep -v "^I1129\|absl\|orbax\|Metadata file" \
  | tee "$OUT/run.log"
wait $NNLS_PID
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = {p.parent.name: json.loads(p.read_text()) for p in pathlib.Path("/tmp/vt_eval").glob("*_nnls/realsky.json")}
(out / "nnls_realsky.json").write_text(json.dumps(rows, indent=1))
print({k: {m: v["scores"].get(m) for m in ("skill", "dust_recovered", "log_r")} for k, v in rows.items()})
PY
