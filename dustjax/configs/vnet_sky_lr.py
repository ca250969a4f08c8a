r"""LR V-net for the real sky (issue 17): sky-like cubes, catalogue observation in the loop,
asinh normalisation, variance head. Not the paper's recipe (that is `vnet_lr.py`).

    python -m experiments.train --config=experiments/configs/vnet_sky_lr.py \
        --workdir=workdirs/vnet_sky_lr
    # the device recipe (train ~N s, then calibrate the variance head):
    python -m tools.vnet_sky_device --regions=LR --train_seconds=150 --out=OUT

Hardware: one GPU (bfloat16, input block float32). Data: the "sky" simulator (dustjax.sims.sky),
5 x 10^5 - 1.2 x 10^6 stars per cube uniform in the box, sigma_E = hypot(a, b E) with a in
[0.02, 0.10] mag, b in [0.02, 0.10], distance errors 0-8 %, eq. 5 with k = 30
(`dustjax.vnet.observe`).
Measured with the sky simulator of then (2ea20ba: no empty cones, no map-like smearing; to
reproduce, `--config.data.simulator_params` cone_probability=0, radial_smearing_probability=0)
(one H200, 2026-11-29, docs/results/realsky_vnet_run2_h200.json): `REAL=../real bash
tools/vnet_sky_device.sh SR,LR 0,400 452 LR` (LR: 2 epochs x 1,980 steps, 4.5 min of training
wall time, 8 min with evaluations): 29.8 steps/s against 49.2 noiseless (ratio 0.61; 3.5 steps/s
without echo). Real LR cube, literature route: skill 0.845, dust 84 %, log-r 0.971 (median point
map; the mean: 0.72, 123 %); catalogue (10^6 stars, hypot(0.05, 0.05 E), 5 % distance errors,
mean point map): skill -3.7, dust 147 %, log-r 0.94, band coverage 0.83. NNLS: 0.958 and 0.26.
Run 5 (two H200 calls of ~9 minutes on a warm machine, 2026-11-30, docs/results/
realsky_vnet_run5_h200.json; `PHASE=1|2 ... bash tools/device/issue17b.sh`, docs/validation.md
"Current results"): with `model.derivative_channel=True`, 15,888 steps (16 epochs of 993) at
27.2 steps/s (noiseless 49.0: ratio 0.555), sigma scale 0.74. Real LR cube, literature route:
skill 0.893, dust 104 %, log-r 0.977 (the issue's targets met); catalogue (10^6 stars): skill
0.700 (NNLS 0.41), dust 58 %, band coverage 0.652.
Run 11 (two H200 calls, 2026-11-30, docs/validation.md "Run 11"): echo 18 (16 before) gives
40.7 steps/s with the observation against 48.9 noiseless, ratio 0.833 (echo 16: 0.787-0.791 in
runs 8-10), the issue's >= 0.80 met.
"""

from dustjax.configs.vnet_sky_common import vnet_sky_config


def get_config():
    c = vnet_sky_config("vnet_sky_lr", "LR")
    c.model.kwargs.features = (64, 128, 256, 512)
    c.data.eval_steps = 4
    c.observation.echo = 18  # each observed batch feeds 18 steps (mirrored in Y every other one)
    c.observation.group = 8  # 8 cubes at a time: bounds the k-nearest search's memory
    c.data.steps_per_epoch = 500
    c.num_epochs = 8
    return c
