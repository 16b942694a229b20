"""How the animals move: arena walls, bouts or walk-stop gaits, engineered crossings, and the
optional schooling and resting habits.

Motion only moves points and headings; the renderer reads them, and reports back which animals
touched so that a crossing knows when its animals have met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from shoal.sim.looks import Animal
from shoal.sim.presets import Preset


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
