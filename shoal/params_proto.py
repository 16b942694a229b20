"""Tracking parameters to and from the gRPC API's ``TrackingParams`` message, both ways in one place.

The rows of the parameter table marked ``proto`` travel as the message's typed field of the same
name; every other parameter whose value differs from its default travels in ``extra`` as JSON, so
a client and a gateway of different minor versions still agree on what was asked. The videos and
the session folder are fields of ``SubmitJobRequest`` itself. The client sends with
:func:`params_to_proto`, the gateway reads with :func:`params_from_proto`.
"""

from __future__ import annotations

import json

from shoal.params import PARAMS, TrackingParams
from shoal.v1 import jobs_pb2 as pb

_FIELDS = pb.TrackingParams.DESCRIPTOR.fields_by_name
#: parameters that SubmitJobRequest carries beside its TrackingParams
IN_REQUEST = {name for name in pb.SubmitJobRequest.DESCRIPTOR.fields_by_name if name in PARAMS}
_DEFAULTS = TrackingParams().to_dict()


def params_to_proto(params: TrackingParams) -> pb.TrackingParams:
    """The message for ``params``: typed fields, and the rest that differ from their defaults in ``extra``."""
    m = pb.TrackingParams()
    d = params.to_dict()
    for name, row in PARAMS.items():
        value = getattr(params, name)
        if not row.proto:
            if name not in IN_REQUEST and d[name] != _DEFAULTS[name]:
                m.extra[name] = json.dumps(d[name])
        elif value is None:
            continue
        elif row.kind == "intervals":
            m.tracking_intervals.extend(pb.Interval(start=a, end=b) for a, b in value)
        elif _FIELDS[name].is_repeated:
            getattr(m, name).extend(value)
        else:
            setattr(m, name, value)
    return m


def params_from_proto(m: pb.TrackingParams) -> dict:
    """The fields a client set, as idtracker.ai-style keys (unset fields keep their defaults).

    A proto3 field without presence cannot tell unset from zero, so zero, false or empty reads as
    unset (``tests/test_params.py`` checks that no such field's default is anything else)."""
    d: dict = {}
    for name, row in PARAMS.items():
        if not row.proto:
            continue
        value = getattr(m, name)
        if row.kind == "intervals":
            value = [[iv.start, iv.end] for iv in value]
        elif _FIELDS[name].is_repeated:
            value = list(value)
        if (m.HasField(name) if _FIELDS[name].has_presence else value):
            d[name] = value
    for key, text in m.extra.items():
        try:
            d[key] = json.loads(text)
        except json.JSONDecodeError:
            d[key] = text
    return d
