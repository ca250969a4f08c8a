"""The POLARIS pipeline end to end on the unet_test config: simulate, train, resume, evaluate
(dustjax.polaris.evaluate), predict on a FITS map (dustjax.polaris.predict_map)."""

import math

import numpy as np
import pytest

from dustjax.polaris import evaluate, reference


def _write_map(path, *, bunit="H2 cm-2", wcs=True, shape=(30, 44)):
    from astropy.io import fits
    from astropy.wcs import WCS

    rng = np.random.default_rng(8)
    data = 10 ** (21.3 + 0.3 * rng.standard_normal(shape))
    data[4, 5] = np.nan
    data[10, 10] = 0.0
    header = fits.Header()
    if wcs:
        w = WCS(naxis=2)
        w.wcs.ctype = ["GLON-TAN", "GLAT-TAN"]
        w.wcs.cdelt = [-0.02, 0.02]
        w.wcs.crpix = [22, 15]
        w.wcs.crval = [170.0, -16.0]
        header = w.to_header()
    if bunit:
        header["BUNIT"] = bunit
    fits.PrimaryHDU(data, header=header).writeto(path)
    return data


def test_unet_test_config_end_to_end(tmp_path):
    from astropy.io import fits

    from dustjax import io as dio
    from dustjax import training as train
    from dustjax.maps import MapError
    from dustjax.polaris import predict_map as pm
    from experiments.configs import unet_test

    config = unet_test.get_config()
    workdir = tmp_path / "run"
    summary = train.train_and_evaluate(config, workdir)
    assert summary["epochs_run"] == 2 and math.isfinite(summary["best_val_loss"])
    with config.unlocked():
        config.num_epochs = 3
    resumed = train.train_and_evaluate(config, workdir)  # resumes at epoch 2
    assert resumed["epochs_run"] == 3
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 3

    metrics = evaluate.evaluate_workdir(workdir, tmp_path / "validation")
    ratio = metrics["val_mse_model"] / metrics["val_mse_reference"]
    assert metrics["mse_ratio_model_over_reference"] == pytest.approx(ratio)
    assert metrics["val_mse_model"] == pytest.approx(resumed["best_val_loss"], rel=1e-4)
    for name in ["polaris_metrics.json", "residual_correction.json", *metrics["figures"]]:
        assert (tmp_path / "validation" / name).stat().st_size > 0
    assert dio.read_json(tmp_path / "validation" / "polaris_metrics.json")["target"] == (
        "mass_weighted"
    )

    # A map at 0.1 pc per pixel (0.02 deg at 286 pc) for a model at 0.2 pc per pixel.
    fits_path = tmp_path / "map.fits"
    data = _write_map(fits_path)
    distance = 0.1 / math.radians(0.02)
    out = tmp_path / "map_density.fits"
    result = pm.predict_map(
        fits_path, workdir, distance, out, predictions_per_pixel=4, batch_size=4,
        residual_correction="none",
    )  # fmt: skip
    assert result["model_shape"] == [15, 22]
    with fits.open(out) as hdul:
        density, header = hdul[0].data, hdul[0].header
    assert density.shape == data.shape and header["BUNIT"] == "cm-3"
    assert header["METHOD"] == "polaris predict_map" and header["INPUT1"] == "map.fits"
    assert result["provenance"]["inputs"] == ["map.fits", workdir.name]
    assert header["CTYPE1"] == "GLON-TAN" and header["CDELT2"] == pytest.approx(0.02)
    assert np.isnan(density[4, 5]) and np.isnan(density[10, 10])
    assert np.isfinite(density).sum() == data.size - 2 and np.nanmin(density) > 0
    assert (tmp_path / "map_density.png").stat().st_size > 0

    # The appendix-C baseline written for predict_map (--residual_correction) loads and applies
    # (predict_map with it runs in the slow notebook test).
    baseline = reference.ResidualCorrection.from_dict(
        dio.read_json(tmp_path / "validation" / "residual_correction.json")
    )
    assert np.all(np.isfinite(baseline(np.linspace(0.0, 4.0, 9))))

    # Unusable maps get one-line errors before any model is loaded.
    _write_map(tmp_path / "nounit.fits", bunit=None)
    with pytest.raises(MapError, match="BUNIT"):
        pm.predict_map(tmp_path / "nounit.fits", workdir, distance)
    _write_map(tmp_path / "nowcs.fits", wcs=False)
    with pytest.raises(MapError, match="celestial WCS"):
        pm.predict_map(tmp_path / "nowcs.fits", workdir, distance)
    _write_map(tmp_path / "jy.fits", bunit="MJy/sr")
    with pytest.raises(MapError, match="not a column density"):
        pm.predict_map(tmp_path / "jy.fits", workdir, distance)
    with pytest.raises(MapError, match="distance"):
        pm.predict_map(fits_path, workdir, -1.0)
