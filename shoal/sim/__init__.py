"""Synthetic lab videos of look-alike animals, with exact ground truth.

This is how the project knows whether identities are right. Every video shows N animals of one
kind (fish, flies or mice) that look alike except for subtle individual markings (a few small spots
or bands at individual-specific places, body size within +-3 %, body grey within +-2 levels), as in
the videos idtracker.ai was validated on (Romero-Ferrero et al. 2019). The animals move in bouts,
avoid the arena wall, and are deliberately brought together in *crossings*: two or three animals
touch for 10-50 frames, their bodies merging into one blob, and then leave in random directions.
Between crossings there are stretches where every animal is alone (the global fragments the
method starts from).

To keep the identity benchmark honest, the look is drawn from ranges per seed (body shape, contrast,
marking style and strength, noise, flicker, blur, motion parameters), so that a tracker tuned on
one seed has to generalise. Animals are rendered one small patch each with analytic anti-aliasing
(coverage = signed distance + 1/2), so shapes move and bend smoothly at sub-pixel precision and a
3000-frame 1000x1000 video renders in seconds. The ground-truth position of an animal is the
centroid of its own rendered silhouette, which is what a segmentation of an isolated animal
measures.

Several separate arenas (``n_arenas``, tanks side by side, animals never leave their own) test
exclusive ROIs; ``marking_seed`` films the same individuals again with new motion, for knowledge
transfer between sessions.

Real recordings are harder than that, and each way they are is an option, off by default (with
every option off the video is the same, bit for bit, as before the options existed): small animals
(``body_length``), tight schools (``schooling``), long rests (``resting``), dark tank ends where
animals fade into the wall (``dark_ends``), uneven light (``vignette``, ``light_gradient``), dust,
specks and hairs lighter and darker than the animals (``debris``), light animals on a dark floor
(``light_animals``) and lossy compression (``codec`` with ``bitrate`` or ``quality``). Imaging
options never change how the animals move, and the ground truth stays that of the rendered bodies:
an animal lost in a dark corner or merged with a hair is still where the truth says.

The package has one module per idea: presets (kinds of animal), config (SimulationConfig), looks
(imaging look, individuals, body outline), motion, debris, scene (rendering: Simulation), truth,
output (video and ground_truth.npz) and cli (`shoal simulate`).
"""

from shoal.sim.cli import arg_parser, main
from shoal.sim.config import CODECS, TANKS, VIDEO_SUFFIX, SimulationConfig
from shoal.sim.looks import Animal, Look
from shoal.sim.motion import REST_FRAMES
from shoal.sim.output import write_simulation
from shoal.sim.presets import PRESET_NAMES, Preset, presets
from shoal.sim.scene import Simulation, simulate, simulate_frames
from shoal.sim.truth import FrameTruth, GroundTruth, collect_truth

__all__ = [
    "CODECS", "PRESET_NAMES", "REST_FRAMES", "TANKS", "VIDEO_SUFFIX", "Animal", "FrameTruth", "GroundTruth", "Look",
    "Preset", "Simulation", "SimulationConfig", "arg_parser", "collect_truth", "main", "presets", "simulate",
    "simulate_frames", "write_simulation",
]
