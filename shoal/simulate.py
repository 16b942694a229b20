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
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from shoal.help import HelpFormatter

PRESET_NAMES = ("fish", "flies", "mice")
CODECS = ("ffv1", "mjpg", "h264", "mp4v")
"""Video codecs of write_simulation: FFV1 (lossless, the default), Motion-JPEG at a JPEG quality,
H.264 (through PyAV) at a bitrate or CRF 23, MPEG-4 part 2 at OpenCV's default quality."""
VIDEO_SUFFIX = {"ffv1": ".avi", "mjpg": ".avi", "h264": ".mp4", "mp4v": ".mp4"}
TANKS = ("circle", "rectangle")


@dataclass(frozen=True)
class Preset:
    """Defaults of one kind of animal; lengths in pixels, speeds in body lengths per frame."""

    width: int
    height: int
    body_length: tuple[float, float]  # range the per-video median body length is drawn from
    half_width: tuple[float, float]  # widest half-width as a fraction of the body length
    profile_s: tuple[float, ...]  # stations along the body, 0 = head tip, 1 = tail tip
    profile_w: tuple[float, ...]  # half-width at each station, fraction of the widest
    max_speed: float  # body lengths per frame (also capped at 0.45 body widths, see Motion)
    max_turn: float  # radians per frame
    gait: str  # "bouts" (fish swim bouts) or "walk" (walk-stop)


def presets() -> dict[str, Preset]:
    """Sensible sizes and shapes for each kind of animal, at the preset's default frame size."""
    return {
        # Elongated body, round head, tapering peduncle and a fanning caudal fin.
        "fish": Preset(
            500, 500, (40.0, 60.0), (0.08, 0.11),
            (0.0, 0.04, 0.10, 0.20, 0.30, 0.50, 0.70, 0.82, 0.90, 0.96, 1.0),
            (0.0, 0.60, 0.85, 0.98, 1.00, 0.85, 0.50, 0.25, 0.22, 0.40, 0.55),
            0.09, 0.22, "bouts",
        ),
        # Compact head-thorax-abdomen body (to 80 % of the length) plus two wing lobes behind.
        "flies": Preset(
            500, 500, (25.0, 35.0), (0.14, 0.18),
            (0.0, 0.05, 0.13, 0.17, 0.25, 0.40, 0.55, 0.70, 0.80),
            (0.0, 0.55, 0.62, 0.55, 1.00, 0.98, 0.90, 0.60, 0.0),
            0.12, 0.25, "walk",
        ),
        # Large egg-shaped body with a pointed snout, ears, rounded rear.
        "mice": Preset(
            600, 600, (60.0, 90.0), (0.20, 0.25),
            (0.0, 0.05, 0.15, 0.30, 0.50, 0.70, 0.85, 0.95, 1.0),
            (0.0, 0.30, 0.60, 0.80, 0.95, 1.00, 0.90, 0.60, 0.0),
            0.06, 0.12, "walk",
        ),
    }


@dataclass
class SimulationConfig:
    """What to simulate. width/height default to the preset's frame size (times n_arenas in width).

    ``n_arenas`` tanks stand side by side, each a column of the frame; animals are shared out as
    evenly as possible (the first arenas take the remainder) and numbered arena by arena.
    ``marking_seed`` (default: ``seed``) draws the animals' bodies, markings and the look, so two
    videos with one marking_seed and different seeds show the same individuals moving differently.
    """

    n_animals: int = 4
    n_frames: int = 1000
    width: int | None = None
    height: int | None = None
    preset: str = "fish"
    seed: int = 0
    fps: float = 30.0
    always_touching: bool = False
    """Keep at least one group of animals touching in every frame, so that no frame shows every
    animal apart: the video has no global fragment (the case idtracker.ai's accumulation cannot
    start from, and the contrastive route of Torrents et al. 2025 must handle). Needs 4 animals."""
    n_arenas: int = 1
    marking_seed: int | None = None
    # Ways real recordings are harder; every default leaves the video as it was.
    body_length: float | None = None
    """Median body length in px (individuals vary +-3 % around it), instead of the preset's range."""
    schooling: float = 0.0
    """0..1: how strongly free animals turn towards and align with their neighbours (1: most of them
    within 1-2 body lengths of another most of the time). Engineered crossings still happen."""
    resting: float = 0.0
    """0..0.9: fraction of the time each animal sits still, in rests of 20-120 frames."""
    dark_ends: float = 0.0
    """0..0.45: fraction of the frame width at the left and right ends that darkens towards the edge,
    down to 4 % of the light at the tank's end walls, so animals there fade into the wall. Makes the
    tank a rectangle unless ``tank`` says otherwise."""
    vignette: float = 0.0
    """0..0.95: light lost in the corners (0.5: corners at half the centre's light), falling off as r^2."""
    light_gradient: float = 0.0
    """0..1.5: light difference across the frame in a random direction, plus broad brighter and
    darker patches (0.4: one side 40 % brighter than the other)."""
    debris: int = 0
    """Number of specks of dust, hairs and animal-sized bits on the floor, some darker and some
    lighter than the animals, some lighter than the floor; about one in seven drifts slowly."""
    light_animals: bool = False
    """Light animals on a dark floor: every grey level of the scene is mirrored (255 - level)."""
    tank: str | None = None
    """'circle' or 'rectangle'; default: drawn per seed (7 in 10 circles), a rectangle with dark_ends."""
    codec: str = "ffv1"
    """One of CODECS: how write_simulation encodes the video (the in-memory frames are uncompressed)."""
    bitrate: float | None = None
    """kbit/s of an h264 video (default: constant quality, CRF 23)."""
    quality: int | None = None
    """JPEG quality 1-100 of an mjpg video (default 75)."""

    def __post_init__(self) -> None:
        if self.preset not in PRESET_NAMES:
            raise ValueError(f"preset must be one of {', '.join(PRESET_NAMES)}, not {self.preset!r}")
        if self.n_animals < 1:
            raise ValueError(f"need at least one animal, got {self.n_animals}")
        if self.n_frames < 1:
            raise ValueError(f"need at least one frame, got {self.n_frames}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.always_touching and self.n_animals < 4:
            raise ValueError("always_touching needs at least 4 animals: one pair may part only once "
                             f"another pair has met, got {self.n_animals}")
        if not 1 <= self.n_arenas <= self.n_animals:
            raise ValueError(f"need 1 to n_animals arenas, got {self.n_arenas} for {self.n_animals} animals")
        self._check_conditions()
        preset = self.animal_preset()
        self.width = preset.width * self.n_arenas if self.width is None else int(self.width)
        self.height = preset.height if self.height is None else int(self.height)
        if min(self.width // self.n_arenas, self.height) < 4 * preset.body_length[1]:
            where = "frame" if self.n_arenas == 1 else f"frame split into {self.n_arenas} arenas"
            raise ValueError(
                f"a {self.width}x{self.height} {where} is too small for {self.preset} "
                f"(needs at least {int(4 * preset.body_length[1])} px per side and arena)"
            )
        if self.codec == "h264" and (self.width % 2 or self.height % 2):
            raise ValueError(f"--codec h264 needs an even width and height, not {self.width}x{self.height}")

    def _check_conditions(self) -> None:
        if self.body_length is not None and not 6.0 <= self.body_length <= 400.0:
            raise ValueError(f"body length must be 6 to 400 px, got {self.body_length}")
        for name, value, top in (("schooling", self.schooling, 1.0), ("resting", self.resting, 0.9),
                                 ("dark ends", self.dark_ends, 0.45), ("vignette", self.vignette, 0.95),
                                 ("light gradient", self.light_gradient, 1.5)):
            if not 0.0 <= value <= top:
                raise ValueError(f"{name} must be 0 to {top}, got {value}")
        if self.debris < 0:
            raise ValueError(f"debris must be a count of 0 or more, got {self.debris}")
        if self.tank is not None and self.tank not in TANKS:
            raise ValueError(f"tank must be one of {', '.join(TANKS)}, not {self.tank!r}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {self.codec!r}")
        if self.bitrate is not None and (self.codec != "h264" or self.bitrate <= 0):
            raise ValueError("--bitrate (kbit/s, > 0) applies to --codec h264 only")
        if self.quality is not None and (self.codec != "mjpg" or not 1 <= self.quality <= 100):
            raise ValueError("--quality (JPEG quality 1-100) applies to --codec mjpg only")

    def animal_preset(self) -> Preset:
        """The preset, with its body-length range narrowed to ``body_length`` when one is given."""
        preset = presets()[self.preset]
        if self.body_length is None:
            return preset
        return replace(preset, body_length=(float(self.body_length), float(self.body_length)))

    def tank_shape(self) -> str | None:
        """'circle', 'rectangle', or None for a shape drawn per seed."""
        return self.tank or ("rectangle" if self.dark_ends > 0 else None)

    def video_name(self) -> str:
        """File name write_simulation gives the video: .avi for FFV1 and MJPG, .mp4 for H.264 and MPEG-4."""
        return "video" + VIDEO_SUFFIX[self.codec]

    def conditions(self) -> dict:
        """The hard-recording options that differ from their defaults (empty for a default video)."""
        out = {}
        for name in ("body_length", "schooling", "resting", "dark_ends", "vignette", "light_gradient", "debris",
                     "light_animals", "tank", "codec", "bitrate", "quality"):
            value, default = getattr(self, name), SimulationConfig.__dataclass_fields__[name].default
            if value != default:
                out[name] = value
        return out

    def arena_sizes(self) -> list[int]:
        """Animals in each arena, arena by arena."""
        base, extra = divmod(self.n_animals, self.n_arenas)
        return [base + (k < extra) for k in range(self.n_arenas)]

    def arena_rois(self) -> list[str]:
        """One ROI string (idtracker.ai syntax) per arena: its column less a 1-2 px border.

        Neighbouring arenas are two pixels apart, so each is its own connected region of the ROI.
        """
        col, h = self.width // self.n_arenas, self.height
        return [f"+ Polygon [[{k * col + 1}, 1], [{(k + 1) * col - 2}, 1], [{(k + 1) * col - 2}, {h - 2}], "
                f"[{k * col + 1}, {h - 2}]]" for k in range(self.n_arenas)]


@dataclass(frozen=True)
class Look:
    """Per-video imaging conditions, drawn from plausible ranges."""

    background: float
    gradient: tuple[float, float]
    vignette: float
    body_grey: float
    shading: float
    noise_sigma: float
    flicker: float
    blur_sigma: float


@dataclass
class Animal:
    """One individual: its size, shade and markings, fixed for the whole video."""

    length: float
    half_width: float
    grey: float
    # Markings in body coordinates: u along the body (px, head is +length/2), v across the midline
    # (px), radius (px), amplitude (grey levels, + lighter / - darker), and whether it is a band
    # across the whole body rather than a spot.
    mark_u: np.ndarray
    mark_v: np.ndarray
    mark_radius: np.ndarray
    mark_amplitude: np.ndarray
    mark_band: np.ndarray


@dataclass
class FrameTruth:
    """Ground truth of one frame."""

    positions: np.ndarray  # float64 [N, 2] (x, y) centroid of each rendered body
    orientation: np.ndarray  # float64 [N] heading (towards the head), radians, image axes
    touching: np.ndarray  # bool [N] the body touches or overlaps another animal's
    contacts: list[tuple[int, int]] = field(default_factory=list)  # touching pairs (i < j)


@dataclass
class GroundTruth:
    """Ground truth of a whole video, as written to ground_truth.npz."""

    positions: np.ndarray  # float64 [F, N, 2]
    touching: np.ndarray  # bool [F, N]
    orientation: np.ndarray  # float64 [F, N]
    crossings: np.ndarray  # int64 [K, 4] (first frame, last frame, i, j) of each pairwise contact
    body_length: float
    arena: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 [N] arena of each animal

    def crossing_count(self) -> int:
        """Number of contact episodes; a three-animal crossing counts once per touching pair."""
        return len(self.crossings)

    def touching_fraction(self) -> float:
        return float(self.touching.mean()) if self.touching.size else 0.0


class _Shape:
    """Body outline shared by every animal of a video, evaluated on a patch of pixels."""

    def __init__(self, preset_name: str, preset: Preset, rng: np.random.Generator):
        self.kind = preset_name
        jitter = rng.uniform(0.92, 1.08, len(preset.profile_w))
        jitter[[0, -1]] = 1.0
        self.profile_s = np.asarray(preset.profile_s)
        self.profile_w = np.clip(np.asarray(preset.profile_w) * jitter, 0.0, 1.0)
        self.profile_w /= self.profile_w.max()
        self.body_end = float(self.profile_s[-1])  # flies: the wings make up the rest
        self.tail_beat = rng.uniform(0.05, 0.10) if preset_name == "fish" else 0.0
        self.turn_bend = rng.uniform(0.3, 0.8) if preset_name == "fish" else rng.uniform(0.1, 0.3)
        self.wing_angle = rng.uniform(0.20, 0.38)
        self.wing_grey = rng.uniform(0.20, 0.35)  # fraction of the body contrast the wings lose

    def half_width(self, s: np.ndarray, animal: Animal) -> np.ndarray:
        return np.interp(s, self.profile_s, self.profile_w) * animal.half_width

    def render(
        self, animal: Animal, look: Look, dx: np.ndarray, dy: np.ndarray, heading: float,
        beat_phase: float, beat: float, bend: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Coverage alpha in [0, 1] and grey level of the animal at offsets (dx, dy) from its pivot."""
        c, s_ = math.cos(heading), math.sin(heading)
        u = dx * c + dy * s_
        v = dy * c - dx * s_
        L = animal.length
        s = (0.5 * L - u) / L
        # Midline: a travelling tail beat growing towards the tail, plus a bend into the turn.
        midline = L * (beat * self.tail_beat * np.sin(beat_phase - 5.0 * s) * s * s
                       + bend * self.turn_bend * (s - 0.3) ** 2)
        v_body = v - midline
        sc = np.clip(s, 0.0, self.body_end)
        hw = self.half_width(sc, animal)
        edge = hw - np.abs(v_body)
        ends = np.minimum(s, self.body_end - s) * L
        dist = np.minimum(edge, ends)
        alpha = np.clip(dist + 0.5, 0.0, 1.0)
        # Body shading (edges a little lighter), then individual and species markings.
        rel = np.abs(v_body) / np.maximum(hw, 1e-6)
        grey = animal.grey + look.shading * np.minimum(rel, 1.0) ** 2
        for mu, mv, r, a, band in zip(animal.mark_u, animal.mark_v, animal.mark_radius,
                                      animal.mark_amplitude, animal.mark_band, strict=True):
            d2 = (u - mu) ** 2 if band else (u - mu) ** 2 + (v_body - mv) ** 2
            grey = grey + a * np.exp(-d2 / (2.0 * r * r))
        if self.kind in ("flies", "mice"):
            lobe_alpha, lobe_grey = self._lobes(animal, look, u, v_body)
            grey = np.where(lobe_alpha > alpha, lobe_grey, grey)
            alpha = np.maximum(alpha, lobe_alpha)
        return alpha, np.maximum(grey, 4.0)

    def _lobes(self, animal: Animal, look: Look, u: np.ndarray, v: np.ndarray):
        """Fly wings (lighter, behind the thorax) or mouse ears (beside the head)."""
        L = animal.length
        alpha = np.zeros_like(u)
        for side in (-1.0, 1.0):
            if self.kind == "flies":
                ang = math.pi - side * self.wing_angle  # pointing backwards, spread sideways
                a, b = 0.31 * L, 0.10 * L
                root_u, root_v = 0.5 * L - 0.32 * L, side * 0.2 * animal.half_width
                cu = root_u + a * math.cos(ang)
                cv = root_v + a * math.sin(ang)
            else:
                ang = 0.0
                a = b = 0.07 * L
                hw_ear = float(self.half_width(np.array(0.2), animal))
                cu, cv = 0.5 * L - 0.2 * L, side * hw_ear
            ca, sa = math.cos(ang), math.sin(ang)
            x = (u - cu) * ca + (v - cv) * sa
            y = (v - cv) * ca - (u - cu) * sa
            k = np.sqrt((x / a) ** 2 + (y / b) ** 2)
            grad = np.sqrt((x / a**2) ** 2 + (y / b**2) ** 2) / np.maximum(k, 1e-9)
            dist = (1.0 - k) / np.maximum(grad, 1e-9)
            alpha = np.maximum(alpha, np.clip(dist + 0.5, 0.0, 1.0))
        contrast = look.background - animal.grey
        lobe_grey = animal.grey + (self.wing_grey * contrast if self.kind == "flies" else 0.0)
        return alpha, np.full_like(u, lobe_grey)


def _draw_look(preset_name: str, rng: np.random.Generator) -> Look:
    background = rng.uniform(170.0, 225.0)
    contrast = rng.uniform(95.0, 150.0)
    return Look(
        background=background,
        gradient=(rng.uniform(-12.0, 12.0), rng.uniform(-12.0, 12.0)),
        vignette=rng.uniform(0.0, 12.0),
        body_grey=max(background - contrast, 25.0),
        shading=rng.uniform(0.0, 12.0),
        noise_sigma=rng.uniform(2.0, 4.0),
        flicker=rng.uniform(1.0, 3.0),
        blur_sigma=rng.uniform(0.5, 1.0),
    )


def _draw_animals(
    n: int, preset_name: str, preset: Preset, look: Look, rng: np.random.Generator
) -> list[Animal]:
    """Look-alike individuals that differ only by small marks, size (+-3 %) and shade (+-2)."""
    length = rng.uniform(*preset.body_length)
    half_width = rng.uniform(*preset.half_width) * length
    style = rng.choice(["spots", "bands", "mixed"])
    n_marks = int(rng.integers(1, 4))
    strength = rng.uniform(6.0, 22.0)
    polarity = rng.choice([-1.0, 1.0, 0.0])  # 0: each mark lighter or darker at random
    trunk = (0.12, 0.72) if preset_name != "flies" else (0.2, 0.7)
    # Species-wide marks (eyes of fish, stripes on the abdomen of flies, nothing on mice) make
    # individuals look more alike: only the individual marks separate them.
    shared = {"fish": [(0.08, 0.55, 0.05, -25.0, False), (0.08, -0.55, 0.05, -25.0, False)],
              "flies": [(0.55, 0.0, 0.025, -12.0, True), (0.66, 0.0, 0.025, -12.0, True)],
              "mice": []}[preset_name]
    layouts: list[np.ndarray] = []
    animals = []
    for _ in range(n):
        for _attempt in range(50):  # keep individuals distinguishable: layouts not too similar
            layout = np.column_stack([rng.uniform(*trunk, n_marks), rng.uniform(-0.6, 0.6, n_marks)])
            if all(np.abs(np.sort(layout[:, 0]) - np.sort(o[:, 0])).max() > 0.06 for o in layouts):
                break
        layouts.append(layout)
        scale = rng.uniform(0.97, 1.03)
        L, hw = length * scale, half_width * scale
        band = np.zeros(n_marks, bool)
        if style == "bands":
            band[:] = True
        elif style == "mixed":
            band = rng.random(n_marks) < 0.5
        sign = polarity if polarity != 0.0 else rng.choice([-1.0, 1.0], n_marks)
        amp = sign * strength * rng.uniform(0.8, 1.2, n_marks)
        radius = np.where(band, rng.uniform(0.025, 0.04, n_marks) * L, rng.uniform(0.35, 0.6, n_marks) * hw)
        marks = [(s, t, r / L, a, b) for (s, t), r, a, b in zip(layout, radius, amp, band, strict=True)]
        marks += shared
        s_arr = np.array([m[0] for m in marks])
        t_arr = np.array([m[1] for m in marks])
        prof = np.interp(s_arr, preset.profile_s, preset.profile_w)
        animals.append(Animal(
            length=L,
            half_width=hw,
            grey=look.body_grey + rng.uniform(-2.0, 2.0),
            mark_u=0.5 * L - s_arr * L,
            mark_v=t_arr * prof * hw,
            mark_radius=np.maximum(np.array([m[2] for m in marks]) * L, 1.2),
            mark_amplitude=np.array([m[3] for m in marks]),
            mark_band=np.array([m[4] for m in marks], bool),
        ))
    return animals


class _Arena:
    """A circle or a rectangle inside the frame, with room for a whole body at the wall."""

    def __init__(self, width: int, height: int, margin: float, rng: np.random.Generator, x0: int = 0,
                 shape: str | None = None):
        self.circle = bool(rng.random() < 0.7)  # drawn even when the shape is given: the same motion follows
        if shape is not None:
            self.circle = shape == "circle"
        self.cx, self.cy = x0 + (width - 1) / 2.0, (height - 1) / 2.0
        self.hx, self.hy = width / 2.0 - margin, height / 2.0 - margin
        self.radius = min(self.hx, self.hy)

    def wall_distance(self, x: float, y: float) -> float:
        if self.circle:
            return self.radius - math.hypot(x - self.cx, y - self.cy)
        return min(self.hx - abs(x - self.cx), self.hy - abs(y - self.cy))

    def clamp(self, x: float, y: float) -> tuple[float, float]:
        if self.circle:
            r = math.hypot(x - self.cx, y - self.cy)
            if r > self.radius:
                f = self.radius / r
                return self.cx + (x - self.cx) * f, self.cy + (y - self.cy) * f
            return x, y
        return (min(max(x, self.cx - self.hx), self.cx + self.hx),
                min(max(y, self.cy - self.hy), self.cy + self.hy))

    def random_point(self, rng: np.random.Generator, fraction: float = 0.85) -> tuple[float, float]:
        while True:
            x = self.cx + rng.uniform(-1, 1) * self.hx * fraction
            y = self.cy + rng.uniform(-1, 1) * self.hy * fraction
            if self.wall_distance(x, y) > (1 - fraction) * self.radius:
                return x, y


def _angle_diff(a: float, b: float) -> float:
    return (a - b + math.pi) % (2 * math.pi) - math.pi


@dataclass
class _Group:
    """Animals brought together for a crossing: approach, stay merged, leave."""

    members: list[int]
    stage: str  # "approach" | "together"
    frames_left: int
    departures: list[float]
    centre: np.ndarray = field(default_factory=lambda: np.zeros(2))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    drift: np.ndarray = field(default_factory=lambda: np.zeros(2))


@dataclass(frozen=True)
class _Habits:
    """Behaviour beyond the default motion; each is off at 0, so that default videos stay as they were."""

    schooling: float = 0.0
    resting: float = 0.0
    rest_rng: np.random.Generator | None = None  # own streams: these habits never change the other draws
    school_rng: np.random.Generator | None = None


REST_FRAMES = (20, 121)
"""Length of one rest, frames (uniform, upper bound excluded): tens of frames, seconds at 30 fps."""


class _Motion:
    """Bursty locomotion, wall avoidance and engineered crossings; optionally schooling and resting.

    The speed never exceeds 0.45 body widths per frame so that every animal overlaps itself in
    consecutive frames, the assumption behind the overlap graph. All rates are per frame; the
    video's fps only labels the file.
    """

    def __init__(self, n: int, preset: Preset, animals: list[Animal], arena: _Arena,
                 rng: np.random.Generator, always_touching: bool = False, habits: _Habits | None = None):
        self.n, self.rng, self.arena, self.gait = n, rng, arena, preset.gait
        self.habits = habits or _Habits()
        self.rest_left = np.zeros(n, int)  # frames left of the current rest
        resting = self.habits.resting
        # Rests alternate with active spells of mean (1 - R) / R rests; the clock of the next rest runs in
        # every frame (crossings too) and a rest that falls due starts as soon as the animal is free.
        self.mean_active = (1.0 - resting) / resting * (REST_FRAMES[0] + REST_FRAMES[1] - 1) / 2.0 if resting else 0.0
        self.rest_due = self._active_spell(n)
        L = float(np.median([a.length for a in animals]))
        self.L = L
        self.body_width = 2.0 * float(np.median([a.half_width for a in animals]))
        self.vmax = min(preset.max_speed * L, 0.45 * self.body_width) * rng.uniform(0.8, 1.0)
        self.max_turn = preset.max_turn
        self.turn_noise = rng.uniform(0.02, 0.05)
        self.bout_rate = rng.uniform(0.04, 0.10)
        self.bout_decay = math.exp(-1.0 / rng.uniform(5.0, 12.0))
        self.walk_stop = (rng.uniform(0.015, 0.04), rng.uniform(0.02, 0.06))
        self.avoidance = rng.uniform(0.3, 1.0)
        self.crossing_gap = (int(rng.integers(15, 40)), int(rng.integers(50, 110)))
        self.pos = np.array([arena.random_point(rng) for _ in range(n)], float)
        self._spread_out()
        self.heading = rng.uniform(-math.pi, math.pi, n)
        self.speed = rng.uniform(0.0, 0.5, n) * self.vmax
        self.target_speed = self.speed.copy()
        self.omega = np.zeros(n)
        self.beat_phase = rng.uniform(0, 2 * math.pi, n)
        self.bend = np.zeros(n)
        self.straight = np.zeros(n, int)  # frames left of leaving a crossing in a straight line
        self.departure = np.zeros(n)  # direction of that exit
        self.cooldown = np.zeros(n, int)
        self.groups: list[_Group] = []
        self.max_groups = max(1, n // 8)
        self.next_crossing = int(rng.integers(*self.crossing_gap))
        self.always_touching = always_touching
        if self.habits.schooling and n > 1:
            self._start_schooling()
        if always_touching:
            self.max_groups = max(2, n // 4)
            self._start_touching()

    def _start_schooling(self) -> None:
        """Start as one loose school heading one way (each animal still 1.3 body lengths from the rest)."""
        rng = self.habits.school_rng
        centre = np.array(self.arena.random_point(rng, 0.5))
        reach = 1.2 * self.L * math.sqrt(self.n)
        for i in range(self.n):
            for _ in range(500):
                r, a = reach * math.sqrt(rng.random()), rng.uniform(-math.pi, math.pi)
                p = centre + r * np.array([math.cos(a), math.sin(a)])
                others = self.pos[:i] - p
                if (self.arena.wall_distance(*p) > 0.6 * self.L
                        and (i == 0 or np.hypot(others[:, 0], others[:, 1]).min() > 1.3 * self.L)):
                    self.pos[i] = p
                    break
        self.heading = rng.uniform(-math.pi, math.pi) + rng.normal(0.0, 0.3, self.n)

    def _start_touching(self) -> None:
        """Animals 0 and 1 begin side by side, already merged, so even frame 0 has a crossing."""
        side = self.heading[0] + math.pi / 2
        self.pos[1] = self.arena.clamp(*(self.pos[0] + 0.5 * self.body_width * np.array([math.cos(side),
                                                                                           math.sin(side)])))
        centre = self.pos[:2].mean(axis=0)
        base = self.rng.uniform(-math.pi, math.pi)
        self.groups.append(_Group([0, 1], "together", int(self.rng.integers(6, 35)), [base, base + math.pi],
                                  centre=centre, offsets=self.pos[:2] - centre))

    def _spread_out(self) -> None:
        """Start with everyone apart (re-draw positions closer than 1.5 body lengths)."""
        for i in range(self.n):
            for _ in range(200):
                d = np.hypot(*(self.pos[:i] - self.pos[i]).T) if i else np.array([np.inf])
                if d.min() > 1.5 * self.L:
                    break
                self.pos[i] = self.arena.random_point(self.rng)

    def grouped(self) -> set[int]:
        return {m for g in self.groups for m in g.members}

    def step(self, contacts: set[tuple[int, int]]) -> None:
        """Advance one frame; `contacts` are the touching pairs of the frame just rendered."""
        self._schedule_crossings()
        busy = self.grouped()
        for g in list(self.groups):
            self._step_group(g, contacts)
        for i in range(self.n):
            if i not in busy and not (self.mean_active and self._rest(i)):
                self._step_free(i)
        if self.mean_active:
            self.rest_due[self.rest_left == 0] -= 1
        self.cooldown = np.maximum(self.cooldown - 1, 0)
        self.straight = np.maximum(self.straight - 1, 0)
        self.beat_phase += 0.2 + 0.6 * self.speed / self.vmax
        # The body bends into turns, smoothly: the shape (and its centroid) never jumps.
        self.bend += 0.2 * (np.clip(self.omega / self.max_turn, -1.0, 1.0) - self.bend)

    def _schedule_crossings(self) -> None:
        self.next_crossing -= 1
        due = self.next_crossing <= 0 or (self.always_touching and len(self.groups) < self.max_groups)
        if self.n < 2 or not due or len(self.groups) >= self.max_groups:
            return
        self.next_crossing = int(self.rng.integers(*self.crossing_gap))
        free = [i for i in range(self.n)
                if i not in self.grouped() and self.cooldown[i] == 0 and self.rest_left[i] == 0]
        if len(free) < 2:
            return
        first = int(self.rng.choice(free))
        others = sorted((i for i in free if i != first),
                        key=lambda i: np.hypot(*(self.pos[i] - self.pos[first])))
        size = 3 if len(others) >= 2 and self.rng.random() < 0.2 else 2
        members = [first] + others[: size - 1]
        base = self.rng.uniform(-math.pi, math.pi)
        departures = [base + 2 * math.pi * k / size + self.rng.uniform(-0.6, 0.6) for k in range(size)]
        self.groups.append(_Group(members, "approach", 180, departures))  # give up after 180 frames

    def _step_group(self, g: _Group, contacts: set[tuple[int, int]]) -> None:
        m = g.members
        g.frames_left -= 1
        if g.stage == "approach":
            centre = self.pos[m].mean(axis=0)
            for i in m:
                to = centre - self.pos[i]
                want = math.atan2(to[1], to[0])
                near = np.hypot(*to) < 0.3 * self.L
                turn = np.clip(0.3 * _angle_diff(want, self.heading[i]), -self.max_turn, self.max_turn)
                self.omega[i] = 0.0 if near else turn
                self.heading[i] += self.omega[i]
                self.speed[i] = 0.3 * self.vmax if near else max(self.speed[i], 0.7 * self.vmax)
                self._move(i)
            if self._connected(m, contacts):
                g.stage = "together"
                g.frames_left = int(self.rng.integers(6, 35))
                g.centre = self.pos[m].mean(axis=0)
                rel = self.pos[m] - g.centre
                reach = self.rng.uniform(0.2, 0.45) * self.body_width
                norm = np.maximum(np.hypot(rel[:, 0], rel[:, 1]), 1e-9)[:, None]
                g.offsets = rel * np.minimum(1.0, reach / norm)
            elif g.frames_left <= 0:
                self._release(g, straight=False)
            return
        # Together: the merged animals drift as one, each turning towards where it will leave.
        g.drift = 0.9 * g.drift + self.rng.normal(0, 0.08 * self.vmax, 2)
        if self.arena.wall_distance(*g.centre) < 0.5 * self.L:
            g.drift += 0.1 * self.vmax * (np.array([self.arena.cx, self.arena.cy]) - g.centre) / max(
                np.hypot(*(np.array([self.arena.cx, self.arena.cy]) - g.centre)), 1e-9)
        sp = np.hypot(*g.drift)
        if sp > 0.3 * self.vmax:
            g.drift *= 0.3 * self.vmax / sp
        g.centre = np.array(self.arena.clamp(*(g.centre + g.drift)))
        for k, i in enumerate(m):
            step = g.centre + g.offsets[k] - self.pos[i]
            d = np.hypot(*step)
            if d > self.vmax:
                step *= self.vmax / d
            self.pos[i] = self.arena.clamp(*(self.pos[i] + step))
            turn = _angle_diff(g.departures[k], self.heading[i])
            self.omega[i] = float(np.clip(turn, -0.08, 0.08))
            self.heading[i] += self.omega[i]
            self.speed[i] = 0.2 * self.vmax
        if g.frames_left <= 0 and self.always_touching and not any(
                o is not g and o.stage == "together" for o in self.groups):
            return  # hold on until another group has met
        if g.frames_left <= 0:
            self.departure[m] = g.departures
            self._release(g, straight=True)

    def _release(self, g: _Group, straight: bool) -> None:
        self.groups.remove(g)
        for i in g.members:
            self.cooldown[i] = 60
            if straight:
                self.straight[i] = 15
                self.speed[i] = self.target_speed[i] = self.rng.uniform(0.75, 1.0) * self.vmax

    @staticmethod
    def _connected(members: list[int], contacts: set[tuple[int, int]]) -> bool:
        reached, frontier = {members[0]}, [members[0]]
        while frontier:
            a = frontier.pop()
            for b in members:
                if b not in reached and ((min(a, b), max(a, b)) in contacts):
                    reached.add(b)
                    frontier.append(b)
        return len(reached) == len(members)

    def _active_spell(self, n: int) -> np.ndarray:
        """Frames until the next rest of n animals (exponential: rests start at any time)."""
        if not self.mean_active:
            return np.zeros(n, int)
        return np.ceil(self.habits.rest_rng.exponential(self.mean_active, n)).astype(int)

    def _rest(self, i: int) -> bool:
        """Sit still (no speed, no turn, the body straightening) if resting or if a rest is due now."""
        if self.rest_left[i] == 0:
            if self.straight[i] or self.rest_due[i] > 0:
                return False
            self.rest_left[i] = int(self.habits.rest_rng.integers(*REST_FRAMES))
            self.rest_due[i] = self._active_spell(1)[0]
        self.rest_left[i] -= 1
        self.speed[i] = self.target_speed[i] = self.omega[i] = 0.0
        return True

    def _step_free(self, i: int) -> None:
        rng = self.rng
        if self.straight[i]:  # leaving a crossing: turn to the departure direction, no dawdling
            self.omega[i] = _angle_diff(self.departure[i], self.heading[i])
        else:
            self._gait(i)
            self.omega[i] = 0.85 * self.omega[i] + rng.normal(0, self.turn_noise)
            self.omega[i] += self._avoid_walls(i) + self._avoid_others(i)
            if self.habits.schooling:
                self.omega[i] += self._school(i)
        self.omega[i] = float(np.clip(self.omega[i], -self.max_turn, self.max_turn))
        self.heading[i] += self.omega[i]
        self._move(i)

    def _school(self, i: int) -> float:
        """Turn away from a neighbour closer than 0.8 L, else towards the three nearest neighbours'
        heading and centre and the whole school's centre.

        ``schooling`` sets the gain and the spacing the animals keep (about 1 L at 1, 2 L at 0.5); the
        turn is capped at max_turn by the caller like any other.
        """
        slack = 2.0 * (1.0 - self.habits.schooling)
        rel = self.pos - self.pos[i]
        dist = np.hypot(rel[:, 0], rel[:, 1])
        dist[i] = np.inf
        if self.n < 2:
            return 0.0
        near = np.argsort(dist)[:min(3, self.n - 1)]
        if dist[near[0]] < 0.8 * self.L:  # too close: steer away from it
            want = math.atan2(-rel[near[0], 1], -rel[near[0], 0])
            return 0.3 * self.habits.schooling * _angle_diff(want, self.heading[i])
        align = np.array([np.cos(self.heading[near]).sum(), np.sin(self.heading[near]).sum()])
        align /= max(np.hypot(*align), 1e-9)
        to = rel[near].mean(axis=0)
        gap = np.hypot(*to)
        pull = np.clip((gap - (1.0 + slack) * self.L) / self.L, 0.0, 2.0)
        whole = rel.mean(axis=0) * self.n / (self.n - 1)  # the whole school's centre: no splinter groups
        spread = np.hypot(*whole)
        pull_whole = np.clip((spread - (1.5 + 2.0 * slack) * self.L) / (2.0 * self.L), 0.0, 1.5)
        want_vec = align + pull * to / max(gap, 1e-9) + pull_whole * whole / max(spread, 1e-9)
        want = math.atan2(want_vec[1], want_vec[0])
        return 0.25 * self.habits.schooling * _angle_diff(want, self.heading[i])

    def _lagging(self, i: int) -> float:
        """Schooling animals left behind (nearest neighbour beyond 1.5 L) start bouts and walks sooner."""
        if not self.habits.schooling or self.n < 2:
            return 1.0
        d = np.hypot(*(self.pos - self.pos[i]).T)
        d[i] = np.inf
        return 1.0 + 4.0 * self.habits.schooling if d.min() > 1.5 * self.L else 1.0

    def _gait(self, i: int) -> None:
        rng = self.rng
        if self.gait == "bouts":
            if self.speed[i] < 0.3 * self.vmax and rng.random() < self.bout_rate * self._lagging(i):
                self.speed[i] = rng.uniform(0.5, 1.0) * self.vmax
                self.omega[i] += rng.normal(0, 0.12)
            else:
                self.speed[i] *= self.bout_decay
            return
        stop, go = self.walk_stop
        go *= self._lagging(i)
        if self.target_speed[i] > 0 and rng.random() < stop:
            self.target_speed[i] = 0.0
        elif self.target_speed[i] == 0 and rng.random() < go:
            self.target_speed[i] = rng.uniform(0.3, 1.0) * self.vmax
        self.speed[i] += 0.25 * (self.target_speed[i] - self.speed[i])

    def _avoid_walls(self, i: int) -> float:
        ahead = self.pos[i] + self.L * np.array([math.cos(self.heading[i]), math.sin(self.heading[i])])
        if self.arena.wall_distance(*ahead) > 0.3 * self.L:
            return 0.0
        to_centre = math.atan2(self.arena.cy - self.pos[i, 1], self.arena.cx - self.pos[i, 0])
        return 0.15 * math.copysign(1.0, _angle_diff(to_centre, self.heading[i]))

    def _avoid_others(self, i: int) -> float:
        rel = self.pos - self.pos[i]
        dist = np.hypot(rel[:, 0], rel[:, 1])
        dist[i] = np.inf
        j = int(np.argmin(dist))
        if dist[j] > 1.2 * self.L:
            return 0.0
        fwd = np.array([math.cos(self.heading[i]), math.sin(self.heading[i])])
        if rel[j] @ fwd <= 0:
            return 0.0
        side = fwd[0] * rel[j, 1] - fwd[1] * rel[j, 0]  # > 0: the other is to the right (image axes)
        return -0.1 * self.avoidance * math.copysign(1.0, side)

    def _move(self, i: int) -> None:
        v = min(self.speed[i], self.vmax)
        x = self.pos[i, 0] + v * math.cos(self.heading[i])
        y = self.pos[i, 1] + v * math.sin(self.heading[i])
        self.pos[i] = self.arena.clamp(x, y)


class Simulation:
    """One synthetic video: iterate `frames()` for (uint8 frame [H, W], FrameTruth)."""

    def __init__(self, config: SimulationConfig):
        self.config = config
        preset = config.animal_preset()
        seeds = np.random.SeedSequence(config.seed).spawn(4)
        if config.marking_seed is not None:  # the same individuals (and setup) as another video
            marking = np.random.SeedSequence(config.marking_seed).spawn(4)
            seeds[0], seeds[3] = marking[0], marking[3]
        look_rng, motion_rng, self._noise_rng, animal_rng = (np.random.default_rng(s) for s in seeds)
        self.look = _draw_look(config.preset, look_rng)
        self.shape = _Shape(config.preset, preset, look_rng)
        self.animals = _draw_animals(config.n_animals, config.preset, preset, self.look, animal_rng)
        self.body_length = float(np.median([a.length for a in self.animals]))
        self._patch_half = int(math.ceil(0.62 * max(a.length for a in self.animals) + 4))
        col = config.width // config.n_arenas
        self.motions: list[_Motion] = []
        self._where: list[tuple[_Motion, int]] = []  # animal -> (its arena's motion, its index there)
        self.arena = np.repeat(np.arange(config.n_arenas), config.arena_sizes()).astype(np.int64)
        first = 0
        habits = _Habits(config.schooling, config.resting, _condition_rng(config, "resting"),
                         _condition_rng(config, "schooling"))
        for k, size in enumerate(config.arena_sizes()):
            arena = _Arena(col, config.height, self._patch_half + 2, motion_rng, x0=k * col,
                           shape=config.tank_shape())
            motion = _Motion(size, preset, self.animals[first:first + size], arena, motion_rng,
                             config.always_touching, habits)
            self.motions.append(motion)
            self._where += [(motion, j) for j in range(size)]
            first += size
        self.background = self._background()
        self.debris = _draw_debris(config, self.look, self.body_length, _condition_rng(config, "debris"))
        for speck in self.debris:
            if not speck.drifts:
                speck.draw(self.background, 0, self.look.blur_sigma)
        self.light = _light_field(config, _condition_rng(config, "light"), wall=self._patch_half + 2)
        """Light reaching each pixel as a fraction of the brightest (None: even light)."""

    def _background(self) -> np.ndarray:
        h, w = self.config.height, self.config.width
        look = self.look
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        xn, yn = x / max(w - 1, 1) - 0.5, y / max(h - 1, 1) - 0.5
        background = (look.background + look.gradient[0] * xn + look.gradient[1] * yn
                      - look.vignette * 2.0 * (xn * xn + yn * yn)).astype(np.float32)
        col = w // self.config.n_arenas
        for k in range(1, self.config.n_arenas):  # a dark wall between neighbouring tanks
            background[:, k * col - 1:k * col + 1] = look.body_grey
        return background

    def frames(self) -> Iterator[tuple[np.ndarray, FrameTruth]]:
        cfg, look = self.config, self.look
        h, w = cfg.height, cfg.width
        pad = 48
        bank = self._noise_rng.standard_normal((2, h + pad, w + pad), dtype=np.float32)
        bank *= np.float32(look.noise_sigma / math.sqrt(2.0))
        canvas, noise = np.empty((h, w), np.float32), np.empty((h, w), np.float32)
        contacts: set[tuple[int, int]] = set()
        offsets = np.concatenate([[0], np.cumsum(cfg.arena_sizes())])
        for t in range(cfg.n_frames):
            for k, motion in enumerate(self.motions):  # animals of different arenas never touch
                motion.step({(a - offsets[k], b - offsets[k]) for a, b in contacts if self.arena[a] == k})
            np.copyto(canvas, self.background)
            for speck in self.debris:  # drifting specks lie under the animals
                if speck.drifts:
                    speck.draw(canvas, t, look.blur_sigma)
            patches = [self._render(i, canvas) for i in range(cfg.n_animals)]
            contacts = _contacts(patches)
            touching = np.zeros(cfg.n_animals, bool)
            for a, b in contacts:
                touching[a] = touching[b] = True
            if cfg.light_animals:
                np.subtract(np.float32(255.0), canvas, out=canvas)
            if self.light is not None:
                canvas *= self.light
            oy = self._noise_rng.integers(0, pad, 4)
            np.add(bank[0, oy[0]:oy[0] + h, oy[1]:oy[1] + w], bank[1, oy[2]:oy[2] + h, oy[3]:oy[3] + w],
                   out=noise)
            noise += np.float32(self._noise_rng.normal(0.0, look.flicker))
            canvas += noise
            np.clip(canvas, 0.0, 255.0, out=canvas)
            frame = cv2.convertScaleAbs(canvas)
            truth = FrameTruth(
                positions=np.array([p[3] for p in patches], float),
                orientation=(np.concatenate([m.heading for m in self.motions]) + math.pi) % (2 * math.pi)
                - math.pi,
                touching=touching,
                contacts=sorted(contacts),
            )
            yield frame, truth

    def _render(self, i: int, canvas: np.ndarray):
        """Draw animal i into the canvas; return (y0, x0, mask, centroid) for contact tests."""
        (m, i), animal = self._where[i], self.animals[i]
        x, y = m.pos[i]
        r = self._patch_half
        x0, y0 = int(math.floor(x)) - r, int(math.floor(y)) - r
        size = 2 * r + 2
        xs = np.arange(x0, x0 + size, dtype=np.float64) - x
        ys = np.arange(y0, y0 + size, dtype=np.float64) - y
        dx, dy = np.meshgrid(xs, ys)
        beat = min(m.speed[i] / m.vmax, 1.0)
        alpha, grey = self.shape.render(animal, self.look, dx, dy, float(m.heading[i]),
                                        float(m.beat_phase[i]), beat, float(m.bend[i]))
        total = alpha.sum()
        centroid = (x0 + (alpha.sum(axis=0) @ np.arange(size)) / total,
                    y0 + (alpha.sum(axis=1) @ np.arange(size)) / total)
        alpha = alpha.astype(np.float32)
        ink = (alpha * grey).astype(np.float32)
        sigma = self.look.blur_sigma
        alpha_b = cv2.GaussianBlur(alpha, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        ink_b = cv2.GaussianBlur(ink, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        region = canvas[y0:y0 + size, x0:x0 + size]
        region *= 1.0 - alpha_b
        region += ink_b
        return y0, x0, alpha_b > 0.15, centroid


def _condition_rng(config: SimulationConfig, what: str) -> np.random.Generator:
    """A random stream of its own for each hard-recording option, so that turning one on changes
    nothing that the others or the default video draw."""
    key = ("debris", "light", "resting", "schooling").index(what)
    return np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(100 + key,)))


def _light_field(config: SimulationConfig, rng: np.random.Generator, wall: float = 0.0) -> np.ndarray | None:
    """Fraction of the light at each pixel: a gradient with broad patches, a vignette, dark ends.

    It multiplies the scene (floor and animals alike) before the sensor noise, as uneven lighting
    does, so where the light is low the animals' contrast is low too. Scaled to a maximum of 1
    except for the dark ends, which only take light away: they are darkest (4 % of the light) from
    ``wall`` px off the frame's edge outwards, the closest an animal's centre comes to the edge.
    """
    if not (config.vignette or config.light_gradient or config.dark_ends):
        return None
    h, w = config.height, config.width
    x = np.arange(w, dtype=np.float32)
    xn = x / max(w - 1, 1) - 0.5
    yn = np.arange(h, dtype=np.float32)[:, None] / max(h - 1, 1) - 0.5
    light = np.ones((h, w), np.float32)
    if config.light_gradient:
        g = config.light_gradient
        angle = rng.uniform(-math.pi, math.pi)
        c, s = math.cos(angle), math.sin(angle)
        light *= 1.0 + g * (xn * c + yn * s) / (abs(c) + abs(s))
        for _ in range(3):  # broad brighter and darker patches: lamps are never quite even
            cx, cy = rng.uniform(-0.5, 0.5, 2)
            sigma, amplitude = rng.uniform(0.15, 0.35), rng.uniform(-1.0, 1.0) * g / 3.0
            light *= 1.0 + amplitude * np.exp(-((xn - cx) ** 2 + (yn - cy) ** 2) / (2.0 * sigma * sigma))
    if config.vignette:
        light *= 1.0 - config.vignette * (xn * xn + yn * yn) / 0.5
    light = np.maximum(light, 0.02)
    light /= light.max()
    if config.dark_ends:
        band = max(config.dark_ends * w - wall, 1.0)
        d = np.clip((np.minimum(x, w - 1 - x) - wall) / band, 0.0, 1.0)
        light *= 0.04 + 0.96 * (d * d * (3.0 - 2.0 * d)) ** 2  # smoothstep squared: deep, yet no edge inside
    return light.astype(np.float32)


@dataclass
class _Speck:
    """One piece of debris: dust (a disc), a bit (a lumpy blob up to an animal's size) or a hair (a thin
    curved line), at a grey level of its own; drifting ones move in a straight line, bouncing off the
    frame's edges."""

    kind: str
    x: float
    y: float
    grey: float
    size: float  # radius of dust and bits, half-thickness of hairs (px)
    angle: float = 0.0
    aspect: float = 1.0  # bits: minor/major axis
    lumps: np.ndarray = field(default_factory=lambda: np.zeros(0))  # bits: radius jitter per harmonic
    length: float = 0.0  # hairs
    curl: float = 0.0  # hairs: bow of the curve, fraction of the length
    wave: tuple[float, float, float] = (0.0, 0.0, 0.0)  # hairs: amplitude (fraction of length), cycles, phase
    velocity: tuple[float, float] = (0.0, 0.0)  # px per frame
    frame_size: tuple[int, int] = (0, 0)  # (width, height), for bouncing

    @property
    def drifts(self) -> bool:
        return self.velocity != (0.0, 0.0)

    def position(self, t: int) -> tuple[float, float]:
        w, h = self.frame_size
        return _bounce(self.x + self.velocity[0] * t, w - 1), _bounce(self.y + self.velocity[1] * t, h - 1)

    def extent(self) -> float:
        if self.kind == "hair":
            return self.length / 2 + (abs(self.curl) + self.wave[0]) * self.length + self.size
        return 1.4 * self.size

    def coverage(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Coverage in [0, 1] at offsets from the speck's centre (signed distance + 1/2, as the bodies)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = dx * c + dy * s, dy * c - dx * s
        if self.kind == "dust":
            dist = self.size - np.hypot(u, v)
        elif self.kind == "bit":
            phi = np.arctan2(v, u)
            a, b = self.size, self.size * self.aspect
            radius = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
            radius = radius * (1.0 + sum(amp * np.cos((k + 2) * phi + k) for k, amp in enumerate(self.lumps)))
            dist = radius - np.hypot(u, v)
        else:  # a hair: a bowed, wavy line from -length/2 to +length/2 along u, thinning to its tips
            q = np.linspace(-0.5, 0.5, 25)
            amplitude, cycles, phase = self.wave
            pu = q * self.length
            pv = self.length * (self.curl * (1.0 - 4.0 * q * q) + amplitude * np.sin(2 * math.pi * cycles * q + phase))
            dist = _polyline_distance(u, v, pu, pv, self.size * (1.0 - 0.6 * (2.0 * q) ** 4))
        return np.clip(dist + 0.5, 0.0, 1.0)

    def draw(self, image: np.ndarray, t: int, blur_sigma: float) -> None:
        """Lay the speck over ``image`` (float32) at its position at frame ``t``, blurred as the optics blur."""
        x, y = self.position(t)
        r = int(math.ceil(self.extent() + 3 * blur_sigma + 2))
        x0, y0 = int(math.floor(x)) - r, int(math.floor(y)) - r
        size = 2 * r + 2
        dx, dy = np.meshgrid(np.arange(x0, x0 + size) - x, np.arange(y0, y0 + size) - y)
        alpha = cv2.GaussianBlur(self.coverage(dx, dy).astype(np.float32), (0, 0), blur_sigma,
                                 borderType=cv2.BORDER_CONSTANT)
        h, w = image.shape
        ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + size, h), min(x0 + size, w)
        if ya >= yb or xa >= xb:
            return
        a = alpha[ya - y0:yb - y0, xa - x0:xb - x0]
        region = image[ya:yb, xa:xb]
        region *= 1.0 - a
        region += a * np.float32(self.grey)


def _bounce(value: float, top: float) -> float:
    """``value`` reflected into [0, top], as a speck bouncing between two walls."""
    period = 2.0 * top
    value = value % period
    return period - value if value > top else value


def _polyline_distance(u: np.ndarray, v: np.ndarray, pu: np.ndarray, pv: np.ndarray,
                       half_width: np.ndarray) -> np.ndarray:
    """Signed distance (inside > 0) from each point (u, v) to a stroke along the polyline (pu, pv)
    whose half-width runs linearly between the given values at its vertices."""
    best = np.full(u.shape, -np.inf)
    for k in range(len(pu) - 1):
        su, sv = pu[k + 1] - pu[k], pv[k + 1] - pv[k]
        f = np.clip(((u - pu[k]) * su + (v - pv[k]) * sv) / max(su * su + sv * sv, 1e-12), 0.0, 1.0)
        width = half_width[k] + f * (half_width[k + 1] - half_width[k])
        best = np.maximum(best, width - np.hypot(u - pu[k] - f * su, v - pv[k] - f * sv))
    return best


def _draw_debris(config: SimulationConfig, look: Look, body_length: float, rng: np.random.Generator) -> list[_Speck]:
    """``config.debris`` specks anywhere in the frame: half dust, a quarter bits, a quarter hairs.

    Grey levels are set between the animals' grey (0) and the floor's (1): a third at or beyond the
    animals' (they pass any threshold that finds the animals), two fifths fainter than the animals,
    the rest beyond the floor (lighter than it under dark animals). Sizes run from a pixel to about an
    animal's area.
    """
    specks = []
    contrast = look.background - look.body_grey
    for _ in range(config.debris):
        x, y = rng.uniform(0, config.width - 1), rng.uniform(0, config.height - 1)
        shade = rng.random()
        level = (rng.uniform(-0.3, 0.15) if shade < 0.35 else rng.uniform(0.3, 0.75) if shade < 0.75
                 else rng.uniform(1.15, 1.6))
        grey = float(np.clip(look.body_grey + level * contrast, 5.0, 250.0))
        kind = rng.choice(["dust", "dust", "bit", "hair"])
        angle = rng.uniform(-math.pi, math.pi)
        if kind == "dust":
            speck = _Speck("dust", x, y, grey, size=float(np.exp(rng.uniform(math.log(0.6), math.log(2.5)))),
                           angle=angle)
        elif kind == "bit":
            speck = _Speck("bit", x, y, grey, size=rng.uniform(0.06, 0.3) * body_length, angle=angle,
                           aspect=rng.uniform(0.35, 1.0), lumps=rng.uniform(-0.12, 0.12, 3))
        else:
            speck = _Speck("hair", x, y, grey, size=rng.uniform(0.35, 0.9), angle=angle,
                           length=float(np.exp(rng.uniform(math.log(0.4), math.log(2.5)))) * body_length,
                           curl=rng.uniform(-0.2, 0.2),
                           wave=(rng.uniform(0.0, 0.06), rng.uniform(0.5, 2.5), rng.uniform(0, 2 * math.pi)))
        if rng.random() < 1 / 7:
            heading, speed = rng.uniform(-math.pi, math.pi), rng.uniform(0.03, 0.15)
            speck.velocity = (speed * math.cos(heading), speed * math.sin(heading))
        speck.frame_size = (config.width, config.height)
        specks.append(speck)
    return specks


def _contacts(patches) -> set[tuple[int, int]]:
    """Pairs whose blurred silhouettes come within one pixel: they may segment as one blob.

    The masks include faint edges (coverage > 0.15) because two faint edges side by side add up
    to a dark pixel that bridges the animals.
    """
    out = set()
    kernel = np.ones((3, 3), np.uint8)
    for a in range(len(patches)):
        ya, xa, ma, _ = patches[a]
        for b in range(a + 1, len(patches)):
            yb, xb, mb, _ = patches[b]
            y0, y1 = max(ya, yb), min(ya + ma.shape[0], yb + mb.shape[0])
            x0, x1 = max(xa, xb), min(xa + ma.shape[1], xb + mb.shape[1])
            if y0 >= y1 or x0 >= x1:
                continue
            sa = ma[y0 - ya:y1 - ya, x0 - xa:x1 - xa]
            sb = mb[y0 - yb:y1 - yb, x0 - xb:x1 - xb]
            if not sa.any() or not sb.any():
                continue
            grown = cv2.dilate(sa.astype(np.uint8), kernel).astype(bool)
            if (grown & sb).any():
                out.add((a, b))
    return out


def simulate_frames(config: SimulationConfig) -> Iterator[tuple[np.ndarray, FrameTruth]]:
    """Frames (uint8 [H, W]) and their truth, rendered one at a time."""
    return Simulation(config).frames()


def collect_truth(truths: list[FrameTruth], body_length: float, arena: np.ndarray | None = None) -> GroundTruth:
    """Stack per-frame truths and list every pairwise contact episode; ``arena``: each animal's arena."""
    episodes, open_since = [], {}
    for t, truth in enumerate(truths + [FrameTruth(np.zeros((0, 2)), np.zeros(0), np.zeros(0, bool))]):
        now = set(truth.contacts)
        for pair in list(open_since):
            if pair not in now:
                episodes.append((open_since.pop(pair), t - 1, *pair))
        for pair in now:
            open_since.setdefault(pair, t)
    return GroundTruth(
        positions=np.array([t.positions for t in truths], np.float64),
        touching=np.array([t.touching for t in truths], bool),
        orientation=np.array([t.orientation for t in truths], np.float64),
        crossings=np.array(sorted(episodes), np.int64).reshape(-1, 4),
        body_length=body_length,
        arena=np.zeros(len(truths[0].positions) if truths else 0, np.int64) if arena is None else arena,
    )


def simulate(config: SimulationConfig) -> tuple[np.ndarray, GroundTruth]:
    """The whole video in memory (uint8 [F, H, W]) with its ground truth; for short videos."""
    sim = Simulation(config)
    frames, truths = [], []
    for frame, truth in sim.frames():
        frames.append(frame)
        truths.append(truth)
    return np.stack(frames), collect_truth(truths, sim.body_length, sim.arena)


class _CvWriter:
    """An OpenCV VideoWriter: FFV1 and MPEG-4 in grey, Motion-JPEG in BGR (OpenCV's own MJPEG writer,
    the one that honours a JPEG quality, writes grey frames wrongly)."""

    def __init__(self, config: SimulationConfig, path: Path):
        size, fps = (config.width, config.height), float(config.fps)
        self.bgr = config.codec == "mjpg"
        if self.bgr:
            self.writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
        else:
            fourcc = cv2.VideoWriter_fourcc(*{"ffv1": "FFV1", "mp4v": "mp4v"}[config.codec])
            self.writer = cv2.VideoWriter(str(path), fourcc, fps, size, isColor=False)
        if not self.writer.isOpened():
            raise OSError(f"cannot write a {config.codec} video at {path}")
        if self.bgr:
            quality = 75 if config.quality is None else config.quality
            if not self.writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality):
                raise OSError(f"OpenCV's MJPEG writer did not take JPEG quality {quality}")

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if self.bgr else frame)

    def close(self) -> None:
        self.writer.release()


class _H264Writer:
    """H.264 (libx264, yuv420p, preset veryfast as live-capture software uses) in MP4 through PyAV, at a
    bitrate or at constant quality."""

    def __init__(self, config: SimulationConfig, path: Path):
        try:
            import av
        except ImportError:
            raise OSError("--codec h264 needs PyAV, which is not installed: pip install av "
                          "(or pip install -e '.[sim]'), or choose --codec mjpg") from None
        self.av = av
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream("libx264", rate=Fraction(config.fps).limit_denominator(1001))
        self.stream.width, self.stream.height, self.stream.pix_fmt = config.width, config.height, "yuv420p"
        if config.bitrate is None:
            self.stream.options = {"preset": "veryfast", "crf": "23"}
        else:
            self.stream.bit_rate = int(config.bitrate * 1000)
            self.stream.options = {"preset": "veryfast"}

    def write(self, frame: np.ndarray) -> None:
        for packet in self.stream.encode(self.av.VideoFrame.from_ndarray(frame, format="gray")):
            self.container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()


def _video_writer(config: SimulationConfig, path: Path) -> _CvWriter | _H264Writer:
    return _H264Writer(config, path) if config.codec == "h264" else _CvWriter(config, path)


def write_simulation(config: SimulationConfig, out_dir: str | Path) -> dict[str, Path]:
    """Write the video (``config.video_name()``: lossless FFV1 ``video.avi`` by default, greyscale) and
    ``ground_truth.npz`` into out_dir.

    Encoding runs in a thread beside the rendering (OpenCV and PyAV release the GIL while encoding).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video_path, truth_path = out / config.video_name(), out / "ground_truth.npz"
    writer = _video_writer(config, video_path)
    pending: queue.Queue = queue.Queue(maxsize=16)
    errors: list[Exception] = []

    def encode() -> None:  # keeps draining after an error so that the renderer never blocks
        while (frame := pending.get()) is not None:
            if not errors:
                try:
                    writer.write(frame)
                except Exception as err:  # cv2.error, or PyAV's FFmpegError: reported below
                    errors.append(err)

    encoder = threading.Thread(target=encode, daemon=True)
    encoder.start()
    sim = Simulation(config)
    truths = []
    try:
        for frame, truth in sim.frames():
            pending.put(frame)
            truths.append(truth)
    finally:
        pending.put(None)
        encoder.join()
        writer.close()
    if errors:
        raise OSError(f"writing {video_path} failed: {errors[0]}")
    gt = collect_truth(truths, sim.body_length, sim.arena)
    np.savez_compressed(
        truth_path,
        positions=gt.positions,
        touching=gt.touching,
        orientation=gt.orientation,
        crossings=gt.crossings,
        body_length=np.float64(gt.body_length),
        fps=np.float64(config.fps),
        width=np.int64(config.width),
        height=np.int64(config.height),
        preset=np.str_(config.preset),
        seed=np.int64(config.seed),
        n_animals=np.int64(config.n_animals),
        arena=gt.arena,
        arena_rois=np.array(config.arena_rois()),
        marking_seed=np.int64(config.seed if config.marking_seed is None else config.marking_seed),
        conditions=np.str_(json.dumps(config.conditions(), sort_keys=True)),
    )
    return {"video": video_path, "ground_truth": truth_path}


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
                                  light_animals=args.light_animals, tank=args.tank, codec=args.codec,
                                  bitrate=args.bitrate, quality=args.quality)
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


if __name__ == "__main__":
    sys.exit(main())
