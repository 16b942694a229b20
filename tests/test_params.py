"""Tracking parameters: idtracker.ai files load, every bad value names its field, and every field
travels through TOML, JSON, the gRPC message and its flag as the parameter table declares."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import msgpack
import pytest

from shoal.cli.flags import add_tracking_flags, build_params
from shoal.params import PARAMS, ParamError, TrackingParams, default_text
from shoal.params_proto import IN_REQUEST, params_from_proto, params_to_proto
from shoal.v1 import jobs_pb2 as pb

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


@pytest.mark.parametrize(("overrides", "field"), [
    ({"setup_points": {"border": [[0]]}}, "setup_points"),
    ({"tracking_intervals": [(0, 5, 7)]}, "tracking_intervals"),
    ({"method": "magic"}, "method"),
])
def test_a_params_object_built_directly_is_checked_as_strictly(overrides, field):
    """validate() checks what from_dict's readers check, for params made in code (shoal demo, tests)."""
    with pytest.raises(ParamError) as err:
        TrackingParams(**{**_valid(), **overrides}).validate()
    assert err.value.field == field


def test_zero_animals_is_fine_without_identities():
    TrackingParams.from_dict(_valid(number_of_animals=0, track_wo_identities=True)).validate()


def test_background_threshold_may_exceed_upper_bound_with_bkg():
    """With background subtraction only ``lo`` (the difference threshold) is used."""
    TrackingParams.from_dict(_valid(use_bkg=True, intensity_ths=[200, 100])).validate()


def test_a_raw_range_that_wraps_is_both_ends_and_survives_every_conversion():
    """[200, 100] without background: pixels >= 200 or <= 100 (a white and a black mouse)."""
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
    path = tmp_path / "p.toml"
    path.write_text('video_paths = ["v.avi"]\nnumber_of_animals = 2\ntrajectories_formats = ["npy", "sleap", "nwb"]\n'
                    '[nwb]\nspecies = "Mus musculus"\nsession_start_time = 2026-03-01T09:30:00Z\n'
                    'experimenter = ["Curie, Marie", "Noether, Emmy"]\n')
    params = TrackingParams.from_toml(path).validate()
    assert params.nwb == {"species": "Mus musculus", "session_start_time": "2026-03-01T09:30:00+00:00",
                          "experimenter": ["Curie, Marie", "Noether, Emmy"]}
    back = TrackingParams.from_dict({**params_from_proto(params_to_proto(params)), "video_paths": ["v.avi"]})
    assert back.validate() == params


# -- the parameter table: each field declared once, every conversion derived from it ------------------

ROI = "+ Polygon [[0, 0], [90, 0], [90, 90]]"
#: a value other than the default for every field, with what it needs beside it to be valid
EXAMPLES: dict[str, tuple[object, dict]] = {
    "video_paths": (["/data/a.avi", "/data/b.avi"], {}),
    "number_of_animals": (7, {}),
    "intensity_ths": ((200.0, 100.0), {}),
    "area_ths": ((20.0, math.inf), {}),
    "roi_list": ([ROI, "- Ellipse [[40, 40], [5, 5], 0]"], {}),
    "use_bkg": (True, {}),
    "background_subtraction_stat": ("max", {}),
    "number_of_frames_for_background": (40, {}),
    "tracking_intervals": ([(0, 100), (200, 300)], {}),
    "track_wo_identities": (True, {}),
    "exclusive_rois": (True, {"roi_list": [ROI]}),
    "resolution_reduction": (0.5, {}),
    "id_image_size": (36, {}),
    "check_segmentation": (True, {}),
    "trajectories_formats": (["csv_tidy", "sleap"], {}),
    "frames_per_episode": (250, {}),
    "output_dir": ("/data/session", {}),
    "knowledge_transfer_folder": ("/data/earlier_session", {}),
    "setup_points": ({"border": [(0.0, 0.0), (90.0, 0.0), (90.0, 90.0)]}, {}),
    "identities_labels": (["a", "b", "c", "d"], {}),
    "animals_per_roi": ([1, 3], {"exclusive_rois": True, "roi_list": [ROI]}),
    "method": ("accumulation", {}),
    "seed": (9, {}),
    "output_video": (True, {}),
    "output_individual_videos": (True, {}),
    "video_trail": (5, {"output_video": True}),
    "individual_video_size": (64, {"output_individual_videos": True}),
    "allow_missing_animals": (True, {}),
    "nwb": ({"species": "Danio rerio"}, {}),
}


def _example(name: str) -> TrackingParams:
    value, beside = EXAMPLES[name]
    return TrackingParams(**{**_valid(), **beside, name: value}).validate()


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "inf" if value == math.inf else json.dumps(value)


def _argv(name: str, value) -> list[str]:
    row = PARAMS[name]
    if row.kind == "switch":
        return [row.flag]
    if row.repeat:
        return [word for v in value for word in (row.flag, v)]
    flat = [x for pair in value for x in pair] if row.kind == "intervals" else value
    return [row.flag, *map(str, flat if isinstance(flat, list | tuple) else [flat])]


def test_every_field_has_a_row_and_an_example():
    assert set(EXAMPLES) == set(PARAMS) == {f.name for f in dataclasses.fields(TrackingParams)}
    for name in PARAMS:
        assert getattr(_example(name), name) != getattr(TrackingParams(), name), name


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_every_parameter_survives_toml_json_the_grpc_message_and_its_flag(name, tmp_path):
    params = _example(name)
    assert TrackingParams.from_dict(json.loads(json.dumps(params.to_dict(), allow_nan=False))) == params
    toml = tmp_path / "p.toml"
    toml.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in dataclasses.asdict(params).items() if v is not None))
    assert TrackingParams.from_toml(toml) == params
    message = pb.SubmitJobRequest(params=params_to_proto(params)).SerializeToString()
    back = params_from_proto(pb.SubmitJobRequest.FromString(message).params)
    assert TrackingParams.from_dict({**back, **{k: getattr(params, k) for k in IN_REQUEST}}) == params
    if PARAMS[name].flag:
        parser = argparse.ArgumentParser()
        add_tracking_flags(parser)
        beside = [w for k, v in EXAMPLES[name][1].items() for w in _argv(k, v)]
        args = parser.parse_args(["--animals", "4", *beside, *_argv(name, getattr(params, name))])
        assert build_params(args, params.video_paths) == params


def test_the_grpc_message_types_exactly_the_rows_marked_proto_and_its_zero_values_are_the_defaults():
    message_fields = pb.TrackingParams.DESCRIPTOR.fields_by_name
    assert {n for n, row in PARAMS.items() if row.proto} == set(message_fields) - {"extra"}
    assert IN_REQUEST == {"video_paths", "output_dir"}
    plain = TrackingParams(**_valid())
    assert params_from_proto(pb.TrackingParams()) == {}  # an empty message asks for every default
    assert TrackingParams.from_dict({**params_from_proto(params_to_proto(plain)), **_valid()}) == plain
    assert not params_to_proto(plain).extra  # defaults need no extra


def test_the_api_docs_list_every_typed_field_with_its_default():
    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    table = text[text.index("| field | meaning | default |"):]
    rows = [line.split(" | ") for line in table.split("\n\n")[0].splitlines()[2:]]
    documented = {row[0].strip("| `"): row[-1].rstrip(" |") for row in rows}
    typed = [n for n, row in PARAMS.items() if row.proto]
    assert sorted(documented) == sorted([*typed, "extra"]) and len(rows) == len(documented)
    assert {n: documented[n] for n in typed} == {n: default_text(n) for n in typed}
