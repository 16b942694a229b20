"""Tracking parameters to and from the gRPC API's ``TrackingParams`` message, both ways in one place.

The fields the proto types (``_TYPED``) travel as themselves; every other parameter whose value
differs from its default travels in ``extra`` as JSON, so a client and a gateway of different
minor versions still agree on what was asked. The client sends with :func:`params_to_proto`, the
gateway reads with :func:`params_from_proto`; ``tests/test_params.py`` round-trips them.
"""

from __future__ import annotations

import json

from shoal.params import TrackingParams
from shoal.v1 import jobs_pb2 as pb

#: TrackingParams fields with a typed field in the proto message; the rest travel in ``extra``
_TYPED = {"number_of_animals", "intensity_ths", "area_ths", "roi_list", "use_bkg", "background_subtraction_stat",
          "tracking_intervals", "track_wo_identities", "exclusive_rois", "resolution_reduction", "id_image_size",
          "check_segmentation", "trajectories_formats", "method", "seed", "frames_per_episode"}
_DEFAULTS = TrackingParams().to_dict()


def params_to_proto(params: TrackingParams) -> pb.TrackingParams:
    """The message for ``params``: typed fields, and the rest that differ from their defaults in ``extra``."""
    d = params.to_dict()
    m = pb.TrackingParams(
        number_of_animals=params.number_of_animals, roi_list=params.roi_list or [], use_bkg=params.use_bkg,
        background_subtraction_stat=params.background_subtraction_stat,
        track_wo_identities=params.track_wo_identities, exclusive_rois=params.exclusive_rois,
        check_segmentation=params.check_segmentation, trajectories_formats=params.trajectories_formats,
        method=params.method, seed=params.seed, frames_per_episode=params.frames_per_episode,
        tracking_intervals=[pb.Interval(start=a, end=b) for a, b in params.tracking_intervals or []],
    )
    if params.intensity_ths is not None:
        m.intensity_ths.extend(params.intensity_ths)
    if params.area_ths is not None:
        m.area_ths.extend(params.area_ths)
    if params.resolution_reduction is not None:
        m.resolution_reduction = params.resolution_reduction
    if params.id_image_size is not None:
        m.id_image_size = params.id_image_size
    for key, value in d.items():
        if key not in _TYPED and key not in ("video_paths", "output_dir") and value != _DEFAULTS[key]:
            m.extra[key] = json.dumps(value)
    return m


def params_from_proto(m: pb.TrackingParams) -> dict:
    """The fields a client set, as idtracker.ai-style keys (unset fields keep their defaults)."""
    d: dict = {}
    if m.number_of_animals:
        d["number_of_animals"] = m.number_of_animals
    if m.intensity_ths:
        d["intensity_ths"] = list(m.intensity_ths)
    if m.area_ths:
        d["area_ths"] = list(m.area_ths)
    if m.roi_list:
        d["roi_list"] = list(m.roi_list)
    for key in ("use_bkg", "track_wo_identities", "exclusive_rois", "check_segmentation"):
        if getattr(m, key):
            d[key] = True
    if m.background_subtraction_stat:
        d["background_subtraction_stat"] = m.background_subtraction_stat
    if m.tracking_intervals:
        d["tracking_intervals"] = [[iv.start, iv.end] for iv in m.tracking_intervals]
    for key in ("resolution_reduction", "id_image_size", "frames_per_episode"):
        if m.HasField(key):
            d[key] = getattr(m, key)
    if m.trajectories_formats:
        d["trajectories_formats"] = list(m.trajectories_formats)
    if m.method:
        d["method"] = m.method
    if m.seed:
        d["seed"] = m.seed
    for key, text in m.extra.items():
        try:
            d[key] = json.loads(text)
        except json.JSONDecodeError:
            d[key] = text
    return d
