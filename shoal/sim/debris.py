"""Debris on the floor (``debris``): dust, animal-sized bits and hairs, darker and lighter than the
animals, a few of them drifting.

They are what a segmentation must not take for an animal, so their sizes and grey levels straddle
the animals'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from shoal.sim.config import SimulationConfig
from shoal.sim.looks import Look


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
