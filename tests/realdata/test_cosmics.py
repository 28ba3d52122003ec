"""Cosmic-ray detection (``ensai_tf.realdata.cosmics``, docs/design.md §8.4 step 2)."""

import numpy as np
import pytest
from realdata_files import S
from scipy import ndimage

from ensai_tf import conventions, realdata


def _arc_with_hits(seed=0):
    rng = np.random.default_rng(seed)
    x, y = conventions.pixel_grid(120, S)
    arc = np.exp(-0.5 * ((np.hypot(x, y) - 1.2) / 0.05) ** 2)
    arc = ndimage.gaussian_filter(arc, 0.07 / realdata.FWHM_PER_SIGMA / S)
    image = arc / arc.max() + 0.1 + 0.01 * rng.standard_normal(arc.shape)
    hits = [(10, 15), (100, 30), (60, 60), (35, 90), (90, 100)]
    for col, row in hits:
        image[row, col] += 2.0
    image[60, 61] += 1.0  # a two-pixel hit
    return image, hits


@pytest.mark.parametrize("method", ["laplacian", "lacosmic"])
def test_cosmic_rays_found_and_arcs_spared(method):
    if method == "lacosmic":
        pytest.importorskip("astroscrappy")
    image, hits = _arc_with_hits()
    cr = realdata.detect_cosmic_rays(image, method=method)
    centres = realdata.cosmic_ray_centres(cr)
    assert len(centres) == len(hits)  # every hit once, and no arc pixel
    for col, row in hits:
        assert np.min(np.hypot(centres[:, 0] - col, centres[:, 1] - row)) < 1.0
