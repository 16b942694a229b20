"""The tracking flags of ``shoal track`` and ``shoal submit``, the one place they become
TrackingParams, and the pre-flight check that catches bad input before any service starts."""

from __future__ import annotations

import argparse
from pathlib import Path

from shoal.cli.common import UsageError
from shoal.params import DEFAULT_VIDEO_TRAIL, TRAJECTORY_FORMATS, ParamError, TrackingParams


def add_tracking_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking parameters (idtracker.ai names in --params files)")
    g.add_argument("--params", metavar="FILE.toml",
                   help="idtracker.ai-style parameter file; flags override it (default: none)")
    g.add_argument("--animals", type=int, help="number of animals (number_of_animals; default: none, required "
                                                "unless --no-identities, which then takes the most blobs in a frame)")
    g.add_argument("--intensity", type=float, nargs=2, metavar=("LO", "HI"),
                   help="foreground intensity range; LO > HI keeps both ends (>= LO or <= HI: light and "
                        "dark animals together); with --bkg, LO is the difference threshold "
                        "(default: chosen from the video)")
    g.add_argument("--area", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="blob area range in pixels (default: minimum chosen from the video, no maximum)")
    g.add_argument("--roi", action="append", metavar="SHAPE",
                   help='region of interest, e.g. "+ Polygon [[0,0],[500,0],[500,500]]"; repeatable '
                        "(default: the whole frame)")
    g.add_argument("--exclusive-rois", action="store_true",
                   help="each separate region of the ROI is its own arena; identities are numbered "
                        "region by region (exclusive_rois)")
    g.add_argument("--allow-missing-animals", action="store_true",
                   help="track even when no sampled frame shows half of --animals (allow_missing_animals; "
                        "e.g. animals hidden most of the time)")
    g.add_argument("--animals-per-roi", type=int, nargs="+", metavar="N",
                   help="animals in each exclusive region, regions in raster order of their top pixel "
                        "(default: read from frames showing all animals apart)")
    g.add_argument("--knowledge-from", metavar="SESSION",
                   help="start identity learning from an earlier session's identity model and number the "
                        "identities as it did (knowledge_transfer_folder; same animals, same image size; "
                        "default: learn from scratch)")
    g.add_argument("--id-image-size", type=int, metavar="PX",
                   help="side of the identification images (id_image_size; default: from the body length). "
                        "Give the earlier session's size to reuse its model with --knowledge-from")
    g.add_argument("--bkg", action="store_true", help="background subtraction (use_bkg)")
    g.add_argument("--intervals", type=int, nargs="+", metavar="F",
                   help="tracking intervals as start end [start end ...] (end exclusive; default: every frame)")
    g.add_argument("--no-identities", action="store_true", help="track without identities (track_wo_identities)")
    g.add_argument("--method", choices=["contrastive", "accumulation"],
                   help=f"identity learning route (default: {TrackingParams.method})")
    g.add_argument("--seed", type=int, help=f"random seed; same seed, same CPU result (default: {TrackingParams.seed})")
    g.add_argument("--formats", nargs="+", metavar="FORMAT",
                   help=f"trajectories_formats: {' '.join(TRAJECTORY_FORMATS)} (nwb: pip install 'shoal[nwb]'; "
                        f"the [nwb] table of --params names the session and species) (default: npy h5 csv)")
    g.add_argument("--video", action="store_true",
                   help="also write the overlay video SESSION/overlay.mp4, as shoal video does (output_video)")
    g.add_argument("--individual-videos", action="store_true",
                   help="also write one animal-centred video per identity in SESSION/individual_videos/, as "
                        "shoal video --individual does (output_individual_videos)")
    g.add_argument("--video-trail", type=int, metavar="FRAMES",
                   help=f"trail of --video in frames (video_trail; default {DEFAULT_VIDEO_TRAIL})")
    g.add_argument("--individual-video-size", type=int, metavar="PX",
                   help="side of --individual-videos in pixels (individual_video_size; default: body length)")


def build_params(args: argparse.Namespace, videos: list[str]) -> TrackingParams:
    base = TrackingParams.from_toml(args.params).to_dict() if args.params else {}
    base.pop("video_paths", None)
    overrides = {
        "number_of_animals": args.animals, "intensity_ths": args.intensity, "area_ths": args.area,
        "roi_list": args.roi, "use_bkg": True if args.bkg else None, "method": args.method, "seed": args.seed,
        "track_wo_identities": True if args.no_identities else None, "trajectories_formats": args.formats,
        "exclusive_rois": True if args.exclusive_rois else None, "animals_per_roi": args.animals_per_roi,
        "id_image_size": args.id_image_size,
        "knowledge_transfer_folder": _gateway_path(args.knowledge_from) if args.knowledge_from else None,
        "output_video": True if args.video else None, "video_trail": args.video_trail,
        "output_individual_videos": True if args.individual_videos else None,
        "individual_video_size": args.individual_video_size,
        "allow_missing_animals": True if args.allow_missing_animals else None,
    }
    if args.intervals:
        if len(args.intervals) % 2:
            raise ParamError("tracking_intervals", "--intervals needs pairs of frames: start end [start end ...]")
        overrides["tracking_intervals"] = list(zip(args.intervals[::2], args.intervals[1::2], strict=True))
    params = TrackingParams.from_dict({**base, **{k: v for k, v in overrides.items() if v is not None},
                                       "video_paths": [_gateway_path(v) for v in videos]})
    return params.validate()


def _gateway_path(path: str) -> str:
    """A path that exists here goes to the gateway absolute (local mode and `shoal serve` share this
    file system); any other as given, which a remote gateway reads relative to its data root."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def check_locally(params: TrackingParams) -> None:
    """Catch bad input before starting any service (:func:`shoal.preflight.preflight`, as the gateway
    does at submission): one clear line instead of a failed job."""
    from shoal.preflight import preflight
    from shoal.video import VideoError

    try:
        preflight(params)
    except VideoError as exc:
        raise UsageError(str(exc)) from None
    except RuntimeError as exc:  # a format whose library is missing here
        raise ParamError("trajectories_formats", str(exc)) from None
