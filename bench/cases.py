"""The benchmark's videos: fixed simulator settings and seeds, rendered once and cached.

Seeds are fixed so that every run of a case tracks the same video; the cache key holds every
setting, so changing a case renders a new video instead of reusing a stale one.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from shoal.simulate import SimulationConfig, write_simulation

QUICK_FRAMES = 300
"""Frames of every case under --quick: enough for crossings and global fragments, seconds to track."""


@dataclass(frozen=True)
class Case:
    """One simulated video to track."""

    name: str
    preset: str
    n_animals: int
    n_frames: int
    width: int
    height: int
    seed: int
    always_touching: bool = False  # no frame shows every animal apart: no global fragment

    def config(self) -> SimulationConfig:
        return SimulationConfig(n_animals=self.n_animals, n_frames=self.n_frames, width=self.width,
                                height=self.height, preset=self.preset, seed=self.seed,
                                always_touching=self.always_touching)

    def key(self) -> str:
        """Folder name in the cache: every setting that changes the video."""
        return (f"{self.preset}_n{self.n_animals}_f{self.n_frames}_{self.width}x{self.height}"
                f"_s{self.seed}" + ("_touching" if self.always_touching else ""))

    def quick(self) -> Case:
        return replace(self, n_frames=min(self.n_frames, QUICK_FRAMES))


CASES: dict[str, Case] = {c.name: c for c in [
    Case("fish4", "fish", 4, 1000, 500, 500, seed=11),
    Case("fish8", "fish", 8, 3000, 1000, 1000, seed=12),
    Case("flies10", "flies", 10, 3000, 800, 800, seed=13),
    Case("fish20", "fish", 20, 2000, 1200, 1200, seed=14),
    Case("mice", "mice", 3, 2000, 600, 600, seed=15),
    Case("nogf", "fish", 5, 2000, 500, 500, seed=17, always_touching=True),
    Case("long", "fish", 4, 20000, 500, 500, seed=16),
]}
DEFAULT_CASES = ("fish4", "fish8", "flies10", "fish20", "mice", "nogf")
"""`long` (20 000 frames) runs only when asked for by name."""

SCALING_SEED = 21


def frames_case(n_frames: int) -> Case:
    """Scaling in video length: 4 fish in 500x500, one seed for every length."""
    return Case(f"fish4_f{n_frames}", "fish", 4, n_frames, 500, 500, seed=SCALING_SEED)


def animals_case(n_animals: int, n_frames: int) -> Case:
    """Scaling in animals at a constant density (the arena of 4 fish in 500x500, grown by area)."""
    side = max(500, int(round(500 * math.sqrt(n_animals / 4) / 2)) * 2)
    return Case(f"fish{n_animals}_f{n_frames}", "fish", n_animals, n_frames, side, side, seed=SCALING_SEED)


def ensure_video(case: Case, cache: Path) -> dict[str, Path]:
    """video.avi and ground_truth.npz of ``case``, rendered into the cache if not there yet.

    Rendering goes to a temporary folder that is renamed into place, so an interrupted run never
    leaves a half-written video that a later run would trust.
    """
    folder = cache / case.key()
    paths = {"video": folder / "video.avi", "ground_truth": folder / "ground_truth.npz"}
    if all(p.is_file() for p in paths.values()):
        return paths
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{case.key()}-", dir=cache))
    try:
        write_simulation(case.config(), staging)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths
