"""Tests of dustjax.polaris.predict_map: tiling, masking and resampling (appendix D)."""

import numpy as np

from dustjax.polaris import predict_map


def test_tiles_cover_the_map_and_overlap_as_asked():
    assert predict_map.tile_starts(10, 4, 4) == [0, 4, 6]
    assert predict_map.tile_starts(4, 4, 2) == [0]
    assert predict_map.tiles_per_axis(4) == (2, 2) and predict_map.tiles_per_axis(2) == (2, 1)
    image = np.random.default_rng(6).normal(size=(37, 50))
    out, count = predict_map.predict_tiled(lambda t: t * 2.0, image, 16, 4, batch_size=5)
    np.testing.assert_allclose(out, 2 * image, rtol=1e-6)
    assert count.min() >= 1 and count[8:-8, 8:-8].min() >= 4


def test_invalid_pixels_are_masked_and_small_maps_padded():
    image = np.random.default_rng(7).normal(size=(5, 7))
    image[2, 3] = np.nan
    calls = []

    def model(tiles):
        calls.append(tiles.shape)
        assert np.all(np.isfinite(tiles))  # NaN never reaches the model
        return tiles + 1.0

    out, _ = predict_map.predict_tiled(model, image, 8, 1)
    assert calls == [(1, 8, 8)]
    assert np.isnan(out[2, 3]) and np.isfinite(np.delete(out.ravel(), 2 * 7 + 3)).all()
    np.testing.assert_allclose(out[0], image[0] + 1.0, rtol=1e-5, atol=1e-6)


def test_resample_keeps_constants_and_masks_blank_regions():
    image = np.full((40, 60), 3.0)
    image[:20, :30] = np.nan
    out, valid = predict_map.resample(image, (20, 30))
    np.testing.assert_allclose(out[valid], 3.0, rtol=1e-5)
    assert not valid[:8, :13].any() and valid[12:, 17:].all()
