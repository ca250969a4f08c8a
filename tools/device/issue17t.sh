#!/usr/bin/env bash
# Issue 17 item 2 (LR): training throughput with the catalogue observation in the loop, before and
# after the faster exact observation kernels (dustjax.vnet.observe_kernels), on one GPU.
#   OUT_DIR=DIR BUDGET_S=240 bash tools/device/issue17t.sh
# Runs tools.observe_throughput on the LR recipe with the LOS-derivative channel (echo 16, 64
# measured steps: 4 observed batches in the window), in one process: the noiseless step rate, then
# the observed step rate for "after" (the recipe as committed: integrator=pieces, search=auto ->
# runs), "before" (integrator=sort, search=block: the former kernels), then the integration and
# gridding of one group of 8 cubes timed apart for "after", then if time is left "after_vmap"
# (the whole batch vmapped: group=0) and "after_topk" (select=top_k instead of bisection). Writes $OUT_DIR/throughput.json
# (rates, ratios, parts; rewritten after every step) and $OUT_DIR/run.log.
# SMOKE=1 JAX_PLATFORMS=cpu: a tiny model and catalogues, for a test on a laptop.
set -u
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT_DIR:?set OUT_DIR}
BUDGET_S=${BUDGET_S:-240}
SMOKE=${SMOKE:-0}
PY=${PY:-python3}
mkdir -p "$OUT_DIR"
T0=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
echo "issue17t: budget ${BUDGET_S}s, smoke=$SMOKE, GPUs ${CUDA_VISIBLE_DEVICES:-all}, $(date -u)" \
  | tee -a "$OUT_DIR/run.log"

# ---- smoke (20 s): imports, the device, the new integration against the project's kernel -------
timeout 25 $PY - <<'PY' 2>&1 | tee -a "$OUT_DIR/run.log"
import jax, jax.numpy as jnp, numpy as np
from dustjax import los
from dustjax.geometry import Region
from dustjax.vnet import observe_kernels as kn
from tools import observe_throughput  # noqa: F401
print("smoke: devices", jax.devices())
region = Region.named("LR").with_shape((16, 16, 16))
rng = np.random.default_rng(0)
rho = rng.lognormal(-7, 2, region.shape).astype(np.float32)
lo, hi = np.asarray(region.lower_pc), np.asarray(region.upper_pc)
xyz = (lo + rng.uniform(size=(4000, 3)) * (hi - lo)).astype(np.float32)
got = np.asarray(kn.integrate_pieces(jnp.asarray(rho), region, jnp.asarray(xyz), 1024))
want = np.asarray(los.integrate_to_points(rho, region, xyz))
err = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-6)))
print(f"smoke: pieces vs sorted kernel, max relative difference {err:.2e}")
assert err < 1e-4, err
PY
[ "${PIPESTATUS[0]}" = 0 ] || { echo "issue17t: smoke failed" | tee -a "$OUT_DIR/run.log"; exit 1; }

SETS=(--set='LR:model.derivative_channel=true')
VARIANTS=(--variant=after: --variant=before:integrator=sort,search=block --variant=parts@after
          --variant=after_vmap:group=0 --variant=after_topk:select=top_k)
MEASURE=64
if [ "$SMOKE" = 1 ]; then
  SETS+=(--set='LR:model.kwargs.features=[4,8]' --set='LR:batch_size=2'
         --set='LR:observation.num_stars_range=[10000,20000]' --set='LR:observation.echo=2')
  VARIANTS=(--variant=after:search=runs --variant=before:integrator=sort,search=block
            --variant=parts@after)
  MEASURE=4
fi
L=$(left)
timeout $(( L - 5 )) $PY -m tools.observe_throughput --region=LR "${SETS[@]}" "${VARIANTS[@]}" \
  --measure_steps=$MEASURE --deadline_s=$(( L - 25 )) --out="$OUT_DIR" \
  2>&1 | tee -a "$OUT_DIR/run.log"
RC=${PIPESTATUS[0]}
echo "issue17t: done rc=$RC in $(( $(date +%s) - T0 )) s" | tee -a "$OUT_DIR/run.log"
exit "$RC"
