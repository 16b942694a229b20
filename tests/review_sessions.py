"""Session folders for the review page's tests: a simulated video and a 'tracking' that is its ground
truth with one deliberate identity swap, so a test knows exactly what a right correction gives."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from shoal.review.app import create_app, listen, server
from shoal.review.session import ReviewSession
from shoal.session import write_session
from shoal.sim import SimulationConfig, write_simulation

N_ANIMALS, N_FRAMES, SWAP_AT = 3, 90, 45
SWAPPED = (0, 1)  # columns exchanged from SWAP_AT on: identities 1 and 2


def swapped_session(folder: Path, formats: tuple[str, ...] = ("npy", "csv")) -> tuple[Path, np.ndarray]:
    """A session in `folder`/session whose identities 1 and 2 are swapped from frame SWAP_AT on;
    returns (session folder, the true trajectories)."""
    sim = write_simulation(SimulationConfig(n_animals=N_ANIMALS, n_frames=N_FRAMES, seed=3), folder / "sim")
    with np.load(sim["ground_truth"]) as gt:
        truth, touching, body_length = gt["positions"], gt["touching"], float(gt["body_length"])
    tracked = truth.copy()
    a, b = SWAPPED
    tracked[SWAP_AT:, [a, b]] = tracked[SWAP_AT:, [b, a]]
    certainty = np.where(touching, np.nan, 0.97)[..., None]
    session = folder / "session"
    write_session(session, {
        "trajectories": tracked, "id_probabilities": certainty, "frames_per_second": 30.0,
        "body_length": body_length, "width": 500, "height": 500, "video_paths": [str(sim["video"])],
        "estimated_accuracy": 0.99,
        "session": {
            "parameters": {"number_of_animals": N_ANIMALS, "trajectories_formats": list(formats)},
            # the simulated fish are dark on a light floor: what the probe chooses for them
            "effective_parameters": {"intensity_ths": [0, 150], "area_ths": [50, 5000],
                                     "background_subtraction": False},
            "statistics": {"velocity_threshold": body_length},
            "warnings": [],
        },
    }, formats=formats)
    return session, truth


@contextlib.contextmanager
def serving(folder: Path, token: str | None = None):
    """The review app for one session on a free loopback port; yields its base URL (…/s/local/)."""
    opened = ReviewSession(folder)
    sock = listen("127.0.0.1", 0)
    http = server(create_app(lambda key: opened if key == "local" else None, token=token, home="local"))
    thread = threading.Thread(target=http.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 10
    while not http.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield base
    finally:
        http.should_exit = True
        thread.join(5)
        opened.close()
        sock.close()


def get(url: str, **headers: str) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)
