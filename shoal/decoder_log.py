"""What the video decoder (ffmpeg inside OpenCV) says while Shoal reads: kept quiet, or caught.

ffmpeg reports damaged data only on stderr, never through OpenCV's return values, so telling a
damaged frame from a good one means reading file descriptor 2 around each decode.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: a line the decoder (ffmpeg inside OpenCV) writes to stderr, e.g. "[h264 @ 0x55d0c8] error while decoding MB"
_DECODER_LINE = re.compile(rb"^\[[^\]\n]* @ 0x[0-9a-f]+\] ", re.MULTILINE)
_decoder_log_set = False
_capture_lock = threading.Lock()


@contextmanager
def decoder_log_setting() -> Iterator[None]:
    """Around OpenCV's first use of ffmpeg: silence ffmpeg's own complaints in a process that does not log.

    ffmpeg writes them (``moov atom not found``, ``Slice pointer chain broken``) to stderr. A process
    that logs (a service, whose stderr is its log) keeps them; in one that does not (the CLI) they
    would only clutter the terminal beside Shoal's one-line message. ffmpeg reads the setting once;
    the environment is restored afterwards, so services started from this process decide for themselves.
    """
    global _decoder_log_set
    quiet = not _decoder_log_set and "OPENCV_FFMPEG_LOGLEVEL" not in os.environ and not logging.getLogger().handlers
    _decoder_log_set = True
    if quiet:
        os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"  # AV_LOG_QUIET
    try:
        yield
    finally:
        if quiet:
            os.environ.pop("OPENCV_FFMPEG_LOGLEVEL", None)


class DecoderMessages:
    """Collects what is written to stderr (file descriptor 2) while decoding, to tell which reads made
    the decoder complain; the text is then passed on to stderr unchanged (the service log)."""

    def __enter__(self) -> DecoderMessages:
        _capture_lock.acquire()
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        self._seen = 0
        return self

    def new_complaint(self) -> bool:
        """Whether the decoder complained since the last call (messages of other threads may count too)."""
        end = os.lseek(self._file.fileno(), 0, os.SEEK_END)
        if end == self._seen:
            return False
        text = os.pread(self._file.fileno(), end - self._seen, self._seen)
        self._seen = end
        return bool(_DECODER_LINE.search(text))

    def __exit__(self, *exc) -> None:
        try:
            sys.stderr.flush()
            os.dup2(self._saved, 2)
            os.close(self._saved)
            size = os.lseek(self._file.fileno(), 0, os.SEEK_END)
            if size:
                os.write(2, os.pread(self._file.fileno(), size, 0))
            self._file.close()
        finally:
            _capture_lock.release()
