"""Synthetic lab videos of look-alike animals, with exact ground truth.

`shoal simulate` (shoal.cli hands it the rest of its command line); the first line above is the
description its --help shows.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from shoal.help import HelpFormatter
from shoal.sim.config import CODECS, TANKS, SimulationConfig
from shoal.sim.output import write_simulation
from shoal.sim.presets import PRESET_NAMES


def arg_parser() -> argparse.ArgumentParser:
    """The flags of `shoal simulate`."""
    parser = argparse.ArgumentParser(prog="shoal simulate", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--animals", type=int, required=True, help="number of animals")
    parser.add_argument("--frames", type=int, required=True, help="number of frames")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="fish", help="kind of animal")
    parser.add_argument("--seed", type=int, default=0, help="seed of the motion (and of the looks, see --marking-seed)")
    parser.add_argument("--width", type=int, default=None, help="frame width in px (default: the preset's)")
    parser.add_argument("--height", type=int, default=None, help="frame height in px (default: the preset's)")
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second")
    parser.add_argument("--always-touching", action="store_true",
                        help="some animals touch in every frame: a video without global fragments")
    parser.add_argument("--arenas", type=int, default=1,
                        help="separate tanks side by side (their ROIs are printed, for --exclusive-rois)")
    parser.add_argument("--marking-seed", type=int, default=None,
                        help="seed of the animals' looks (default --seed): the same individuals in another video")
    hard = parser.add_argument_group("harder, as real recordings are (all off by default)")
    hard.add_argument("--body-length", type=float, metavar="PX",
                      help="median body length in px, e.g. 12-20 for small animals (default: the preset's range)")
    hard.add_argument("--schooling", type=float, default=0.0, metavar="S",
                      help="0..1: free animals turn towards and align with their neighbours (1: a tight school)")
    hard.add_argument("--resting", type=float, default=0.0, metavar="R",
                      help="0..0.9: fraction of the time each animal sits still, in rests of 20-120 frames")
    hard.add_argument("--dark-ends", type=float, default=0.0, metavar="F",
                      help="0..0.45: fraction of the width at each end darkening to the edge, where animals "
                           "fade out (makes the tank a rectangle)")
    hard.add_argument("--vignette", type=float, default=0.0, metavar="V",
                      help="0..0.95: light lost in the corners (0.5: half the centre's light)")
    hard.add_argument("--light-gradient", type=float, default=0.0, metavar="G",
                      help="0..1.5: uneven light, one side brighter by G, with broad brighter and darker patches")
    hard.add_argument("--debris", type=int, default=0, metavar="K",
                      help="K specks of dust, hairs and animal-sized bits, darker and lighter than the animals")
    hard.add_argument("--light-animals", action="store_true", help="light animals on a dark floor")
    hard.add_argument("--mixed-coats", action="store_true",
                      help="every other animal light, the others dark, on a mid-grey floor (white and black mice)")
    hard.add_argument("--tank", choices=TANKS, help="arena shape (default: drawn per seed; a rectangle with "
                                                    "--dark-ends)")
    hard.add_argument("--codec", choices=CODECS, default="ffv1",
                      help="ffv1 (lossless .avi), mjpg (.avi, --quality), h264 (.mp4, --bitrate; needs PyAV), "
                           "mp4v (.mp4)")
    hard.add_argument("--bitrate", type=float, metavar="KBPS", help="h264 bitrate in kbit/s (default: CRF 23)")
    hard.add_argument("--quality", type=int, metavar="Q", help="mjpg JPEG quality 1-100 (default 75)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`shoal simulate`: write a synthetic video with its ground truth."""
    parser = arg_parser()
    args = parser.parse_args(argv)
    try:
        config = SimulationConfig(args.animals, args.frames, args.width, args.height, args.preset,
                                  args.seed, args.fps, args.always_touching, n_arenas=args.arenas,
                                  marking_seed=args.marking_seed, body_length=args.body_length,
                                  schooling=args.schooling, resting=args.resting, dark_ends=args.dark_ends,
                                  vignette=args.vignette, light_gradient=args.light_gradient, debris=args.debris,
                                  light_animals=args.light_animals, mixed_coats=args.mixed_coats, tank=args.tank,
                                  codec=args.codec, bitrate=args.bitrate, quality=args.quality)
        paths = write_simulation(config, args.out)
    except (ValueError, OSError) as err:
        print(f"shoal simulate: {err}", file=sys.stderr)
        return 2
    with np.load(paths["ground_truth"]) as gt:
        n_crossings = len(gt["crossings"])
        touching = float(gt["touching"].mean())
        body_length = float(gt["body_length"])
    print(f"video:        {paths['video']}")
    print(f"ground truth: {paths['ground_truth']}")
    print(f"{config.n_animals} {config.preset}, {config.n_frames} frames of {config.width}x{config.height}, "
          f"body length {body_length:.1f} px")
    print(f"crossings (pairwise contacts): {n_crossings}; touching animal-frames: {touching:.1%}")
    if config.n_arenas > 1:
        print(f"arenas: {config.arena_sizes()} animals; ROI: "
              + " ".join(f'--roi "{roi}"' for roi in config.arena_rois()))
    if config.conditions():
        print("conditions: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in config.conditions().items()))
    return 0

