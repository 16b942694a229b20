"""How the animals look: the video's imaging look, the individuals and the body outline they share.

Appearance is drawn from its own random streams (look and animals, both from ``marking_seed``), apart
from motion, so that one marking_seed gives the same individuals whatever they do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shoal.sim.presets import Preset


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
