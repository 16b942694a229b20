"""Tracking parameters: idtracker.ai files load, and every bad value names its field."""

from __future__ import annotations

import math
from pathlib import Path

import msgpack
import pytest

from shoal.params import ParamError, TrackingParams

IDTRACKERAI_V6_TOML = """\
name = 'example'
video_paths = ['/home/user/idtrackerai/video_A.avi']
intensity_ths = [0, 155]
area_ths = [100.0, inf]
tracking_intervals = ""
number_of_animals = 8
use_bkg = false
check_segmentation = false
track_wo_identities = false
roi_list = ['+ Polygon [[138.0, 50.1], [992.9, 62.1], [996.9, 878.9]]']
exclusive_rois = false
"""


def _valid(**kw) -> dict:
    return {"video_paths": ["/data/v.avi"], "number_of_animals": 4, **kw}


def test_idtrackerai_v6_toml_loads(tmp_path: Path):
    path = tmp_path / "example.toml"
    path.write_text(IDTRACKERAI_V6_TOML)
    p = TrackingParams.from_toml(path).validate()
    assert p.video_paths == ["/home/user/idtrackerai/video_A.avi"]
    assert p.number_of_animals == 8
    assert p.intensity_ths == (0.0, 155.0)
    assert p.area_ths == (100.0, math.inf)
    assert p.tracking_intervals is None
    assert p.roi_list == ["+ Polygon [[138.0, 50.1], [992.9, 62.1], [996.9, 878.9]]"]
    assert p.use_bkg is False and p.track_wo_identities is False


def test_keys_are_case_insensitive():
    p = TrackingParams.from_dict({"VIDEO_PATHS": ["a.avi"], "Number_Of_Animals": 3, "Intensity_THS": [10, 90]})
    assert p.video_paths == ["a.avi"] and p.number_of_animals == 3 and p.intensity_ths == (10.0, 90.0)


def test_single_video_path_string_and_id_image_size_list():
    p = TrackingParams.from_dict(_valid(video_paths="one.avi", id_image_size=[40, 40, 1]))
    assert p.video_paths == ["one.avi"] and p.id_image_size == 40


def test_unknown_key_is_named(tmp_path: Path):
    with pytest.raises(ParamError) as err:
        TrackingParams.from_dict(_valid(number_of_aminals=5))
    assert err.value.field == "number_of_aminals"
    assert "number_of_aminals" in str(err.value)
    path = tmp_path / "p.toml"
    path.write_text(IDTRACKERAI_V6_TOML + "bogus_key = 3\n")
    with pytest.raises(ParamError) as err:
        TrackingParams.from_toml(path)
    assert err.value.field == "bogus_key"


def test_unreadable_or_invalid_toml_is_a_param_error(tmp_path: Path):
    with pytest.raises(ParamError) as err:
        TrackingParams.from_toml(tmp_path / "missing.toml")
    assert err.value.field == "params"
    bad = tmp_path / "bad.toml"
    bad.write_text("number_of_animals = = 3\n")
    with pytest.raises(ParamError, match="not valid TOML"):
        TrackingParams.from_toml(bad)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"video_paths": []}, "video_paths"),
    ({"number_of_animals": -1}, "number_of_animals"),
    ({"number_of_animals": 0}, "number_of_animals"),
    ({"intensity_ths": [-5, 100]}, "intensity_ths"),
    ({"intensity_ths": [0, 300]}, "intensity_ths"),
    ({"area_ths": [100, 50]}, "area_ths"),
    ({"area_ths": [-1, 50]}, "area_ths"),
    ({"method": "magic"}, "method"),
    ({"trajectories_formats": ["npy", "xlsx"]}, "trajectories_formats"),
    ({"tracking_intervals": [[10, 5]]}, "tracking_intervals"),
    ({"tracking_intervals": [[-3, 5]]}, "tracking_intervals"),
    ({"tracking_intervals": [[0, 5, 7]]}, "tracking_intervals"),
    ({"tracking_intervals": [["a", 5]]}, "tracking_intervals"),
    ({"background_subtraction_stat": "mode"}, "background_subtraction_stat"),
    ({"number_of_frames_for_background": 0}, "number_of_frames_for_background"),
    ({"resolution_reduction": 1.5}, "resolution_reduction"),
    ({"id_image_size": 4}, "id_image_size"),
    ({"frames_per_episode": 2}, "frames_per_episode"),
    ({"use_bkg": "yes"}, "use_bkg"),
    ({"number_of_animals": "many"}, "number_of_animals"),
    ({"intensity_ths": [1]}, "intensity_ths"),
    ({"exclusive_rois": True}, "exclusive_rois"),  # arenas come from the ROI
    ({"exclusive_rois": True, "roi_list": ["+ Polygon [[0, 0], [9, 0], [9, 9]]"], "animals_per_roi": [3, 3]},
     "animals_per_roi"),  # 6 animals, not number_of_animals
    ({"exclusive_rois": True, "roi_list": ["+ Polygon [[0, 0], [9, 0], [9, 9]]"], "animals_per_roi": [0, 8]},
     "animals_per_roi"),
    ({"animals_per_roi": [4, 4]}, "animals_per_roi"),  # without exclusive_rois
    ({"knowledge_transfer_folder": "/s", "track_wo_identities": True}, "knowledge_transfer_folder"),
    ({"nwb": {"specie": "Danio rerio"}}, "nwb"),  # unknown key
    ({"nwb": {"sex": "female"}}, "nwb"),
    ({"nwb": {"age": "90 days"}}, "nwb"),
    ({"nwb": {"session_start_time": "2026-03-01T09:30:00"}}, "nwb"),  # no time zone
    ({"nwb": {"session_start_time": "yesterday"}}, "nwb"),
    ({"nwb": {"species": 7}}, "nwb"),
    ({"nwb": "Danio rerio"}, "nwb"),
])
def test_bad_values_name_their_field(overrides, field):
    with pytest.raises(ParamError) as err:
        TrackingParams.from_dict(_valid(**overrides)).validate()
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}:")


def test_zero_animals_is_fine_without_identities():
    TrackingParams.from_dict(_valid(number_of_animals=0, track_wo_identities=True)).validate()


def test_background_threshold_may_exceed_upper_bound_with_bkg():
    """With background subtraction only ``lo`` (the difference threshold) is used."""
    TrackingParams.from_dict(_valid(use_bkg=True, intensity_ths=[200, 100])).validate()


def test_a_raw_range_that_wraps_is_both_ends_and_survives_every_conversion():
    """[200, 100] without background: pixels >= 200 or <= 100 (a white and a black mouse)."""
    from shoal.params_proto import params_from_proto, params_to_proto

    params = TrackingParams.from_dict(_valid(intensity_ths=[200, 100])).validate()
    assert params.intensity_ths == (200.0, 100.0)
    assert TrackingParams.from_dict(params_from_proto(params_to_proto(params))).intensity_ths == (200.0, 100.0)


def test_dict_round_trip_keeps_every_field_including_inf():
    p = TrackingParams.from_dict(_valid(area_ths=[20, math.inf], tracking_intervals=[[0, 100], [200, 300]],
                                        roi_list=["+ Polygon [[0,0],[9,0],[9,9]]"], id_image_size=36,
                                        resolution_reduction=0.5, method="accumulation", seed=9,
                                        identities_labels=["a", "b", "c", "d"])).validate()
    d = p.to_dict()
    back = TrackingParams.from_dict(d)
    assert back == p
    assert back.area_ths[1] == math.inf
    assert TrackingParams.from_dict(msgpack.unpackb(msgpack.packb(d))) == p


def test_to_dict_is_msgpack_and_strict_json_safe():
    import json

    d = TrackingParams.from_dict(_valid()).to_dict()
    assert msgpack.unpackb(msgpack.packb(d))["number_of_animals"] == 4
    json.dumps(d, allow_nan=False)  # inf must not leak: other languages' JSON parsers reject it


def test_the_nwb_table_of_a_toml_file_reaches_the_gateway_and_back(tmp_path):
    """TOML dates become ISO 8601 text, so the table travels in the proto's `extra` as JSON."""
    from shoal.params_proto import params_from_proto, params_to_proto

    path = tmp_path / "p.toml"
    path.write_text('video_paths = ["v.avi"]\nnumber_of_animals = 2\ntrajectories_formats = ["npy", "sleap", "nwb"]\n'
                    '[nwb]\nspecies = "Mus musculus"\nsession_start_time = 2026-03-01T09:30:00Z\n'
                    'experimenter = ["Curie, Marie", "Noether, Emmy"]\n')
    params = TrackingParams.from_toml(path).validate()
    assert params.nwb == {"species": "Mus musculus", "session_start_time": "2026-03-01T09:30:00+00:00",
                          "experimenter": ["Curie, Marie", "Noether, Emmy"]}
    back = TrackingParams.from_dict({**params_from_proto(params_to_proto(params)), "video_paths": ["v.avi"]})
    assert back.validate() == params
