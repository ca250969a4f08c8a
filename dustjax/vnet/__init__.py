"""The V-net method (Chen, Qin & Li): extinction cubes -> dust density cubes.

- `data`: the engine's task and data sources (TFRecord shards or cubes simulated on the
  device), the paper's splits, the region of a config;
- `transforms`: eqs. 1-2; `metrics`: residuals, power spectra, c_r(k) (eq. 4);
  `symmetry`: predictions averaged over the region's symmetries;
- `gridding`: star catalogue -> extinction cube (eq. 5);
- `apply`: a trained V-net on a catalogue or a literature map, with `output` and `plots`;
- `evaluate`: the paper's evaluation of a training workdir on the test split;
- real sky (issue 17): `observe` (the catalogue observation in the training loop, data source
  "simulate_observed"), `normalisation` (asinh normalisation, variance head, trained-model
  predictors), `realsky` (scores on real cubes), `checks` (consistency and bad-input warnings).

The network itself is `dustjax.models.vnet`; the engine `dustjax.training`.
"""
