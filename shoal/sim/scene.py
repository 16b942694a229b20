"""Rendering: a Simulation draws each frame (floor, debris, animals, light, sensor noise) with its truth.

Animals are drawn one small anti-aliased patch each and their contacts are read off those patches,
so the frame and its truth come from the same pixels. `simulate` and `simulate_frames` are the
in-memory entry points.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import cv2
import numpy as np

from shoal.sim.config import SimulationConfig
from shoal.sim.debris import _draw_debris
from shoal.sim.looks import _draw_animals, _draw_look, _Shape
from shoal.sim.motion import _Arena, _Habits, _Motion
from shoal.sim.truth import FrameTruth, GroundTruth, collect_truth

#: the floor of a video with mixed coats; light animals mirror the dark ones' grey levels about it
MID_GREY = 128.0


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
        if config.mixed_coats:  # a mid-grey floor, dark animals at least 70 grey levels below it
            self.look = replace(self.look, background=MID_GREY, body_grey=min(self.look.body_grey, MID_GREY - 70))
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
        light = self.config.mixed_coats and i % 2  # every other animal of the video, whatever its arena
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
        if light:
            grey = 2.0 * MID_GREY - grey
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


def simulate(config: SimulationConfig) -> tuple[np.ndarray, GroundTruth]:
    """The whole video in memory (uint8 [F, H, W]) with its ground truth; for short videos."""
    sim = Simulation(config)
    frames, truths = [], []
    for frame, truth in sim.frames():
        frames.append(frame)
        truths.append(truth)
    return np.stack(frames), collect_truth(truths, sim.body_length, sim.arena)
