"""One job's chunks on the data volume: the identification images and the blob geometry.

Each chunk is two files written atomically: the geometry (``chunk_NNNNNN.geometry.npz``: the
``BlobTable`` columns plus the chunk's frame range), then the crops (``chunk_NNNNNN.npy``). A chunk
counts as held only when both exist, so an identifier killed between the two writes just gets the
chunk again. A restarted identifier therefore finds every chunk it had stored, and can replay the
geometry to an assembler that lost its own copy. Before training, the crops are joined (in chunk
order) into one file that is memory-mapped: image id = row, the same numbering as the assembler's
blob table.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

#: chunk facts saved with the geometry, as ``_<name>`` entries of the ``.npz``
META_KEYS = ("start", "stop", "n_chunks")


class ImageStore:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _chunk_path(self, chunk: int) -> Path:
        return self.root / f"chunk_{chunk:06d}.npy"

    def _geometry_path(self, chunk: int) -> Path:
        return self.root / f"chunk_{chunk:06d}.geometry.npz"

    def has(self, chunk: int) -> bool:
        return self._chunk_path(chunk).exists() and self._geometry_path(chunk).exists()

    def held(self, n_chunks: int) -> list[int]:
        """The chunks of ``range(n_chunks)`` stored completely (crops and geometry)."""
        return [c for c in range(n_chunks) if self.has(c)]

    def put(self, chunk: int, crops: np.ndarray, geometry: dict[str, np.ndarray], meta: dict[str, int]) -> None:
        """Store a chunk: geometry first, crops last, so the crops file marks a complete chunk."""
        tmp = self.root / f".chunk_{chunk:06d}.{os.getpid()}.tmp.npz"
        with open(tmp, "wb") as f:
            np.savez(f, **geometry, **{f"_{k}": np.int64(meta[k]) for k in META_KEYS})
        os.replace(tmp, self._geometry_path(chunk))
        tmp = self.root / f".chunk_{chunk:06d}.{os.getpid()}.tmp.npy"
        np.save(tmp, crops)
        os.replace(tmp, self._chunk_path(chunk))

    def geometry(self, chunk: int) -> tuple[dict[str, int], dict[str, np.ndarray]]:
        """A stored chunk's (meta, geometry arrays), as :meth:`put` received them."""
        with np.load(self._geometry_path(chunk)) as data:
            meta = {k: int(data[f"_{k}"]) for k in META_KEYS}
            arrays = {k: data[k] for k in data.files if not k.startswith("_")}
        return meta, arrays

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
