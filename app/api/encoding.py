"""Vectors to OpenAI's `float` lists or `base64` (little-endian float32 bytes)."""

from __future__ import annotations

import base64

import numpy as np
import numpy.typing as npt

FORMATS = ("float", "base64")


def encode_vectors(vectors: npt.NDArray[np.float32], encoding_format: str) -> list[list[float] | str]:
    if encoding_format == "base64":
        little = vectors.astype("<f4", copy=False)
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    rows: list[list[float] | str] = vectors.tolist()
    return rows
