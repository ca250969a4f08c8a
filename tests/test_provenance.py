"""Provenance of outputs (dustjax.provenance): the record, and the writers that carry it."""

from __future__ import annotations

import json
import re

import jax.numpy as jnp
import ml_collections
import numpy as np
from astropy.io import fits

import dustjax
from dustjax import provenance
from dustjax.geometry import Region


def test_record_names_version_date_method_config_and_input_basenames():
    config = ml_collections.ConfigDict({"name": "vnet_sr", "seed": 3, "data": {"region": "SR"}})
    prov = provenance.record("vnet apply", config, inputs=["/home/me/runs/wd/", None, "cat.fits"])
    assert prov["dustjax_version"] == dustjax.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", prov["date_utc"])
    assert prov["method"] == "vnet apply" and prov["config_name"] == "vnet_sr"
    assert prov["inputs"] == ["wd", "cat.fits"]  # basenames, never absolute paths
    # The hash is of the settings, not of their order, nor of an earlier stamp.
    same = {"data": {"region": "SR"}, "seed": 3, "name": "vnet_sr"}
    assert provenance.config_hash(same) == prov["config_hash"]
    assert provenance.config_hash(provenance.stamp(same, prov)) == prov["config_hash"]
    assert provenance.config_hash(dict(same, seed=4)) != prov["config_hash"]
    assert len(prov["config_hash"]) == 16
    assert provenance.record("gp")["config_hash"] is None


def test_fits_cards_are_valid_fits_keywords():
    prov = provenance.record("gp", {"name": "x" * 100}, inputs=["a" * 90 + ".fits", "b.csv"])
    header = provenance.add_to_header(fits.Header(), prov)
    assert header["DJVERS"] == dustjax.__version__ and header["METHOD"] == "gp"
    assert header["NINPUTS"] == 2 and header["INPUT2"] == "b.csv"
    assert header["DATE"] == prov["date_utc"][:-1]
    assert len(header["CONFIG"]) <= 68 and len(header["INPUT1"]) <= 68
    fits.PrimaryHDU(header=header).header.tostring()  # a writable header


def test_vnet_maps_record_provenance_and_no_local_path(tmp_path, monkeypatch):
    from dustjax.vnet import apply as ap
    from dustjax.vnet.output import make_map

    region = Region.named("SR").with_shape((8, 8, 8))
    monkeypatch.setattr(ap, "model_region", lambda model: region)
    config = ml_collections.ConfigDict({"name": "vnet_test", "task": "density_from_extinction"})

    def load_predictor(model, region, symmetry="none"):
        return (lambda extinction: jnp.zeros_like(extinction)), region, config

    monkeypatch.setattr(ap, "load_predictor", load_predictor)
    model = tmp_path / "runs" / "wd_sr"
    files = make_map(str(model), "SR", tmp_path / "out", catalog="demo", demo_stars=300,
                     num_redraws=2, batch_size=2, plots=False)  # fmt: skip
    header = fits.getheader(files["fits"])
    assert header["METHOD"] == "vnet apply" and header["CONFIG"] == "vnet_test"
    assert header["CFGHASH"] == provenance.config_hash(config)
    assert header["MODELDIR"] == "wd_sr" and header["INPUT1"] == "wd_sr"
    text = (tmp_path / "out" / "summary.json").read_text()
    summary = json.loads(text)
    assert summary["provenance"]["inputs"] == ["wd_sr", "demo"]
    assert summary["provenance"]["date_utc"].startswith(header["DATE"])
    assert str(tmp_path) not in text and str(tmp_path) not in repr(header)


def test_a_stamped_training_config_loads_as_the_config_alone(tmp_path):
    from dustjax import io as dio
    from dustjax.training.workdir import CONFIG_FILE, load_config

    config = {"name": "unet_test", "num_epochs": 1}
    prov = provenance.record("train polaris", config)
    dio.write_json(tmp_path / CONFIG_FILE, provenance.stamp(config, prov))
    assert load_config(tmp_path).to_dict() == config
    assert dio.read_json(tmp_path / CONFIG_FILE)["provenance"]["config_name"] == "unet_test"
    assert np.all([k in prov for k in ("dustjax_version", "date_utc", "inputs")])
