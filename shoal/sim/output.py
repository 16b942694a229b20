"""Writing a simulation: the video in the chosen codec and ground_truth.npz beside it.

Lossy codecs are there to test trackers on compressed video; the default FFV1 is lossless, so the
file holds exactly the rendered frames.
"""

from __future__ import annotations

import json
import queue
import threading
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from shoal.sim.config import SimulationConfig
from shoal.sim.scene import Simulation
from shoal.sim.truth import collect_truth


class _CvWriter:
    """An OpenCV VideoWriter: FFV1 and MPEG-4 in grey, Motion-JPEG in BGR (OpenCV's own MJPEG writer,
    the one that honours a JPEG quality, writes grey frames wrongly)."""

    def __init__(self, config: SimulationConfig, path: Path):
        size, fps = (config.width, config.height), float(config.fps)
        self.bgr = config.codec == "mjpg"
        if self.bgr:
            self.writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
        else:
            fourcc = cv2.VideoWriter_fourcc(*{"ffv1": "FFV1", "mp4v": "mp4v"}[config.codec])
            self.writer = cv2.VideoWriter(str(path), fourcc, fps, size, isColor=False)
        if not self.writer.isOpened():
            raise OSError(f"cannot write a {config.codec} video at {path}")
        if self.bgr:
            quality = 75 if config.quality is None else config.quality
            if not self.writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality):
                raise OSError(f"OpenCV's MJPEG writer did not take JPEG quality {quality}")

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if self.bgr else frame)

    def close(self) -> None:
        self.writer.release()


class _H264Writer:
    """H.264 (libx264, yuv420p, preset veryfast as live-capture software uses) in MP4 through PyAV, at a
    bitrate or at constant quality."""

    def __init__(self, config: SimulationConfig, path: Path):
        try:
            import av
        except ImportError:
            raise OSError("--codec h264 needs PyAV, which is not installed: pip install av "
                          "(or pip install -e '.[sim]'), or choose --codec mjpg") from None
        self.av = av
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream("libx264", rate=Fraction(config.fps).limit_denominator(1001))
        self.stream.width, self.stream.height, self.stream.pix_fmt = config.width, config.height, "yuv420p"
        if config.bitrate is None:
            self.stream.options = {"preset": "veryfast", "crf": "23"}
        else:
            self.stream.bit_rate = int(config.bitrate * 1000)
            self.stream.options = {"preset": "veryfast"}

    def write(self, frame: np.ndarray) -> None:
        for packet in self.stream.encode(self.av.VideoFrame.from_ndarray(frame, format="gray")):
            self.container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()


def _video_writer(config: SimulationConfig, path: Path) -> _CvWriter | _H264Writer:
    return _H264Writer(config, path) if config.codec == "h264" else _CvWriter(config, path)


def write_simulation(config: SimulationConfig, out_dir: str | Path) -> dict[str, Path]:
    """Write the video (``config.video_name()``: lossless FFV1 ``video.avi`` by default, greyscale) and
    ``ground_truth.npz`` into out_dir.

    Encoding runs in a thread beside the rendering (OpenCV and PyAV release the GIL while encoding).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video_path, truth_path = out / config.video_name(), out / "ground_truth.npz"
    writer = _video_writer(config, video_path)
    pending: queue.Queue = queue.Queue(maxsize=16)
    errors: list[Exception] = []

    def encode() -> None:  # keeps draining after an error so that the renderer never blocks
        while (frame := pending.get()) is not None:
            if not errors:
                try:
                    writer.write(frame)
                except Exception as err:  # cv2.error, or PyAV's FFmpegError: reported below
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
        writer.close()
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
        conditions=np.str_(json.dumps(config.conditions(), sort_keys=True)),
    )
    return {"video": video_path, "ground_truth": truth_path}
