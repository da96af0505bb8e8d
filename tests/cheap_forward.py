"""MiniLM's real tokenizer and limits with a forward pass that costs nothing, for tests of
what happens before the model (HTTP framing, body parsing) that send hundreds of requests."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from app.config import ModelSettings
from app.models.protocol import EmbeddingBackend, TokenizedText
from app.models.registry import load_backend


@dataclass
class CheapForward:
    inner: EmbeddingBackend

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def tokenize(self, texts: Sequence[str], instruction: str) -> list[TokenizedText]:
        return self.inner.tokenize(texts, instruction)

    def embed(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        # A vector per distinct input, the same each time.
        rows = [np.random.default_rng(zlib.crc32(repr(t.input_ids).encode())) for t in batch]
        return np.stack([rng.standard_normal(self.inner.dimensions, dtype=np.float32) for rng in rows])


def cheap_loader(entry: ModelSettings) -> EmbeddingBackend:
    return CheapForward(load_backend(entry))  # type: ignore[return-value]
