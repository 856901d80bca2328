"""The fast photometric distortion against the pre-#14 implementation (tests/data/legacy_transforms.py).

Same rng draws in the same order, bit-identical per-value steps (brightness, contrast), and the
OpenCV HSV steps equal to the reference formulas up to float32 rounding, hue wrap-around included.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnet.data.photometric import Photometric, Scratch, distort, draw_photometric, photometric_distort, value_table
from tests.data.legacy_transforms import hsv_to_rgb, rgb_to_hsv
from tests.data.legacy_transforms import photometric_distort as legacy_distort

# float32 HSV in another operation order: a few ulps at 255 (1.5e-5 each); measured <= 8.5e-4 (300 seeds)
HSV_TOL = 2e-3


def _pixels() -> np.ndarray:
    """uint8 [64, 64, 3]: random colours plus the edge cases (greys, black, white, pure and
    near-red hues on both sides of H = 0/360, one-level differences)."""
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    special = [[0, 0, 0], [255, 255, 255], [128, 128, 128], [1, 0, 0], [255, 0, 0], [255, 0, 1], [255, 1, 0]]
    special += [[0, 255, 0], [0, 0, 255], [255, 255, 0], [200, 100, 199], [200, 199, 100], [3, 2, 2], [254, 255, 255]]
    img[0, : len(special)] = special
    return img


def test_draws_match_the_legacy_order_and_decisions() -> None:
    image = _pixels()
    for seed in range(200):
        rng_new, rng_old = np.random.default_rng(seed), np.random.default_rng(seed)
        new = photometric_distort(image, rng_new)
        old = legacy_distort(image, rng_old)
        assert rng_new.random() == rng_old.random()  # same number of draws
        np.testing.assert_allclose(new, old, rtol=0, atol=HSV_TOL, err_msg=f"seed {seed}")


def test_per_value_steps_are_bit_identical() -> None:
    # without the HSV steps the look-up table reproduces the original float32 arithmetic exactly
    image = _pixels()
    for seed in range(200):
        p = draw_photometric(np.random.default_rng(seed), channel_swap_prob=0.0)
        if p.uses_hsv:
            continue
        old = legacy_distort(image, np.random.default_rng(seed), channel_swap_prob=0.0)
        np.testing.assert_array_equal(distort(image, p), old)


@pytest.mark.parametrize("hue", [-18.0, -0.5, 0.5, 17.9])
@pytest.mark.parametrize("saturation", [0.5, 1.0, 1.5])
def test_hsv_steps_match_the_reference_formula(hue: float, saturation: float) -> None:
    """Forced hue/saturation at the ends of their ranges: OpenCV's wrap of H outside [0, 360)."""
    image = _pixels()
    hsv = rgb_to_hsv(image.astype(np.float64))
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
    hsv[..., 0] = (hsv[..., 0] + hue) % 360
    expected = np.clip(hsv_to_rgb(hsv), 0, 255)
    out = distort(image, Photometric(saturation=saturation, hue=hue))
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=HSV_TOL)


def test_value_table_order_and_contrast_placement() -> None:
    assert value_table(Photometric()) is None
    assert value_table(Photometric(saturation=1.2)) is None
    table = value_table(Photometric(brightness=-40.0, contrast=2.0))
    assert table is not None and table.dtype == np.float32 and table.shape == (256,)
    assert table[0] == 0 and table[40] == 0 and table[100] == 120 and table[255] == 255  # add, clip, scale, clip
    # contrast after an HSV step that fires stays out of the table; with no HSV step it folds in
    assert value_table(Photometric(contrast=2.0, contrast_last=True, hue=3.0)) is None
    assert value_table(Photometric(contrast=2.0, contrast_last=True))[100] == 200


def test_distort_reads_a_strided_window() -> None:
    image = _pixels()
    p = Photometric(brightness=10.0, saturation=0.7, hue=-5.0, contrast=1.3, contrast_last=True)
    window = image[5:40, 7:50]
    np.testing.assert_array_equal(distort(window, p), distort(np.ascontiguousarray(window), p))


def test_rejects_float_images() -> None:
    with pytest.raises(TypeError, match="uint8"):
        photometric_distort(np.zeros((4, 4, 3), np.float32), np.random.default_rng(0))


def test_scratch_buffers_are_reused_and_match_fresh_arrays() -> None:
    image = _pixels()
    p = Photometric(brightness=5.0, contrast=0.8, contrast_last=True, saturation=1.4, hue=-7.0)
    scratch = Scratch()
    first = distort(image[:40], p, scratch)
    np.testing.assert_array_equal(first, distort(image[:40], p))  # same values as without buffers
    assert any(np.shares_memory(first, b) for b in scratch._buffers.values())  # OpenCV wrote in place
    again = distort(image[:30, :20], p, scratch)  # a smaller window reuses the grown buffers
    assert any(np.shares_memory(again, b) for b in scratch._buffers.values())
    assert len(scratch._buffers) == 2
