"""Identification images: the same animal gives the same crop whatever its heading (up to 180°)."""

import math

import numpy as np
import pytest

from services.segmenter.crops import crop_geometry, identification_images
from shoal.segmentation import body_length, segment_frame

SIZE = 260


def draw_animal(theta, center=(130.3, 120.7), background=220):
    """A fish-like animal: elongated body shaded from head to tail, with a dark eye off the axis."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    dx, dy = xx - center[0], yy - center[1]
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    gray = np.full((SIZE, SIZE), float(background))
    body = (u / 30) ** 2 + (v / 9) ** 2 <= 1
    gray[body] = 90 + 1.5 * u[body]
    gray[(u - 20) ** 2 + (v - 3) ** 2 <= 16] = 20
    return np.clip(gray, 0, 255).astype(np.uint8)


def crop_of(gray, side=None, scale=None, index=None):
    """Crop of the only blob (or of row ``index``), sized from its body length unless given."""
    table = segment_frame(gray, 0, (0, 160), (50, math.inf))
    assert index is not None or len(table) == 1
    if side is None:
        side, scale = crop_geometry(body_length(table, 1))
    rows = np.arange(len(table)) if index is None else np.array([index])
    return identification_images(gray, table, rows, side, scale), table


def mad(a, b):
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_rotated_animal_gives_the_same_crop_up_to_180_degrees():
    (reference,), _ = crop_of(draw_animal(0.0))
    for degrees in (17, 45, 90, 133, 180, 250, 311):
        (crop,), _ = crop_of(draw_animal(math.radians(degrees)))
        same = min(mad(crop, reference), mad(crop, np.rot90(reference, 2)))
        assert same < 9, degrees
        # A wrong alignment is far off, so the check above can fail.
        assert mad(crop, np.rot90(reference, 1)) > 4 * same


def test_crop_is_centred_on_the_animal_along_the_main_diagonal():
    (crop,), _ = crop_of(draw_animal(math.radians(70)))
    side = crop.shape[0]
    inside = crop > 0
    ys, xs = np.nonzero(inside)
    assert abs(xs.mean() - (side - 1) / 2) < 1.5 and abs(ys.mean() - (side - 1) / 2) < 1.5
    # Animal pixels lie along the main diagonal (x == y), not the anti-diagonal.
    assert np.abs(xs - ys).mean() < np.abs(xs + ys - (side - 1)).mean() / 2


def test_background_and_neighbours_outside_the_dilated_mask_are_zero():
    gray = draw_animal(math.radians(30), background=170)
    (alone,), table = crop_of(gray)
    assert alone.dtype == np.uint8
    assert alone[0, -1] == 0 and alone[-1, 0] == 0  # corners off the diagonal: arena
    assert (alone > 0).sum() < 1.3 * table.area[0]  # the blob plus a one-pixel ring
    # A second animal close by, inside the crop's square but not touching, leaves the crop unchanged.
    gray[131:136, 121:126] = 30
    (crop,), _ = crop_of(gray, side=alone.shape[0], scale=1.0, index=0)
    assert np.array_equal(crop, alone)


def test_downscaled_crops_and_several_blobs():
    gray = np.full((300, 400), 220, np.uint8)
    gray[:SIZE, :SIZE] = np.minimum(gray[:SIZE, :SIZE], draw_animal(0.3))
    gray[40:300, 140:400] = np.minimum(gray[40:300, 140:400], draw_animal(2.0, center=(200, 200)))
    table = segment_frame(gray, 4, (0, 180), (50, math.inf))
    assert len(table) == 2
    crops = identification_images(gray, table, np.array([1, 0, 1]), 20, 0.5)
    assert crops.shape == (3, 20, 20) and crops.dtype == np.uint8
    assert np.array_equal(crops[0], crops[2]) and crops[0].any() and crops[1].any()
    assert identification_images(gray, table, np.zeros(0, np.int64), 20, 0.5).shape == (0, 20, 20)


def test_crop_geometry_follows_idtracker_rules():
    assert crop_geometry(60.0) == (42, 1.0)  # 60 / sqrt 2 = 42.4 -> 42, already even
    assert crop_geometry(61.0) == (44, 1.0)  # 43.1 -> 43 -> rounded up to even 44
    side, scale = crop_geometry(200.0)  # 141.4 -> 142 > 80: scale down to 80 px
    assert (side, scale) == (80, round(80 / 142, 2))
    assert crop_geometry(200.0, max_side=160) == (142, 1.0)
    assert crop_geometry(200.0, resolution_reduction=0.3) == (44, 0.3)  # 142 * 0.3 = 42.6 -> 43 -> 44
    assert crop_geometry(200.0, id_image_size=52) == (52, round(52 / 142, 2))
    assert crop_geometry(60.0, id_image_size=40) == (40, 1.0)  # 40 / 42 >= 0.91: no reduction
    with pytest.raises(ValueError, match="body length"):
        crop_geometry(0.0)
