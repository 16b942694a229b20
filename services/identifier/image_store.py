"""One job's identification images on the data volume.

Each chunk's crops are one ``.npy`` file written atomically, so a restarted identifier finds every
chunk it had acknowledged. Before training, the chunks are joined (in chunk order) into one file
that is memory-mapped: image id = row, the same numbering as the assembler's blob table.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np


class ImageStore:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _chunk_path(self, chunk: int) -> Path:
        return self.root / f"chunk_{chunk:06d}.npy"

    def has(self, chunk: int) -> bool:
        return self._chunk_path(chunk).exists()

    def put(self, chunk: int, crops: np.ndarray) -> None:
        tmp = self.root / f".chunk_{chunk:06d}.{os.getpid()}.tmp.npy"
        np.save(tmp, crops)
        os.replace(tmp, self._chunk_path(chunk))

    def images(self, n_chunks: int) -> np.ndarray:
        """All crops, chunks in order, as a read-only memmap [n_images, s, s]."""
        joined = self.root / f"images_{n_chunks}.npy"
        if not joined.exists():
            missing = [c for c in range(n_chunks) if not self.has(c)]
            if missing:
                raise FileNotFoundError(f"image store {self.root} lacks chunks {missing[:5]}")
            parts = [np.load(self._chunk_path(c), mmap_mode="r") for c in range(n_chunks)]
            side = parts[0].shape[1:]
            tmp = self.root / f".images.{os.getpid()}.tmp.npy"
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                            shape=(sum(len(p) for p in parts), *side))
            row = 0
            for p in parts:
                out[row : row + len(p)] = p
                row += len(p)
            out.flush()
            del out
            os.replace(tmp, joined)
        return np.load(joined, mmap_mode="r")

    def delete(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
