"""A workdir of one method given to another method's tool is refused in one line naming both
(before any checkpoint is read), and predict_map checks its residual correction and its output
directory before predicting."""

from __future__ import annotations

import json

import pytest

from dustjax import training
from dustjax.io import OutputError
from dustjax.training.workdir import WrongMethodError, method_of
from experiments.configs import unet_test, vnet_test


def _write_map(path):
    """A 30 x 44 column density map (H2 cm-2) with a celestial WCS."""
    import numpy as np
    from astropy.io import fits
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype, w.wcs.cdelt = ["GLON-TAN", "GLAT-TAN"], [-0.02, 0.02]
    w.wcs.crpix, w.wcs.crval = [22, 15], [170.0, -16.0]
    header = w.to_header()
    header["BUNIT"] = "H2 cm-2"
    data = 10 ** (21.3 + 0.3 * np.random.default_rng(8).standard_normal((30, 44)))
    fits.PrimaryHDU(data, header=header).writeto(path)


def _workdir(tmp_path, config_module):
    workdir = tmp_path / config_module.__name__.rsplit(".", 1)[-1]
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(config_module.get_config().to_dict()))
    return workdir  # config.json only: a check that read a checkpoint would fail differently


def test_methods_of_the_built_in_tasks():
    assert method_of(vnet_test.get_config()) == "vnet"
    assert method_of(unet_test.get_config()) == "polaris"
    assert method_of({"task": "someone_elses"}) is None  # unknown: not refused here


def test_a_unet_workdir_given_to_apply_or_evaluate_names_the_family(tmp_path):
    from dustjax.vnet import apply as ap
    from dustjax.vnet.evaluate import evaluate

    unet = _workdir(tmp_path, unet_test)
    with pytest.raises(ap.ApplyError, match="POLARIS U-Net run .* apply needs a V-net run"):
        ap.model_region(unet)
    with pytest.raises(WrongMethodError, match="evaluate needs a V-net run"):
        evaluate(unet)
    assert training.require_method(unet, "polaris", "predict_map").model.name == "unet"


def test_predict_map_checks_method_correction_and_output_before_predicting(tmp_path):
    from dustjax.maps import MapError
    from dustjax.polaris.predict_map import predict_map

    fits_path = tmp_path / "map.fits"
    _write_map(fits_path)
    with pytest.raises(WrongMethodError, match="V-net run .* predict_map needs a POLARIS U-Net"):
        predict_map(fits_path, _workdir(tmp_path, vnet_test), 140.0)
    unet = _workdir(tmp_path, unet_test)  # no checkpoint: any load would fail otherwise
    with pytest.raises(MapError, match="residual_correction.json not found"):
        predict_map(fits_path, unet, 140.0, residual_correction="auto")
    (tmp_path / "blocker").write_text("")
    with pytest.raises(OutputError, match="is a file"):
        predict_map(fits_path, unet, 140.0, tmp_path / "blocker" / "out.fits")
