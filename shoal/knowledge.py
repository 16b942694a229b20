"""The trained identity model a session keeps, so a later session can start from it.

``knowledge_transfer_folder`` (idtracker.ai's name; ``shoal track --knowledge-from SESSION``) points
at an earlier session folder. Its ``identity_model.npz`` holds the identity network's weights, the
per-identity reference (k-means centres of the contrastive embedding, or nothing for the
accumulation classifier, whose outputs are the identities) and a JSON header: the kind of network,
the crop side and the number of animals. It is a plain ``.npz`` (no pickle), so reading it runs no
code, and the model's output k is the session's identity k + 1. This module needs numpy only: the
segmenter and the CLI read the header without torch.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from shoal.params import ParamError

MODEL_FILE = "identity_model.npz"
FIELD = "knowledge_transfer_folder"


def encode_model(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The model file's bytes (uint8 array, so it travels as a message frame)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **arrays)
    return np.frombuffer(buffer.getvalue(), np.uint8)


def decode_model(data: np.ndarray | bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) of a model file's bytes; ValueError when they are not a model file."""
    try:
        with np.load(io.BytesIO(bytes(memoryview(data))), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not a Shoal identity model ({exc})") from None
    return meta, arrays


def read_model(folder: str | Path) -> np.ndarray:
    """Bytes of the identity model of a session folder (or of the model file itself).

    Raises ParamError naming ``knowledge_transfer_folder`` when there is none or it is unreadable.
    """
    path = Path(folder)
    path = path if path.suffix == ".npz" else path / MODEL_FILE
    try:
        data = np.frombuffer(path.read_bytes(), np.uint8)
    except OSError as exc:
        raise ParamError(FIELD, f"no identity model at {path} ({exc.strerror}); give the folder of a session "
                                "tracked with identities by this version of Shoal") from None
    try:
        decode_model(data)
    except ValueError as exc:
        raise ParamError(FIELD, f"{path}: {exc}") from None
    return data


def model_info(folder: str | Path) -> dict[str, Any]:
    """Header of a session's identity model: ``kind``, ``crop_side``, ``n_animals``, ``version``."""
    return decode_model(read_model(folder))[0]


def check_compatible(info: dict[str, Any], crop_side: int | None, n_animals: int | None) -> None:
    """Raise ParamError unless a new session can reuse the model (same crop side and animals)."""
    if crop_side is not None and int(info["crop_side"]) != int(crop_side):
        raise ParamError(FIELD, f"the earlier session's identification images are {info['crop_side']} px, this "
                                f"video's are {crop_side} px; set id_image_size = {info['crop_side']} "
                                f"(--id-image-size) to reuse it")
    if n_animals and int(info["n_animals"]) != int(n_animals):
        raise ParamError(FIELD, f"the earlier session has {info['n_animals']} animals, this one {n_animals}; "
                                "identities can only be matched between the same animals")
