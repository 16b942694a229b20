"""Hard scenes for automatic segmentation, drawn with OpenCV: what real recordings do to thresholds.

Each scene knows where its animals are, so a test can check that the blobs found are the animals
and not debris, shadows or tank walls. The knobs are the ways real clips differ from a clean
simulation: light animals on a dark floor, debris and hairs both lighter and darker than the floor,
vignetting and uneven light, dark tank ends, shadows, JPEG compression, animals that sit still and
tight schools.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from shoal.video import write_video


@dataclass
class Scene:
    """One synthetic clip; lengths in pixels, grey levels 0-255 before illumination."""

    n_animals: int = 4
    n_frames: int = 60
    width: int = 320
    height: int = 240
    floor: float = 200.0
    animal: float = 50.0
    body_length: float = 24.0
    body_width: float = 7.0
    noise: float = 2.0
    vignette: float = 0.0  # illumination lost at the corners (fraction)
    gradient: float = 0.0  # illumination lost from the left edge to the right edge (fraction)
    debris: int = 0  # static specks and hairs, half lighter and half darker than the floor
    moving_debris: int = 0  # specks that jump to a new place every few frames
    still: int = 0  # animals that never move (background subtraction cannot see them)
    big: float = 1.0  # the first animal is this many times longer (a female orb-weaver and her male)
    school: bool = False  # animals stay within about a body length of each other
    dark_ends: float = 0.0  # share of the width at each end where the tank is dark
    shadow: float = 0.0  # offset of each animal's dark shadow, in body widths (0: none)
    jpeg_quality: int | None = None
    speed: float = 0.15  # body lengths per frame
    seed: int = 0

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 [F, H, W] and the animals' centres [F, N, 2] (x, y)."""
        rng = np.random.default_rng(self.seed)
        h, w = self.height, self.width
        floor = self._floor(rng)
        light = self._illumination()
        lengths = self.body_length * rng.uniform(0.9, 1.1, self.n_animals)
        lengths[:1] *= self.big
        greys = self.animal + (self.animal - self.floor) * rng.uniform(-0.1, 0.1, self.n_animals)
        positions = self._paths(rng)
        headings = self._headings(positions, rng)
        jumpers = rng.uniform((5, 5), (w - 5, h - 5), (self.moving_debris, 2))
        frames = np.empty((self.n_frames, h, w), np.uint8)
        for f in range(self.n_frames):
            canvas = floor.copy()
            if self.moving_debris and f % 5 == 0:
                jumpers = rng.uniform((5, 5), (w - 5, h - 5), (self.moving_debris, 2))
            for k, (x, y) in enumerate(jumpers):
                grey = 255.0 if k % 2 else 0.0
                cv2.circle(canvas, (int(x), int(y)), 2, grey, -1, cv2.LINE_AA)
            if self.shadow:
                alpha = self._alpha(positions[f] + self.shadow * self.body_width, headings[f], lengths)
                canvas *= 1.0 - 0.7 * alpha
            for k in range(self.n_animals):
                alpha = self._alpha(positions[f, k:k + 1], headings[f, k:k + 1], lengths[k:k + 1])
                canvas = canvas * (1.0 - alpha) + greys[k] * alpha
            canvas *= light
            canvas += rng.normal(0.0, self.noise, canvas.shape).astype(np.float32)
            frame = np.clip(canvas, 0, 255).astype(np.uint8)
            if self.jpeg_quality is not None:
                _, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
                frame = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
            frames[f] = frame
        return frames, positions

    def write(self, path: str | Path) -> tuple[Path, np.ndarray]:
        """Render into a lossless video at ``path``; returns the path and the animals' centres."""
        frames, positions = self.render()
        return write_video(path, frames, fps=25.0), positions

    def _floor(self, rng: np.random.Generator) -> np.ndarray:
        """The empty arena: the floor grey with static debris (specks and hairs) drawn into it."""
        floor = np.full((self.height, self.width), self.floor, np.float32)
        for k in range(self.debris):
            grey = float(np.clip(self.floor + (1 if k % 2 else -1) * rng.uniform(60, 120), 0, 255))
            x, y = rng.uniform(5, self.width - 5), rng.uniform(5, self.height - 5)
            if k % 4 < 2:  # a speck of dust
                cv2.circle(floor, (int(x), int(y)), int(rng.integers(1, 3)), grey, -1, cv2.LINE_AA)
            else:  # a hair: a thin bent line about a body length long
                angle = rng.uniform(0, math.pi)
                points = [(x + t * self.body_length * math.cos(angle + 0.6 * t),
                           y + t * self.body_length * math.sin(angle + 0.6 * t)) for t in np.linspace(0, 1.2, 8)]
                cv2.polylines(floor, [np.array(points, np.int32)], False, grey, 1, cv2.LINE_AA)
        return floor

    def _illumination(self) -> np.ndarray:
        y, x = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        xn, yn = x / (self.width - 1), y / (self.height - 1)
        light = 1.0 - self.vignette * 2.0 * ((xn - 0.5) ** 2 + (yn - 0.5) ** 2) - self.gradient * xn
        if self.dark_ends:
            edge = np.minimum(xn, 1 - xn)
            light *= np.where(edge < self.dark_ends, 0.35, 1.0).astype(np.float32)
            light = cv2.GaussianBlur(light, (0, 0), 3)
        return light.astype(np.float32)

    def _paths(self, rng: np.random.Generator) -> np.ndarray:
        """Smooth random walks that stay in the arena (schools: around a moving centre, kept apart)."""
        n, margin = self.n_animals, self.body_length
        lo, hi = np.array([margin, margin]), np.array([self.width - margin, self.height - margin])
        pos = np.empty((self.n_frames, n, 2))
        if self.school:
            radius = 0.8 * self.body_length * math.sqrt(n)
            centre = (lo + hi) / 2
            here = centre + rng.uniform(-radius, radius, (n, 2)) * 0.5
        else:
            here = rng.uniform(lo, hi, (n, 2))
        heading = rng.uniform(0, 2 * math.pi, n)
        group_heading = rng.uniform(0, 2 * math.pi)
        step = self.speed * self.body_length
        for f in range(self.n_frames):
            heading += rng.normal(0, 0.25, n)
            move = step * np.stack([np.cos(heading), np.sin(heading)], axis=1)
            if self.school:
                group_heading += rng.normal(0, 0.1)
                centre = np.clip(centre + 0.5 * step * np.array([math.cos(group_heading), math.sin(group_heading)]),
                                 lo + radius, hi - radius)
                move += 0.05 * (centre - here)
                gap = here[:, None] - here[None]
                dist = np.linalg.norm(gap, axis=2) + np.eye(n) * 1e9
                push = np.clip(0.9 * self.body_length - dist, 0, None) / 2  # keep about a body length apart
                move += (gap / dist[..., None] * push[..., None]).sum(axis=1)
            move[: self.still] = 0
            here = here + move
            out = (here < lo) | (here > hi)
            heading[out.any(axis=1)] += math.pi
            here = np.clip(here, lo, hi)
            pos[f] = here
        return pos

    def _headings(self, positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        velocity = np.diff(positions, axis=0, prepend=positions[:1])
        headings = np.arctan2(velocity[..., 1], velocity[..., 0])
        headings[:, : self.still] = rng.uniform(0, math.pi, self.still)
        return headings

    def _alpha(self, centres: np.ndarray, headings: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Anti-aliased coverage [H, W] (0-1) of ellipses at ``centres``; 4x sub-pixel positions."""
        mask = np.zeros((self.height, self.width), np.uint8)
        for (x, y), angle, length in zip(centres, headings, lengths, strict=True):
            axes = (int(round(length * 2)), int(round(self.body_width * 2 * length / self.body_length)))
            cv2.ellipse(mask, (int(round(x * 4)), int(round(y * 4))), axes, math.degrees(angle), 0, 360, 255, -1,
                        cv2.LINE_AA, shift=2)
        return mask.astype(np.float32) / 255.0
