"""POLARIS part II: column density maps to mean volume density maps (Ribeiro 2025).

Everything between the cloud simulator (`dustjax.sims.clouds`) and the U-Net
(`dustjax.models.unet`):

- `projection`: projections and targets (eqs. 2-3), the network's shifted log10 units;
- `crops`: crop scores and acceptance (appendix B, eqs. 11-14), simulated crop datasets;
- `data`: batches, augmentation, splits, and the engine's task and data source (resolved by name
  from `dustjax.training.tasks`: nothing registers on import);
- `metrics`: eq. 4, accuracy (eqs. 5-6), residuals per density bin;
- `reference`: the pointwise reference a U-Net must beat and the residual correction (appendix C);
- `evaluate`: a trained workdir against the reference (`experiments/polaris_validate.py`);
- `predict_map`: tiled prediction on large observed maps, FITS in and out (appendix D,
  `experiments/predict_map.py`);
- `plots`: the figures.

Part III (issue 21), 13CO emission as a second input:

- `emission`: 13CO (1-0) LTE ray tracing, eq. 9, to brightness-temperature PPV cubes and moments;
- `multi_input`: column + 13CO crop datasets (clouds with `dustjax.sims.kinematics` velocities
  and temperatures), the "polaris_emission" task and source, the input-kind comparison;
- `ppv_fits`: PPV cubes as FITS with WCS (VRAD km/s), checked against the column density map;
- `predict_emission`: tiled prediction from a column density map plus its 13CO cube.

Units: number densities n in cm^-3, column densities N in cm^-2, lengths in pc. Pure numpy/JAX
except at the FITS boundary (astropy, imported lazily) and tfrecord datasets (tensorflow).
"""
