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
"""

from __future__ import annotations

import argparse
import math
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

PRESET_NAMES = ("fish", "flies", "mice")


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
        preset = presets()[self.preset]
        self.width = preset.width * self.n_arenas if self.width is None else int(self.width)
        self.height = preset.height if self.height is None else int(self.height)
        if min(self.width // self.n_arenas, self.height) < 4 * preset.body_length[1]:
            where = "frame" if self.n_arenas == 1 else f"frame split into {self.n_arenas} arenas"
            raise ValueError(
                f"a {self.width}x{self.height} {where} is too small for {self.preset} "
                f"(needs at least {int(4 * preset.body_length[1])} px per side and arena)"
            )

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

    def __init__(self, width: int, height: int, margin: float, rng: np.random.Generator, x0: int = 0):
        self.circle = bool(rng.random() < 0.7)
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


class _Motion:
    """Bursty locomotion, wall avoidance and engineered crossings.

    The speed never exceeds 0.45 body widths per frame so that every animal overlaps itself in
    consecutive frames, the assumption behind the overlap graph. All rates are per frame; the
    video's fps only labels the file.
    """

    def __init__(self, n: int, preset: Preset, animals: list[Animal], arena: _Arena,
                 rng: np.random.Generator, always_touching: bool = False):
        self.n, self.rng, self.arena, self.gait = n, rng, arena, preset.gait
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
        if always_touching:
            self.max_groups = max(2, n // 4)
            self._start_touching()

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
            if i not in busy:
                self._step_free(i)
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
        free = [i for i in range(self.n) if i not in self.grouped() and self.cooldown[i] == 0]
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

    def _step_free(self, i: int) -> None:
        rng = self.rng
        if self.straight[i]:  # leaving a crossing: turn to the departure direction, no dawdling
            self.omega[i] = _angle_diff(self.departure[i], self.heading[i])
        else:
            self._gait(i)
            self.omega[i] = 0.85 * self.omega[i] + rng.normal(0, self.turn_noise)
            self.omega[i] += self._avoid_walls(i) + self._avoid_others(i)
        self.omega[i] = float(np.clip(self.omega[i], -self.max_turn, self.max_turn))
        self.heading[i] += self.omega[i]
        self._move(i)

    def _gait(self, i: int) -> None:
        rng = self.rng
        if self.gait == "bouts":
            if self.speed[i] < 0.3 * self.vmax and rng.random() < self.bout_rate:
                self.speed[i] = rng.uniform(0.5, 1.0) * self.vmax
                self.omega[i] += rng.normal(0, 0.12)
            else:
                self.speed[i] *= self.bout_decay
            return
        stop, go = self.walk_stop
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
        preset = presets()[config.preset]
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
        for k, size in enumerate(config.arena_sizes()):
            arena = _Arena(col, config.height, self._patch_half + 2, motion_rng, x0=k * col)
            motion = _Motion(size, preset, self.animals[first:first + size], arena, motion_rng,
                             config.always_touching)
            self.motions.append(motion)
            self._where += [(motion, j) for j in range(size)]
            first += size
        self.background = self._background()

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
        for _ in range(cfg.n_frames):
            for k, motion in enumerate(self.motions):  # animals of different arenas never touch
                motion.step({(a - offsets[k], b - offsets[k]) for a, b in contacts if self.arena[a] == k})
            np.copyto(canvas, self.background)
            patches = [self._render(i, canvas) for i in range(cfg.n_animals)]
            contacts = _contacts(patches)
            touching = np.zeros(cfg.n_animals, bool)
            for a, b in contacts:
                touching[a] = touching[b] = True
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


def write_simulation(config: SimulationConfig, out_dir: str | Path) -> dict[str, Path]:
    """Write `video.avi` (lossless FFV1, greyscale) and `ground_truth.npz` into out_dir.

    Encoding runs in a thread beside the rendering (OpenCV releases the GIL while encoding).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video_path, truth_path = out / "video.avi", out / "ground_truth.npz"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"FFV1"), float(config.fps),
                             (config.width, config.height), isColor=False)
    if not writer.isOpened():
        raise OSError(f"cannot write a video at {video_path}")
    pending: queue.Queue = queue.Queue(maxsize=16)
    errors: list[cv2.error] = []

    def encode() -> None:  # keeps draining after an error so that the renderer never blocks
        while (frame := pending.get()) is not None:
            if not errors:
                try:
                    writer.write(frame)
                except cv2.error as err:
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
        writer.release()
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
    )
    return {"video": video_path, "ground_truth": truth_path}


def main(argv: list[str] | None = None) -> int:
    """`shoal simulate`: write a synthetic video with its ground truth."""
    parser = argparse.ArgumentParser(prog="shoal simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--animals", type=int, required=True, help="number of animals")
    parser.add_argument("--frames", type=int, required=True, help="number of frames")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="fish")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--always-touching", action="store_true",
                        help="some animals touch in every frame: a video without global fragments")
    parser.add_argument("--arenas", type=int, default=1,
                        help="separate tanks side by side (their ROIs are printed, for --exclusive-rois)")
    parser.add_argument("--marking-seed", type=int, default=None,
                        help="seed of the animals' looks (default --seed): the same individuals in another video")
    args = parser.parse_args(argv)
    try:
        config = SimulationConfig(args.animals, args.frames, args.width, args.height, args.preset,
                                  args.seed, args.fps, args.always_touching, n_arenas=args.arenas,
                                  marking_seed=args.marking_seed)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
