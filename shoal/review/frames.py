"""JPEG frames of a session's videos for the review page, fast enough for stepping and scrubbing.

A frame request must come back within 100 ms, but a seek in an H.264 file decodes from the previous
key frame (up to ~250 frames with libx264's defaults: a quarter of a second at 1000x1000). So: an
open decoder serves the next frame with one decode; a step back that needs a seek also caches the
frames before its target, so the next steps back are cache hits; and a one-time background pass
stores every frame's JPEG in a disk proxy, after which any frame is one file read. Until it has
passed a frame, a random jump to it costs a seek (p95 ~270 ms on the 2-core machine, bench/README.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import operator
import os
import sys
import threading
from collections import OrderedDict
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np

from shoal.atomic import replacing
from shoal.video import FrameReader, VideoError, VideoInfo, read_frames

log = logging.getLogger("shoal.review")

PROXY_VERSION = 1  # part of the proxy's key: a change of format or encoding rebuilds every proxy
CACHE_BYTES = 64 << 20
BACKFILL = 32
"""Frames cached before the target when a step back needs a seek: that seek then serves this many
steps back, of the same stride (stepping back by 10 caches every 10th frame and only grabs the others,
about 3x cheaper than encoding). A jump caches none: scrubbing would pay ~3.5 ms per cached frame."""


class _JpegCache:
    """Recently decoded frames' JPEGs, least recently used dropped first, bounded by total bytes."""

    def __init__(self, max_bytes: int):
        self._items: OrderedDict[int, bytes] = OrderedDict()
        self._bytes, self._max_bytes = 0, max_bytes
        self._lock = threading.Lock()

    def get(self, index: int) -> bytes | None:
        with self._lock:
            jpeg = self._items.get(index)
            if jpeg is not None:
                self._items.move_to_end(index)
            return jpeg

    def put(self, index: int, jpeg: bytes) -> None:
        with self._lock:
            self._bytes += len(jpeg) - len(self._items.pop(index, b""))
            self._items[index] = jpeg
            while self._bytes > self._max_bytes and len(self._items) > 1:
                self._bytes -= len(self._items.popitem(last=False)[1])


class FrameSource:
    """JPEG frames of a session's videos by global index, fast enough for stepping and scrubbing.

    `cache_dir` holds the disk proxy (one per session: proxies of other videos there are deleted);
    None keeps frames in memory only. Thread-safe: the page's HTTP threads share one source.
    """

    def __init__(self, info: VideoInfo, cache_dir: Path | None = None, *, quality: int = 85,
                 index_in_background: bool = True):
        self.info, self.n_frames, self.width, self.height = info, info.n_frames, info.width, info.height
        self._quality = quality
        self._cache = _JpegCache(CACHE_BYTES)
        self._reader, self._reader_lock = FrameReader(info), threading.Lock()
        self._last = -1  # the last frame requested, to tell steps back from jumps
        # the proxy: frames [0, _indexed) are JPEGs at byte offsets [_offsets[i], _offsets[i + 1]) of _fd
        self._offsets = np.zeros(self.n_frames + 1, dtype=np.int64)
        self._indexed, self._fd, self._fd_lock = 0, -1, threading.Lock()
        self._stop, self._thread, self._error, self._closed = threading.Event(), None, None, False
        if cache_dir is None:
            return
        self._dir = Path(cache_dir)
        self._key = {"version": PROXY_VERSION, "quality": quality, "file_frames": info.file_frames,
                     "videos": [[os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in info.paths]}
        name = "frames-" + hashlib.sha256(json.dumps(self._key).encode()).hexdigest()[:16]
        self._data, self._manifest = self._dir / f"{name}.jpgs", self._dir / f"{name}.json"
        if not self._load_proxy() and index_in_background:
            self._thread = threading.Thread(target=self._index, name="review-frames-index", daemon=True)
            self._thread.start()

    def jpeg(self, index: int) -> bytes:
        """The JPEG of global frame `index`; IndexError outside the session, VideoError if it does not decode."""
        index = self._check(index)
        back, self._last = self._last - index, index
        jpeg = self._stored(index)
        return jpeg if jpeg is not None else self._decode(index, back)

    def gray(self, index: int) -> np.ndarray:
        """Grey frame `index`, e.g. to segment it: exact from the decoder when that needs no seek (right
        after `jpeg(index)` decoded it, or stepping on), else the stored JPEG decoded (a few ms, within
        JPEG error), so that outlines cost no seek once the frame is in the proxy or the cache."""
        index = self._check(index)
        with self._reader_lock:
            self._check_open()  # close() may have run while this thread waited
            if not self._reader.ready(index) and (jpeg := self._stored(index)) is not None:
                return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
            return self._reader.read(index)

    def _stored(self, index: int) -> bytes | None:
        """The frame's JPEG from the proxy or the memory cache, without decoding anything."""
        if index < self._indexed:
            with self._fd_lock:
                if self._fd >= 0:
                    start, stop = self._offsets[index:index + 2]
                    return os.pread(self._fd, int(stop - start), int(start))
        return self._cache.get(index)

    def progress(self) -> dict:
        """How far the background pass is: frames in the proxy, whether it still runs, why it stopped early."""
        running = self._thread is not None and self._thread.is_alive()
        return {"indexed": self._indexed, "n_frames": self.n_frames, "running": running, "error": self._error}

    def close(self) -> None:
        """Stop the background pass (a half-written proxy is deleted) and release the decoder and files."""
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._reader_lock:
            self._reader.close()
        with self._fd_lock:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, index: int) -> int:
        self._check_open()
        index = operator.index(index)
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} is outside the session (0..{self.n_frames - 1})")
        return index

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the frame source is closed")

    def _encode(self, grey: np.ndarray) -> bytes:
        ok, buffer = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        if not ok:
            raise VideoError(f"cannot encode a {grey.shape} frame as JPEG")
        return buffer.tobytes()

    def _decode(self, index: int, back: int) -> bytes:
        """Decode `index` (`back` frames before the previous request): one decode right after the frame
        last decoded, else a seek; a step back that seeks also caches the BACKFILL frames before it."""
        with self._reader_lock:
            self._check_open()
            jpeg = self._cache.get(index)  # another thread may have decoded it while this one waited
            if jpeg is not None:
                return jpeg
            if 0 < back <= FrameReader.forward_gap and not self._reader.continues(index):  # a step back: seek
                count = min(BACKFILL, (index - self.info.file_starts[self.info.file_of(index)]) // back)
                for before in range(index - count * back, index, back):  # strided reads decode on without seeks
                    try:
                        grey = self._reader.read(before)
                    except VideoError:
                        break  # a damaged frame before the target: seek to the target itself
                    if self._cache.get(before) is None:
                        self._cache.put(before, self._encode(grey))
            jpeg = self._encode(self._reader.read(index))
            self._cache.put(index, jpeg)
            return jpeg

    def _load_proxy(self) -> bool:
        """Use a complete proxy of these very videos: its manifest (written last) and the data's size match."""
        try:
            manifest = json.loads(self._manifest.read_text())
            offsets = np.asarray(manifest["offsets"], dtype=np.int64)
            if manifest["key"] != self._key or len(offsets) != self.n_frames + 1:
                return False
            fd = os.open(self._data, os.O_RDONLY)
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if os.fstat(fd).st_size != offsets[-1]:
            os.close(fd)
            return False
        self._offsets[:], self._fd, self._indexed = offsets, fd, self.n_frames
        return True

    def _index(self) -> None:
        """The background pass: decode every frame in order, append its JPEG to the proxy, publish its offset."""
        if sys.platform.startswith("linux"):  # niceness is per thread on Linux; decoder threads opened here inherit it
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            except OSError:
                pass
        part, owned, done = self._data.with_name(self._data.name + ".part"), False, False
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            for stale in self._dir.glob("frames-*"):
                if stale.name.split(".")[0] != self._data.stem:
                    stale.unlink(missing_ok=True)
            with open(os.open(part, os.O_WRONLY | os.O_CREAT, 0o644), "wb") as out:
                try:
                    fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes
                except BlockingIOError:
                    raise OSError(f"another process is writing {part}") from None
                owned = True
                out.truncate(0)
                with self._fd_lock:
                    self._fd = os.open(part, os.O_RDONLY)
                for start, count in zip(self.info.file_starts, self.info.file_frames, strict=True):
                    with closing(read_frames(self.info, start, start + count)) as frames:
                        for index, grey in frames:
                            if self._stop.is_set():
                                return
                            out.write(self._encode(grey))
                            out.flush()
                            self._offsets[index + 1] = out.tell()
                            self._indexed = index + 1
                os.fsync(out.fileno())
            os.replace(part, self._data)
            offsets = self._offsets.tolist()
            with replacing(self._manifest) as temporary:
                temporary.write_text(json.dumps({"key": self._key, "offsets": offsets}))
            done = True
        except (OSError, VideoError) as error:
            self._error = str(error)
            log.warning("review: frame proxy stopped at frame %d of %d: %s", self._indexed, self.n_frames, error)
        finally:
            if owned and not done:
                part.unlink(missing_ok=True)
