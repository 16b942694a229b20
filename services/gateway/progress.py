"""The gateway's one list of job stages, their weights, and the maths that turns per-stage progress
into a job's overall fraction. Pure: the scheduler stores what these functions return.

The order of :data:`STAGE_WEIGHTS` is the order stages run in: a report for a stage marks every
earlier one complete (a stage that reports nothing, or whose last report was lost, still counts).
"""

from __future__ import annotations

from typing import Any

#: weight of each stage in a job's overall fraction done (they add up to 1), in the order they run
STAGE_WEIGHTS = {
    "probe": 0.03,
    "segment": 0.47,
    "crossings": 0.05,
    "fragments": 0.03,
    "identities": 0.32,
    "assign": 0.03,
    "postprocess": 0.03,
    "write": 0.04,
}
#: weight of the `video` stage (after `write`) per kind of video a job renders; a guess, since
#: rendering runs on one assembler thread while segmentation is spread over the segmenters
VIDEO_WEIGHT = 0.08

Stages = dict[str, dict[str, float]]


def stage_weights(params: dict[str, Any]) -> dict[str, float]:
    """STAGE_WEIGHTS, plus a `video` stage when the job renders videos (the others scaled to make room)."""
    kinds = sum(bool(params.get(key)) for key in ("output_video", "output_individual_videos"))
    if not kinds:
        return STAGE_WEIGHTS
    video = VIDEO_WEIGHT * kinds
    return {**{stage: weight * (1 - video) for stage, weight in STAGE_WEIGHTS.items()}, "video": video}


def advance(stages: Stages, weights: dict[str, float], stage: str, done: float, total: float) -> tuple[float, float]:
    """Record ``done`` of ``total`` for ``stage`` in ``stages`` (in place), mark the stages before it
    complete, and return (the stage's fraction, the job's overall fraction). A stage not in
    ``weights`` is recorded but weighs nothing."""
    fraction = min(1.0, done / total) if total else 0.0
    stages[stage] = {**stages.get(stage, {}), "done": done, "total": total, "fraction": fraction}
    order = list(weights)
    for earlier in order[: order.index(stage)] if stage in order else []:
        stages.setdefault(earlier, {"done": 1, "total": 1})["fraction"] = 1.0
    overall = sum(weights[s] * stages.get(s, {}).get("fraction", 0.0) for s in weights)
    return fraction, overall


def stored(stages: Stages) -> Stages:
    """``stages`` as the job store keeps them (without the ``figures_*`` entries)."""
    return {s: {k: v for k, v in d.items() if not k.startswith("figures_")} for s, d in stages.items()}


def numeric(figures: dict[str, Any]) -> dict[str, float]:
    """The numeric figures of a report, as floats (a job's figures are numbers only)."""
    return {k: float(v) for k, v in figures.items() if isinstance(v, int | float)}
