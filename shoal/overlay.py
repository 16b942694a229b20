"""Drawing tracking results onto frames, and cutting animal-centred views out of them.

Watching the result is how a lab checks a tracking: every identity gets its own colour, a dot at
its position, its label and a trail of where it has just been, so an identity switch shows as a
colour jumping from one animal to another. Individual videos follow one animal each, so its
behaviour can be scored without the rest of the group.

Pure functions, arrays in and arrays out (OpenCV only draws); `shoal/render.py` reads the session
and the videos and writes the files.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_SHIFT = 4
"""Fractional bits of the coordinates given to OpenCV's drawing: dots and trails sit at sub-pixel
positions, so they move smoothly instead of in whole-pixel steps."""


def identity_colours(n: int) -> np.ndarray:
    """BGR uint8 [n, 3]: one fully saturated colour per identity, hues spread evenly around the wheel.

    Saturated colours never look like the grey of a lab video, so the marks stand out on any
    background; even spacing keeps the hues of n identities as far apart as they can be.
    """
    if n < 0:
        raise ValueError(f"need a non-negative number of identities, got {n}")
    hsv = np.zeros((1, n, 3), np.uint8)
    hsv[0, :, 0] = np.round(np.arange(n) * 180.0 / max(n, 1)).astype(np.uint8) % 180
    hsv[0, :, 1:] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]


@dataclass(frozen=True)
class OverlayStyle:
    """Sizes of the marks, in pixels; :meth:`for_body_length` scales them to the animals."""

    radius: int = 4
    line: int = 2
    font_scale: float = 0.5

    @classmethod
    def for_body_length(cls, body_length: float) -> OverlayStyle:
        """Marks that stay readable next to animals of `body_length` pixels without hiding them."""
        length = float(body_length) if np.isfinite(body_length) and body_length > 0 else 30.0
        return cls(radius=max(2, round(length / 8)), line=max(1, round(length / 25)),
                   font_scale=float(np.clip(length / 80, 0.4, 2.0)))


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def _finite_runs(track: np.ndarray) -> list[np.ndarray]:
    """The stretches of consecutive known positions in `track` [T, 2]; a trail never bridges a gap."""
    known = np.isfinite(track).all(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], known.astype(np.int8), [0]])))
    return [track[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True)]


def draw_overlay(
    frame: np.ndarray,
    trajectories: np.ndarray,
    index: int,
    labels: list[str],
    colours: np.ndarray,
    trail: int = 0,
    style: OverlayStyle | None = None,
) -> np.ndarray:
    """A BGR copy of `frame` (grey [H, W] or BGR [H, W, 3]) with the identities of frame `index`.

    `trajectories` is the session's float [F, N, 2] array of (x, y) with NaN where unknown. For
    each identity: its trail over the `trail` frames before `index`, a filled dot in its colour at
    its position in frame `index` (nothing if unknown there), and its label beside the dot. All
    trails are drawn before any dot and labels last, so no trail hides an animal's dot.
    """
    style = style or OverlayStyle()
    trajectories = np.asarray(trajectories, dtype=np.float64)
    n_frames, n_animals = trajectories.shape[:2]
    if not 0 <= index < n_frames:
        raise ValueError(f"frame {index} is outside the trajectories (0..{n_frames - 1})")
    if len(labels) != n_animals or len(colours) != n_animals:
        raise ValueError(f"{len(labels)} labels and {len(colours)} colours for {n_animals} identities")
    if trail < 0:
        raise ValueError(f"trail must be >= 0 frames, got {trail}")
    canvas = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame.copy()
    colours = [tuple(int(c) for c in colour) for colour in colours]
    if trail:
        window = trajectories[max(0, index - trail):index + 1]
        for animal in range(n_animals):
            runs = [_fixed(run) for run in _finite_runs(window[:, animal]) if len(run) > 1]
            if runs:
                cv2.polylines(canvas, runs, False, colours[animal], style.line, cv2.LINE_AA, _SHIFT)
    current = trajectories[index]
    shown = np.flatnonzero(np.isfinite(current).all(axis=1))
    for animal in shown:
        cv2.circle(canvas, tuple(_fixed(current[animal])), style.radius << _SHIFT, colours[animal], -1,
                   cv2.LINE_AA, _SHIFT)
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(2 * style.font_scale))
    for animal in shown:
        x, y = current[animal]
        origin = (int(round(x)) + style.radius + 2, int(round(y)) - style.radius - 2)
        cv2.putText(canvas, labels[animal], origin, font, style.font_scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(canvas, labels[animal], origin, font, style.font_scale, colours[animal], thickness, cv2.LINE_AA)
    return canvas


def crop_centred(frame: np.ndarray, centre: np.ndarray, side: int) -> np.ndarray:
    """The `side` x `side` square of `frame` centred on `centre` (x, y); parts outside the frame are 0.

    The square is cut on whole pixels (no resampling, so the pixels are the video's own); the
    animal sits within half a pixel of the square's centre (side / 2, side / 2).
    """
    if side < 1:
        raise ValueError(f"crop side must be >= 1 pixel, got {side}")
    x, y = np.asarray(centre, dtype=np.float64)
    if not (np.isfinite(x) and np.isfinite(y)):
        raise ValueError(f"cannot centre a crop on an unknown position ({x}, {y})")
    left, top = int(round(x - side / 2)), int(round(y - side / 2))
    out = np.zeros((side, side, *frame.shape[2:]), dtype=frame.dtype)
    height, width = frame.shape[:2]
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + side, width), min(top + side, height)
    if x0 < x1 and y0 < y1:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = frame[y0:y1, x0:x1]
    return out


def hold_last_known(track: np.ndarray) -> np.ndarray:
    """[F, 2] positions with each unknown frame at the last known position (before the first: the first).

    An individual video then stays on the spot where its animal was last seen (e.g. in a crossing
    that could not be resolved) instead of jumping or going blank. All-unknown stays all NaN.
    """
    track = np.asarray(track, dtype=np.float64)
    known = np.isfinite(track).all(axis=1)
    if not known.any():
        return track.copy()
    last = np.where(known, np.arange(len(track)), -1)
    np.maximum.accumulate(last, out=last)
    last[last < 0] = np.flatnonzero(known)[0]
    return track[last]
