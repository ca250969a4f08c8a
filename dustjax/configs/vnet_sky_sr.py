r"""SR V-net for the real sky (issue 17): sky-like cubes, catalogue observation in the loop,
asinh normalisation, variance head. Not the paper's recipe (that is `vnet_sr.py`).

    python -m experiments.train --config=experiments/configs/vnet_sky_sr.py \
        --workdir=workdirs/vnet_sky_sr
    # the device recipe (train ~N s, then calibrate the variance head):
    python -m tools.vnet_sky_device --regions=SR --train_seconds=150 --out=OUT

Hardware: one GPU (bfloat16, input block float32). Data: the "sky" simulator (dustjax.sims.sky),
1.5 x 10^4 - 6 x 10^4 stars per cube uniform in the box, sigma_E = hypot(a, b E) with a in
[0.01, 0.08] mag, b in
[0.02, 0.10], distance errors 0-8 %, eq. 5 with k = 3 (`dustjax.vnet.observe`).
Measured with the sky simulator of then (sims v1, 3917168: no empty cones, no map-like smearing; to
reproduce, `--config.data.simulator_params` cone_probability=0, radial_smearing_probability=0)
(one H200, 2026-11-29, docs/results/realsky_vnet_run1_h200.json): `python -m
tools.vnet_sky_device --regions=SR --train_seconds=180 --epochs=6 --evaluate=REAL --nnls` with echo
1 (before data echoing): 3,060 steps at 17.0 steps/s (noiseless step 47.2/s: ratio 0.36; with
echo 8, the setting here, 44.3 vs 49.4 steps/s, ratio 0.90), 6 min of wall time with evaluations.
Validation simulations: skill 0.65, log-r 0.87, band coverage 0.68 after sigma_scale 1.11.
Real SR cube (mean point map): literature skill 0.24, dust 159 %, log-r 0.93; catalogue (30,000
stars) skill 0.15, dust 156 %, log-r 0.92, band coverage 0.72. NNLS: 0.96 and 0.79. The skill
targets (>= 0.95 literature, >= 0.75 catalogue) are not met.
Run 5 (one H200, ~11 minutes of training, 2026-11-30, docs/results/realsky_vnet_run5_h200.json;
`bash tools/device/issue17b.sh`, docs/validation.md "Current results"): 25,280 steps at 43.2
steps/s (noiseless 49.1: ratio 0.88), sigma scale 0.91. Real SR cube: literature skill 0.755,
catalogue (30,000 stars) 0.722, band coverage 0.645; refined by the literature cube
(`dustjax.vnet.refine`, run 6): 0.954.
"""

from dustjax.configs.vnet_sky_common import vnet_sky_config


def get_config():
    c = vnet_sky_config("vnet_sky_sr", "SR")
    c.model.kwargs.features = (64, 128, 256, 512)
    c.data.eval_steps = 4
    c.observation.echo = 8  # each observed batch feeds 8 steps (mirrored in Y every other one)
    c.data.steps_per_epoch = 500
    c.num_epochs = 8
    return c
