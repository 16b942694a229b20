"""ROI strings in idtracker.ai's syntax become the mask users drew, or an error they can act on."""

import numpy as np
import pytest

from shoal.roi import RoiError, parse_roi, roi_mask, roi_regions


def test_no_roi_is_the_whole_frame():
    assert roi_mask(None, 8, 5).all() and roi_mask([], 8, 5).shape == (5, 8)


def test_polygons_add_and_remove_in_order():
    square = "+ Polygon [[10, 10], [49, 10], [49, 49], [10, 49]]"
    hole = "- Polygon [[20.0, 20.0], [29.0, 20.0], [29.0, 29.0], [20.0, 29.0]]"
    mask = roi_mask([square, hole], 60, 60)
    assert mask[15, 15] and mask[45, 40]
    assert not mask[25, 25] and not mask[5, 5] and not mask[55, 30]
    assert mask.sum() == 40 * 40 - 10 * 10
    # Adding the square again after the removal covers the hole: order matters.
    assert roi_mask([square, hole, square], 60, 60).sum() == 40 * 40


def test_ellipse_with_python_dict_quoting_and_removal():
    ellipse = "+ Ellipse {'center': [50, 40], 'axes': [30, 10], 'angle': 0}"
    mask = roi_mask([ellipse], 100, 80)
    assert mask[40, 50] and mask[40, 78] and not mask[40, 85] and not mask[28, 50]
    # cv2 fills the boundary too, as in idtracker.ai, so the area is that of axes + 0.5 px.
    assert abs(mask.sum() - np.pi * 30.5 * 10.5) < 0.03 * np.pi * 30 * 10
    rotated = roi_mask(['+  Ellipse  {"center": [50.0, 40.0], "axes": [30, 10], "angle": 90.0}'], 100, 80)
    assert rotated[65, 50] and not rotated[40, 75]
    cut = roi_mask([ellipse, "- Ellipse {'center': [50, 40], 'axes': [5, 5], 'angle': 0}"], 100, 80)
    assert not cut[40, 50] and cut[40, 70]


def test_parse_gives_sign_kind_and_parameters():
    shapes = parse_roi(
        ["- Polygon [[0,0],[1,0],[1,1]]", "+ Ellipse {'center': [1, 2], 'axes': [3, 4], 'angle': 5}"]
    )
    assert (shapes[0].sign, shapes[0].kind, shapes[0].points.shape) == (-1, "Polygon", (3, 2))
    assert (shapes[1].sign, shapes[1].center, shapes[1].axes, shapes[1].angle) == (1, (1, 2), (3, 4), 5)


@pytest.mark.parametrize(
    "bad, words",
    [
        ("+ Polygn [[0, 0], [5, 0], [5, 5]]", ["ROI 2", 'unknown shape "Polygn"', "Polygon or Ellipse"]),
        ("+ Polygon [[0, 0], [5, 0]]", ["ROI 2", "at least 3 points"]),
        ("* Polygon [[0, 0], [5, 0], [5, 5]]", ["ROI 2", '"+"']),
        ("+ Polygon [[0, 0], [5, 0], [5, 5]", ["ROI 2", "cannot read"]),
        ("+ Ellipse {'center': [5, 5], 'axes': [3, 3]}", ["ROI 2", "missing 'angle'"]),
        ("+ Ellipse {'center': [5, 5], 'axes': [3, 3], 'angle': __import__('os')}", ["ROI 2", "cannot read"]),
    ],
)
def test_parse_errors_name_the_roi_and_the_problem(bad, words):
    with pytest.raises(RoiError) as info:
        roi_mask(["+ Polygon [[0, 0], [9, 0], [9, 9]]", bad], 20, 20)
    for word in words:
        assert word in str(info.value)


def test_roi_outside_the_frame_is_an_error():
    with pytest.raises(RoiError, match=r"ROI 1 .*covers no pixel"):
        roi_mask(["+ Polygon [[500, 500], [600, 500], [600, 600]]"], 100, 100)
    with pytest.raises(RoiError, match="no pixel"):
        roi_mask(
            ["+ Polygon [[0, 0], [50, 0], [50, 50]]", "- Polygon [[-1, -1], [99, -1], [99, 99], [-1, 99]]"],
            100,
            100,
        )


def test_regions_label_exclusive_arenas():
    mask = roi_mask(
        [
            "+ Ellipse {'center': [20, 20], 'axes': [10, 10], 'angle': 0}",
            "+ Polygon [[50, 5], [90, 5], [90, 35], [50, 35]]",
            "- Polygon [[60, 10], [80, 10], [80, 30], [60, 30]]",  # a hole: still one arena
        ],
        100,
        40,
    )
    regions = roi_regions(mask)
    assert regions.dtype == np.int32
    assert set(np.unique(regions)) == {-1, 0, 1}
    # Labels follow the raster order of each arena's first pixel: the rectangle starts higher.
    assert regions[20, 20] == 1 and regions[7, 55] == 0 and regions[33, 85] == 0
    assert regions[20, 70] == -1 and regions[2, 2] == -1
    assert np.array_equal(regions >= 0, mask)
