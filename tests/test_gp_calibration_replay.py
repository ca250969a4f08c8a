"""tools/gp_calibration_replay: a finished fit's calibration inputs recomputed from its saved
state (no refit) are those the pipeline calibrated on."""

import numpy as np
import pytest

from experiments.configs import gp_test
from tools import gp_calibration_replay as replay


@pytest.mark.slow
def test_inputs_from_state_reproduce_what_the_pipeline_calibrated_on(tmp_path):
    c = gp_test.get_config()
    c.fit.max_iterations = 20
    c.fit.min_iterations = 10
    saved = dict(np.load(replay.fit_and_save(str(tmp_path), 0, (2, 2, 1), config=c)))
    again = replay.inputs_from_state(tmp_path / "final_state.npz", c, save=str(tmp_path / "x.npz"))
    assert set(again) == set(saved)
    for key, value in saved.items():  # the same stars, split, star grid and sampling seeds
        np.testing.assert_allclose(again[key], value, rtol=1e-6, atol=1e-9, err_msg=key)
    assert saved["pct"].shape == (3, 300) and saved["fit_pct"].shape == (3, 2700)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npz")["fit_true"], saved["fit_true"])
