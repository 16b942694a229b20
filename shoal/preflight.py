"""Pre-flight: the parameters checked against the videos themselves, before a job exists.

``TrackingParams.validate`` checks what can be checked without the videos. This checks the rest,
the same way for ``shoal track`` (before any service starts) and for the gateway (before
``SubmitJob`` stores the job), so a mistake is one clear line or one ``INVALID_ARGUMENT``, never a
job that fails minutes later.
"""

from __future__ import annotations

from shoal.knowledge import check_compatible, model_info
from shoal.params import ParamError, TrackingParams
from shoal.roi import RoiError, roi_mask, roi_regions
from shoal.trajectory_files import check_formats
from shoal.video import VideoInfo, probe_video


def preflight(params: TrackingParams) -> VideoInfo:
    """The videos' info, once every parameter fits them.

    Raises :class:`shoal.video.VideoError` when a video cannot be read, :class:`ParamError` naming
    the parameter that does not fit (the ROI, the animals per region, the tracking intervals, the
    earlier session's model), and ``RuntimeError`` when an output format needs a library this
    machine lacks.
    """
    info = probe_video(params.video_paths)
    mask = None
    if params.roi_list:
        try:
            mask = roi_mask(params.roi_list, info.width, info.height)
        except RoiError as exc:
            raise ParamError("roi_list", str(exc)) from None
    if params.exclusive_rois and params.animals_per_roi is not None and mask is not None:
        n_regions = int(roi_regions(mask).max()) + 1
        if len(params.animals_per_roi) != n_regions:
            raise ParamError("animals_per_roi", f"{len(params.animals_per_roi)} counts given but the ROI has "
                                                f"{n_regions} separate regions; give one count per region")
    for i, (start, end) in enumerate(params.tracking_intervals or []):
        if end > info.n_frames:
            raise ParamError("tracking_intervals", f"interval {i} [{start}, {end}) ends after the video's "
                                                   f"{info.n_frames} frames")
    check_formats(params.trajectories_formats)
    if params.knowledge_transfer_folder:
        check_compatible(model_info(params.knowledge_transfer_folder), params.id_image_size, params.number_of_animals)
    return info
