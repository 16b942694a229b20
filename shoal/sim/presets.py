"""The kinds of animal (fish, flies, mice): frame size, body profile, speed and gait of each.

These are the defaults a SimulationConfig starts from and the ranges each seed draws within, kept in
one place so that a new kind of animal is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

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
